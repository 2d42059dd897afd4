// Cell attention: the neighborhood attention of output pixels that share one window, as two
// small register-tiled matrix products per block.
//
// When the output is much finer than the features, whole rectangles of output pixels share the
// same window of low-res keys (at 16x, every 16 x 16 cell; at 72x, every 72 x 72 one). For 128
// such pixels and one head the attention is
//   S = Q [128 x HD] K^T [HD x n]   (n = kh*kw window entries, padded to kMaxKeys)
//   P = softmax(S * scale) per row,  O = P [128 x n] V [n x vPerHead].
// Each thread computes a 4 x 12 tile of S and then of O, so one shared-memory load feeds 12
// FMAs (the tiled kernel: 4). See docs/PERFORMANCE.md (GPU log, item 19).
//
// The block's work is written as phases separated by block barriers; each phase is a function of
// the thread index that passes its results to the next phase only through shared memory. The
// CUDA kernel (attention_kernels.cu) runs them with __syncthreads() in between; the CPU test
// (kernels/tests/test_kernels.cpp) runs them thread by thread, so the index arithmetic is tested
// on every build, GPU or not.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "naf_kernels/window.hpp"

#if defined(__CUDACC__)
#define NAF_CELL_UNROLL _Pragma("unroll")
#else
#define NAF_CELL_UNROLL
#endif

namespace naf {
namespace kernels {
namespace cell {

constexpr int kPixels = 128;            // output pixels per block (one chunk of one rectangle)
constexpr int kThreads = 256;           // 32 pixel groups x 8 key/channel groups
constexpr int kPixelsPerThread = 4;     // 32 x 4 = kPixels
constexpr int kKeysPerThread = 12;      // 8 x 12 = kMaxKeys
constexpr int kMaxKeys = 96;            // window entries (kh*kw <= 96: kernel 9 gives 81), padded
constexpr int kChannelsPerThread = 12;  // 8 x 12 = kChannelsPerPass
constexpr int kChannelsPerPass = 96;
constexpr int kQld = kPixels + 4;   // Qt row stride: 16-byte aligned rows, 2-way conflicts when staged
constexpr int kKld = kMaxKeys + 4;  // Kt row stride
constexpr int kSld = kMaxKeys + 1;  // logits row stride: odd, so the softmax's row reads do not conflict
constexpr int kPld = kPixels;       // Pt row stride
constexpr int kVld = kChannelsPerPass;

/// Pixels [p0, p0 + count) of the rectangle at (y0, x0) of width rectW, numbered row by row.
struct Chunk
{
    int y0, x0, rectW, p0, count;
};

/// What every phase reads: the pixel-major tensors of the CUDA path (qT [outH*outW, dim],
/// kT [lowH*lowW, dim], vT [lowH*lowW, channels]), the channel-major output, the window tables
/// (rowTable [outH, kh], colTable [outW, kw]).
struct Params
{
    const float* qT;
    const float* kT;
    const float* vT;
    float* out;
    int dim, channels, heads, lowW, outH, outW;
    const int* rowTable;
    const int* colTable;
    int kh, kw;
    float scale;
};

/// Shared memory of one block, in floats: region 1 holds Qt and Kt, later Pt; region 2 holds the
/// logits S, later the values Vs.
template <int HD>
NAF_HOST_DEVICE constexpr int region1Floats()
{
    return HD * kQld + HD * kKld > kMaxKeys * kPld ? HD * kQld + HD * kKld : kMaxKeys * kPld;
}
NAF_HOST_DEVICE constexpr int region2Floats()
{
    return kPixels * kSld > kMaxKeys * kVld ? kPixels * kSld : kMaxKeys * kVld;
}
template <int HD>
constexpr size_t sharedBytes()
{
    return static_cast<size_t>(region1Floats<HD>() + region2Floats()) * sizeof(float);
}

NAF_HOST_DEVICE inline long long pixelOf(const Chunk& c, int i, int outW)
{
    const int p = c.p0 + i;
    const int row = p / c.rectW;
    return static_cast<long long>(c.y0 + row) * outW + c.x0 + (p - row * c.rectW);
}

/// 4 consecutive floats (16-byte aligned on the device).
NAF_HOST_DEVICE inline void load4(const float* src, float* dst)
{
#if defined(__CUDA_ARCH__)
    const float4 v = *reinterpret_cast<const float4*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
    dst[2] = v.z;
    dst[3] = v.w;
#else
    dst[0] = src[0];
    dst[1] = src[1];
    dst[2] = src[2];
    dst[3] = src[3];
#endif
}

/// The thread's 4 x 12 register tile of both products (logits: pixels x window entries; values:
/// pixels x channels).
static_assert(kKeysPerThread == kChannelsPerThread, "both products use one register tile shape");
using Tile = float[kPixelsPerThread][kKeysPerThread];

NAF_HOST_DEVICE inline void clearTile(Tile& acc)
{
    NAF_CELL_UNROLL
    for (int i = 0; i < kPixelsPerThread; ++i)
        NAF_CELL_UNROLL
        for (int j = 0; j < kKeysPerThread; ++j) acc[i][j] = 0.f;
}

/// One step of a product: acc[i][j] += a[i] * b[j], with a the 4 floats at `a` and b the 12 at
/// `b` (both 16-byte aligned in shared memory).
NAF_HOST_DEVICE inline void accumulateOuterProduct(const float* a, const float* b, Tile& acc)
{
    float x[kPixelsPerThread], y[kKeysPerThread];
    load4(a, x);
    NAF_CELL_UNROLL
    for (int j = 0; j < kKeysPerThread; j += 4) load4(b + j, y + j);
    NAF_CELL_UNROLL
    for (int i = 0; i < kPixelsPerThread; ++i)
        NAF_CELL_UNROLL
        for (int j = 0; j < kKeysPerThread; ++j) acc[i][j] = fmaf(x[i], y[j], acc[i][j]);
}

/// Phase 1: Qt[d][px] = query channel d of the chunk's pixel px (zero past count), Kt[d][e] =
/// key channel d of window entry e (zero past kh*kw), for head `head`. Items are numbered so that
/// 8 consecutive threads read 8 pixels' (entries') 16-byte pieces and a warp reads 64 contiguous
/// bytes per pixel. A thread issues all its loads before its first shared store, so they are in
/// flight together (ncu of the first version, which stored each piece before loading the next:
/// a third of the kernel's stall cycles waited on these loads).
template <int HD>
NAF_HOST_DEVICE inline void stageQueriesAndKeys(const Params& p, const Chunk& c, int head, int tid, float* region1)
{
    constexpr int q4 = HD / 4;
    constexpr int queryItems = kPixels * q4 / kThreads;  // 16-byte pieces per thread
    constexpr int keyItems = kMaxKeys * q4 / kThreads;
    static_assert(queryItems * kThreads == kPixels * q4 && keyItems * kThreads == kMaxKeys * q4,
                  "the staged pieces divide evenly among the threads");
    auto slot = [](int e, int* row, int* d4) {  // item -> pixel (entry) and channel quad
        *row = (e / (8 * q4)) * 8 + (e & 7);
        *d4 = (e >> 3) % q4;
    };
    const int entries = p.kh * p.kw;
    const int* rows = p.rowTable + static_cast<size_t>(c.y0) * p.kh;
    const int* cols = p.colTable + static_cast<size_t>(c.x0) * p.kw;
    float qv[queryItems][4], kv[keyItems][4];
    NAF_CELL_UNROLL
    for (int r = 0; r < queryItems; ++r)
    {
        int px, d4;
        slot(tid + r * kThreads, &px, &d4);
        qv[r][0] = qv[r][1] = qv[r][2] = qv[r][3] = 0.f;
        if (px < c.count) load4(p.qT + pixelOf(c, px, p.outW) * p.dim + head * HD + 4 * d4, qv[r]);
    }
    NAF_CELL_UNROLL
    for (int r = 0; r < keyItems; ++r)
    {
        int key, d4;
        slot(tid + r * kThreads, &key, &d4);
        kv[r][0] = kv[r][1] = kv[r][2] = kv[r][3] = 0.f;
        if (key < entries)
        {
            const int a = key / p.kw;
            const long long low = static_cast<long long>(rows[a]) * p.lowW + cols[key - a * p.kw];
            load4(p.kT + low * p.dim + head * HD + 4 * d4, kv[r]);
        }
    }
    // Piece r of this thread into its transposed place: dst[channel][pixel or entry].
    auto store = [&](const float(*pieces)[4], int count, float* dst, int ld) {
        NAF_CELL_UNROLL
        for (int r = 0; r < count; ++r)
        {
            int row, d4;
            slot(tid + r * kThreads, &row, &d4);
            NAF_CELL_UNROLL
            for (int m = 0; m < 4; ++m) dst[(4 * d4 + m) * ld + row] = pieces[r][m];
        }
    };
    store(qv, queryItems, region1, kQld);            // Qt
    store(kv, keyItems, region1 + HD * kQld, kKld);  // Kt
}

/// Phase 2: S[px][e] = scale * q(px) . k(e) for the thread's 4 pixels x 12 entries.
template <int HD>
NAF_HOST_DEVICE inline void logits(const Params& p, int tid, const float* region1, float* region2)
{
    const float* Qt = region1;
    const float* Kt = region1 + HD * kQld;
    const int px0 = (tid & 31) * kPixelsPerThread;
    const int key0 = (tid >> 5) * kKeysPerThread;
    Tile acc;
    clearTile(acc);
    NAF_CELL_UNROLL
    for (int d = 0; d < HD; ++d) accumulateOuterProduct(Qt + d * kQld + px0, Kt + d * kKld + key0, acc);
    float* S = region2;
    NAF_CELL_UNROLL
    for (int i = 0; i < kPixelsPerThread; ++i)
        NAF_CELL_UNROLL
        for (int j = 0; j < kKeysPerThread; ++j) S[(px0 + i) * kSld + key0 + j] = acc[i][j] * p.scale;
}

/// Phase 3: one thread per pixel: softmax over the window's entries, written transposed,
/// Pt[e][px].
NAF_HOST_DEVICE inline void softmaxRows(const Params& p, int tid, float* region1, float* region2)
{
    if (tid >= kPixels) return;
    const int entries = p.kh * p.kw;
    float* s = region2 + tid * kSld;
    float m = -INFINITY;
    for (int e = 0; e < entries; ++e) m = fmaxf(m, s[e]);
    float sum = 0.f;
    for (int e = 0; e < entries; ++e)
    {
        const float v = expf(s[e] - m);
        s[e] = v;
        sum += v;
    }
    const float inv = 1.f / sum;
    float* Pt = region1;
    for (int e = 0; e < entries; ++e) Pt[e * kPld + tid] = s[e] * inv;
}

/// Phase 4: Vs[e][c] = value channel c0 + c of head `head` at window entry e (zero past the
/// head's channels). All of a thread's loads (at most kMaxKeys * kChannelsPerPass / kThreads = 36)
/// before its stores, as in phase 1.
NAF_HOST_DEVICE inline void stageValues(const Params& p, const Chunk& c, int head, int c0, int tid, float* region2)
{
    constexpr int items = kMaxKeys * kChannelsPerPass / kThreads;
    static_assert(items * kThreads == kMaxKeys * kChannelsPerPass, "the staged values divide evenly");
    const int entries = p.kh * p.kw;
    const int vPerHead = p.channels / p.heads;
    const int* rows = p.rowTable + static_cast<size_t>(c.y0) * p.kh;
    const int* cols = p.colTable + static_cast<size_t>(c.x0) * p.kw;
    float v[items];
    NAF_CELL_UNROLL
    for (int r = 0; r < items; ++r)
    {
        const int e = tid + r * kThreads;
        const int key = e / kChannelsPerPass;
        const int ch = e - key * kChannelsPerPass;
        v[r] = 0.f;
        if (key < entries && c0 + ch < vPerHead)
        {
            const int a = key / p.kw;
            const long long low = static_cast<long long>(rows[a]) * p.lowW + cols[key - a * p.kw];
            v[r] = p.vT[low * p.channels + head * vPerHead + c0 + ch];
        }
    }
    float* Vs = region2;
    NAF_CELL_UNROLL
    for (int r = 0; r < items; ++r)
    {
        const int e = tid + r * kThreads;
        if (e < entries * kChannelsPerPass) Vs[e] = v[r];  // row e / 96, column e % 96: kVld == 96
    }
}

/// Phase 5: O = P V for the thread's 4 pixels x 12 channels, stored channel-major to the output.
NAF_HOST_DEVICE inline void values(const Params& p, const Chunk& c, int head, int c0, int tid, const float* region1,
                                   const float* region2)
{
    const int entries = p.kh * p.kw;
    const int vPerHead = p.channels / p.heads;
    const float* Pt = region1;
    const float* Vs = region2;
    const int px0 = (tid & 31) * kPixelsPerThread;
    const int ch0 = (tid >> 5) * kChannelsPerThread;
    Tile acc;
    clearTile(acc);
    for (int e = 0; e < entries; ++e) accumulateOuterProduct(Pt + e * kPld + px0, Vs + e * kVld + ch0, acc);
    const long long outPlane = static_cast<long long>(p.outH) * p.outW;
    NAF_CELL_UNROLL
    for (int i = 0; i < kPixelsPerThread; ++i)
    {
        if (px0 + i >= c.count) break;
        const long long pix = pixelOf(c, px0 + i, p.outW);
        NAF_CELL_UNROLL
        for (int j = 0; j < kChannelsPerThread; ++j)
        {
            const int ch = c0 + ch0 + j;
            if (ch < vPerHead) p.out[static_cast<long long>(head * vPerHead + ch) * outPlane + pix] = acc[i][j];
        }
    }
}

/// The rectangles of output pixels that share a window, cut into chunks of at most kPixels:
/// maximal runs of consecutive rows with the same row window times maximal runs of consecutive
/// columns with the same column window (kh, kw: the effective kernel sizes).
inline std::vector<Chunk> buildChunks(int outH, int outW, int lowH, int lowW, int kh, int kw)
{
    auto bands = [](int outLen, int lowLen, int kernel) {
        std::vector<int> starts;
        std::vector<int> previous, current(static_cast<size_t>(kernel));
        for (int i = 0; i < outLen; ++i)
        {
            for (int t = 0; t < kernel; ++t)
                current[static_cast<size_t>(t)] = neighborLowIndex(i, t, outLen, lowLen, kernel);
            if (current != previous) starts.push_back(i);
            previous = current;
        }
        starts.push_back(outLen);
        return starts;
    };
    const std::vector<int> rowStarts = bands(outH, lowH, kh);
    const std::vector<int> colStarts = bands(outW, lowW, kw);
    std::vector<Chunk> chunks;
    for (size_t r = 0; r + 1 < rowStarts.size(); ++r)
        for (size_t k = 0; k + 1 < colStarts.size(); ++k)
        {
            const int rectH = rowStarts[r + 1] - rowStarts[r];
            const int rectW = colStarts[k + 1] - colStarts[k];
            const int count = rectH * rectW;
            for (int p0 = 0; p0 < count; p0 += kPixels)
                chunks.push_back(Chunk{rowStarts[r], colStarts[k], rectW, p0, std::min(kPixels, count - p0)});
        }
    return chunks;
}

/// Whether the kernel can run at all: head dim 32 or 64 (its instances), at most kMaxKeys window
/// entries.
inline bool fits(int headDim, int kh, int kw)
{
    return (headDim == 32 || headDim == 64) && kh * kw <= kMaxKeys;
}

/// Whether the cell kernel fits the problem and its chunks are at least half full on average
/// (else the tiled kernel wastes less).
inline bool worthwhile(const std::vector<Chunk>& chunks, int outH, int outW, int headDim, int kh, int kw)
{
    if (!fits(headDim, kh, kw) || chunks.empty()) return false;
    return static_cast<double>(outH) * outW >= 0.5 * static_cast<double>(chunks.size()) * kPixels;
}

}  // namespace cell
}  // namespace kernels
}  // namespace naf
