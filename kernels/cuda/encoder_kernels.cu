// Guide-encoder kernels of the CUDA path: normalize + bilinear resize, reflect-padded
// convolution (implicit GEMM, FP32 SIMT or TF32 tensor cores), GroupNorm + SiLU, adaptive
// average pooling, RoPE, layout transposes. Semantics follow naf_kernels.hpp step by step.
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "naf_cuda_internal.cuh"

namespace naf {
namespace kernels {
namespace cuda {
namespace detail {

namespace {

/// Blocks for a grid-stride loop over `n` items (capped; the loops cover the rest).
inline unsigned int gridFor(int64_t n, int threads = kThreads)
{
    const int64_t blocks = (n + threads - 1) / threads;
    return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 20)));
}

__device__ __forceinline__ int reflectIndex(int i, int n)
{
    if (i < 0) return -i;
    if (i >= n) return 2 * n - 2 - i;
    return i;
}

// ---- normalize + bilinear resize ---------------------------------------------------------------

struct Norm3
{
    float mean[3];
    float invStd[3];  // 1 / stdev, multiplied like the CPU path
};

__global__ void __launch_bounds__(kThreads)
    normalizeResizeKernel(const float* __restrict__ src, int srcH, int srcW, float* __restrict__ dst, int dstH,
                          int dstW, Norm3 nrm)
{
    const int64_t total = int64_t(3) * dstH * dstW;
    const bool same = srcH == dstH && srcW == dstW;
    // PyTorch area_pixel_compute_source_index (align_corners=False) in float, as on the CPU.
    const float scaleY = static_cast<float>(srcH) / static_cast<float>(dstH);
    const float scaleX = static_cast<float>(srcW) / static_cast<float>(dstW);
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x)
    {
        const int x = static_cast<int>(idx % dstW);
        const int64_t t = idx / dstW;
        const int y = static_cast<int>(t % dstH);
        const int c = static_cast<int>(t / dstH);
        const float mean = c == 0 ? nrm.mean[0] : (c == 1 ? nrm.mean[1] : nrm.mean[2]);
        const float inv = c == 0 ? nrm.invStd[0] : (c == 1 ? nrm.invStd[1] : nrm.invStd[2]);
        const float* s = src + static_cast<size_t>(c) * srcH * srcW;
        if (same)
        {
            dst[idx] = (s[static_cast<size_t>(y) * srcW + x] - mean) * inv;
            continue;
        }
        float fy = scaleY * (static_cast<float>(y) + 0.5f) - 0.5f;
        if (fy < 0.f) fy = 0.f;
        int y0 = static_cast<int>(fy);
        if (y0 > srcH - 1) y0 = srcH - 1;
        const int y1 = y0 < srcH - 1 ? y0 + 1 : y0;
        const float wy1 = fy - static_cast<float>(y0), wy0 = 1.f - wy1;
        float fx = scaleX * (static_cast<float>(x) + 0.5f) - 0.5f;
        if (fx < 0.f) fx = 0.f;
        int x0 = static_cast<int>(fx);
        if (x0 > srcW - 1) x0 = srcW - 1;
        const int x1 = x0 < srcW - 1 ? x0 + 1 : x0;
        const float wx1 = fx - static_cast<float>(x0), wx0 = 1.f - wx1;
        const float* r0 = s + static_cast<size_t>(y0) * srcW;
        const float* r1 = s + static_cast<size_t>(y1) * srcW;
        const float v00 = (r0[x0] - mean) * inv, v01 = (r0[x1] - mean) * inv;
        const float v10 = (r1[x0] - mean) * inv, v11 = (r1[x1] - mean) * inv;
        dst[idx] = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11);
    }
}

// ---- convolution: implicit GEMM out[co, p] = bias[co] + sum_k W[co, k] * col[k, p] --------------
//
// M = cout, N = h*w pixels, K = cin*k*k (PyTorch weight layout [cout][cin][ky][kx]). One block
// computes a 64x64 output tile; K is walked in steps of 16 staged in shared memory: As holds the
// weight tile transposed (As[k][m]), Bs the im2col tile gathered on the fly with reflect padding
// (Bs[k][n]). Everything outside [cout) x [hw) x [K) is zero-filled and never written.

constexpr int kConvBM = 64;
constexpr int kConvBN = 64;
constexpr int kConvBK = 16;
constexpr int kConvLd = 68;  // padded leading dimension: multiple of 4 floats, 32-byte aligned wmma tiles
constexpr int kConvThreads = 256;

template <int KS, bool TF32>
__global__ void __launch_bounds__(kConvThreads)
    conv2dReflectKernel(const float* __restrict__ src, int h, int w, int cin, const float* __restrict__ weight,
                        const float* __restrict__ bias, int cout, int ksRuntime, float* __restrict__ dst)
{
    const int ks = KS > 0 ? KS : ksRuntime;
    const int kk2 = ks * ks;
    const int K = cin * kk2;
    const int pad = ks / 2;
    const int hw = h * w;
    const int m0 = blockIdx.y * kConvBM;
    const int n0 = blockIdx.x * kConvBN;
    const int tid = threadIdx.x;

    __shared__ __align__(32) float As[kConvBK * kConvLd];
    __shared__ __align__(32) float Bs[kConvBK * kConvLd];

    // B loader: one pixel column per thread, rows kB0 + 4*i.
    const int nB = tid & 63;
    const int kB0 = tid >> 6;
    const int p = n0 + nB;
    const bool pValid = p < hw;
    const int py = pValid ? p / w : 0;
    const int px = pValid ? p - py * w : 0;
    // A loader: one output channel row per 4 threads, 4 consecutive k each.
    const int mA = tid >> 2;
    const int kA0 = (tid & 3) * 4;
    const int mRow = m0 + mA;
    const float* wRow = weight + static_cast<size_t>(mRow < cout ? mRow : 0) * K;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr bool useWmma = TF32;
#else
    constexpr bool useWmma = false;
#endif

    // FP32 SIMT accumulators: rows ty + 16*i, columns tx + 16*j.
    const int tx = tid & 15;
    const int ty = tid >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // TF32 tensor cores: warp wid computes rows 16*(wid&3).., columns 32*(wid>>2).. (two 16x16 tiles).
    namespace wmma = nvcuda::wmma;
    const int wid = tid >> 5;
    const int wm = wid & 3;
    const int wn = wid >> 2;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> cFrag[2];
    if (useWmma)
    {
        wmma::fill_fragment(cFrag[0], 0.f);
        wmma::fill_fragment(cFrag[1], 0.f);
    }
#endif

    for (int k0 = 0; k0 < K; k0 += kConvBK)
    {
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            const int kk = k0 + kA0 + i;
            As[(kA0 + i) * kConvLd + mA] = (mRow < cout && kk < K) ? wRow[kk] : 0.f;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            const int kr = kB0 + 4 * i;
            const int kk = k0 + kr;
            float v = 0.f;
            if (pValid && kk < K)
            {
                const int ci = kk / kk2;
                const int r = kk - ci * kk2;
                const int ky = r / ks;
                const int kx = r - ky * ks;
                const int yy = reflectIndex(py + ky - pad, h);
                const int xx = reflectIndex(px + kx - pad, w);
                v = src[static_cast<size_t>(ci) * hw + static_cast<size_t>(yy) * w + xx];
            }
            Bs[kr * kConvLd + nB] = v;
        }
        __syncthreads();

        if (useWmma)
        {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#pragma unroll
            for (int kstep = 0; kstep < kConvBK; kstep += 8)
            {
                // A(m, k) = As[k*ld + m]: column-major A with leading dimension ld.
                wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> aFrag;
                wmma::load_matrix_sync(aFrag, As + kstep * kConvLd + wm * 16, kConvLd);
#pragma unroll
                for (int t = 0; t < aFrag.num_elements; ++t) aFrag.x[t] = wmma::__float_to_tf32(aFrag.x[t]);
#pragma unroll
                for (int j = 0; j < 2; ++j)
                {
                    // B(k, n) = Bs[k*ld + n]: row-major B.
                    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> bFrag;
                    wmma::load_matrix_sync(bFrag, Bs + kstep * kConvLd + wn * 32 + j * 16, kConvLd);
#pragma unroll
                    for (int t = 0; t < bFrag.num_elements; ++t) bFrag.x[t] = wmma::__float_to_tf32(bFrag.x[t]);
                    wmma::mma_sync(cFrag[j], aFrag, bFrag, cFrag[j]);
                }
            }
#endif
        }
        else
        {
#pragma unroll
            for (int k = 0; k < kConvBK; ++k)
            {
                float a[4], b[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) a[i] = As[k * kConvLd + ty + 16 * i];
#pragma unroll
                for (int j = 0; j < 4; ++j) b[j] = Bs[k * kConvLd + tx + 16 * j];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
        __syncthreads();
    }

    if (useWmma)
    {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        __shared__ __align__(32) float Cs[kConvBM * kConvLd];
        wmma::store_matrix_sync(Cs + (wm * 16) * kConvLd + wn * 32, cFrag[0], kConvLd, wmma::mem_row_major);
        wmma::store_matrix_sync(Cs + (wm * 16) * kConvLd + wn * 32 + 16, cFrag[1], kConvLd, wmma::mem_row_major);
        __syncthreads();
        for (int e = tid; e < kConvBM * kConvBN; e += kConvThreads)
        {
            const int mi = e / kConvBN;
            const int ni = e - mi * kConvBN;
            const int m = m0 + mi;
            const int n = n0 + ni;
            if (m < cout && n < hw)
                dst[static_cast<size_t>(m) * hw + n] = Cs[mi * kConvLd + ni] + (bias ? bias[m] : 0.f);
        }
#endif
    }
    else
    {
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            const int m = m0 + ty + 16 * i;
            if (m >= cout) continue;
            const float b = bias ? bias[m] : 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j)
            {
                const int n = n0 + tx + 16 * j;
                if (n < hw) dst[static_cast<size_t>(m) * hw + n] = acc[i][j] + b;
            }
        }
    }
}

template <bool TF32>
void launchConvT(const float* src, int h, int w, const DevConv& conv, float* dst, cudaStream_t stream)
{
    const int64_t hw = int64_t(h) * w;
    const dim3 grid(static_cast<unsigned int>((hw + kConvBN - 1) / kConvBN),
                    static_cast<unsigned int>((conv.cout + kConvBM - 1) / kConvBM));
    if (conv.k == 1)
        conv2dReflectKernel<1, TF32><<<grid, kConvThreads, 0, stream>>>(src, h, w, conv.cin, conv.weight, conv.bias,
                                                                        conv.cout, 1, dst);
    else if (conv.k == 3)
        conv2dReflectKernel<3, TF32><<<grid, kConvThreads, 0, stream>>>(src, h, w, conv.cin, conv.weight, conv.bias,
                                                                        conv.cout, 3, dst);
    else
        conv2dReflectKernel<0, TF32><<<grid, kConvThreads, 0, stream>>>(src, h, w, conv.cin, conv.weight, conv.bias,
                                                                        conv.cout, conv.k, dst);
}

// ---- GroupNorm + SiLU --------------------------------------------------------------------------
//
// Two-pass statistics in double like the CPU (mean, then mean squared deviation), with a fixed
// reduction tree: each block reduces one kGnChunk-element chunk of one group into a partial sum,
// a finalize kernel reduces the partials of a group in a fixed order. Deterministic.

__device__ __forceinline__ double blockReduceSum(double v, double* shared)
{
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride >>= 1)
    {
        if (static_cast<int>(threadIdx.x) < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    return shared[0];
}

template <bool SQ>
__global__ void __launch_bounds__(kThreads)
    gnPartialKernel(const float* __restrict__ data, int64_t groupLen, int chunks, const double* __restrict__ meanD,
                    double* __restrict__ partial)
{
    __shared__ double red[kThreads];
    const int g = blockIdx.y;
    const float* base = data + static_cast<size_t>(g) * groupLen;
    const int64_t start = int64_t(blockIdx.x) * kGnChunk;
    const int64_t end = start + kGnChunk < groupLen ? start + kGnChunk : groupLen;
    const double m = SQ ? meanD[g] : 0.0;
    double acc = 0.0;
    for (int64_t i = start + threadIdx.x; i < end; i += kThreads)
    {
        const double v = static_cast<double>(base[i]);
        if (SQ)
        {
            const double d = v - m;
            acc += d * d;
        }
        else
        {
            acc += v;
        }
    }
    const double total = blockReduceSum(acc, red);
    if (threadIdx.x == 0) partial[static_cast<size_t>(g) * chunks + blockIdx.x] = total;
}

template <bool SQ>
__global__ void __launch_bounds__(kThreads)
    gnFinalizeKernel(const double* __restrict__ partial, int chunks, int64_t groupLen, float eps, double* meanD,
                     float* meanF, float* invStdF)
{
    __shared__ double red[kThreads];
    const int g = blockIdx.x;
    double acc = 0.0;
    for (int i = threadIdx.x; i < chunks; i += kThreads) acc += partial[static_cast<size_t>(g) * chunks + i];
    const double total = blockReduceSum(acc, red);
    if (threadIdx.x == 0)
    {
        if (!SQ)
        {
            const double m = total / static_cast<double>(groupLen);
            meanD[g] = m;
            meanF[g] = static_cast<float>(m);
        }
        else
        {
            const double var = total / static_cast<double>(groupLen);  // biased, as GroupNorm
            invStdF[g] = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
        }
    }
}

__global__ void __launch_bounds__(kThreads)
    gnApplySiLUKernel(float* __restrict__ data, int c, int64_t hw, int perGroup, const float* __restrict__ gamma,
                      const float* __restrict__ beta, const float* __restrict__ meanF,
                      const float* __restrict__ invStdF)
{
    const int64_t total = int64_t(c) * hw;
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x)
    {
        const int ch = static_cast<int>(idx / hw);
        const int g = ch / perGroup;
        const float scale = invStdF[g] * (gamma ? gamma[ch] : 1.f);
        const float shift = (beta ? beta[ch] : 0.f) - meanF[g] * scale;
        const float v = data[idx] * scale + shift;
        data[idx] = v / (1.f + expf(-v));
    }
}

// ---- adaptive average pooling --------------------------------------------------------------------

__device__ __forceinline__ int poolStart(int i, int in, int out)
{
    return static_cast<int>((static_cast<int64_t>(i) * in) / out);
}

__device__ __forceinline__ int poolStop(int i, int in, int out)
{
    return static_cast<int>((static_cast<int64_t>(i + 1) * in + out - 1) / out);
}

__global__ void __launch_bounds__(kThreads)
    adaptiveAvgPoolKernel(const float* __restrict__ src, int c, int srcH, int srcW, float* __restrict__ dst,
                          int dstH, int dstW)
{
    const int64_t total = int64_t(c) * dstH * dstW;
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x)
    {
        const int ox = static_cast<int>(idx % dstW);
        const int64_t t = idx / dstW;
        const int oy = static_cast<int>(t % dstH);
        const int ch = static_cast<int>(t / dstH);
        const int y0 = poolStart(oy, srcH, dstH), y1 = poolStop(oy, srcH, dstH);
        const int x0 = poolStart(ox, srcW, dstW), x1 = poolStop(ox, srcW, dstW);
        const float* plane = src + static_cast<size_t>(ch) * srcH * srcW;
        double sum = 0.0;
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) sum += plane[static_cast<size_t>(y) * srcW + x];
        dst[idx] = static_cast<float>(sum / static_cast<double>((y1 - y0) * (x1 - x0)));
    }
}

__global__ void __launch_bounds__(kThreads)
    adaptiveAvgPoolHwcKernel(const float* __restrict__ src, int c, int srcH, int srcW, float* __restrict__ dst,
                             int dstH, int dstW)
{
    const int64_t total = int64_t(c) * dstH * dstW;
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x)
    {
        const int ch = static_cast<int>(idx % c);
        const int64_t pos = idx / c;
        const int ox = static_cast<int>(pos % dstW);
        const int oy = static_cast<int>(pos / dstW);
        const int y0 = poolStart(oy, srcH, dstH), y1 = poolStop(oy, srcH, dstH);
        const int x0 = poolStart(ox, srcW, dstW), x1 = poolStop(ox, srcW, dstW);
        double sum = 0.0;
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) sum += src[(static_cast<size_t>(y) * srcW + x) * c + ch];
        dst[idx] = static_cast<float>(sum / static_cast<double>((y1 - y0) * (x1 - x0)));
    }
}

// ---- RoPE ----------------------------------------------------------------------------------------
//
// Per head of headDim channels: channel j < headDim/2 pairs with j + headDim/2; the pair's angle
// index a = j (mod headDim/2) uses the row coordinate for a < headDim/4 and the column coordinate
// (period a - headDim/4) otherwise. Angles in float32 as 2*pi*coord/period, like the CPU.

__global__ void __launch_bounds__(kThreads)
    ropeToHwcKernel(const float* __restrict__ q, float* __restrict__ qT, int dim, int h, int w, int heads,
                    const float* __restrict__ periods)
{
    const int headDim = dim / heads, half = headDim / 2, quarter = headDim / 4;
    const int64_t hw = int64_t(h) * w;
    const int64_t total = hw * dim;
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x)
    {
        const int c = static_cast<int>(idx % dim);
        const int64_t pix = idx / dim;
        const int y = static_cast<int>(pix / w);
        const int x = static_cast<int>(pix - int64_t(y) * w);
        const int j = c % headDim;
        const bool low = j < half;
        const int a = low ? j : j - half;
        float coord, period;
        if (a < quarter)
        {
            coord = 2.f * ((static_cast<float>(y) + 0.5f) / static_cast<float>(h)) - 1.f;
            period = periods[a];
        }
        else
        {
            coord = 2.f * ((static_cast<float>(x) + 0.5f) / static_cast<float>(w)) - 1.f;
            period = periods[a - quarter];
        }
        const float angle = 6.283185307179586f * coord / period;
        const float cs = cosf(angle), sn = sinf(angle);
        const int cLo = low ? c : c - half;
        const float lo = q[static_cast<size_t>(cLo) * hw + pix];
        const float hi = q[static_cast<size_t>(cLo + half) * hw + pix];
        qT[idx] = low ? lo * cs - hi * sn : hi * cs + lo * sn;
    }
}

// ---- transpose -------------------------------------------------------------------------------

constexpr int kTile = 32;

__global__ void __launch_bounds__(kTile * 8)
    transposeKernel(const float* __restrict__ src, int64_t rows, int64_t cols, float* __restrict__ dst)
{
    __shared__ float tile[kTile][kTile + 1];
    const int64_t tilesC = (cols + kTile - 1) / kTile;
    const int64_t tilesR = (rows + kTile - 1) / kTile;
    for (int64_t t = blockIdx.x; t < tilesR * tilesC; t += gridDim.x)
    {
        const int64_t r0 = (t / tilesC) * kTile;
        const int64_t c0 = (t % tilesC) * kTile;
        for (int i = threadIdx.y; i < kTile; i += 8)
        {
            const int64_t r = r0 + i, c = c0 + threadIdx.x;
            if (r < rows && c < cols) tile[i][threadIdx.x] = src[r * cols + c];
        }
        __syncthreads();
        for (int i = threadIdx.y; i < kTile; i += 8)
        {
            const int64_t c = c0 + i, r = r0 + threadIdx.x;
            if (r < rows && c < cols) dst[c * rows + r] = tile[threadIdx.x][i];
        }
        __syncthreads();
    }
}

}  // namespace

// ---- launchers -------------------------------------------------------------------------------------

void launchNormalizeResize(const float* src, int srcH, int srcW, float* dst, int dstH, int dstW, const float mean[3],
                           const float stdev[3], cudaStream_t stream)
{
    Norm3 nrm;
    for (int c = 0; c < 3; ++c)
    {
        nrm.mean[c] = mean[c];
        nrm.invStd[c] = 1.f / stdev[c];
    }
    normalizeResizeKernel<<<gridFor(int64_t(3) * dstH * dstW), kThreads, 0, stream>>>(src, srcH, srcW, dst, dstH,
                                                                                        dstW, nrm);
    checkLaunch("normalize/resize kernel launch");
}

void launchConv2dReflect(const float* src, int h, int w, const DevConv& conv, float* dst, bool tf32,
                         cudaStream_t stream)
{
    const int pad = conv.k / 2;
    if (h <= pad || w <= pad)
        throw std::invalid_argument("naf::kernels::cuda: reflect padding " + std::to_string(pad) +
                                    " needs an input larger than " + std::to_string(pad) + " on both axes, got " +
                                    std::to_string(h) + "x" + std::to_string(w));
    if ((conv.cout + kConvBM - 1) / kConvBM > 65535)
        throw std::invalid_argument("naf::kernels::cuda: too many output channels");
    if (int64_t(h) * w + kConvBN > int64_t(0x7fffffff))
        throw std::invalid_argument("naf::kernels::cuda: convolution input too large");
    if (tf32)
        launchConvT<true>(src, h, w, conv, dst, stream);
    else
        launchConvT<false>(src, h, w, conv, dst, stream);
    checkLaunch("convolution kernel launch");
}

size_t groupNormStatsBytes(int groups)
{
    return static_cast<size_t>(groups) * (sizeof(double) + 2 * sizeof(float));
}

void launchGroupNormSiLU(float* data, int c, int h, int w, int groups, const float* gamma, const float* beta,
                         float eps, double* partial, void* stats, cudaStream_t stream)
{
    if (groups <= 0 || c % groups != 0)
        throw std::invalid_argument("naf::kernels::cuda: " + std::to_string(c) + " channels not divisible into " +
                                    std::to_string(groups) + " groups");
    if (groups > 65535) throw std::invalid_argument("naf::kernels::cuda: too many GroupNorm groups");
    const int perGroup = c / groups;
    const int64_t hw = int64_t(h) * w;
    const int64_t groupLen = int64_t(perGroup) * hw;
    const int64_t chunks = gnChunks(groupLen);
    if (chunks > int64_t(0x7fffffff)) throw std::invalid_argument("naf::kernels::cuda: GroupNorm input too large");
    double* meanD = static_cast<double*>(stats);
    float* meanF = reinterpret_cast<float*>(meanD + groups);
    float* invStdF = meanF + groups;
    const dim3 grid(static_cast<unsigned int>(chunks), static_cast<unsigned int>(groups));
    gnPartialKernel<false><<<grid, kThreads, 0, stream>>>(data, groupLen, static_cast<int>(chunks), meanD, partial);
    checkLaunch("GroupNorm sum kernel launch");
    gnFinalizeKernel<false><<<groups, kThreads, 0, stream>>>(partial, static_cast<int>(chunks), groupLen, eps, meanD,
                                                             meanF, invStdF);
    checkLaunch("GroupNorm mean kernel launch");
    gnPartialKernel<true><<<grid, kThreads, 0, stream>>>(data, groupLen, static_cast<int>(chunks), meanD, partial);
    checkLaunch("GroupNorm variance sum kernel launch");
    gnFinalizeKernel<true><<<groups, kThreads, 0, stream>>>(partial, static_cast<int>(chunks), groupLen, eps, meanD,
                                                            meanF, invStdF);
    checkLaunch("GroupNorm variance kernel launch");
    gnApplySiLUKernel<<<gridFor(int64_t(c) * hw), kThreads, 0, stream>>>(data, c, hw, perGroup, gamma, beta, meanF,
                                                                        invStdF);
    checkLaunch("GroupNorm+SiLU kernel launch");
}

void launchAdaptiveAvgPool(const float* src, int c, int srcH, int srcW, float* dst, int dstH, int dstW,
                           cudaStream_t stream)
{
    adaptiveAvgPoolKernel<<<gridFor(int64_t(c) * dstH * dstW), kThreads, 0, stream>>>(src, c, srcH, srcW, dst, dstH,
                                                                                        dstW);
    checkLaunch("adaptive average pool kernel launch");
}

void launchRopeToHwc(const float* q, float* qT, int dim, int h, int w, int heads, const float* periods,
                     cudaStream_t stream)
{
    if (heads <= 0 || dim % (4 * heads) != 0)
        throw std::invalid_argument("naf::kernels::cuda: RoPE dim " + std::to_string(dim) +
                                    " must be divisible by 4*heads");
    ropeToHwcKernel<<<gridFor(int64_t(h) * w * dim), kThreads, 0, stream>>>(q, qT, dim, h, w, heads, periods);
    checkLaunch("RoPE kernel launch");
}

void launchAdaptiveAvgPoolHwc(const float* src, int c, int srcH, int srcW, float* dst, int dstH, int dstW,
                              cudaStream_t stream)
{
    adaptiveAvgPoolHwcKernel<<<gridFor(int64_t(c) * dstH * dstW), kThreads, 0, stream>>>(src, c, srcH, srcW, dst,
                                                                                           dstH, dstW);
    checkLaunch("key pooling kernel launch");
}

void launchTranspose(const float* src, int64_t rows, int64_t cols, float* dst, cudaStream_t stream)
{
    const int64_t tiles = ((rows + kTile - 1) / kTile) * ((cols + kTile - 1) / kTile);
    const unsigned int blocks = static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(tiles, 1 << 20)));
    transposeKernel<<<blocks, dim3(kTile, 8), 0, stream>>>(src, rows, cols, dst);
    checkLaunch("transpose kernel launch");
}

}  // namespace detail
}  // namespace cuda
}  // namespace kernels
}  // namespace naf
