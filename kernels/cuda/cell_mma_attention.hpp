// Cell attention on tensor cores: the cell kernel's two products (cell_attention.hpp) as warp-level
// TF32 matrix multiply-accumulates (mma.sync m16n8k8), each split into three TF32 products
// ("3xTF32": big*small + small*big + big*big), so the result keeps float32 accuracy.
//
// A block takes one chunk of the cell kernel's work list (up to 128 pixels that share one window);
// each of its 8 warps takes 16 of those pixels. Per head:
//   - the block stages the window's keys (88 entries, zero past kh*kw) and values in shared memory,
//     the values already split into their TF32 parts;
//   - each warp loads its pixels' queries from global memory straight into A fragments;
//   - S = Q K^T stays in the warp's accumulators (11 fragments of 16 x 8), the row softmax runs on
//     them with two quad shuffles, and the probabilities are the A operand of O = P V without
//     leaving registers: the values are staged with each pair of window entries interleaved so
//     that an accumulator fragment's layout is the next product's operand layout;
//   - O goes to the channel-major output 32 channels per pass.
// Why (docs/PERFORMANCE.md, GPU items 19 and 26): the SIMT kernels are bound by FMA issue
// (7.6 ms of FMAs alone at x72); the tensor cores have 8x that rate. The two earlier tensor-core
// attempts (items 9 and 11) multiplied each pixel against the whole window union of a tile and
// went through shared memory; here every warp's 16 pixels have exactly one window.
//
// The fragment layouts are those of the PTX ISA ("Matrix Fragments for mma.m16n8k8", .tf32):
// with g = lane / 4 and t = lane % 4,
//   A (16 x 8): a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4)
//   B (8 x 8):  b0 (t, g), b1 (t + 4, g)
//   C (16 x 8): c0 (g, 2t), c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1)
// The code is written once against a warp type: on the device (attention_kernels.cu) each lane
// runs it with the real mma and shuffles; in the CPU test (HostWarp below) the 32 lanes run in
// turn and the warp-wide operations are computed from all lanes' registers by those layouts, so
// the index arithmetic and the fragment bookkeeping are tested on every build.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cell_attention.hpp"

#if defined(__CUDACC__)
#define NAF_MMA_INLINE __forceinline__
#else
#define NAF_MMA_INLINE inline
#endif

namespace naf {
namespace kernels {
namespace cellmma {

using cell::Chunk;
using cell::Params;

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kTilePixels = 16;  // the m of m16n8k8: one tile of pixels per warp
static_assert(kWarps * kTilePixels == cell::kPixels, "a block takes one chunk of the cell kernel's work list");
constexpr int kMaxEntries = 88;  // window entries, padded to whole 8-wide fragments (kernel 9: 81)
constexpr int kKeyTiles = kMaxEntries / 8;
constexpr int kKeyPairs = kMaxEntries / 2;
constexpr int kPassTiles = 4;  // output fragments per value pass
constexpr int kPassChannels = 8 * kPassTiles;

/// Row stride of the staged keys, in floats: 16 mod 32, so the 8 lanes of each quarter-warp's
/// 16-byte fragment reads (two entries, four channel quads) fall on distinct bank groups.
template <int HD>
NAF_HOST_DEVICE constexpr int keyStride()
{
    return HD + 16;
}
/// Value channels staged per head: whole passes, zero past the head's channels.
NAF_HOST_DEVICE inline int paddedValues(int vPerHead)
{
    return (vPerHead + kPassChannels - 1) / kPassChannels * kPassChannels;
}
/// Row stride of the staged value pairs, in float2: 4 mod 16, so each half-warp's 8-byte fragment
/// reads (4 entry pairs x 4 channels) fall on distinct banks.
NAF_HOST_DEVICE inline int valueStride(int vPerHead)
{
    return paddedValues(vPerHead) + 4;
}

/// The block's shared memory: the keys [kMaxEntries][keyStride], the values' TF32 big and small
/// parts [kKeyPairs][valueStride][2] each (split once here rather than by all 8 warps in their
/// inner loop), and the window's low-res offsets [kMaxEntries] (-1 past kh*kw), computed once per
/// block since they do not depend on the head.
struct SharedLayout
{
    float* keys;
    float* valueBig;
    float* valueSmall;
    int* windowOffsets;
};
template <int HD>
NAF_HOST_DEVICE inline SharedLayout sharedLayout(float* base, int vPerHead)
{
    const int valueFloats = 2 * kKeyPairs * valueStride(vPerHead);
    SharedLayout l;
    l.keys = base;
    l.valueBig = base + kMaxEntries * keyStride<HD>();
    l.valueSmall = l.valueBig + valueFloats;
    l.windowOffsets = reinterpret_cast<int*>(l.valueSmall + valueFloats);
    return l;
}
template <int HD>
inline size_t sharedBytes(int vPerHead)
{
    return (static_cast<size_t>(kMaxEntries) * keyStride<HD>() + 4 * static_cast<size_t>(kKeyPairs) * valueStride(vPerHead)) *
               sizeof(float) +
           kMaxEntries * sizeof(int);
}

/// Whether the kernel can run: head dim 32 or 64, at most kMaxEntries window entries.
inline bool fits(int headDim, int kh, int kw)
{
    return (headDim == 32 || headDim == 64) && kh * kw <= kMaxEntries;
}

NAF_HOST_DEVICE NAF_MMA_INLINE uint32_t floatBits(float x)
{
#if defined(__CUDA_ARCH__)
    return __float_as_uint(x);
#else
    uint32_t u;
    std::memcpy(&u, &x, sizeof(u));
    return u;
#endif
}
NAF_HOST_DEVICE NAF_MMA_INLINE float bitsFloat(uint32_t u)
{
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float x;
    std::memcpy(&x, &u, sizeof(x));
    return x;
#endif
}
/// x = big + small: big is x rounded to the nearest TF32 value (10 mantissa bits), so x - big is
/// exact (Sterbenz) and its sign is as often positive as negative; small is that remainder as a
/// float, of which the tensor core reads the TF32 part (its top bits: the rest, 2^-21 of x, is
/// dropped). Rounding big, not truncating it, keeps those dropped bits from biasing every product
/// the same way (review of the first version: half the error under a truncating model of the
/// tensor core's accumulation).
/// Not for |x| above ~3.4e38, where big would round to infinity (no finiteness test in this inner
/// loop; attention inputs are nowhere near).
NAF_HOST_DEVICE NAF_MMA_INLINE void splitTf32(float x, uint32_t& big, uint32_t& small)
{
    big = (floatBits(x) + 0x1000u) & 0xffffe000u;
    small = floatBits(x - bitsFloat(big));
}

/// Operands of one warp-wide product as one lane sees them: its accumulator fragment and its A
/// and B fragment values, each either float32 (split into TF32 parts by the warp) or already
/// split (a/b the big parts, aSmall/bSmall the small ones).
struct MmaOperands
{
    float* d;
    float a[4], aSmall[4];
    float b[2], bSmall[2];
    bool aPreSplit, bPreSplit;
};

/// A fragment's operands into TF32 parts: pre-split ones as they are, float32 ones by splitTf32.
template <int N>
NAF_HOST_DEVICE NAF_MMA_INLINE void operandParts(const float (&x)[N], const float (&xSmall)[N], bool preSplit,
                                                 uint32_t (&big)[N], uint32_t (&small)[N])
{
    NAF_CELL_UNROLL
    for (int k = 0; k < N; ++k)
    {
        if (preSplit)
        {
            big[k] = floatBits(x[k]);
            small[k] = floatBits(xSmall[k]);
        }
        else
            splitTf32(x[k], big[k], small[k]);
    }
}

/// One lane's registers.
template <int HD>
struct LaneRegs
{
    const float* qSrc;       // this head's query slice + 4t of tile pixel g (null past the chunk)
    int qNext;               // pixel g + 8's slice minus pixel g's, in floats (-1 past the chunk)
    float q[2][4];           // [r][m]: query channel 16i + 4t + m of tile pixel g + 8r (step i)
    float qBig[2][4], qSmall[2][4];  // q[i] split into TF32 parts (the raw q[i] is dead after)
    float kb[4];             // key channel 16i + 4t + m of window entry 8j + g
    float s[kKeyTiles][4];   // logits of entries 8j + 2t (+1) for pixels g, g + 8; then probabilities
    float o[kPassTiles][4];  // output channels c0 + 8u + 2t (+1) for pixels g, g + 8
    float rowMax[2], rowSum[2];
};

/// Before the block's staging (per lane): an L2 prefetch of the 128-byte lines of the queries
/// that loadQueries reads after the barrier (lane t takes line t of pixels g and g + 8). No effect
/// on the CPU.
template <int HD>
NAF_HOST_DEVICE NAF_MMA_INLINE void prefetchQueries(const Params& p, const Chunk& c, int head, int warp, int lane)
{
#if defined(__CUDA_ARCH__)
    const int g = lane >> 2, t = lane & 3;
    if (32 * t >= HD) return;
    for (int half = 0; half < 2; ++half)
    {
        const int px = warp * kTilePixels + g + 8 * half;
        if (px < c.count)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(__cvta_generic_to_global(
                p.qT + cell::pixelOf(c, px, p.outW) * p.dim + head * HD + 32 * t)));
    }
#else
    (void)p, (void)c, (void)head, (void)warp, (void)lane;
#endif
}

/// Query channels 16i + 4t .. + 3 of the lane's two pixels into q (16-byte loads; zero past the
/// chunk's count). Within each pair of k-steps, A column t is channel 16i + 4t (+2 for the odd
/// step) and column t + 4 the one after; the keys use the same order.
template <int HD>
NAF_HOST_DEVICE NAF_MMA_INLINE void loadQueryStep(LaneRegs<HD>& r, int i)
{
    NAF_CELL_UNROLL
    for (int half = 0; half < 2; ++half)
    {
        if (r.qSrc && (half == 0 || r.qNext >= 0))
            cell::load4(r.qSrc + (half ? r.qNext : 0) + 16 * i, r.q[half]);
        else
            r.q[half][0] = r.q[half][1] = r.q[half][2] = r.q[half][3] = 0.f;
    }
}

/// Phase 1 (per warp, after the block's staging): where the lane's queries are, and the first 16
/// channels of them. The rest come one step ahead of their use in logitsAndSoftmax, into the same
/// 8 registers once the step's channels are split: holding all of a head's queries (32 registers
/// at head dim 64) next to the logits made ptxas spill. One pointer and a 32-bit distance for
/// the two pixels, to spare registers too.
template <int HD, class Warp>
NAF_HOST_DEVICE NAF_MMA_INLINE void loadQueries(const Params& p, const Chunk& c, int head, int warp, Warp& w)
{
    const int pix0 = warp * kTilePixels;
    w.each([&](LaneRegs<HD>& r, int lane) {
        const int g = lane >> 2, t = lane & 3;
        const int px = pix0 + g;
        r.qSrc = px < c.count ? p.qT + cell::pixelOf(c, px, p.outW) * p.dim + head * HD + 4 * t : nullptr;
        r.qNext = px + 8 < c.count
                      ? static_cast<int>((cell::pixelOf(c, px + 8, p.outW) - cell::pixelOf(c, px, p.outW)) * p.dim)
                      : -1;
        loadQueryStep(r, 0);
    });
}

/// Once per block (threads 0 .. kMaxEntries-1, before the first head): the low-res offset of each
/// window entry of the chunk, -1 past kh*kw.
NAF_HOST_DEVICE NAF_MMA_INLINE void computeWindowOffsets(const Params& p, const Chunk& c, int tid, int* offsets)
{
    if (tid >= kMaxEntries) return;
    if (tid >= p.kh * p.kw)
    {
        offsets[tid] = -1;
        return;
    }
    const int a = tid / p.kw;
    offsets[tid] = p.rowTable[static_cast<size_t>(c.y0) * p.kh + a] * p.lowW +
                   p.colTable[static_cast<size_t>(c.x0) * p.kw + tid - a * p.kw];
}

/// Phase 2 (per thread, the whole block): the head's keys (zero past kh*kw) and its values split
/// into TF32 parts, entries 2 pair and 2 pair + 1 side by side (zero past the window and past the
/// head's channels). Each warp stages one entry pair and four 32-channel columns per round, all
/// 8 value loads of a thread in flight before its stores; no division per element. (Two pairs per
/// round, 16 loads, cost registers that ptxas then spilled.)
template <int HD>
NAF_HOST_DEVICE NAF_MMA_INLINE void stageKeysAndValues(const Params& p, int head, int tid, const SharedLayout& sh)
{
    constexpr int q4 = HD / 4;
    constexpr int keyItems = kMaxEntries * q4;
    constexpr int keyLoads = (keyItems + kThreads - 1) / kThreads;
    float kv[keyLoads][4];
    NAF_CELL_UNROLL
    for (int r = 0; r < keyLoads; ++r)
    {
        const int e = tid + r * kThreads;
        kv[r][0] = kv[r][1] = kv[r][2] = kv[r][3] = 0.f;
        if (e >= keyItems) continue;
        const int offset = sh.windowOffsets[e / q4];
        if (offset >= 0)
            cell::load4(p.kT + static_cast<long long>(offset) * p.dim + head * HD + 4 * (e % q4), kv[r]);
    }
    NAF_CELL_UNROLL
    for (int r = 0; r < keyLoads; ++r)
    {
        const int e = tid + r * kThreads;
        if (e >= keyItems) break;
        float* dst = sh.keys + (e / q4) * keyStride<HD>() + 4 * (e % q4);
#if defined(__CUDA_ARCH__)
        *reinterpret_cast<float4*>(dst) = make_float4(kv[r][0], kv[r][1], kv[r][2], kv[r][3]);
#else
        for (int m = 0; m < 4; ++m) dst[m] = kv[r][m];
#endif
    }

    const int vPerHead = p.channels / p.heads;
    const int columns = paddedValues(vPerHead) / 32, stride = valueStride(vPerHead);
    const int warp = tid >> 5, lane = tid & 31;
    constexpr int kColumnsPerRound = 4;
    // Every warp takes the same number of rounds (the last pairs zero-loaded and not stored), which
    // ptxas allocates better than a loop that ends per warp (sm_90: 12 bytes of spill stores at head
    // dim 64 against 28).
    for (int round = 0; round * kWarps < kKeyPairs; ++round)
        for (int col0 = 0; col0 < columns; col0 += kColumnsPerRound)
        {
            const int pair = warp + kWarps * round;
            float v[kColumnsPerRound][2];
            NAF_CELL_UNROLL
            for (int k = 0; k < 2; ++k)
            {
                const int offset = pair < kKeyPairs ? sh.windowOffsets[2 * pair + k] : -1;
                const float* src =
                    p.vT + static_cast<long long>(offset >= 0 ? offset : 0) * p.channels + head * vPerHead + lane;
                NAF_CELL_UNROLL
                for (int cq = 0; cq < kColumnsPerRound; ++cq)
                {
                    const int ch = lane + 32 * (col0 + cq);
                    v[cq][k] = offset >= 0 && ch < vPerHead ? src[32 * (col0 + cq)] : 0.f;
                }
            }
            if (pair >= kKeyPairs) continue;
            NAF_CELL_UNROLL
            for (int cq = 0; cq < kColumnsPerRound; ++cq)
            {
                if (col0 + cq >= columns) break;
                const int at = 2 * (pair * stride + lane + 32 * (col0 + cq));
                uint32_t big[2], small[2];
                splitTf32(v[cq][0], big[0], small[0]);
                splitTf32(v[cq][1], big[1], small[1]);
#if defined(__CUDA_ARCH__)
                *reinterpret_cast<float2*>(sh.valueBig + at) = make_float2(bitsFloat(big[0]), bitsFloat(big[1]));
                *reinterpret_cast<float2*>(sh.valueSmall + at) = make_float2(bitsFloat(small[0]), bitsFloat(small[1]));
#else
                for (int k = 0; k < 2; ++k)
                {
                    sh.valueBig[at + k] = bitsFloat(big[k]);
                    sh.valueSmall[at + k] = bitsFloat(small[k]);
                }
#endif
            }
        }
}

/// Phase 3 (per warp): S = Q K^T into r.s, then the softmax of each pixel's row, in registers.
/// Lane (g, t) holds entries 8j + 2t and 8j + 2t + 1 of pixels g and g + 8; a row's four lanes
/// combine their maxima and sums with two xor shuffles.
template <int HD, class Warp>
NAF_HOST_DEVICE NAF_MMA_INLINE void logitsAndSoftmax(const Params& p, const float* Ks, Warp& w)
{
    const int entries = p.kh * p.kw;
    w.each([&](LaneRegs<HD>& r, int) {
        NAF_CELL_UNROLL
        for (int j = 0; j < kKeyTiles; ++j)
            NAF_CELL_UNROLL
            for (int m = 0; m < 4; ++m) r.s[j][m] = 0.f;
    });
    NAF_CELL_UNROLL
    for (int i = 0; i < HD / 16; ++i)
    {
        // Split once per 16 channels, not per product, and load the next 16 meanwhile.
        w.each([&](LaneRegs<HD>& r, int) {
            NAF_CELL_UNROLL
            for (int half = 0; half < 2; ++half)
                NAF_CELL_UNROLL
                for (int m = 0; m < 4; ++m)
                {
                    uint32_t big, small;
                    splitTf32(r.q[half][m], big, small);
                    r.qBig[half][m] = bitsFloat(big);
                    r.qSmall[half][m] = bitsFloat(small);
                }
            if (i + 1 < HD / 16) loadQueryStep(r, i + 1);  // q is free now; in flight during the products
        });
        NAF_CELL_UNROLL
        for (int j = 0; j < kKeyTiles; ++j)
        {
            w.each([&](LaneRegs<HD>& r, int lane) {
                cell::load4(Ks + (8 * j + (lane >> 2)) * keyStride<HD>() + 16 * i + 4 * (lane & 3), r.kb);
            });
            NAF_CELL_UNROLL
            for (int step = 0; step < 2; ++step)
                w.mma3([&](LaneRegs<HD>& r, int) {
                    MmaOperands op;
                    op.d = r.s[j];
                    op.a[0] = r.qBig[0][2 * step];
                    op.a[1] = r.qBig[1][2 * step];
                    op.a[2] = r.qBig[0][2 * step + 1];
                    op.a[3] = r.qBig[1][2 * step + 1];
                    op.aSmall[0] = r.qSmall[0][2 * step];
                    op.aSmall[1] = r.qSmall[1][2 * step];
                    op.aSmall[2] = r.qSmall[0][2 * step + 1];
                    op.aSmall[3] = r.qSmall[1][2 * step + 1];
                    op.aPreSplit = true;
                    op.b[0] = r.kb[2 * step];
                    op.b[1] = r.kb[2 * step + 1];
                    op.bPreSplit = false;
                    return op;
                });
        }
    }
    w.each([&](LaneRegs<HD>& r, int lane) {
        const int t = lane & 3;
        r.rowMax[0] = r.rowMax[1] = -INFINITY;
        NAF_CELL_UNROLL
        for (int j = 0; j < kKeyTiles; ++j)
            NAF_CELL_UNROLL
            for (int m = 0; m < 4; ++m)
            {
                const float v = 8 * j + 2 * t + (m & 1) < entries ? r.s[j][m] * p.scale : -INFINITY;
                r.s[j][m] = v;
                r.rowMax[m >> 1] = fmaxf(r.rowMax[m >> 1], v);
            }
    });
    auto maximum = [](float a, float b) { return fmaxf(a, b); };
    auto sum = [](float a, float b) { return a + b; };
    w.quadReduce([](LaneRegs<HD>& r) -> float& { return r.rowMax[0]; }, maximum);
    w.quadReduce([](LaneRegs<HD>& r) -> float& { return r.rowMax[1]; }, maximum);
    w.each([&](LaneRegs<HD>& r, int lane) {
        const int t = lane & 3;
        r.rowSum[0] = r.rowSum[1] = 0.f;
        NAF_CELL_UNROLL
        for (int j = 0; j < kKeyTiles; ++j)
            NAF_CELL_UNROLL
            for (int m = 0; m < 4; ++m)
            {
                const float e = 8 * j + 2 * t + (m & 1) < entries ? expf(r.s[j][m] - r.rowMax[m >> 1]) : 0.f;
                r.s[j][m] = e;
                r.rowSum[m >> 1] += e;
            }
    });
    w.quadReduce([](LaneRegs<HD>& r) -> float& { return r.rowSum[0]; }, sum);
    w.quadReduce([](LaneRegs<HD>& r) -> float& { return r.rowSum[1]; }, sum);
    w.each([&](LaneRegs<HD>& r, int) {
        const float inv[2] = {1.f / r.rowSum[0], 1.f / r.rowSum[1]};
        NAF_CELL_UNROLL
        for (int j = 0; j < kKeyTiles; ++j)
            NAF_CELL_UNROLL
            for (int m = 0; m < 4; ++m) r.s[j][m] *= inv[m >> 1];
    });
}

/// Phase 4 (per warp): O = P V, 32 channels per pass, stored channel-major. The probabilities'
/// accumulator fragment j is the A fragment of k-step j (c0, c2, c1, c3), because A column t of
/// that step is entry 8j + 2t and column t + 4 entry 8j + 2t + 1: the B rows t and t + 4 are the
/// value pair (8j + 2t, 8j + 2t + 1), one 8-byte read.
template <int HD, class Warp>
NAF_HOST_DEVICE NAF_MMA_INLINE void valuesAndStore(const Params& p, const Chunk& c, int head, int warp,
                                                   const SharedLayout& sh, Warp& w)
{
    const int vPerHead = p.channels / p.heads;
    const int stride = valueStride(vPerHead);
    const int pix0 = warp * kTilePixels;
    const long long outPlane = static_cast<long long>(p.outH) * p.outW;
    for (int c0 = 0; c0 < vPerHead; c0 += kPassChannels)
    {
        w.each([&](LaneRegs<HD>& r, int) {
            NAF_CELL_UNROLL
            for (int u = 0; u < kPassTiles; ++u)
                NAF_CELL_UNROLL
                for (int m = 0; m < 4; ++m) r.o[u][m] = 0.f;
        });
        NAF_CELL_UNROLL
        for (int j = 0; j < kKeyTiles; ++j)
            NAF_CELL_UNROLL
            for (int u = 0; u < kPassTiles; ++u)
                w.mma3([&](LaneRegs<HD>& r, int lane) {
                    MmaOperands op;
                    op.d = r.o[u];
                    op.a[0] = r.s[j][0];
                    op.a[1] = r.s[j][2];
                    op.a[2] = r.s[j][1];
                    op.a[3] = r.s[j][3];
                    op.aPreSplit = false;
                    const int at = 2 * ((4 * j + (lane & 3)) * stride + c0 + 8 * u + (lane >> 2));
#if defined(__CUDA_ARCH__)
                    const float2 big = *reinterpret_cast<const float2*>(sh.valueBig + at);
                    const float2 small = *reinterpret_cast<const float2*>(sh.valueSmall + at);
                    op.b[0] = big.x;
                    op.b[1] = big.y;
                    op.bSmall[0] = small.x;
                    op.bSmall[1] = small.y;
#else
                    op.b[0] = sh.valueBig[at];
                    op.b[1] = sh.valueBig[at + 1];
                    op.bSmall[0] = sh.valueSmall[at];
                    op.bSmall[1] = sh.valueSmall[at + 1];
#endif
                    op.bPreSplit = true;
                    return op;
                });
        w.each([&](LaneRegs<HD>& r, int lane) {
            const int g = lane >> 2, t = lane & 3;
            NAF_CELL_UNROLL
            for (int half = 0; half < 2; ++half)
            {
                const int px = pix0 + g + 8 * half;
                if (px >= c.count) continue;
                const long long pix = cell::pixelOf(c, px, p.outW);
                NAF_CELL_UNROLL
                for (int u = 0; u < kPassTiles; ++u)
                    NAF_CELL_UNROLL
                    for (int k = 0; k < 2; ++k)
                    {
                        const int ch = c0 + 8 * u + 2 * t + k;
                        if (ch < vPerHead)
                            p.out[static_cast<long long>(head * vPerHead + ch) * outPlane + pix] = r.o[u][2 * half + k];
                    }
            }
        });
    }
}

/// The 32 lanes of one warp on the CPU, one after another, with the warp-wide operations computed
/// from all lanes' registers by the PTX fragment layouts (for the tests).
template <int HD>
struct HostWarp
{
    LaneRegs<HD> lanes[32];

    template <class F>
    void each(F&& f)
    {
        for (int lane = 0; lane < 32; ++lane) f(lanes[lane], lane);
    }

    /// d += A B with A 16 x 8 and B 8 x 8 as TF32 (the low 13 bits of each operand dropped),
    /// accumulated in double and rounded once: one mma.sync m16n8k8.
    static void mma(float* const (&d)[32], const uint32_t (&a)[32][4], const uint32_t (&b)[32][2])
    {
        float A[16][8], B[8][8];
        for (int lane = 0; lane < 32; ++lane)
        {
            const int g = lane >> 2, t = lane & 3;
            A[g][t] = bitsFloat(a[lane][0] & 0xffffe000u);
            A[g + 8][t] = bitsFloat(a[lane][1] & 0xffffe000u);
            A[g][t + 4] = bitsFloat(a[lane][2] & 0xffffe000u);
            A[g + 8][t + 4] = bitsFloat(a[lane][3] & 0xffffe000u);
            B[t][g] = bitsFloat(b[lane][0] & 0xffffe000u);
            B[t + 4][g] = bitsFloat(b[lane][1] & 0xffffe000u);
        }
        float C[16][8];
        for (int lane = 0; lane < 32; ++lane)
        {
            const int g = lane >> 2, t = lane & 3;
            C[g][2 * t] = d[lane][0];
            C[g][2 * t + 1] = d[lane][1];
            C[g + 8][2 * t] = d[lane][2];
            C[g + 8][2 * t + 1] = d[lane][3];
        }
        for (int row = 0; row < 16; ++row)
            for (int col = 0; col < 8; ++col)
            {
                double sum = C[row][col];
                for (int k = 0; k < 8; ++k) sum += static_cast<double>(A[row][k]) * B[k][col];
                C[row][col] = static_cast<float>(sum);
            }
        for (int lane = 0; lane < 32; ++lane)
        {
            const int g = lane >> 2, t = lane & 3;
            d[lane][0] = C[g][2 * t];
            d[lane][1] = C[g][2 * t + 1];
            d[lane][2] = C[g + 8][2 * t];
            d[lane][3] = C[g + 8][2 * t + 1];
        }
    }

    /// The device's 3xTF32 sequence: big*small, small*big, big*big.
    template <class F>
    void mma3(F&& f)
    {
        float* d[32];
        uint32_t aBig[32][4], aSmall[32][4], bBig[32][2], bSmall[32][2];
        for (int lane = 0; lane < 32; ++lane)
        {
            const MmaOperands op = f(lanes[lane], lane);
            d[lane] = op.d;
            operandParts(op.a, op.aSmall, op.aPreSplit, aBig[lane], aSmall[lane]);
            operandParts(op.b, op.bSmall, op.bPreSplit, bBig[lane], bSmall[lane]);
        }
        mma(d, aBig, bSmall);
        mma(d, aSmall, bBig);
        mma(d, aBig, bBig);
    }

    /// The device's two xor shuffles (1, then 2) over each quad of lanes: every lane of the quad
    /// gets op(op(v0, v1), op(v2, v3)) (op commutative, so lanes 2 and 3 get the same bits).
    template <class F, class Op>
    void quadReduce(F&& f, Op&& op)
    {
        for (int q = 0; q < 8; ++q)
        {
            float* v[4];
            for (int k = 0; k < 4; ++k) v[k] = &f(lanes[4 * q + k]);
            const float result = op(op(*v[0], *v[1]), op(*v[2], *v[3]));
            for (int k = 0; k < 4; ++k) *v[k] = result;
        }
    }
};

}  // namespace cellmma
}  // namespace kernels
}  // namespace naf
