// Cross-scale neighborhood attention on the GPU: window tables (the rule of window.hpp, run in
// device code), the tiled kernel (window unions in shared memory, the default), the general
// warp-per-pixel kernel (its fallback) and the probe of one pixel.
//
// Layouts: queries qT [outH*outW, dim], keys kT [lowH*lowW, dim] and values vT [lowH*lowW,
// channels] pixel-major (channels contiguous: one window entry's key or value slice is one
// coalesced read); the output is channel-major [channels, outH, outW], the API layout.
#include <algorithm>
#include <cmath>
#include <string>

#include <cuda_pipeline.h>

#include "cell_mma_attention.hpp"
#include "naf_cuda_internal.cuh"
#include "naf_kernels/window.hpp"

namespace naf {
namespace kernels {
namespace cuda {
namespace detail {

namespace {

constexpr int kAttnThreads = 256;  // 8 warps
constexpr int kAttnWarps = kAttnThreads / 32;
constexpr int kAttnRun = 32;       // output pixels per block: a run of 32 along a row
constexpr int kQPerLane = kMaxHeadDim / 32;  // query/key channels per lane (head dim <= 128)
constexpr int kVPerLane = 4;                 // value channels per lane and pass (128 per pass)

__global__ void __launch_bounds__(kThreads) windowTableKernel(int* __restrict__ table, int outLen, int lowLen, int kernel)
{
    const int64_t total = int64_t(outLen) * kernel;
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x)
    {
        const int i = static_cast<int>(idx / kernel);
        const int t = static_cast<int>(idx - int64_t(i) * kernel);
        table[idx] = neighborLowIndex(i, t, outLen, lowLen, kernel);
    }
}

__device__ __forceinline__ float warpSum(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// One block per run of 32 consecutive output pixels of one row (grid-stride over runs); warp w
// handles pixels w, w+8, w+16, w+24 of the run, looping over heads and 128-channel value passes.
// For a (pixel, head) the warp keeps the query slice in registers (lane holds channels lane,
// lane+32, ...), walks the kh x kw window in row-major order, reduces q.k across the warp, and
// folds each entry into an online softmax together with the value slice (lane holds value
// channels lane + 32*i of the pass). Keys/values are read at low resolution through
// rowTable/colTable, never upsampled; the pixels of a run share most of their windows, which the
// L1/L2 caches serve. The results of a pass are staged in shared memory and written channel-major
// ([C, outH, outW], 32 consecutive pixels per channel: coalesced), so no transpose follows.
__global__ void __launch_bounds__(kAttnThreads)
    neighborhoodAttentionKernel(const float* __restrict__ qT, const float* __restrict__ kT,
                                const float* __restrict__ vT, float* __restrict__ out, int dim, int channels,
                                int heads, int lowW, int outH, int outW, const int* __restrict__ rowTable,
                                const int* __restrict__ colTable, int kh, int kw, float scale)
{
    __shared__ float staged[32 * kVPerLane][kAttnRun + 1];
    const int headDim = dim / heads;
    const int vPerHead = channels / heads;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int runsX = (outW + kAttnRun - 1) / kAttnRun;
    const int64_t runs = int64_t(runsX) * outH;
    const int64_t outPlane = int64_t(outH) * outW;
    for (int64_t run = blockIdx.x; run < runs; run += gridDim.x)
    {
        const int y = static_cast<int>(run / runsX);
        const int x0 = static_cast<int>(run - int64_t(y) * runsX) * kAttnRun;
        const int* rows = rowTable + static_cast<size_t>(y) * kh;
        for (int h = 0; h < heads; ++h)
        {
            for (int v0 = 0; v0 < vPerHead; v0 += 32 * kVPerLane)
            {
                for (int i = warp; i < kAttnRun; i += kAttnWarps)
                {
                    const int x = x0 + i;
                    if (x >= outW) continue;  // warp-uniform
                    const int64_t pix = int64_t(y) * outW + x;
                    const int* cols = colTable + static_cast<size_t>(x) * kw;
                    const float* qp = qT + pix * dim + h * headDim;
                    float q[kQPerLane];
#pragma unroll
                    for (int j = 0; j < kQPerLane; ++j)
                    {
                        const int c = lane + 32 * j;
                        q[j] = c < headDim ? qp[c] : 0.f;
                    }
                    float m = -INFINITY, l = 0.f;
                    float acc[kVPerLane];
#pragma unroll
                    for (int j = 0; j < kVPerLane; ++j) acc[j] = 0.f;
                    for (int a = 0; a < kh; ++a)
                    {
                        const int64_t rowBase = int64_t(rows[a]) * lowW;
                        for (int b = 0; b < kw; ++b)
                        {
                            const int64_t pos = rowBase + cols[b];
                            const float* kp = kT + pos * dim + h * headDim;
                            float s = 0.f;
#pragma unroll
                            for (int j = 0; j < kQPerLane; ++j)
                            {
                                const int c = lane + 32 * j;
                                if (c < headDim) s = fmaf(q[j], kp[c], s);
                            }
                            s = warpSum(s) * scale;
                            const float mNew = fmaxf(m, s);
                            const float corr = expf(m - mNew);  // 0 on the first entry (m = -inf)
                            const float pw = expf(s - mNew);
                            l = l * corr + pw;
                            const float* vp = vT + pos * channels + h * vPerHead + v0;
#pragma unroll
                            for (int j = 0; j < kVPerLane; ++j)
                            {
                                const int c = lane + 32 * j;
                                const float v = v0 + c < vPerHead ? vp[c] : 0.f;
                                acc[j] = fmaf(pw, v, acc[j] * corr);
                            }
                            m = mNew;
                        }
                    }
                    const float inv = 1.f / l;
#pragma unroll
                    for (int j = 0; j < kVPerLane; ++j) staged[lane + 32 * j][i] = acc[j] * inv;
                }
                __syncthreads();
                // Channel-major store of the pass: lanes along pixels.
                const int passChannels = min(32 * kVPerLane, vPerHead - v0);
                for (int e = threadIdx.x; e < passChannels * kAttnRun; e += kAttnThreads)
                {
                    const int c = e / kAttnRun;
                    const int i = e - c * kAttnRun;
                    if (x0 + i < outW)
                        out[static_cast<size_t>(h * vPerHead + v0 + c) * outPlane + int64_t(y) * outW + x0 + i] =
                            staged[c][i];
                }
                __syncthreads();
            }
        }
    }
}

/// p[e] = exp(p[e] - m) for the n logits of one window, in order; returns their sum (the softmax
/// denominator).
__device__ __forceinline__ float expInPlace(float* p, int n, float m)
{
    float sum = 0.f;
    for (int e = 0; e < n; ++e)
    {
        const float v = expf(p[e] - m);
        p[e] = v;
        sum += v;
    }
    return sum;
}

/// Copies one head's slice of a pixel-major low-res tensor, for the union of a tile's windows
/// (rowsU x colsU cells from (firstRow, firstCol), cell u at row u / colsU), into shared rows of
/// `ld` floats: dst[u*ld + c] = src[pixel(u)*pixelStride + c] for c < width; zero for c in
/// [width, padWidth) and rows u in [unionSize, rows). Asynchronous copies (cp.async), 16 bytes
/// when everything is 4-float aligned: every copy of the block is in flight at once instead of one
/// load per thread at a time. Issues the copies as one committed batch and returns: the data is
/// visible after __pipeline_wait_prior and a block barrier (stageUnion does both).
__device__ __forceinline__ void issueUnionCopy(float* dst, int ld, int rows, int padWidth, const float* src,
                                               int64_t pixelStride, int width, int unionSize, int firstRow,
                                               int firstCol, int colsU, int lowW, bool vec4)
{
    const int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int u = warp; u < rows; u += warps)
    {
        const float* row = u < unionSize
                               ? src + (int64_t(firstRow + u / colsU) * lowW + firstCol + u % colsU) * pixelStride
                               : nullptr;
        float* d = dst + static_cast<size_t>(u) * ld;
        if (vec4)
        {
            for (int c = 4 * lane; c < padWidth; c += 128)
            {
                if (row && c < width)
                    __pipeline_memcpy_async(d + c, row + c, 16);
                else
                    *reinterpret_cast<float4*>(d + c) = make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
        else
        {
            for (int c = lane; c < padWidth; c += 32)
            {
                if (row && c < width)
                    __pipeline_memcpy_async(d + c, row + c, 4);
                else
                    d[c] = 0.f;
            }
        }
    }
    __pipeline_commit();
}

/// issueUnionCopy, then waits for it: ends with the block synchronized and the data visible.
__device__ __forceinline__ void stageUnion(float* dst, int ld, int rows, int padWidth, const float* src,
                                           int64_t pixelStride, int width, int unionSize, int firstRow,
                                           int firstCol, int colsU, int lowW, bool vec4)
{
    issueUnionCopy(dst, ld, rows, padWidth, src, pixelStride, width, unionSize, firstRow, firstCol, colsU, lowW,
                   vec4);
    __pipeline_wait_prior(0);
    __syncthreads();
}

// ---- tiled kernel: one thread per output pixel, the tile's window union in shared memory -------
//
// A block owns a 4 x 32 tile of output pixels. Neighbouring pixels share most of their windows
// (a whole low-res cell of pixels has the same one), so the union of the tile's windows is a
// small rectangle of low-res cells (about 10 x 11 at 16x): per head, its keys and values are
// copied to shared memory once (stageUnion: asynchronous copies, all in flight together), and
// each thread computes its pixel's attention from there.
// Pass 1: logits (query in registers, four FMA chains) into the thread's row of shared memory,
// then softmax weights in place; pass 2: values in chunks of 32 channels, accumulated in
// registers and stored channel-major (a warp writes 32 consecutive pixels of a channel).
// kChunkedValues (AttentionKernel::TiledChunked; ~8 % faster than without, GPU item 31): the
// values are not staged with the keys; once the logits are done, 32-channel chunks of them are
// staged into the keys' space, two buffers, the next chunk copied while the current one is
// summed. At 16x with 96 value channels per head that is 65 KB of shared memory per block instead
// of 99 KB: three blocks per SM instead of two (PERFORMANCE GPU item 24). Same operations in the
// same order per pixel, so the same bits as the plain kernel.

constexpr int kTileY = 4;
constexpr int kTileX = 32;
constexpr int kTileThreads = kTileY * kTileX;
constexpr int kValueChunk = 32;

__device__ __forceinline__ int warpMin(int v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

__device__ __forceinline__ int warpMax(int v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

/// Floats of shared memory before the softmax weights: the keys and values of the union, or with
/// chunked values the larger of the keys and two 32-channel value chunks.
__host__ __device__ inline size_t tiledUnionFloats(int unionCap, int headDim, int vStride, bool chunkedValues)
{
    const size_t keys = static_cast<size_t>(unionCap) * headDim;
    const size_t twoChunks = 2 * static_cast<size_t>(unionCap) * kValueChunk;
    return chunkedValues ? (keys > twoChunks ? keys : twoChunks) : keys + static_cast<size_t>(unionCap) * vStride;
}

template <int HD, bool kChunkedValues>
__global__ void __launch_bounds__(kTileThreads)
    tiledAttentionKernel(const float* __restrict__ qT, const float* __restrict__ kT, const float* __restrict__ vT,
                         float* __restrict__ out, int dim, int channels, int heads, int lowW, int outH, int outW,
                         const int* __restrict__ rowTable, const int* __restrict__ colTable, int kh, int kw,
                         float scale, int unionCap, int vStride, int pStride)
{
    extern __shared__ float4 attnShared[];
    float* sK = reinterpret_cast<float*>(attnShared);  // [unionCap][HD]
    // [unionCap][vStride], zero-padded channels; chunked: two [unionCap][32] buffers over the keys
    float* sV = kChunkedValues ? sK : sK + static_cast<size_t>(unionCap) * HD;
    float* sP = sK + tiledUnionFloats(unionCap, HD, vStride, kChunkedValues);  // [kTileThreads][pStride]
    __shared__ int unionBox[4];  // first row, rows, first column, columns

    const int tid = threadIdx.x;
    const int y0 = blockIdx.y * kTileY, x0 = blockIdx.x * kTileX;
    const int y = y0 + tid / kTileX, x = x0 + tid % kTileX;
    const bool active = y < outH && x < outW;

    // Union of the tile's windows: warp 0 scans the columns, warp 1 the rows.
    if (tid < 64)
    {
        const int lane = tid & 31;
        int lo = 0x7fffffff, hi = -1;
        if (tid < 32)
        {
            if (x0 + lane < outW)
                for (int t = 0; t < kw; ++t)
                {
                    const int v = colTable[static_cast<size_t>(x0 + lane) * kw + t];
                    lo = min(lo, v);
                    hi = max(hi, v);
                }
        }
        else if (lane < kTileY && y0 + lane < outH)
        {
            for (int t = 0; t < kh; ++t)
            {
                const int v = rowTable[static_cast<size_t>(y0 + lane) * kh + t];
                lo = min(lo, v);
                hi = max(hi, v);
            }
        }
        lo = warpMin(lo);
        hi = warpMax(hi);
        if (lane == 0)
        {
            unionBox[tid < 32 ? 2 : 0] = lo;
            unionBox[tid < 32 ? 3 : 1] = hi - lo + 1;
        }
    }
    __syncthreads();
    const int firstRow = unionBox[0], rowsU = unionBox[1], firstCol = unionBox[2], colsU = unionBox[3];
    const int unionSize = rowsU * colsU;
    const int vPerHead = channels / heads;
    const int64_t outPlane = int64_t(outH) * outW;
    const int64_t pix = int64_t(y) * outW + x;
    if (unionSize > unionCap)
    {
        // Cannot happen (the host sized unionCap with the same tables); poison rather than overrun.
        if (active)
            for (int c = 0; c < channels; ++c) out[static_cast<size_t>(c) * outPlane + pix] = nanf("");
        return;
    }
    const int* rows = rowTable + static_cast<size_t>(active ? y : 0) * kh;
    const int* cols = colTable + static_cast<size_t>(active ? x : 0) * kw;
    float* myP = sP + static_cast<size_t>(tid) * pStride;

    const bool valuesVec4 = channels % 4 == 0 && vPerHead % 4 == 0;
    // One 32-channel pass of pass 2 from values staged with row stride `ld` (channel c0 at vBase).
    auto valuePass = [&](const float* vBase, int ld, int c0, int h, float inv) {
        float acc[kValueChunk];
#pragma unroll
        for (int j = 0; j < kValueChunk; ++j) acc[j] = 0.f;
        for (int a = 0; a < kh; ++a)
        {
            const int rowOffset = (rows[a] - firstRow) * colsU - firstCol;
            for (int b = 0; b < kw; ++b)
            {
                const float p = myP[a * kw + b];
                const float4* v4 = reinterpret_cast<const float4*>(vBase + (rowOffset + cols[b]) * ld);
#pragma unroll
                for (int j = 0; j < kValueChunk / 4; ++j)
                {
                    const float4 v = v4[j];
                    acc[4 * j] = fmaf(p, v.x, acc[4 * j]);
                    acc[4 * j + 1] = fmaf(p, v.y, acc[4 * j + 1]);
                    acc[4 * j + 2] = fmaf(p, v.z, acc[4 * j + 2]);
                    acc[4 * j + 3] = fmaf(p, v.w, acc[4 * j + 3]);
                }
            }
        }
        float* o = out + static_cast<size_t>(h * vPerHead + c0) * outPlane + pix;
#pragma unroll
        for (int j = 0; j < kValueChunk; ++j)
            if (c0 + j < vPerHead) o[static_cast<size_t>(j) * outPlane] = acc[j] * inv;
    };
    for (int h = 0; h < heads; ++h)
    {
        // Keys and values of the union (vStride is a multiple of 32: 4-float aligned rows).
        stageUnion(sK, HD, unionSize, HD, kT + h * HD, dim, HD, unionSize, firstRow, firstCol, colsU, lowW, true);
        if (!kChunkedValues)
            stageUnion(sV, vStride, unionSize, vStride, vT + h * vPerHead, channels, vPerHead, unionSize, firstRow,
                       firstCol, colsU, lowW, valuesVec4);
        float inv = 0.f;
        if (active)
        {
            float q[HD];
            const float4* q4 = reinterpret_cast<const float4*>(qT + pix * dim + h * HD);
#pragma unroll
            for (int c4 = 0; c4 < HD / 4; ++c4)
            {
                const float4 v = q4[c4];
                q[4 * c4] = v.x;
                q[4 * c4 + 1] = v.y;
                q[4 * c4 + 2] = v.z;
                q[4 * c4 + 3] = v.w;
            }
            float m = -INFINITY;
            for (int a = 0; a < kh; ++a)
            {
                const int rowOffset = (rows[a] - firstRow) * colsU - firstCol;
                for (int b = 0; b < kw; ++b)
                {
                    const float4* k4 = reinterpret_cast<const float4*>(sK + (rowOffset + cols[b]) * HD);
                    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma unroll
                    for (int c4 = 0; c4 < HD / 4; ++c4)
                    {
                        const float4 k = k4[c4];
                        s0 = fmaf(q[4 * c4], k.x, s0);
                        s1 = fmaf(q[4 * c4 + 1], k.y, s1);
                        s2 = fmaf(q[4 * c4 + 2], k.z, s2);
                        s3 = fmaf(q[4 * c4 + 3], k.w, s3);
                    }
                    const float logit = ((s0 + s1) + (s2 + s3)) * scale;
                    myP[a * kw + b] = logit;
                    m = fmaxf(m, logit);
                }
            }
            inv = 1.f / expInPlace(myP, kh * kw, m);
        }
        if (!kChunkedValues)
        {
            if (active)
                for (int c0 = 0; c0 < vPerHead; c0 += kValueChunk) valuePass(sV + c0, vStride, c0, h, inv);
        }
        else
        {
            // The keys' space now takes two value chunks: chunk k in buffer k % 2, chunk k + 1 copied
            // while chunk k is summed.
            const size_t chunkFloats = static_cast<size_t>(unionCap) * kValueChunk;
            auto buffer = [&](int k) { return sV + (k & 1) * chunkFloats; };  // no local array: no stack
            const float* vHead = vT + h * vPerHead;
            __syncthreads();  // every thread's logits are done: the keys may be overwritten
            issueUnionCopy(buffer(0), kValueChunk, unionSize, kValueChunk, vHead, channels,
                           min(kValueChunk, vPerHead), unionSize, firstRow, firstCol, colsU, lowW, valuesVec4);
            for (int c0 = 0, k = 0; c0 < vPerHead; c0 += kValueChunk, ++k)
            {
                if (c0 + kValueChunk < vPerHead)
                {
                    issueUnionCopy(buffer(k + 1), kValueChunk, unionSize, kValueChunk,
                                   vHead + c0 + kValueChunk, channels, min(kValueChunk, vPerHead - c0 - kValueChunk),
                                   unionSize, firstRow, firstCol, colsU, lowW, valuesVec4);
                    __pipeline_wait_prior(1);  // chunk k has landed; chunk k + 1 may still be in flight
                }
                else
                {
                    __pipeline_wait_prior(0);
                }
                __syncthreads();
                if (active) valuePass(buffer(k), kValueChunk, c0, h, inv);
                __syncthreads();  // buffer k % 2 is free for chunk k + 2
            }
        }
        __syncthreads();
    }
}

// ---- cell kernel: one block per chunk of pixels sharing a window (cell_attention.hpp) ---------

template <int HD>
__global__ void __launch_bounds__(cell::kThreads, 2)  // 2 blocks per SM: what the shared memory allows
    cellAttentionKernel(cell::Params p, const cell::Chunk* __restrict__ chunks)
{
    extern __shared__ float4 cellShared[];
    float* region1 = reinterpret_cast<float*>(cellShared);
    float* region2 = region1 + cell::region1Floats<HD>();
    const cell::Chunk c = chunks[blockIdx.x];
    const int tid = threadIdx.x;
    const int vPerHead = p.channels / p.heads;
    for (int h = 0; h < p.heads; ++h)
    {
        cell::stageQueriesAndKeys<HD>(p, c, h, tid, region1);
        __syncthreads();
        cell::logits<HD>(p, tid, region1, region2);
        __syncthreads();
        cell::softmaxRows(p, tid, region1, region2);
        __syncthreads();
        for (int c0 = 0; c0 < vPerHead; c0 += cell::kChannelsPerPass)
        {
            cell::stageValues(p, c, h, c0, tid, region2);
            __syncthreads();
            cell::values(p, c, h, c0, tid, region1, region2);
            __syncthreads();
        }
    }
}

// ---- tensor-core cell kernel: the cell kernel's products on mma.sync (cell_mma_attention.hpp) --

/// One lane of a warp running the cell_mma_attention.hpp phases on the device: its registers and
/// the warp-wide operations (TF32 mma.sync, quad shuffles). Host-device only so that the phases,
/// which are host-device templates for the CPU test, compile for both sides; it runs on the device.
template <int HD>
struct DeviceWarp
{
    cellmma::LaneRegs<HD> r;
    int lane;

    template <class F>
    NAF_HOST_DEVICE __forceinline__ void each(F&& f)
    {
        f(r, lane);
    }

    template <class F>
    NAF_HOST_DEVICE __forceinline__ void mma3(F&& f)
    {
#if defined(__CUDA_ARCH__)
        const cellmma::MmaOperands op = f(r, lane);
        uint32_t aBig[4], aSmall[4], bBig[2], bSmall[2];
        cellmma::operandParts(op.a, op.aSmall, op.aPreSplit, aBig, aSmall);  // the flags: constants after inlining
        cellmma::operandParts(op.b, op.bSmall, op.bPreSplit, bBig, bSmall);
        mmaTf32(op.d, aBig, bSmall);
        mmaTf32(op.d, aSmall, bBig);
        mmaTf32(op.d, aBig, bBig);
#else
        (void)f;
#endif
    }

    /// Each lane of a quad gets op over the quad's values (xor shuffles 1, then 2).
    template <class F, class Op>
    NAF_HOST_DEVICE __forceinline__ void quadReduce(F&& f, Op&& op)
    {
#if defined(__CUDA_ARCH__)
        float& v = f(r);
        v = op(v, __shfl_xor_sync(0xffffffffu, v, 1));
        v = op(v, __shfl_xor_sync(0xffffffffu, v, 2));
#else
        (void)f, (void)op;
#endif
    }

    /// d += A B, one m16n8k8 TF32 product with float32 accumulation (sm_80 and newer; the host
    /// launches this kernel only there).
    static __device__ __forceinline__ void mmaTf32(float* d, const uint32_t (&a)[4], const uint32_t (&b)[2])
    {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
        __trap();
#endif
    }
};

template <int HD>
__global__ void __launch_bounds__(cellmma::kThreads, 2)  // 2 blocks per SM: 128 registers per thread
    cellMmaAttentionKernel(cell::Params p, const cell::Chunk* __restrict__ chunks)
{
    extern __shared__ float4 cellMmaShared[];
    const cellmma::SharedLayout sh =
        cellmma::sharedLayout<HD>(reinterpret_cast<float*>(cellMmaShared), p.channels / p.heads);
    const cell::Chunk c = chunks[blockIdx.x];
    const int tid = threadIdx.x, warp = tid >> 5;
    cellmma::computeWindowOffsets(p, c, tid, sh.windowOffsets);
    __syncthreads();
    const bool active = warp * cellmma::kTilePixels < c.count;  // warp-uniform: mma.sync needs whole warps
    DeviceWarp<HD> w;
    w.lane = tid & 31;
    for (int h = 0; h < p.heads; ++h)
    {
        // The queries are loaded after the barrier: loaded before it, their registers stay live
        // through the staging and the kernel spills (ptxas, sm_90: 116 bytes at head dim 64). An
        // L2 prefetch gets them on their way during the staging instead.
        if (active) cellmma::prefetchQueries<HD>(p, c, h, warp, tid & 31);
        cellmma::stageKeysAndValues<HD>(p, h, tid, sh);
        __syncthreads();
        if (active)
        {
            cellmma::loadQueries<HD>(p, c, h, warp, w);
            cellmma::logitsAndSoftmax<HD>(p, sh.keys, w);
            cellmma::valuesAndStore<HD>(p, c, h, warp, sh, w);
        }
        __syncthreads();  // the next head's staging overwrites the keys and values
    }
}

/// Largest union of windows over the tiles of one axis (tile of `tile` output positions).
int maxWindowUnion(int outLen, int lowLen, int kernel, int tile)
{
    int best = 0;
    for (int i0 = 0; i0 < outLen; i0 += tile)
    {
        int lo = lowLen, hi = -1;
        for (int i = i0; i < std::min(outLen, i0 + tile); ++i)
            for (int t = 0; t < kernel; ++t)
            {
                const int v = neighborLowIndex(i, t, outLen, lowLen, kernel);
                lo = std::min(lo, v);
                hi = std::max(hi, v);
            }
        best = std::max(best, hi - lo + 1);
    }
    return best;
}

// One warp per head: logits of the window of pixel (y,x), then a plain softmax by lane 0.
__global__ void __launch_bounds__(32)
    attentionProbeKernel(const float* __restrict__ qT, const float* __restrict__ kT, int dim, int heads, int lowW,
                         int outW, int y, int x, const int* __restrict__ rowTable, const int* __restrict__ colTable,
                         int kh, int kw, float scale, float* __restrict__ probs)
{
    const int h = blockIdx.x;
    const int lane = threadIdx.x;
    const int headDim = dim / heads;
    const int64_t pix = int64_t(y) * outW + x;
    const float* qp = qT + pix * dim + h * headDim;
    float* out = probs + static_cast<size_t>(h) * kh * kw;
    for (int a = 0; a < kh; ++a)
        for (int b = 0; b < kw; ++b)
        {
            const int64_t pos = int64_t(rowTable[static_cast<size_t>(y) * kh + a]) * lowW +
                                colTable[static_cast<size_t>(x) * kw + b];
            const float* kp = kT + pos * dim + h * headDim;
            float s = 0.f;
            for (int c = lane; c < headDim; c += 32) s = fmaf(qp[c], kp[c], s);
            s = warpSum(s) * scale;
            if (lane == 0) out[a * kw + b] = s;
        }
    __syncwarp();
    if (lane == 0)
    {
        const int n = kh * kw;
        float mx = -INFINITY;
        for (int e = 0; e < n; ++e) mx = fmaxf(mx, out[e]);
        const float inv = 1.f / expInPlace(out, n, mx);
        for (int e = 0; e < n; ++e) out[e] *= inv;
    }
}

}  // namespace

void launchWindowTable(int* table, int outLen, int lowLen, int kernel, cudaStream_t stream)
{
    const int64_t total = int64_t(outLen) * kernel;
    const unsigned int blocks =
        static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20)));
    windowTableKernel<<<blocks, kThreads, 0, stream>>>(table, outLen, lowLen, kernel);
    checkLaunch("window table kernel launch");
}

namespace {

/// An attribute of the current device.
int currentDeviceAttribute(cudaDeviceAttr attribute, const char* what)
{
    int device = 0, value = 0;
    check(cudaGetDevice(&device), "querying the current CUDA device");
    check(cudaDeviceGetAttribute(&value, attribute, device), what);
    return value;
}

int sharedMemoryOptin()
{
    return currentDeviceAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, "querying the shared memory size");
}

template <typename Kernel>
void allowSharedMemory(Kernel kernelFunction, size_t bytes)
{
    check(cudaFuncSetAttribute(kernelFunction, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
          "sizing the attention kernel's shared memory");
}

/// The tiled kernel's launch geometry for a problem; shared == 0 when its limits do not hold
/// (head dim 32/64, the largest window union of a tile in shared memory).
struct TiledLaunch
{
    int unionCap = 0, vStride = 0, pStride = 0;
    size_t shared = 0;
};

TiledLaunch tiledLaunch(int dim, int channels, int heads, int lowH, int lowW, int outH, int outW, int kh, int kw,
                        bool chunkedValues)
{
    TiledLaunch t;
    const int headDim = dim / heads;
    const int vPerHead = channels / heads;
    if ((headDim != 64 && headDim != 32) || dim % 4 != 0 || (outH + kTileY - 1) / kTileY > 65535) return t;
    t.unionCap = maxWindowUnion(outH, lowH, kh, kTileY) * maxWindowUnion(outW, lowW, kw, kTileX);
    t.vStride = (vPerHead + kValueChunk - 1) / kValueChunk * kValueChunk;
    t.pStride = (kh * kw) | 1;  // odd: the threads' rows fall in different banks
    const size_t shared = (tiledUnionFloats(t.unionCap, headDim, t.vStride, chunkedValues) +
                           static_cast<size_t>(kTileThreads) * t.pStride) *
                          sizeof(float);
    if (shared + 64 <= static_cast<size_t>(sharedMemoryOptin())) t.shared = shared;
    return t;
}

/// The tiled kernel's instance for a head dim (64, else 32) and value staging.
auto tiledKernel(int headDim, bool chunkedValues)
{
    if (headDim == 64) return chunkedValues ? tiledAttentionKernel<64, true> : tiledAttentionKernel<64, false>;
    return chunkedValues ? tiledAttentionKernel<32, true> : tiledAttentionKernel<32, false>;
}

/// The tiled kernel (chunkedValues: AttentionKernel::TiledChunked) when its limits hold (tiledLaunch).
bool tryTiled(const float* qT, const float* kT, const float* vT, float* out, int dim, int channels, int heads,
              int lowH, int lowW, int outH, int outW, const int* rowTable, const int* colTable, int kh, int kw,
              float scale, cudaStream_t stream, bool chunkedValues)
{
    const TiledLaunch t = tiledLaunch(dim, channels, heads, lowH, lowW, outH, outW, kh, kw, chunkedValues);
    if (t.shared == 0) return false;
    const int headDim = dim / heads;
    const int unionCap = t.unionCap, vStride = t.vStride, pStride = t.pStride;
    const size_t shared = t.shared;
    const dim3 grid((outW + kTileX - 1) / kTileX, (outH + kTileY - 1) / kTileY);
    auto kernelFunction = tiledKernel(headDim, chunkedValues);
    allowSharedMemory(kernelFunction, shared);
    kernelFunction<<<grid, kTileThreads, shared, stream>>>(qT, kT, vT, out, dim, channels, heads, lowW, outH, outW,
                                                           rowTable, colTable, kh, kw, scale, unionCap, vStride,
                                                           pStride);
    checkLaunch("tiled neighborhood attention kernel launch");
    return true;
}

/// One block per chunk of the cell work list, when `shared` bytes fit the device (the two cell
/// kernels).
template <typename Kernel>
bool launchOverChunks(Kernel kernelFunction, int threads, size_t shared, const cell::Params& p,
                      const cell::Chunk* chunks, int64_t chunkCount, cudaStream_t stream, const char* what)
{
    if (chunkCount > 0x7fffffff || shared + 64 > static_cast<size_t>(sharedMemoryOptin())) return false;
    allowSharedMemory(kernelFunction, shared);
    kernelFunction<<<static_cast<unsigned int>(chunkCount), threads, shared, stream>>>(p, chunks);
    checkLaunch(what);
    return true;
}

/// The cell kernel over the chunks the engine built (cell::buildChunks, uploaded to the device).
bool tryCell(const float* qT, const float* kT, const float* vT, float* out, int dim, int channels, int heads,
             int lowW, int outH, int outW, const int* rowTable, const int* colTable, int kh, int kw, float scale,
             const cell::Chunk* chunks, int64_t chunkCount, cudaStream_t stream)
{
    const int headDim = dim / heads;
    if (!cell::fits(headDim, kh, kw) || dim % 4 != 0) return false;
    const cell::Params p{qT, kT, vT, out, dim, channels, heads, lowW, outH, outW, rowTable, colTable, kh, kw, scale};
    return headDim == 64 ? launchOverChunks(cellAttentionKernel<64>, cell::kThreads, cell::sharedBytes<64>(), p, chunks,
                                            chunkCount, stream, "cell neighborhood attention kernel launch")
                         : launchOverChunks(cellAttentionKernel<32>, cell::kThreads, cell::sharedBytes<32>(), p, chunks,
                                            chunkCount, stream, "cell neighborhood attention kernel launch");
}

/// The tensor-core cell kernel over the same work list; needs mma.sync TF32 (compute capability 8.0).
bool tryCellMma(const float* qT, const float* kT, const float* vT, float* out, int dim, int channels, int heads,
                int lowW, int outH, int outW, const int* rowTable, const int* colTable, int kh, int kw, float scale,
                const cell::Chunk* chunks, int64_t chunkCount, cudaStream_t stream)
{
    const int headDim = dim / heads;
    const int vPerHead = channels / heads;
    if (!cellTensorCoreRuns(headDim, vPerHead, kh, kw)) return false;
    const cell::Params p{qT, kT, vT, out, dim, channels, heads, lowW, outH, outW, rowTable, colTable, kh, kw, scale};
    return headDim == 64
               ? launchOverChunks(cellMmaAttentionKernel<64>, cellmma::kThreads, cellmma::sharedBytes<64>(vPerHead), p,
                                  chunks, chunkCount, stream, "tensor-core cell attention kernel launch")
               : launchOverChunks(cellMmaAttentionKernel<32>, cellmma::kThreads, cellmma::sharedBytes<32>(vPerHead), p,
                                  chunks, chunkCount, stream, "tensor-core cell attention kernel launch");
}
}  // namespace

bool cellTensorCoreRuns(int headDim, int valuesPerHead, int kh, int kw)
{
    if (!cellmma::fits(headDim, kh, kw) || valuesPerHead <= 0 ||
        currentDeviceAttribute(cudaDevAttrComputeCapabilityMajor, "querying the compute capability") < 8)
        return false;
    // Its shared memory grows with the value channels per head (96: 99 KB, 256: 207 KB at head dim 64).
    const size_t shared = headDim == 64 ? cellmma::sharedBytes<64>(valuesPerHead) : cellmma::sharedBytes<32>(valuesPerHead);
    return shared + 64 <= static_cast<size_t>(sharedMemoryOptin());
}

int tiledAttentionBlocksPerSm(int dim, int channels, int heads, int lowH, int lowW, int outH, int outW, int kh, int kw)
{
    if (heads <= 0 || dim % heads != 0 || channels % heads != 0) return 0;
    const TiledLaunch t = tiledLaunch(dim, channels, heads, lowH, lowW, outH, outW, kh, kw, false);
    if (t.shared == 0) return 0;
    auto kernelFunction = tiledKernel(dim / heads, false);
    allowSharedMemory(kernelFunction, t.shared);
    int blocks = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernelFunction, kTileThreads, t.shared),
          "querying the tiled attention kernel's occupancy");
    return blocks;
}

AttentionKernel launchNeighborhoodAttention(const float* qT, const float* kT, const float* vT, float* out, int dim,
                                            int channels, int heads, int lowH, int lowW, int outH, int outW,
                                            const int* rowTable, const int* colTable, int kh, int kw, float scale,
                                            cudaStream_t stream, AttentionKernel kernel,
                                            const cell::Chunk* cellChunks, int64_t cellChunkCount)
{
    if (heads <= 0 || dim % heads != 0 || channels % heads != 0 || dim / heads > kMaxHeadDim)
        throw std::invalid_argument("naf::kernels::cuda: attention needs dim and channels divisible by heads and a "
                                    "head dimension <= " + std::to_string(kMaxHeadDim));
    if (kernel == AttentionKernel::Cell && cellChunks && cellChunkCount > 0 &&
        tryCell(qT, kT, vT, out, dim, channels, heads, lowW, outH, outW, rowTable, colTable, kh, kw, scale,
                cellChunks, cellChunkCount, stream))
        return AttentionKernel::Cell;
    if (kernel == AttentionKernel::CellTensorCore && cellChunks && cellChunkCount > 0 &&
        tryCellMma(qT, kT, vT, out, dim, channels, heads, lowW, outH, outW, rowTable, colTable, kh, kw, scale,
                   cellChunks, cellChunkCount, stream))
        return AttentionKernel::CellTensorCore;
    if (kernel == AttentionKernel::TiledChunked &&
        tryTiled(qT, kT, vT, out, dim, channels, heads, lowH, lowW, outH, outW, rowTable, colTable, kh, kw, scale,
                 stream, true))
        return AttentionKernel::TiledChunked;
    // The tiled kernel falls back to the general one when its limits do not hold.
    if (kernel != AttentionKernel::General &&
        tryTiled(qT, kT, vT, out, dim, channels, heads, lowH, lowW, outH, outW, rowTable, colTable, kh, kw, scale,
                 stream, false))
        return AttentionKernel::Tiled;
    // General path: one warp per pixel, keys/values from global memory.
    const int64_t runs = int64_t((outW + kAttnRun - 1) / kAttnRun) * outH;
    const unsigned int blocks = static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(runs, 1 << 20)));
    neighborhoodAttentionKernel<<<blocks, kAttnThreads, 0, stream>>>(qT, kT, vT, out, dim, channels, heads, lowW,
                                                                     outH, outW, rowTable, colTable, kh, kw, scale);
    checkLaunch("neighborhood attention kernel launch");
    return AttentionKernel::General;
}

void launchAttentionProbe(const float* qT, const float* kT, int dim, int heads, int lowW, int outW, int y, int x,
                          const int* rowTable, const int* colTable, int kh, int kw, float scale, float* probs,
                          cudaStream_t stream)
{
    attentionProbeKernel<<<heads, 32, 0, stream>>>(qT, kT, dim, heads, lowW, outW, y, x, rowTable, colTable, kh, kw,
                                                    scale, probs);
    checkLaunch("attention probe kernel launch");
}

}  // namespace detail
}  // namespace cuda
}  // namespace kernels
}  // namespace naf
