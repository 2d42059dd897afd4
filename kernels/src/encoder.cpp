// Guide-encoder building blocks on the CPU: resize, reflect-padded convolution (tiled im2col +
// register-blocked GEMM), GroupNorm+SiLU, adaptive average pooling, RoPE.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "gemm.hpp"
#include "naf_kernels/naf_kernels.hpp"
#include "simd_dispatch.hpp"
#include "simd_vec.hpp"

namespace naf {
namespace kernels {

namespace {

inline int reflectIndex(int i, int n)
{
    if (i < 0) return -i;
    if (i >= n) return 2 * n - 2 - i;
    return i;
}

// ---- convolution as an indirect GEMM -----------------------------------------------------------
// out[co, p] = bias[co] + sum_k W[co, k] * base[off[k] + p]: the k-th "im2col row" of a pixel tile
// is read in place at offset off[k] (a row of a gathered pixel group for 1x1 convs, a shifted row
// of a reflect-padded row band for kxk convs), so no im2col matrix is ever written. Each output value
// is one sequential FMA chain over k plus the bias at the end, whatever the tiling or thread
// count, so results are bit-identical for any split.

}  // namespace

namespace detail {

std::vector<float> packWeights(const ConvWeights& conv, int K, int mr)
{
    const int blocks = (conv.cout + mr - 1) / mr;
    std::vector<float> packed(static_cast<size_t>(blocks) * K * mr, 0.f);
    for (int co = 0; co < conv.cout; ++co)
    {
        float* dst = packed.data() + static_cast<size_t>(co / mr) * K * mr + co % mr;
        const float* src = conv.weight + static_cast<size_t>(co) * K;
        for (int k = 0; k < K; ++k) dst[static_cast<size_t>(k) * mr] = src[k];
    }
    return packed;
}

}  // namespace detail

namespace {

using detail::GemmIsa;

// MR output channels x 16*NV pixels held in registers for the whole k loop, in vectors of the
// ISA's native width V (Vec16 = one zmm, Vec8 = one ymm, Vec4 = one xmm). A Vec16 in an AVX2 or
// baseline function is not split into registers by GCC: every accumulator lived on the stack and
// the AVX2 convolution ran 12x slower than the AVX-512 one (PERFORMANCE item 47).
template <class V, int MR, int NV>
NAF_ALWAYS_INLINE inline void microKernel(const float* packed, int K, const float* base, const ptrdiff_t* off,
                                          const float* bias, int rows, float* out, size_t ldo)
{
    constexpr int L = static_cast<int>(sizeof(V) / sizeof(float)), NVEC = 16 * NV / L;
    V acc[MR][NVEC];
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NVEC; ++v) acc[r][v] = V{};
    for (int k = 0; k < K; ++k)
    {
        const float* x = base + off[k];
        V xv[NVEC];
        for (int v = 0; v < NVEC; ++v) std::memcpy(&xv[v], x + L * v, sizeof(V));
        const float* w = packed + static_cast<size_t>(k) * MR;
        for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NVEC; ++v) acc[r][v] += w[r] * xv[v];
    }
    for (int r = 0; r < rows; ++r)
    {
        const float b = bias ? bias[r] : 0.f;
        for (int v = 0; v < NVEC; ++v)
        {
            const V result = acc[r][v] + b;
            std::memcpy(out + r * ldo + L * v, &result, sizeof(V));
        }
    }
}

// All output channels for np consecutive pixels: out[co * ldo + j], j < np.
template <class V, int MR, int NV>
NAF_ALWAYS_INLINE inline void gemmTileImpl(const float* packed, const ConvWeights& conv, int K, const float* base,
                                           const ptrdiff_t* off, int np, float* out, size_t ldo)
{
    // Tiles of 16*NV pixels, then of 16, then the last n < 16 pixels, copied into a zero-padded
    // [K][16] block and run as a 16-pixel tile (one pixel at a time, they took ~3/4 of a
    // Winograd task whose last chunk had 28 tiles: 500x500 cost 1.8x 448x448 per pixel).
    thread_local std::vector<float> tail;
    thread_local std::vector<ptrdiff_t> tailOff;
    for (int p = 0; p < np;)
    {
        const int n = np - p >= 16 * NV ? 16 * NV : (np - p >= 16 ? 16 : np - p);
        const float* tileBase = base + p;
        const ptrdiff_t* tileOff = off;
        if (n < 16)
        {
            tail.assign(static_cast<size_t>(K) * 16, 0.f);
            tailOff.resize(K);
            for (int k = 0; k < K; ++k)
            {
                std::memcpy(tail.data() + static_cast<size_t>(k) * 16, base + off[k] + p, sizeof(float) * n);
                tailOff[k] = static_cast<ptrdiff_t>(k) * 16;
            }
            tileBase = tail.data();
            tileOff = tailOff.data();
        }
        for (int co = 0; co < conv.cout; co += MR)
        {
            const float* pk = packed + static_cast<size_t>(co / MR) * K * MR;
            const float* bias = conv.bias ? conv.bias + co : nullptr;
            const int rows = std::min(MR, conv.cout - co);
            float* o = out + static_cast<size_t>(co) * ldo + p;
            if (n == 16 * NV)
                microKernel<V, MR, NV>(pk, K, tileBase, tileOff, bias, rows, o, ldo);
            else if (n == 16)
                microKernel<V, MR, 1>(pk, K, tileBase, tileOff, bias, rows, o, ldo);
            else
            {
                float block[MR * 16];
                microKernel<V, MR, 1>(pk, K, tileBase, tileOff, bias, rows, block, 16);
                for (int r = 0; r < rows; ++r) std::memcpy(o + r * ldo, block + r * 16, sizeof(float) * n);
            }
        }
        p += n;
    }
}

}  // namespace

namespace detail {

GemmIsa gemmIsa()
{
    if (cpuHasAvx512f()) return GemmIsa::Avx512;
    if (cpuHasAvx2Fma()) return GemmIsa::Avx2;
    return GemmIsa::Generic;
}

// Register blocking per ISA: 8x32 (16 zmm accumulators of 32), 4x16 (8 ymm of 16), 4x16 baseline (16 xmm of 16).
int gemmRows(GemmIsa isa) { return isa == GemmIsa::Avx512 ? 8 : 4; }

}  // namespace detail

namespace {

NAF_TARGET_AVX512 void gemmTileAvx512(const float* packed, const ConvWeights& conv, int K, const float* base,
                                      const ptrdiff_t* off, int np, float* out, size_t ldo)
{
    gemmTileImpl<Vec16, 8, 2>(packed, conv, K, base, off, np, out, ldo);
}

NAF_TARGET_AVX2 void gemmTileAvx2(const float* packed, const ConvWeights& conv, int K, const float* base,
                                  const ptrdiff_t* off, int np, float* out, size_t ldo)
{
    gemmTileImpl<Vec8, 4, 1>(packed, conv, K, base, off, np, out, ldo);
}

void gemmTileGeneric(const float* packed, const ConvWeights& conv, int K, const float* base, const ptrdiff_t* off,
                     int np, float* out, size_t ldo)
{
    gemmTileImpl<Vec4, 4, 1>(packed, conv, K, base, off, np, out, ldo);
}

}  // namespace

namespace detail {

void gemmTile(GemmIsa isa, const float* packed, const ConvWeights& conv, int K, const float* base, const ptrdiff_t* off,
              int np, float* out, size_t ldo)
{
    switch (isa)
    {
    case GemmIsa::Avx512: gemmTileAvx512(packed, conv, K, base, off, np, out, ldo); break;
    case GemmIsa::Avx2: gemmTileAvx2(packed, conv, K, base, off, np, out, ldo); break;
    default: gemmTileGeneric(packed, conv, K, base, off, np, out, ldo); break;
    }
}

}  // namespace detail

namespace {

using detail::gemmIsa;
using detail::gemmRows;
using detail::gemmTile;
using detail::packWeights;

constexpr int kPointTile = 512;   // pixels per 1x1-convolution task
constexpr int kPointGroup = 32;   // pixels per gathered group of a 1x1 task (the micro-kernel's width)

// Rows of a plane set whose runs are written with streamCopyRun (non-temporal whole lines,
// ordinary stores for a partial line at either end): a partial line must first be read for
// ownership, a DRAM miss per run end that the store waits on. Asking for those lines kWriteAhead
// runs early hides the wait: at 518x518, where no plane or row starts on a line, the 3x3
// Winograd convolution was 11 % slower per pixel than at 448 or 512 and is now on par
// (PERFORMANCE item 38). Whole lines are not touched (a line in cache would slow its streaming).
constexpr int kWriteAhead = 4;
inline void prefetchPartialLinesForWrite(const float* run, size_t n)
{
    if (!run || n == 0) return;
    if (reinterpret_cast<uintptr_t>(run) & 63) prefetchLineForWrite(run);
    if (reinterpret_cast<uintptr_t>(run + n) & 63) prefetchLineForWrite(run + n - 1);
}

// Whole lines with non-temporal stores (streamCopyAvx512 or streamCopyAvx2 by kAvx512).
template <bool kAvx512>
NAF_ALWAYS_INLINE inline void streamCopyRun(float* dst, const float* src, size_t n)
{
    if constexpr (kAvx512)
        streamCopyAvx512(dst, src, n);
    else
        streamCopyAvx2(dst, src, n);
}

// Defined with GroupNorm below: the np pixels from src (K channel planes hw apart) into
// ceil(np / kPointGroup) groups [K][kPointGroup] in dst, through silu(x * scale[c] + shift[c])
// when `activation` is given.
void gatherPointGroups(const float* src, size_t hw, int K, int np, const InputActivation* activation, float* dst);
// The reverse for the results: groups [rows][kPointGroup] -> dst rows hw apart, np pixels each.
void scatterPointGroups(const float* groups, int rows, int np, float* dst, size_t hw);

// ---- Winograd F(6x6, 3x3) for the wide 3x3 convolutions -------------------------------------------
// Per 6x6 output tile and channel pair, Y = A^T [(G g G^T) . (B^T d B)] A costs 64 multiplies
// instead of 324: the 64 element-wise products over the input channels become 64 GEMMs
// [cout x cin] x [cin x tiles] run by the same micro-kernel, with short linear transforms before
// (input) and after (output). Interpolation points 0, +-1, +-2, +-1/2 and infinity. Used for 3x3
// convolutions with at least kWinogradMinChannels inputs (the encoder blocks' 128 -> 128), where
// the GEMMs dominate; the results differ from the direct sum by rounding only (~2.4e-6 of the sum
// of the terms' magnitudes; tests bound it). F(4x4, 3x3), used before, needs 2.25 products per
// output instead of 1.78 and rounds about half as much; the convolution took 10-13 % longer
// (PERFORMANCE item 46). F(2x2, 3x3), before that, needed 4 (item 15).
constexpr int kWinogradMinChannels = 32;
constexpr int kWinogradTiles = 32;  // output tiles (along a tile row) per task: V stays near L2
constexpr int kSlabPad = 16;        // floats between the points' slabs of V and M

// Stride-6 (de)interleaving of 16 tiles on Vec16 for F(6x6), which GCC leaves scalar: 96
// consecutive floats a[0..5] <-> six phases p[k][jj] = a[6 jj + k], in two stages (stride 2, then
// stride 3): 18 two-source shuffles (vpermt2ps with AVX-512) per 96 floats, where one shuffle
// tree per phase took 30 (PERFORMANCE item 46).
// Vec16 is passed by reference: by value it is an AVX-512 register argument whose ABI GCC warns about.
template <class Lanes, size_t... I>
NAF_ALWAYS_INLINE inline void shuffleLanes(Vec16& out, const Vec16& a, const Vec16& b, std::index_sequence<I...>)
{
    out = __builtin_shufflevector(a, b, Lanes::at(static_cast<int>(I))...);  // 0-15: a, 16-31: b
}
template <class Lanes>
NAF_ALWAYS_INLINE inline void shuffleLanes(Vec16& out, const Vec16& a, const Vec16& b)
{
    shuffleLanes<Lanes>(out, a, b, std::make_index_sequence<16>{});
}
template <int Parity>
struct EveryOtherLane  // lane i: element 2 i + Parity of the 32 in (a, b)
{
    static constexpr int at(int i) { return 2 * i + Parity; }
};
template <int Phase>
struct EveryThirdFromFirstTwo  // lane i: element 3 i + Phase of (a, b) when below 32
{
    static constexpr int at(int i) { return 3 * i + Phase < 32 ? 3 * i + Phase : 0; }
};
template <int Phase>
struct EveryThirdWithThird  // lane i: element 3 i + Phase of 48 taken from the third vector b when >= 32
{
    static constexpr int at(int i) { return 3 * i + Phase >= 32 ? 3 * i + Phase - 32 + 16 : i; }
};
template <int Q>
struct InterleaveThreeFirstTwo  // lane i of output Q of a stride-3 interleave: phase (16Q+i)%3 in {0, 1}
{
    static constexpr int at(int i)
    {
        const int e = 16 * Q + i;
        return e % 3 == 0 ? e / 3 : (e % 3 == 1 ? 16 + e / 3 : 0);
    }
};
template <int Q>
struct InterleaveThreeWithThird  // ... phase 2 from b, the rest from a
{
    static constexpr int at(int i)
    {
        const int e = 16 * Q + i;
        return e % 3 == 2 ? 16 + e / 3 : i;
    }
};
template <int Half>
struct InterleaveTwo  // lanes 8 Half .. 8 Half + 7 of a and b, alternating
{
    static constexpr int at(int i) { return (i % 2 ? 16 : 0) + 8 * Half + i / 2; }
};

// p[k] (k < 3) = elements 3 jj + k of the 48 in x[0..2].
template <int K>
NAF_ALWAYS_INLINE inline void everyThird(const Vec16 x[3], Vec16& p)
{
    Vec16 firstTwo;
    shuffleLanes<EveryThirdFromFirstTwo<K>>(firstTwo, x[0], x[1]);
    shuffleLanes<EveryThirdWithThird<K>>(p, firstTwo, x[2]);
}
template <int Q>
NAF_ALWAYS_INLINE inline void interleaveThree(const Vec16 p[3], Vec16& x)
{
    Vec16 firstTwo;
    shuffleLanes<InterleaveThreeFirstTwo<Q>>(firstTwo, p[0], p[1]);
    shuffleLanes<InterleaveThreeWithThird<Q>>(x, firstTwo, p[2]);
}
// p[k][jj] = in[6 jj + k], jj < 16.
NAF_ALWAYS_INLINE inline void deinterleave6(const float* in, Vec16 p[6])
{
    Vec16 a[6], even[3], odd[3];
    for (int q = 0; q < 6; ++q) loadVec16(a[q], in + 16 * q);
    for (int q = 0; q < 3; ++q)
    {
        shuffleLanes<EveryOtherLane<0>>(even[q], a[2 * q], a[2 * q + 1]);
        shuffleLanes<EveryOtherLane<1>>(odd[q], a[2 * q], a[2 * q + 1]);
    }
    everyThird<0>(even, p[0]);
    everyThird<1>(even, p[2]);
    everyThird<2>(even, p[4]);
    everyThird<0>(odd, p[1]);
    everyThird<1>(odd, p[3]);
    everyThird<2>(odd, p[5]);
}
// out[6 jj + k] = p[k][jj], jj < 16.
NAF_ALWAYS_INLINE inline void interleave6(const Vec16 p[6], float* out)
{
    const Vec16 evenPhases[3] = {p[0], p[2], p[4]}, oddPhases[3] = {p[1], p[3], p[5]};
    Vec16 even[3], odd[3];
    interleaveThree<0>(evenPhases, even[0]);
    interleaveThree<1>(evenPhases, even[1]);
    interleaveThree<2>(evenPhases, even[2]);
    interleaveThree<0>(oddPhases, odd[0]);
    interleaveThree<1>(oddPhases, odd[1]);
    interleaveThree<2>(oddPhases, odd[2]);
    for (int q = 0; q < 3; ++q)
    {
        Vec16 half;
        shuffleLanes<InterleaveTwo<0>>(half, even[q], odd[q]);
        storeVec16(out + 32 * q, half);
        shuffleLanes<InterleaveTwo<1>>(half, even[q], odd[q]);
        storeVec16(out + 32 * q + 16, half);
    }
}

struct WinogradF6
{
    static constexpr int M = 6;
    static constexpr int N = 8;
    static constexpr int kPoints = N * N;

    // G (8x3): rows (1 0 0), -2/9 (1 1 1), -2/9 (1 -1 1), 1/90 (1 2 4), 1/90 (1 -2 4),
    // 8/45 (4 2 1), 8/45 (4 -2 1), (0 0 1).
    static void weightRow(const double g[3], double out[N])
    {
        out[0] = g[0];
        out[1] = -2 * (g[0] + g[1] + g[2]) / 9;
        out[2] = -2 * (g[0] - g[1] + g[2]) / 9;
        out[3] = (g[0] + 2 * g[1] + 4 * g[2]) / 90;
        out[4] = (g[0] - 2 * g[1] + 4 * g[2]) / 90;
        out[5] = 8 * (4 * g[0] + 2 * g[1] + g[2]) / 45;
        out[6] = 8 * (4 * g[0] - 2 * g[1] + g[2]) / 45;
        out[7] = g[2];
    }

    // B^T d: rows (1 0 -21/4 0 21/4 0 -1 0), (0 1 1 -17/4 -17/4 1 1 0), (0 -1 1 17/4 -17/4 -1 1 0),
    // (0 1/2 1/4 -5/2 -5/4 2 1 0), (0 -1/2 1/4 5/2 -5/4 -2 1 0), (0 2 4 -5/2 -5 1/2 1 0),
    // (0 -2 4 5/2 -5 -1/2 1 0), (0 -1 0 21/4 0 -21/4 0 1); rows 1-6 in pairs even +- odd part.
    NAF_ALWAYS_INLINE static void inputRow(const float d[N], float t[N])
    {
        const float a = d[2] + d[6] - 4.25f * d[4], b = d[1] + d[5] - 4.25f * d[3];
        const float c = d[6] + 0.25f * d[2] - 1.25f * d[4], e = 0.5f * d[1] - 2.5f * d[3] + 2.f * d[5];
        const float f = d[6] + 4.f * d[2] - 5.f * d[4], g = 2.f * d[1] - 2.5f * d[3] + 0.5f * d[5];
        t[0] = d[0] - d[6] + 5.25f * (d[4] - d[2]);
        t[1] = a + b;
        t[2] = a - b;
        t[3] = c + e;
        t[4] = c - e;
        t[5] = f + g;
        t[6] = f - g;
        t[7] = d[7] - d[1] + 5.25f * (d[3] - d[5]);
    }

    NAF_ALWAYS_INLINE static void inputColumns(const float (*h)[N][kWinogradTiles], int k, int nt, float* v,
                                               size_t vs)
    {
        columns(h[0][k], h[1][k], h[2][k], h[3][k], h[4][k], h[5][k], h[6][k], h[7][k], nt, v + (0 * N + k) * vs,
                v + (1 * N + k) * vs, v + (2 * N + k) * vs, v + (3 * N + k) * vs, v + (4 * N + k) * vs,
                v + (5 * N + k) * vs, v + (6 * N + k) * vs, v + (7 * N + k) * vs);
    }
    NAF_ALWAYS_INLINE static void columns(const float* h0, const float* h1, const float* h2, const float* h3,
                                          const float* h4, const float* h5, const float* h6, const float* h7, int nt,
                                          float* __restrict v0, float* __restrict v1, float* __restrict v2,
                                          float* __restrict v3, float* __restrict v4, float* __restrict v5,
                                          float* __restrict v6, float* __restrict v7)
    {
        for (int j = 0; j < nt; ++j)
        {
            const float d[N] = {h0[j], h1[j], h2[j], h3[j], h4[j], h5[j], h6[j], h7[j]};
            float t[N];
            inputRow(d, t);
            v0[j] = t[0];
            v1[j] = t[1];
            v2[j] = t[2];
            v3[j] = t[3];
            v4[j] = t[4];
            v5[j] = t[5];
            v6[j] = t[6];
            v7[j] = t[7];
        }
    }

    // The vector (de)interleaving is for AVX-512 only (kAvx512): a Vec16 is one register there, but
    // lives in memory in AVX2 and baseline functions, where the scalar loops measured faster.
    template <bool kAvx512>
    NAF_ALWAYS_INLINE static void phases(const float* in, int j0, int j1, float (*p)[kWinogradTiles + 1])
    {
        if (!kAvx512 || j1 - j0 + 1 < 16)
        {
            for (int j = j0; j <= j1; ++j)
                for (int k = 0; k < M; ++k) p[k][j] = in[M * j - 1 + k];
            return;
        }
        // Blocks of 16 tiles, the last one moved back to end at j1 (it rewrites the same values).
        for (int j = j0;; j += 16)
        {
            const int b = std::min(j, j1 - 15);
            Vec16 ph[6];
            deinterleave6(in + M * b - 1, ph);
            for (int k = 0; k < M; ++k) storeVec16(&p[k][b], ph[k]);
            if (b == j1 - 15) break;
        }
    }
    template <bool kAvx512>
    NAF_ALWAYS_INLINE static void interleave(const float (*out)[kWinogradTiles], int nt, float* line)
    {
        if (!kAvx512 || nt < 16)
        {
            for (int j = 0; j < nt; ++j)
                for (int c = 0; c < M; ++c) line[M * j + c] = out[c][j];
            return;
        }
        for (int j = 0;; j += 16)
        {
            const int b = std::min(j, nt - 16);  // the last block ends at nt (same values again)
            Vec16 ph[6];
            for (int c = 0; c < M; ++c) loadVec16(ph[c], &out[c][b]);
            interleave6(ph, line + M * b);
            if (b == nt - 16) break;
        }
    }

    // A^T m: rows (1 1 1 1 1 1 1 0), (0 1 -1 2 -2 1/2 -1/2 0), (0 1 1 4 4 1/4 1/4 0),
    // (0 1 -1 8 -8 1/8 -1/8 0), (0 1 1 16 16 1/16 1/16 0), (0 1 -1 32 -32 1/32 -1/32 1).
    NAF_ALWAYS_INLINE static void outputRow(const float m[N], float o[M])
    {
        const float s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
        const float s56 = m[5] + m[6], d56 = m[5] - m[6];
        o[0] = m[0] + s12 + s34 + s56;
        o[1] = d12 + 2.f * d34 + 0.5f * d56;
        o[2] = s12 + 4.f * s34 + 0.25f * s56;
        o[3] = d12 + 8.f * d34 + 0.125f * d56;
        o[4] = s12 + 16.f * s34 + 0.0625f * s56;
        o[5] = d12 + 32.f * d34 + 0.03125f * d56 + m[7];
    }
};

// U[xi] = (G g G^T)[xi / N][xi % N] per (co, ci), packed per point like packWeights: [xi][block of
// mr output channels][cin][mr].
std::vector<float> winogradWeights(const ConvWeights& conv, int mr)
{
    constexpr int N = WinogradF6::N;
    const int cout = conv.cout, cin = conv.cin;
    const int blocks = (cout + mr - 1) / mr;
    std::vector<float> packed(static_cast<size_t>(blocks) * WinogradF6::kPoints * cin * mr, 0.f);
    for (int co = 0; co < cout; ++co)
        for (int ci = 0; ci < cin; ++ci)
        {
            const float* g = conv.weight + (static_cast<size_t>(co) * cin + ci) * 9;
            double gg[N][3];  // G g: column c of g transformed
            for (int c = 0; c < 3; ++c)
            {
                const double column[3] = {g[c], g[3 + c], g[6 + c]};
                double t[N];
                WinogradF6::weightRow(column, t);
                for (int r = 0; r < N; ++r) gg[r][c] = t[r];
            }
            for (int r = 0; r < N; ++r)
            {
                double u[N];  // (G g) G^T, row r
                WinogradF6::weightRow(gg[r], u);
                for (int c = 0; c < N; ++c)
                {
                    const size_t xi = static_cast<size_t>(r) * N + c;
                    const size_t at = ((xi * blocks + static_cast<size_t>(co / mr)) * cin + ci) * mr + co % mr;
                    packed[at] = static_cast<float>(u[c]);
                }
            }
        }
    return packed;
}

// An input column (or row) index for tile data: reflect padded at -1 and n; further out the value
// only feeds outputs past the image, which are dropped, so any in-range index serves.
inline int tileIndex(int i, int n) { return std::max(0, std::min(reflectIndex(i, n), n - 1)); }

// Input transform of one channel for the nt tiles of a task. rows[r] are the N input rows of the
// tile row; tile j spans columns M (t0 + j) - 1 ... + M, split into M phases
// p[k][j] = row[M (t0 + j) - 1 + k], so tile j is p0..p(M-1)[j], p0[j + 1], p1[j + 1] and every
// loop below is contiguous. v[xi * vStride + j] = (B^T d B)[xi].
template <bool kAvx512>
NAF_ALWAYS_INLINE inline void winogradInputImpl(const float* const rows[WinogradF6::N], int w, int t0, int nt, float* v,
                                                size_t vStride)
{
    constexpr int M = WinogradF6::M, N = WinogradF6::N;
    float h[N][N][kWinogradTiles];  // [input row][column component][tile]
    // Phases read without reflection: M (t0 + j) - 1 >= 0 and M (t0 + j) + M - 2 <= w - 1.
    const int jLo = t0 == 0 ? 1 : 0;
    const int lastTile = w - M + 1 >= 0 ? (w - M + 1) / M : -1;  // last t0 + j that needs no reflection
    const int jHi = std::min(nt, lastTile - t0);
    for (int r = 0; r < N; ++r)
    {
        float p[M][kWinogradTiles + 1];
        const float* row = rows[r];
        auto reflected = [&](int j) {
            for (int k = 0; k < M; ++k) p[k][j] = row[tileIndex(M * (t0 + j) - 1 + k, w)];
        };
        for (int j = 0; j < std::min(jLo, nt + 1); ++j) reflected(j);
        for (int j = std::max(jHi + 1, 0); j <= nt; ++j) reflected(j);
        WinogradF6::phases<kAvx512>(row + M * t0, jLo, jHi, p);
        for (int j = 0; j < nt; ++j)
        {
            float d[N], t[N];
            for (int k = 0; k < M; ++k) d[k] = p[k][j];
            d[M] = p[0][j + 1];
            d[M + 1] = p[1][j + 1];
            WinogradF6::inputRow(d, t);
            for (int k = 0; k < N; ++k) h[r][k][j] = t[k];
        }
    }
    for (int k = 0; k < N; ++k) WinogradF6::inputColumns(h, k, nt, v, vStride);
}

// Output transform of one output channel: m[xi * mStride + j] -> the tile row's M output rows
// plus bias; y[i] is null for rows past the image, and columns from `cols` on are dropped.
// kStream: each row's run goes out through streamCopyAvx512 (kAvx512) or streamCopyAvx2 (the next
// layer reads it much later, from DRAM anyway): 5-9 % of the convolution with AVX-512 (PERFORMANCE
// items 23, 31), 4-9 % with AVX2 (item 50). The caller fences.
template <bool kAvx512, bool kStream>
NAF_ALWAYS_INLINE inline void winogradOutputImpl(const float* m, size_t mStride, int nt, float bias,
                                                 float* const y[WinogradF6::M], int cols)
{
    constexpr int M = WinogradF6::M, N = WinogradF6::N;
    float s[M][N][kWinogradTiles];  // A^T over the rows: [output row][column component][tile]
    for (int k = 0; k < N; ++k)
        for (int j = 0; j < nt; ++j)
        {
            float column[N], o[M];
            for (int r = 0; r < N; ++r) column[r] = m[(r * N + k) * mStride + j];
            WinogradF6::outputRow(column, o);
            for (int i = 0; i < M; ++i) s[i][k][j] = o[i];
        }
    for (int i = 0; i < M; ++i)
    {
        if (!y[i]) continue;
        float out[M][kWinogradTiles];
        for (int j = 0; j < nt; ++j)
        {
            float row[N], o[M];
            for (int k = 0; k < N; ++k) row[k] = s[i][k][j];
            WinogradF6::outputRow(row, o);
            for (int c = 0; c < M; ++c) out[c][j] = o[c] + bias;
        }
        // Tiles interleaved into the row's run, then copied up to the image's edge (a last tile
        // past it keeps only its first columns). One path for whole and cut runs: with tasks
        // that continue on the next tile row, a run ending at the edge can hold 32 tiles.
        float line[M * kWinogradTiles];
        WinogradF6::interleave<kAvx512>(out, nt, line);
        const int n = std::min(cols, M * nt);
        if constexpr (kStream)
            streamCopyRun<kAvx512>(y[i], line, static_cast<size_t>(n));
        else
            std::copy(line, line + n, y[i]);
    }
}

// Per-ISA copies of the transforms (the same source compiled for AVX-512, AVX2 and the baseline).
struct WinogradTransforms
{
    static constexpr int M = WinogradF6::M, N = WinogradF6::N;

    NAF_TARGET_AVX512 static void inputAvx512(const float* const r[N], int w, int t0, int nt, float* v, size_t vs)
    {
        winogradInputImpl<true>(r, w, t0, nt, v, vs);
    }
    NAF_TARGET_AVX2 static void inputAvx2(const float* const r[N], int w, int t0, int nt, float* v, size_t vs)
    {
        winogradInputImpl<false>(r, w, t0, nt, v, vs);
    }
    static void inputGeneric(const float* const r[N], int w, int t0, int nt, float* v, size_t vs)
    {
        winogradInputImpl<false>(r, w, t0, nt, v, vs);
    }
    NAF_TARGET_AVX512 static void outputAvx512(const float* m, size_t ms, int nt, float b, float* const y[M], int c)
    {
        winogradOutputImpl<true, true>(m, ms, nt, b, y, c);
    }
    NAF_TARGET_AVX2 static void outputAvx2(const float* m, size_t ms, int nt, float b, float* const y[M], int c)
    {
        winogradOutputImpl<false, true>(m, ms, nt, b, y, c);
    }
    static void outputGeneric(const float* m, size_t ms, int nt, float b, float* const y[M], int c)
    {
        winogradOutputImpl<false, false>(m, ms, nt, b, y, c);
    }
    static void input(GemmIsa isa, const float* const r[N], int w, int t0, int nt, float* v, size_t vs)
    {
        switch (isa)
        {
        case GemmIsa::Avx512: inputAvx512(r, w, t0, nt, v, vs); break;
        case GemmIsa::Avx2: inputAvx2(r, w, t0, nt, v, vs); break;
        default: inputGeneric(r, w, t0, nt, v, vs); break;
        }
    }
    static void output(GemmIsa isa, const float* m, size_t ms, int nt, float b, float* const y[M], int c)
    {
        switch (isa)
        {
        case GemmIsa::Avx512: outputAvx512(m, ms, nt, b, y, c); break;
        case GemmIsa::Avx2: outputAvx2(m, ms, nt, b, y, c); break;
        default: outputGeneric(m, ms, nt, b, y, c); break;
        }
    }
};

// One task = up to kWinogradTiles consecutive tiles: transform every input channel into V
// [points][cin][tiles], run the GEMMs [cout x cin] x [cin x tiles] into M [points][cout][tiles],
// then the output transform. Each V[xi] (16 KB at 128 channels) stays in L1 for all output
// channels; running the points per 8-channel block instead, with M in L1, measured the same
// (PERFORMANCE item 15).
void conv3x3Winograd(const float* src, int h, int w, const ConvWeights& conv, const std::vector<float>& packed,
                     float* dst, const ParallelFor& parallel)
{
    constexpr int M = WinogradF6::M, N = WinogradF6::N, kPoints = WinogradF6::kPoints;
    const GemmIsa isa = gemmIsa();
    const int mr = gemmRows(isa);
    const int cin = conv.cin, cout = conv.cout;
    const size_t perPoint = static_cast<size_t>((cout + mr - 1) / mr) * cin * mr;  // packed weights of a point
    const ConvWeights shape{conv.weight, nullptr, cout, cin, 1};  // gemmTile reads cout and bias only
    const int tileRows = (h + M - 1) / M, tileCols = (w + M - 1) / M;
    const int64_t totalTiles = static_cast<int64_t>(tileRows) * tileCols;
    const size_t hw = static_cast<size_t>(h) * w;
    std::vector<ptrdiff_t> off(cin);
    for (int ci = 0; ci < cin; ++ci) off[ci] = static_cast<ptrdiff_t>(ci) * kWinogradTiles;
    // One point's slab of V (and of M) is [cin][32 tiles], a multiple of 4 KB: the transforms, which
    // touch all the slabs at once, would hit the same L1 sets in every slab. A 64-byte pad spreads
    // them (PERFORMANCE item 25).
    const size_t vs = static_cast<size_t>(cin) * kWinogradTiles + kSlabPad;
    const size_t ms = static_cast<size_t>(cout) * kWinogradTiles + kSlabPad;
    // A task is 32 consecutive tiles in raster order, so it may continue on the next tile row
    // (a segment per tile row): with tasks cut at row ends, a row of 130 tiles (518 pixels) ended
    // in a 2-tile task whose GEMM ran 16 columns, 11 % more GEMM work (PERFORMANCE item 33).
    struct Segment
    {
        int ty, t0, nt, offset;  // tile row, first tile in it, tiles, first column of the task's V/M
        int firstCol, lastCol;   // input columns the tiles read
        size_t rowOffset[N];     // input rows of the tile row, reflect padded
    };
    parallel((totalTiles + kWinogradTiles - 1) / kWinogradTiles, [&](int64_t begin, int64_t end) {
        thread_local std::vector<float> v, m;
        v.resize(static_cast<size_t>(kPoints) * vs);
        m.resize(static_cast<size_t>(kPoints) * ms);
        Segment segments[kWinogradTiles];
        for (int64_t task = begin; task < end; ++task)
        {
            const int64_t first = task * kWinogradTiles;
            const int nt = static_cast<int>(std::min<int64_t>(kWinogradTiles, totalTiles - first));
            int segmentCount = 0;
            for (int done = 0; done < nt; ++segmentCount)
            {
                Segment& sg = segments[segmentCount];
                sg.ty = static_cast<int>((first + done) / tileCols);
                sg.t0 = static_cast<int>((first + done) % tileCols);
                sg.nt = std::min(nt - done, tileCols - sg.t0);
                sg.offset = done;
                sg.firstCol = std::max(0, M * sg.t0 - 1);
                sg.lastCol = std::min(w - 1, M * (sg.t0 + sg.nt) + 1);
                for (int r = 0; r < N; ++r) sg.rowOffset[r] = static_cast<size_t>(tileIndex(M * sg.ty - 1 + r, h)) * w;
                done += sg.nt;
            }
            // The rows of the channel two ahead are requested while this one is transformed: each
            // row run is only a few hundred bytes, too short for the hardware prefetchers
            // (2016x2016 -8 %, 448x448 -2 %: item 27).
            for (int ci = 0; ci < cin; ++ci)
                for (int si = 0; si < segmentCount; ++si)
                {
                    const Segment& sg = segments[si];
                    if (ci + 2 < cin)
                    {
                        const float* ahead = src + (ci + 2) * hw;
                        for (int r = 0; r < N; ++r)
                        {
                            const float* row = ahead + sg.rowOffset[r];
                            for (int x = sg.firstCol; x <= sg.lastCol; x += 16) __builtin_prefetch(row + x, 0, 3);
                            __builtin_prefetch(row + sg.lastCol, 0, 3);
                        }
                    }
                    const float* plane = src + ci * hw;
                    const float* rows[N];
                    for (int r = 0; r < N; ++r) rows[r] = plane + sg.rowOffset[r];
                    WinogradTransforms::input(isa, rows, w, sg.t0, sg.nt,
                                      v.data() + static_cast<size_t>(ci) * kWinogradTiles + sg.offset, vs);
                }
            for (int xi = 0; xi < kPoints; ++xi)
                gemmTile(isa, packed.data() + xi * perPoint, shape, cin, v.data() + xi * vs, off.data(), nt,
                         m.data() + xi * ms, kWinogradTiles);
            for (int co = 0; co < cout; ++co)
                for (int si = 0; si < segmentCount; ++si)
                {
                    const Segment& sg = segments[si];
                    const int y0 = M * sg.ty;
                    if (co + kWriteAhead < cout)
                        for (int i = 0; i < M && y0 + i < h; ++i)
                            prefetchPartialLinesForWrite(
                                dst + (co + kWriteAhead) * hw + static_cast<size_t>(y0 + i) * w + M * sg.t0,
                                static_cast<size_t>(std::min(w - M * sg.t0, M * sg.nt)));
                    float* y[M];
                    for (int i = 0; i < M; ++i)
                        y[i] = y0 + i < h ? dst + co * hw + static_cast<size_t>(y0 + i) * w + M * sg.t0 : nullptr;
                    WinogradTransforms::output(isa, m.data() + static_cast<size_t>(co) * kWinogradTiles + sg.offset, ms,
                                       sg.nt, conv.bias ? conv.bias[co] : 0.f, y, std::min(w - M * sg.t0, M * sg.nt));
                }
            if (isa != GemmIsa::Generic) storeFence();  // the output's non-temporal stores
        }
    });
}
// The GEMM layout of conv's weights (Winograd-transformed when `winograd`): from `cache` when
// it holds them for the same address, shape and values, else packed (into the cache when given,
// else into `uncached`).
const std::vector<float>& packedWeights(const ConvWeights& conv, bool winograd, std::vector<PackedConvWeights>* cache,
                                        std::vector<float>& uncached)
{
    const int mr = gemmRows(gemmIsa());
    auto pack = [&] {
        if (!winograd) return packWeights(conv, conv.cin * conv.k * conv.k, mr);
        return winogradWeights(conv, mr);
    };
    if (!cache)
    {
        uncached = pack();
        return uncached;
    }
    const size_t count = static_cast<size_t>(conv.cout) * conv.cin * conv.k * conv.k;
    for (PackedConvWeights& entry : *cache)
        if (entry.source == conv.weight && entry.cout == conv.cout && entry.cin == conv.cin && entry.k == conv.k)
        {
            if (std::memcmp(entry.original.data(), conv.weight, count * sizeof(float)) != 0)
            {
                entry.original.assign(conv.weight, conv.weight + count);
                entry.packed = pack();
            }
            return entry.packed;
        }
    PackedConvWeights entry;
    entry.source = conv.weight;
    entry.cout = conv.cout;
    entry.cin = conv.cin;
    entry.k = conv.k;
    entry.original.assign(conv.weight, conv.weight + count);
    entry.packed = pack();
    cache->push_back(std::move(entry));
    return cache->back().packed;
}
}  // namespace

// ---- resize ------------------------------------------------------------------------------------

void resizeBilinear(const float* src, int planes, int srcH, int srcW, float* dst, int dstH, int dstW,
                    const ParallelFor& parallel)
{
    if (srcH <= 0 || srcW <= 0 || dstH <= 0 || dstW <= 0 || planes <= 0)
        throw std::invalid_argument("resizeBilinear: sizes must be positive");
    // Per-axis source positions (PyTorch area_pixel_compute_source_index, align_corners=False).
    auto axis = [](int inLen, int outLen, std::vector<int>& i0, std::vector<int>& i1, std::vector<float>& l1) {
        const float scale = static_cast<float>(inLen) / static_cast<float>(outLen);
        i0.resize(outLen);
        i1.resize(outLen);
        l1.resize(outLen);
        for (int o = 0; o < outLen; ++o)
        {
            float s = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
            if (s < 0.f) s = 0.f;
            int a = static_cast<int>(s);
            if (a > inLen - 1) a = inLen - 1;
            i0[o] = a;
            i1[o] = a < inLen - 1 ? a + 1 : a;
            l1[o] = s - static_cast<float>(a);
        }
    };
    std::vector<int> y0, y1, x0, x1;
    std::vector<float> ly, lx;
    axis(srcH, dstH, y0, y1, ly);
    axis(srcW, dstW, x0, x1, lx);
    parallel(static_cast<int64_t>(planes) * dstH, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
        {
            const int plane = static_cast<int>(r / dstH), y = static_cast<int>(r % dstH);
            const float* s = src + static_cast<size_t>(plane) * srcH * srcW;
            const float* row0 = s + static_cast<size_t>(y0[y]) * srcW;
            const float* row1 = s + static_cast<size_t>(y1[y]) * srcW;
            const float wy1 = ly[y], wy0 = 1.f - wy1;
            float* d = dst + (static_cast<size_t>(plane) * dstH + y) * dstW;
            for (int x = 0; x < dstW; ++x)
            {
                const float wx1 = lx[x], wx0 = 1.f - wx1;
                d[x] = wy0 * (wx0 * row0[x0[x]] + wx1 * row0[x1[x]]) + wy1 * (wx0 * row1[x0[x]] + wx1 * row1[x1[x]]);
            }
        }
    });
}

// ---- convolution -------------------------------------------------------------------------------

void conv2dReflect(const float* src, int h, int w, const ConvWeights& conv, float* dst, const ParallelFor& parallel,
                   std::vector<PackedConvWeights>* cache, const InputActivation* activation)
{
    if (activation && (conv.k != 1 || !activation->scale || !activation->shift))
        throw std::invalid_argument("conv2dReflect: an input activation needs a 1x1 convolution and both of its maps "
                                    "(k=" + std::to_string(conv.k) + ")");
    if (!conv.weight || conv.cout <= 0 || conv.cin <= 0 || conv.k <= 0 || conv.k % 2 == 0)
        throw std::invalid_argument("conv2dReflect: invalid convolution parameters (k=" + std::to_string(conv.k) +
                                    ")");
    const int pad = conv.k / 2;
    if (h <= pad || w <= pad)
        throw std::invalid_argument("conv2dReflect: reflect padding " + std::to_string(pad) + " needs an input larger "
                                    "than " + std::to_string(pad) + " on both axes, got " + std::to_string(h) + "x" +
                                    std::to_string(w));
    const bool winograd = conv.k == 3 && conv.cin >= kWinogradMinChannels && h >= 4 && w >= 4;
    std::vector<float> uncached;
    const std::vector<float>& packed = packedWeights(conv, winograd, cache, uncached);
    if (winograd)
    {
        conv3x3Winograd(src, h, w, conv, packed, dst, parallel);
        return;
    }
    const size_t hw = static_cast<size_t>(h) * w;
    const int K = conv.cin * conv.k * conv.k;
    const GemmIsa isa = gemmIsa();
    if (conv.k == 1)
    {
        // 1x1: a task's pixels are gathered first, channel by channel, into contiguous [K][32]
        // groups (through the previous GroupNorm+SiLU when there is one, which saves its in-place
        // pass over the tensor: PERFORMANCE item 21); the GEMM reads the groups from cache and
        // writes [cout][32] groups, which go out channel by channel, non-temporal where aligned.
        // Read and written in place, a tile's rows lie one channel plane apart: K + cout streams
        // of 128 bytes that wait on DRAM latency; now each plane sees one 2 KB run per task
        // (PERFORMANCE item 23: 9-43 % off a 128 -> 128 convolution, more at larger planes).
        std::vector<ptrdiff_t> off(K);
        for (int ci = 0; ci < K; ++ci) off[ci] = static_cast<ptrdiff_t>(ci) * kPointGroup;
        const int64_t tasks = static_cast<int64_t>((hw + kPointTile - 1) / kPointTile);
        parallel(tasks, [&](int64_t begin, int64_t end) {
            thread_local std::vector<float> groups, results;
            groups.resize(static_cast<size_t>(K) * kPointTile);
            results.resize(static_cast<size_t>(conv.cout) * kPointTile);
            for (int64_t t = begin; t < end; ++t)
            {
                const size_t p0 = static_cast<size_t>(t) * kPointTile;
                const int np = static_cast<int>(std::min<size_t>(kPointTile, hw - p0));
                gatherPointGroups(src + p0, hw, K, np, activation, groups.data());
                for (int g0 = 0; g0 < np; g0 += kPointGroup)
                    gemmTile(isa, packed.data(), conv, K, groups.data() + static_cast<size_t>(g0) * K, off.data(),
                             std::min(kPointGroup, np - g0), results.data() + static_cast<size_t>(g0) * conv.cout,
                             kPointGroup);
                scatterPointGroups(results.data(), conv.cout, np, dst + p0, hw);
            }
        });
        return;
    }
    // kxk: one task per output row. Its k input rows are copied, reflect padded to w + 2 pad
    // columns, into a band [cin][k][w + 2 pad]; the k-th im2col row of a pixel tile is then a
    // shifted run of the band.
    const int paddedW = w + 2 * pad;
    std::vector<ptrdiff_t> off(K);
    for (int ci = 0; ci < conv.cin; ++ci)
        for (int ky = 0; ky < conv.k; ++ky)
            for (int kx = 0; kx < conv.k; ++kx)
                off[(ci * conv.k + ky) * conv.k + kx] = static_cast<ptrdiff_t>(ci * conv.k + ky) * paddedW + kx;
    parallel(h, [&](int64_t begin, int64_t end) {
        thread_local std::vector<float> band;
        band.resize(static_cast<size_t>(conv.cin) * conv.k * paddedW);
        for (int64_t y = begin; y < end; ++y)
        {
            for (int ci = 0; ci < conv.cin; ++ci)
                for (int ky = 0; ky < conv.k; ++ky)
                {
                    const float* row =
                        src + ci * hw + static_cast<size_t>(reflectIndex(static_cast<int>(y) + ky - pad, h)) * w;
                    float* b = band.data() + static_cast<size_t>(ci * conv.k + ky) * paddedW;
                    std::copy(row, row + w, b + pad);
                    for (int i = 1; i <= pad; ++i)
                    {
                        b[pad - i] = row[i];
                        b[pad + w - 1 + i] = row[w - 1 - i];
                    }
                }
            gemmTile(isa, packed.data(), conv, K, band.data(), off.data(), w, dst + static_cast<size_t>(y) * w, hw);
        }
    });
}

// ---- GroupNorm + SiLU --------------------------------------------------------------------------

namespace {

// Double vectors of 8, 4 and 2 lanes (one zmm, ymm or xmm) and the float vectors they convert from.
typedef float Vec8f __attribute__((vector_size(32)));
typedef double Vec8d __attribute__((vector_size(64)));
typedef float Vec4f __attribute__((vector_size(16)));
typedef double Vec4d __attribute__((vector_size(32)));
typedef float Vec2f __attribute__((vector_size(8)));
typedef double Vec2d __attribute__((vector_size(16)));
template <class VD>
struct FloatsOf;
template <>
struct FloatsOf<Vec8d>
{
    typedef Vec8f type;
};
template <>
struct FloatsOf<Vec4d>
{
    typedef Vec4f type;
};
template <>
struct FloatsOf<Vec2d>
{
    typedef Vec2f type;
};

// Sums of d = p[i] - shift and of d^2 over n floats in one pass, in double, with 8 lane accumulators
// combined in a fixed order (the order depends on n only, never on threads, nor on the ISA: VD,
// the native double vector, holds 8, 4 or 2 of the 8 lanes). The caller shifts by
// a value of the data, so the variance sum/n - (sum/n)^2 does not cancel: its relative error is
// ~1e-16 x (mean - shift)^2 / variance.
template <class VD>
NAF_ALWAYS_INLINE inline void shiftedSumsImpl(const float* p, size_t n, double shift, double* sum, double* squares)
{
    typedef typename FloatsOf<VD>::type VF;
    constexpr int D = static_cast<int>(sizeof(VD) / sizeof(double)), A = 8 / D;
    VD acc[A] = {}, acc2[A] = {};
    const VD m = VD{} + shift;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int a = 0; a < A; ++a)
        {
            VF f;
            std::memcpy(&f, p + i + a * D, sizeof f);
            const VD d = __builtin_convertvector(f, VD) - m;
            acc[a] += d;
            acc2[a] += d * d;
        }
    double total = 0, total2 = 0;
    for (int a = 0; a < A; ++a)
        for (int l = 0; l < D; ++l)
        {
            total += acc[a][l];
            total2 += acc2[a][l];
        }
    for (; i < n; ++i)
    {
        const double d = p[i] - shift;
        total += d;
        total2 += d * d;
    }
    *sum = total;
    *squares = total2;
}

// dst[i] = silu(src[i] * scale + shift), vectorized on V (Vec16, Vec8 or Vec4 by ISA; expVec
// performs the same operations per lane at every width, and the tail uses the same formula, so
// each element's result does not depend on where a run starts); src == dst is the in-place
// GroupNorm apply, src != dst the 1x1 convolution's activated copy of its input: the same code,
// so the same bits.
template <class V>
NAF_ALWAYS_INLINE inline void affineSiLUImpl(const float* src, float* dst, size_t n, float scale, float shift)
{
    constexpr size_t L = sizeof(V) / sizeof(float);
    size_t i = 0;
    for (; i + L <= n; i += L)
    {
        V v;
        std::memcpy(&v, src + i, sizeof v);
        v = v * scale + shift;
        V e;
        expVec(e, -v);
        v = v / (1.f + e);
        std::memcpy(dst + i, &v, sizeof v);
    }
    if (i < n)
    {
        V v = {};
        std::memcpy(&v, src + i, (n - i) * sizeof(float));
        v = v * scale + shift;
        V e;
        expVec(e, -v);
        v = v / (1.f + e);
        std::memcpy(dst + i, &v, (n - i) * sizeof(float));
    }
}

// rows x n block: dst[r * dstStride + i] = silu(src[r * srcStride + i] * scale[r] + shift[r]).
template <class V>
NAF_ALWAYS_INLINE inline void affineSiLURowsImpl(const float* src, size_t srcStride, int rows, size_t n,
                                                 const float* scale, const float* shift, float* dst, size_t dstStride)
{
    for (int r = 0; r < rows; ++r) affineSiLUImpl<V>(src + r * srcStride, dst + r * dstStride, n, scale[r], shift[r]);
}

// Channel by channel, so each plane is read as one run of np values (see conv2dReflect's 1x1 path).
template <class V>
NAF_ALWAYS_INLINE inline void gatherPointGroupsImpl(const float* src, size_t hw, int K, int np,
                                                    const InputActivation* activation, float* dst)
{
    for (int ci = 0; ci < K; ++ci)
    {
        const float* row = src + static_cast<size_t>(ci) * hw;
        // Each plane's run is short (2 KB): the hardware prefetchers barely start on one before it
        // ends, so the run two channels ahead is requested now (1x1 convolution -20 %, item 27).
        if (ci + 2 < K)
            for (int x = 0; x < np; x += 16) __builtin_prefetch(row + 2 * hw + x, 0, 3);
        float* group = dst + static_cast<size_t>(ci) * kPointGroup;
        const size_t groupStride = static_cast<size_t>(K) * kPointGroup;
        for (int g0 = 0; g0 < np; g0 += kPointGroup, group += groupStride)
        {
            const size_t n = static_cast<size_t>(std::min(kPointGroup, np - g0));
            if (activation)
                affineSiLUImpl<V>(row + g0, group, n, activation->scale[ci], activation->shift[ci]);
            else
                std::memcpy(group, row + g0, n * sizeof(float));
        }
    }
}

NAF_ALWAYS_INLINE inline void scatterPointGroupsImpl(const float* groups, int rows, int np, float* dst, size_t hw)
{
    for (int r = 0; r < rows; ++r)
    {
        float* row = dst + static_cast<size_t>(r) * hw;
        for (int g0 = 0; g0 < np; g0 += kPointGroup)
            std::memcpy(row + g0, groups + (static_cast<size_t>(g0) * rows + r * kPointGroup),
                        sizeof(float) * std::min(kPointGroup, np - g0));
    }
}

template <bool kAvx512>
NAF_ALWAYS_INLINE inline void scatterPointGroupsStreamed(const float* groups, int rows, int np, float* dst, size_t hw)
{
    alignas(64) float run[kPointTile];
    for (int r = 0; r < rows; ++r)
    {
        float* row = dst + static_cast<size_t>(r) * hw;
        prefetchPartialLinesForWrite(r + kWriteAhead < rows ? row + kWriteAhead * hw : nullptr, np);
        if ((reinterpret_cast<uintptr_t>(row) & 63) == 0)
        {
            // Every 32-pixel group is two whole lines.
            for (int g0 = 0; g0 < np; g0 += kPointGroup)
                streamCopyRun<kAvx512>(row + g0, groups + (static_cast<size_t>(g0) * rows + r * kPointGroup),
                                       static_cast<size_t>(std::min(kPointGroup, np - g0)));
            continue;
        }
        // A plane that does not start on a line (widths like 518): copied group by group, each
        // group's last line would be written twice, each time partly, and read for ownership
        // once more; joined into one run first, only its two end lines are partial.
        for (int g0 = 0; g0 < np; g0 += kPointGroup)
            std::memcpy(run + g0, groups + (static_cast<size_t>(g0) * rows + r * kPointGroup),
                        sizeof(float) * std::min(kPointGroup, np - g0));
        streamCopyRun<kAvx512>(row, run, static_cast<size_t>(np));
    }
    storeFence();
}

NAF_TARGET_AVX512 void scatterPointGroupsAvx512(const float* groups, int rows, int np, float* dst, size_t hw)
{
    scatterPointGroupsStreamed<true>(groups, rows, np, dst, hw);
}
// With AVX2 too: 1x1 convolution 4-9 % (PERFORMANCE item 50).
NAF_TARGET_AVX2 void scatterPointGroupsAvx2(const float* groups, int rows, int np, float* dst, size_t hw)
{
    scatterPointGroupsStreamed<false>(groups, rows, np, dst, hw);
}

NAF_TARGET_AVX512 void shiftedSumsAvx512(const float* p, size_t n, double shift, double* s, double* s2)
{
    shiftedSumsImpl<Vec8d>(p, n, shift, s, s2);
}
NAF_TARGET_AVX2 void shiftedSumsAvx2(const float* p, size_t n, double shift, double* s, double* s2)
{
    shiftedSumsImpl<Vec4d>(p, n, shift, s, s2);
}
void shiftedSumsGeneric(const float* p, size_t n, double shift, double* s, double* s2)
{
    shiftedSumsImpl<Vec2d>(p, n, shift, s, s2);
}
NAF_TARGET_AVX512 void affineSiLURowsAvx512(const float* s, size_t ss, int r, size_t n, const float* a, const float* b,
                                            float* d, size_t ds)
{
    affineSiLURowsImpl<Vec16>(s, ss, r, n, a, b, d, ds);
}
NAF_TARGET_AVX2 void affineSiLURowsAvx2(const float* s, size_t ss, int r, size_t n, const float* a, const float* b,
                                        float* d, size_t ds)
{
    affineSiLURowsImpl<Vec8>(s, ss, r, n, a, b, d, ds);
}
NAF_TARGET_AVX512 void gatherPointGroupsAvx512(const float* s, size_t hw, int K, int np, const InputActivation* a,
                                               float* d)
{
    gatherPointGroupsImpl<Vec16>(s, hw, K, np, a, d);
}
NAF_TARGET_AVX2 void gatherPointGroupsAvx2(const float* s, size_t hw, int K, int np, const InputActivation* a, float* d)
{
    gatherPointGroupsImpl<Vec8>(s, hw, K, np, a, d);
}
void gatherPointGroupsGeneric(const float* s, size_t hw, int K, int np, const InputActivation* a, float* d)
{
    gatherPointGroupsImpl<Vec4>(s, hw, K, np, a, d);
}
void affineSiLURowsGeneric(const float* s, size_t ss, int r, size_t n, const float* a, const float* b, float* d,
                           size_t ds)
{
    affineSiLURowsImpl<Vec4>(s, ss, r, n, a, b, d, ds);
}

void shiftedSums(const float* p, size_t n, double shift, double* sum, double* squares)
{
    if (cpuHasAvx512f())
        shiftedSumsAvx512(p, n, shift, sum, squares);
    else if (cpuHasAvx2Fma())
        shiftedSumsAvx2(p, n, shift, sum, squares);
    else
        shiftedSumsGeneric(p, n, shift, sum, squares);
}

void scatterPointGroups(const float* groups, int rows, int np, float* dst, size_t hw)
{
    if (cpuHasAvx512f())
        scatterPointGroupsAvx512(groups, rows, np, dst, hw);
    else if (cpuHasAvx2Fma())
        scatterPointGroupsAvx2(groups, rows, np, dst, hw);
    else
        scatterPointGroupsImpl(groups, rows, np, dst, hw);
}

// sums[x] = sum over the `rows` rows (w apart) of rows[y * w + x], in double.
NAF_ALWAYS_INLINE inline void columnSumsImpl(const float* rows, size_t w, int count, double* sums)
{
    std::fill(sums, sums + w, 0.0);
    for (int y = 0; y < count; ++y)
    {
        const float* row = rows + static_cast<size_t>(y) * w;
        for (size_t x = 0; x < w; ++x) sums[x] += row[x];
    }
}
NAF_TARGET_AVX512 void columnSumsAvx512(const float* r, size_t w, int n, double* s) { columnSumsImpl(r, w, n, s); }
NAF_TARGET_AVX2 void columnSumsAvx2(const float* r, size_t w, int n, double* s) { columnSumsImpl(r, w, n, s); }
void columnSumsGeneric(const float* r, size_t w, int n, double* s) { columnSumsImpl(r, w, n, s); }

void columnSums(const float* rows, size_t w, int count, double* sums)
{
    if (cpuHasAvx512f())
        columnSumsAvx512(rows, w, count, sums);
    else if (cpuHasAvx2Fma())
        columnSumsAvx2(rows, w, count, sums);
    else
        columnSumsGeneric(rows, w, count, sums);
}

void gatherPointGroups(const float* src, size_t hw, int K, int np, const InputActivation* activation, float* dst)
{
    if (cpuHasAvx512f())
        gatherPointGroupsAvx512(src, hw, K, np, activation, dst);
    else if (cpuHasAvx2Fma())
        gatherPointGroupsAvx2(src, hw, K, np, activation, dst);
    else
        gatherPointGroupsGeneric(src, hw, K, np, activation, dst);
}

void affineSiLURows(const float* src, size_t srcStride, int rows, size_t n, const float* scale, const float* shift,
                    float* dst, size_t dstStride)
{
    if (cpuHasAvx512f())
        affineSiLURowsAvx512(src, srcStride, rows, n, scale, shift, dst, dstStride);
    else if (cpuHasAvx2Fma())
        affineSiLURowsAvx2(src, srcStride, rows, n, scale, shift, dst, dstStride);
    else
        affineSiLURowsGeneric(src, srcStride, rows, n, scale, shift, dst, dstStride);
}

}  // namespace

void groupNormAffine(const float* data, int c, int h, int w, int groups, const float* gamma, const float* beta,
                     float eps, const ParallelFor& parallel, float* scale, float* shift)
{
    if (groups <= 0 || c % groups != 0)
        throw std::invalid_argument("groupNorm: " + std::to_string(c) + " channels not divisible into " +
                                    std::to_string(groups) + " groups");
    const size_t hw = static_cast<size_t>(h) * w;
    const int perGroup = c / groups;
    std::vector<float> mean(groups), invStd(groups);
    // One task per group: the reduction order is fixed whatever the thread count.
    parallel(groups, [&](int64_t begin, int64_t end) {
        for (int64_t g = begin; g < end; ++g)
        {
            const float* base = data + static_cast<size_t>(g) * perGroup * hw;
            const size_t n = static_cast<size_t>(perGroup) * hw;
            // One pass over the group (two passes cost ~4 % of the encoder), shifted by its first value.
            const double shift = base[0];
            double sum = 0, squares = 0;
            shiftedSums(base, n, shift, &sum, &squares);
            const double offset = sum / static_cast<double>(n);
            const double m = shift + offset;
            const double var = std::max(0.0, squares / static_cast<double>(n) - offset * offset);  // biased, as GroupNorm
            mean[g] = static_cast<float>(m);
            invStd[g] = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
        }
    });
    for (int ch = 0; ch < c; ++ch)
    {
        const int g = ch / perGroup;
        scale[ch] = invStd[g] * (gamma ? gamma[ch] : 1.f);
        shift[ch] = (beta ? beta[ch] : 0.f) - mean[g] * scale[ch];
    }
}

void groupNormSiLU(float* data, int c, int h, int w, int groups, const float* gamma, const float* beta, float eps,
                   const ParallelFor& parallel)
{
    std::vector<float> scale(c), shift(c);
    groupNormAffine(data, c, h, w, groups, gamma, beta, eps, parallel, scale.data(), shift.data());
    const size_t hw = static_cast<size_t>(h) * w;
    parallel(c, [&](int64_t begin, int64_t end) {
        float* rows = data + static_cast<size_t>(begin) * hw;  // channels [begin, end), in place
        affineSiLURows(rows, hw, static_cast<int>(end - begin), hw, scale.data() + begin, shift.data() + begin, rows,
                       hw);
    });
}

// ---- adaptive average pooling ------------------------------------------------------------------

namespace {

// PyTorch's adaptive pooling bins: [binStart, binStop) of `in` for output index i of `out`.
int binStart(int i, int in, int out) { return static_cast<int>((static_cast<int64_t>(i) * in) / out); }
int binStop(int i, int in, int out) { return static_cast<int>((static_cast<int64_t>(i + 1) * in + out - 1) / out); }

// Output row oy of one channel plane: the bin rows' column sums first (whole source rows, read
// sequentially and vectorized), then each bin adds its columns' sums. Summing a bin element by
// element was one dependent chain of double additions per output value: ~1 s at 2016x2016 ->
// 28x28. `columns` holds srcW doubles.
void poolOutputRow(const float* plane, int srcH, int srcW, int oy, int dstH, int dstW, double* columns, float* out)
{
    const int y0 = binStart(oy, srcH, dstH), y1 = binStop(oy, srcH, dstH);
    columnSums(plane + static_cast<size_t>(y0) * srcW, static_cast<size_t>(srcW), y1 - y0, columns);
    for (int ox = 0; ox < dstW; ++ox)
    {
        const int x0 = binStart(ox, srcW, dstW), x1 = binStop(ox, srcW, dstW);
        double sum = 0;
        for (int x = x0; x < x1; ++x) sum += columns[x];
        out[ox] = static_cast<float>(sum / static_cast<double>((y1 - y0) * (x1 - x0)));
    }
}

}  // namespace

void adaptiveAvgPool(const float* src, int c, int srcH, int srcW, float* dst, int dstH, int dstW,
                     const ParallelFor& parallel)
{
    if (srcH <= 0 || srcW <= 0 || dstH <= 0 || dstW <= 0)
        throw std::invalid_argument("adaptiveAvgPool: sizes must be positive");
    if (srcH == dstH && srcW == dstW)
    {
        // Every window is one pixel: a copy (sum / 1 is exact).
        const size_t plane = static_cast<size_t>(srcH) * srcW;
        parallel(c, [&](int64_t begin, int64_t end) {
            std::copy(src + begin * plane, src + end * plane, dst + begin * plane);
        });
        return;
    }
    parallel(static_cast<int64_t>(c) * dstH, [&](int64_t begin, int64_t end) {
        thread_local std::vector<double> columns;
        columns.resize(static_cast<size_t>(srcW));
        for (int64_t r = begin; r < end; ++r)
        {
            const int ch = static_cast<int>(r / dstH), oy = static_cast<int>(r % dstH);
            poolOutputRow(src + static_cast<size_t>(ch) * srcH * srcW, srcH, srcW, oy, dstH, dstW, columns.data(),
                          dst + (static_cast<size_t>(ch) * dstH + oy) * dstW);
        }
    });
}

// ---- RoPE --------------------------------------------------------------------------------------

namespace {

// The rotation of RoPE for [dim, h, w] data: channel j of a head pairs with j + headDim/2. The
// first quarter of the pairs turn by the row's angle, the rest by the column's. Angles as the
// reference computes them in float32: 2*pi*coord/period, coord = (i + 0.5) / L * 2 - 1.
class RopeRotation
{
public:
    RopeRotation(int dim, int h, int w, int heads, const float* periods)
        : h_(h), w_(w), headDim_(validHeadDim(dim, heads)), half_(headDim_ / 2), quarter_(headDim_ / 4),
          periods_(periods), cosX_(static_cast<size_t>(quarter_) * w), sinX_(static_cast<size_t>(quarter_) * w)
    {
        // Column angles once, channel-major ([quarter][w]) so that the loops run along contiguous
        // memory; row angles per row.
        for (int j = 0; j < quarter_; ++j)
            for (int x = 0; x < w; ++x)
            {
                const float cx = 2.f * ((static_cast<float>(x) + 0.5f) / static_cast<float>(w)) - 1.f;
                const float a = static_cast<float>(kTwoPi) * cx / periods[j];
                cosX_[static_cast<size_t>(j) * w + x] = std::cos(a);
                sinX_[static_cast<size_t>(j) * w + x] = std::sin(a);
            }
    }
    int pairsPerHead() const { return half_; }
    // The planes of pair j of head hd: lo, and hi = lo + half planes.
    size_t loPlane(int hd, int j) const { return static_cast<size_t>(hd) * headDim_ + j; }
    size_t hiPlane(int hd, int j) const { return loPlane(hd, j) + half_; }

    // Rotates row y of pair j (lo, hi point at that row).
    void rotateRow(int j, int y, float* lo, float* hi) const
    {
        if (j < quarter_)
        {
            // Row frequencies: one angle for the whole row.
            const float cy = 2.f * ((static_cast<float>(y) + 0.5f) / static_cast<float>(h_)) - 1.f;
            const float a = static_cast<float>(kTwoPi) * cy / periods_[j];
            const float cs = std::cos(a), sn = std::sin(a);
            for (int x = 0; x < w_; ++x)
            {
                const float u = lo[x], v = hi[x];
                lo[x] = u * cs - v * sn;
                hi[x] = v * cs + u * sn;
            }
        }
        else
        {
            const float* cs = cosX_.data() + static_cast<size_t>(j - quarter_) * w_;
            const float* sn = sinX_.data() + static_cast<size_t>(j - quarter_) * w_;
            for (int x = 0; x < w_; ++x)
            {
                const float u = lo[x], v = hi[x];
                lo[x] = u * cs[x] - v * sn[x];
                hi[x] = v * cs[x] + u * sn[x];
            }
        }
    }

private:
    static int validHeadDim(int dim, int heads)
    {
        if (heads <= 0 || dim % (4 * heads) != 0)
            throw std::invalid_argument("applyRope: dim " + std::to_string(dim) + " must be divisible by 4*heads (" +
                                        std::to_string(4 * heads) + ")");
        return dim / heads;
    }
    static constexpr double kTwoPi = 6.283185307179586;
    int h_, w_, headDim_, half_, quarter_;
    const float* periods_;
    std::vector<float> cosX_, sinX_;
};

}  // namespace

void applyRope(float* data, int dim, int h, int w, int heads, const float* periods, const ParallelFor& parallel)
{
    const RopeRotation rope(dim, h, w, heads, periods);
    const size_t hw = static_cast<size_t>(h) * w;
    parallel(h, [&](int64_t begin, int64_t end) {
        for (int64_t y = begin; y < end; ++y)
            for (int hd = 0; hd < heads; ++hd)
                for (int j = 0; j < rope.pairsPerHead(); ++j)
                    rope.rotateRow(j, static_cast<int>(y), data + rope.loPlane(hd, j) * hw + static_cast<size_t>(y) * w,
                                   data + rope.hiPlane(hd, j) * hw + static_cast<size_t>(y) * w);
    });
}

void applyRopeAndPool(float* data, int dim, int h, int w, int heads, const float* periods, float* pooled,
                      int pooledH, int pooledW, const ParallelFor& parallel)
{
    if (pooledH <= 0 || pooledW <= 0 || pooledH > h || pooledW > w)
        throw std::invalid_argument("applyRopeAndPool: pooled size " + std::to_string(pooledW) + "x" +
                                    std::to_string(pooledH) + " must be positive and at most " + std::to_string(w) +
                                    "x" + std::to_string(h));
    const RopeRotation rope(dim, h, w, heads, periods);
    const size_t hw = static_cast<size_t>(h) * w;
    const size_t pooledPlane = static_cast<size_t>(pooledH) * pooledW;
    // One task per channel pair: it rotates the pair's rows in order and pools each bin of rows as
    // soon as its last row is rotated, while the rows are still in the cache. A row shared by two
    // bins (sizes that do not divide) is rotated once, by the pair's own task.
    parallel(static_cast<int64_t>(heads) * rope.pairsPerHead(), [&](int64_t begin, int64_t end) {
        thread_local std::vector<double> columns;
        columns.resize(static_cast<size_t>(w));
        for (int64_t task = begin; task < end; ++task)
        {
            const int hd = static_cast<int>(task / rope.pairsPerHead()), j = static_cast<int>(task % rope.pairsPerHead());
            const size_t planes[2] = {rope.loPlane(hd, j), rope.hiPlane(hd, j)};
            float* lo = data + planes[0] * hw;
            float* hi = data + planes[1] * hw;
            int rotated = 0;
            for (int oy = 0; oy < pooledH; ++oy)
            {
                for (const int stop = binStop(oy, h, pooledH); rotated < stop; ++rotated)
                    rope.rotateRow(j, rotated, lo + static_cast<size_t>(rotated) * w, hi + static_cast<size_t>(rotated) * w);
                for (const size_t plane : planes)
                    poolOutputRow(data + plane * hw, h, w, oy, pooledH, pooledW, columns.data(),
                                  pooled + plane * pooledPlane + static_cast<size_t>(oy) * pooledW);
            }
        }
    });
}

}  // namespace kernels
}  // namespace naf
