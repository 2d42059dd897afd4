// Cell attention on tensor cores: the cell kernel's two products (cell_attention.hpp) as warp-level
// TF32 matrix multiply-accumulates (mma.sync m16n8k8), each split into three TF32 products
// ("3xTF32": big*small + small*big + big*big), so the result keeps float32 accuracy.
//
// A block takes one chunk of the cell kernel's work list (up to 128 pixels that share one window);
// each of its 8 warps takes 16 of those pixels. Per head:
//   - the block stages the window's keys (88 entries, zero past kh*kw) and values in shared memory;
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
template <int HD>
NAF_HOST_DEVICE inline int keyFloats()
{
    return kMaxEntries * keyStride<HD>();
}
template <int HD>
inline size_t sharedBytes(int vPerHead)
{
    return (static_cast<size_t>(keyFloats<HD>()) + 2 * static_cast<size_t>(kKeyPairs) * valueStride(vPerHead)) *
           sizeof(float);
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
/// x = big + small exactly up to small's truncation: big keeps the 10 mantissa bits TF32 has
/// (truncated, so x - big is exact), small the next 10. Both are valid TF32 bit patterns.
NAF_HOST_DEVICE NAF_MMA_INLINE void splitTf32(float x, uint32_t& big, uint32_t& small)
{
    big = floatBits(x) & 0xffffe000u;
    small = floatBits(x - bitsFloat(big)) & 0xffffe000u;
}

/// Operands of one warp-wide product as one lane sees them: its accumulator fragment and its
/// float32 A and B fragment values (split into TF32 parts by the warp).
struct MmaOperands
{
    float* d;
    float a[4];
    float b[2];
};

/// One lane's registers.
template <int HD>
struct LaneRegs
{
    float q[HD / 16][2][4];  // [i][r][m]: query channel 16i + 4t + m of tile pixel g + 8r
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
            asm volatile("prefetch.global.L2 [%0];" ::"l"(p.qT + cell::pixelOf(c, px, p.outW) * p.dim + head * HD +
                                                          32 * t));
    }
#else
    (void)p, (void)c, (void)head, (void)warp, (void)lane;
#endif
}

/// Phase 1 (per warp, after the block's staging): the queries of the warp's 16 pixels (zero past
/// the chunk's count), 16-byte loads. Within each pair of k-steps, A column t is channel
/// 16i + 4t (+2 for the odd step) and column t + 4 the one after; the keys use the same order.
template <int HD, class Warp>
NAF_HOST_DEVICE NAF_MMA_INLINE void loadQueries(const Params& p, const Chunk& c, int head, int warp, Warp& w)
{
    const int pix0 = warp * kTilePixels;
    w.each([&](LaneRegs<HD>& r, int lane) {
        const int g = lane >> 2, t = lane & 3;
        NAF_CELL_UNROLL
        for (int half = 0; half < 2; ++half)
        {
            const int px = pix0 + g + 8 * half;
            const float* src =
                px < c.count ? p.qT + cell::pixelOf(c, px, p.outW) * p.dim + head * HD + 4 * t : nullptr;
            NAF_CELL_UNROLL
            for (int i = 0; i < HD / 16; ++i)
            {
                if (src)
                    cell::load4(src + 16 * i, r.q[i][half]);
                else
                    r.q[i][half][0] = r.q[i][half][1] = r.q[i][half][2] = r.q[i][half][3] = 0.f;
            }
        }
    });
}

/// Phase 2 (per thread, the whole block): keys into Ks[entry][keyStride] (zero past kh*kw) and
/// values into Vp[pair][valueStride][2], entries 2 pair and 2 pair + 1 side by side (zero past
/// the window and past the head's channels). Loads are issued in batches before their stores.
template <int HD>
NAF_HOST_DEVICE NAF_MMA_INLINE void stageKeysAndValues(const Params& p, const Chunk& c, int head, int tid, float* Ks,
                                                       float* Vp)
{
    constexpr int q4 = HD / 4;
    constexpr int keyItems = kMaxEntries * q4;
    constexpr int keyLoads = (keyItems + kThreads - 1) / kThreads;
    const int entries = p.kh * p.kw;
    const int* rows = p.rowTable + static_cast<size_t>(c.y0) * p.kh;
    const int* cols = p.colTable + static_cast<size_t>(c.x0) * p.kw;
    auto lowIndex = [&](int key) {
        const int a = key / p.kw;
        return static_cast<long long>(rows[a]) * p.lowW + cols[key - a * p.kw];
    };
    float kv[keyLoads][4];
    NAF_CELL_UNROLL
    for (int r = 0; r < keyLoads; ++r)
    {
        const int e = tid + r * kThreads;
        const int key = e / q4, d4 = e - (e / q4) * q4;
        kv[r][0] = kv[r][1] = kv[r][2] = kv[r][3] = 0.f;
        if (e < keyItems && key < entries) cell::load4(p.kT + lowIndex(key) * p.dim + head * HD + 4 * d4, kv[r]);
    }
    NAF_CELL_UNROLL
    for (int r = 0; r < keyLoads; ++r)
    {
        const int e = tid + r * kThreads;
        if (e >= keyItems) break;
        const int key = e / q4, d4 = e - (e / q4) * q4;
        float* dst = Ks + key * keyStride<HD>() + 4 * d4;
#if defined(__CUDA_ARCH__)
        *reinterpret_cast<float4*>(dst) = make_float4(kv[r][0], kv[r][1], kv[r][2], kv[r][3]);
#else
        for (int m = 0; m < 4; ++m) dst[m] = kv[r][m];
#endif
    }

    const int vPerHead = p.channels / p.heads;
    const int padded = paddedValues(vPerHead), stride = valueStride(vPerHead);
    const int valueItems = kKeyPairs * padded;
    constexpr int batch = 8;
    for (int base = tid; base < valueItems; base += batch * kThreads)
    {
        float v[batch][2];
        NAF_CELL_UNROLL
        for (int r = 0; r < batch; ++r)
        {
            const int e = base + r * kThreads;
            const int pair = e / padded, ch = e - (e / padded) * padded;
            NAF_CELL_UNROLL
            for (int k = 0; k < 2; ++k)
            {
                const int key = 2 * pair + k;
                v[r][k] = e < valueItems && key < entries && ch < vPerHead
                              ? p.vT[lowIndex(key) * p.channels + head * vPerHead + ch]
                              : 0.f;
            }
        }
        NAF_CELL_UNROLL
        for (int r = 0; r < batch; ++r)
        {
            const int e = base + r * kThreads;
            if (e >= valueItems) break;
            const int pair = e / padded, ch = e - (e / padded) * padded;
            float* dst = Vp + 2 * (pair * stride + ch);
#if defined(__CUDA_ARCH__)
            *reinterpret_cast<float2*>(dst) = make_float2(v[r][0], v[r][1]);
#else
            dst[0] = v[r][0];
            dst[1] = v[r][1];
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
                    op.a[0] = r.q[i][0][2 * step];
                    op.a[1] = r.q[i][1][2 * step];
                    op.a[2] = r.q[i][0][2 * step + 1];
                    op.a[3] = r.q[i][1][2 * step + 1];
                    op.b[0] = r.kb[2 * step];
                    op.b[1] = r.kb[2 * step + 1];
                    return op;
                });
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
    w.quadMax([](LaneRegs<HD>& r) -> float& { return r.rowMax[0]; });
    w.quadMax([](LaneRegs<HD>& r) -> float& { return r.rowMax[1]; });
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
    w.quadSum([](LaneRegs<HD>& r) -> float& { return r.rowSum[0]; });
    w.quadSum([](LaneRegs<HD>& r) -> float& { return r.rowSum[1]; });
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
                                                   const float* Vp, Warp& w)
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
                    const float* v = Vp + 2 * ((4 * j + (lane & 3)) * stride + c0 + 8 * u + (lane >> 2));
#if defined(__CUDA_ARCH__)
                    const float2 pair = *reinterpret_cast<const float2*>(v);
                    op.b[0] = pair.x;
                    op.b[1] = pair.y;
#else
                    op.b[0] = v[0];
                    op.b[1] = v[1];
#endif
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
            for (int k = 0; k < 4; ++k) splitTf32(op.a[k], aBig[lane][k], aSmall[lane][k]);
            for (int k = 0; k < 2; ++k) splitTf32(op.b[k], bBig[lane][k], bSmall[lane][k]);
        }
        mma(d, aBig, bSmall);
        mma(d, aSmall, bBig);
        mma(d, aBig, bBig);
    }

    /// The device's two xor shuffles (1, then 2) over each quad of lanes.
    template <class F>
    void quadMax(F&& f)
    {
        for (int q = 0; q < 8; ++q)
        {
            float* v[4];
            for (int k = 0; k < 4; ++k) v[k] = &f(lanes[4 * q + k]);
            const float m = fmaxf(fmaxf(*v[0], *v[1]), fmaxf(*v[2], *v[3]));
            for (int k = 0; k < 4; ++k) *v[k] = m;
        }
    }
    template <class F>
    void quadSum(F&& f)
    {
        for (int q = 0; q < 8; ++q)
        {
            float* v[4];
            for (int k = 0; k < 4; ++k) v[k] = &f(lanes[4 * q + k]);
            const float s = (*v[0] + *v[1]) + (*v[2] + *v[3]);
            for (int k = 0; k < 4; ++k) *v[k] = s;
        }
    }
};

}  // namespace cellmma
}  // namespace kernels
}  // namespace naf
