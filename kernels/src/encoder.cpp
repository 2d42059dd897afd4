// Guide-encoder building blocks on the CPU: resize, reflect-padded convolution (tiled im2col +
// register-blocked GEMM), GroupNorm+SiLU, adaptive average pooling, RoPE.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

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
// is read in place at offset off[k] (a channel plane for 1x1 convs, a shifted row of a
// reflect-padded row band for kxk convs), so no im2col matrix is ever written. Each output value
// is one sequential FMA chain over k plus the bias at the end, whatever the tiling or thread
// count, so results are bit-identical for any split.

// Weights packed per block of MR output channels as [K][MR] (rows past cout are zero), so the
// micro-kernel broadcasts MR consecutive floats per k.
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

// MR output channels x 16*NV pixels held in registers for the whole k loop.
template <int MR, int NV>
NAF_ALWAYS_INLINE inline void microKernel(const float* packed, int K, const float* base, const ptrdiff_t* off,
                                          const float* bias, int rows, float* out, size_t ldo)
{
    Vec16 acc[MR][NV];
    for (int r = 0; r < MR; ++r)
        for (int v = 0; v < NV; ++v) acc[r][v] = Vec16{};
    for (int k = 0; k < K; ++k)
    {
        const float* x = base + off[k];
        Vec16 xv[NV];
        for (int v = 0; v < NV; ++v) loadVec16(xv[v], x + 16 * v);
        const float* w = packed + static_cast<size_t>(k) * MR;
        for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v) acc[r][v] += w[r] * xv[v];
    }
    for (int r = 0; r < rows; ++r)
    {
        const float b = bias ? bias[r] : 0.f;
        for (int v = 0; v < NV; ++v) storeVec16(out + r * ldo + 16 * v, acc[r][v] + b);
    }
}

// Pixels of a tile narrower than the vector width: one pixel at a time, same FMA chain.
template <int MR>
NAF_ALWAYS_INLINE inline void pixelKernel(const float* packed, int K, const float* base, const ptrdiff_t* off,
                                          const float* bias, int rows, float* out, size_t ldo)
{
    float acc[MR] = {};
    for (int k = 0; k < K; ++k)
    {
        const float x = base[off[k]];
        const float* w = packed + static_cast<size_t>(k) * MR;
        for (int r = 0; r < MR; ++r) acc[r] += w[r] * x;
    }
    for (int r = 0; r < rows; ++r) out[r * ldo] = acc[r] + (bias ? bias[r] : 0.f);
}

// All output channels for np consecutive pixels: out[co * ldo + j], j < np.
template <int MR, int NV>
NAF_ALWAYS_INLINE inline void gemmTileImpl(const float* packed, const ConvWeights& conv, int K, const float* base,
                                           const ptrdiff_t* off, int np, float* out, size_t ldo)
{
    // Tiles of 16*NV pixels, then of 16, then single pixels.
    for (int p = 0; p < np;)
    {
        const int n = np - p >= 16 * NV ? 16 * NV : (np - p >= 16 ? 16 : np - p);
        for (int co = 0; co < conv.cout; co += MR)
        {
            const float* pk = packed + static_cast<size_t>(co / MR) * K * MR;
            const float* bias = conv.bias ? conv.bias + co : nullptr;
            const int rows = std::min(MR, conv.cout - co);
            float* o = out + static_cast<size_t>(co) * ldo + p;
            if (n == 16 * NV)
                microKernel<MR, NV>(pk, K, base + p, off, bias, rows, o, ldo);
            else if (n == 16)
                microKernel<MR, 1>(pk, K, base + p, off, bias, rows, o, ldo);
            else
                for (int j = 0; j < n; ++j) pixelKernel<MR>(pk, K, base + p + j, off, bias, rows, o + j, ldo);
        }
        p += n;
    }
}

enum class GemmIsa
{
    Generic,
    Avx2,
    Avx512
};

GemmIsa gemmIsa()
{
    if (cpuHasAvx512f()) return GemmIsa::Avx512;
    if (cpuHasAvx2Fma()) return GemmIsa::Avx2;
    return GemmIsa::Generic;
}

// Register blocking per ISA: 8x48 (24 zmm accumulators of 32), 4x16 (8 ymm of 16), 4x16 generic.
int gemmRows(GemmIsa isa) { return isa == GemmIsa::Avx512 ? 8 : 4; }

NAF_TARGET_AVX512 void gemmTileAvx512(const float* packed, const ConvWeights& conv, int K, const float* base,
                                      const ptrdiff_t* off, int np, float* out, size_t ldo)
{
    gemmTileImpl<8, 2>(packed, conv, K, base, off, np, out, ldo);
}

NAF_TARGET_AVX2 void gemmTileAvx2(const float* packed, const ConvWeights& conv, int K, const float* base,
                                  const ptrdiff_t* off, int np, float* out, size_t ldo)
{
    gemmTileImpl<4, 1>(packed, conv, K, base, off, np, out, ldo);
}

void gemmTileGeneric(const float* packed, const ConvWeights& conv, int K, const float* base, const ptrdiff_t* off,
                     int np, float* out, size_t ldo)
{
    gemmTileImpl<4, 1>(packed, conv, K, base, off, np, out, ldo);
}

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

constexpr int kPointTile = 256;  // pixels per 1x1-convolution task

// ---- Winograd F(2x2, 3x3) for the wide 3x3 convolutions -------------------------------------------
// Per 2x2 output tile and channel pair, Y = A^T [(G g G^T) . (B^T d B)] A costs 16 multiplies
// instead of 36: the 16 element-wise products over the input channels become 16 GEMMs
// [cout x cin] x [cin x tiles] run by the same micro-kernel, with cheap additions before
// (input transform) and after (output transform). Used for 3x3 convolutions with at least
// kWinogradMinChannels inputs (the encoder blocks' 128 -> 128), where the GEMMs dominate; the
// results differ from the direct sum by rounding only (~1e-6 relative; tests bound it).
constexpr int kWinogradMinChannels = 32;
constexpr int kWinogradTiles = 32;  // output tiles (along a tile row) per task: V and M stay in L2

// U[xi][co][ci] = (G g G^T)[xi] with G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1], packed per xi like
// packWeights (blocks of mr output channels, [cin][mr]).
std::vector<float> winogradWeights(const ConvWeights& conv, int mr)
{
    const int cout = conv.cout, cin = conv.cin;
    std::vector<float> u(static_cast<size_t>(16) * cout * cin);
    const size_t plane = static_cast<size_t>(cout) * cin;
    for (int co = 0; co < cout; ++co)
        for (int ci = 0; ci < cin; ++ci)
        {
            const float* g = conv.weight + (static_cast<size_t>(co) * cin + ci) * 9;
            double gg[4][3];  // G g
            for (int c = 0; c < 3; ++c)
            {
                const double a = g[c], b = g[3 + c], d = g[6 + c];
                gg[0][c] = a;
                gg[1][c] = 0.5 * (a + b + d);
                gg[2][c] = 0.5 * (a - b + d);
                gg[3][c] = d;
            }
            for (int r = 0; r < 4; ++r)
            {
                const double a = gg[r][0], b = gg[r][1], d = gg[r][2];
                const double row[4] = {a, 0.5 * (a + b + d), 0.5 * (a - b + d), d};  // (G g) G^T
                for (int c = 0; c < 4; ++c)
                    u[(r * 4 + c) * plane + static_cast<size_t>(co) * cin + ci] = static_cast<float>(row[c]);
            }
        }
    const int blocks = (cout + mr - 1) / mr;
    const size_t perXi = static_cast<size_t>(blocks) * cin * mr;
    std::vector<float> packed(16 * perXi);
    for (int xi = 0; xi < 16; ++xi)
    {
        const ConvWeights m{u.data() + xi * plane, nullptr, cout, cin, 1};
        const std::vector<float> one = packWeights(m, cin, mr);
        std::copy(one.begin(), one.end(), packed.begin() + xi * perXi);
    }
    return packed;
}

// Input transform of one channel for the nt tiles of a task: rows[r] are the 4 input rows of the
// tile row, split into e[j] = row[2(t0+j)-1] and o[j] = row[2(t0+j)] (reflect padded), so tile j
// spans e[j], o[j], e[j+1], o[j+1] and every loop below is contiguous.
// v[xi * vStride + j] = (B^T d B)[xi] with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
NAF_ALWAYS_INLINE inline void winogradInputImpl(const float* const rows[4], int w, int t0, int nt, float* v,
                                                size_t vStride)
{
    float h[4][4][kWinogradTiles];  // [input row][column component][tile]
    // Tiles whose columns need no reflection: x - 1 >= 0 and x <= w - 1 for x = 2 (t0 + j).
    const int jLo = t0 == 0 ? 1 : 0;
    const int jHi = std::min(nt, (w - 1) / 2 - t0);
    for (int r = 0; r < 4; ++r)
    {
        float e[kWinogradTiles + 1], o[kWinogradTiles + 1];
        const float* row = rows[r];
        for (int j = 0; j <= nt; ++j)
            if (j < jLo || j > jHi)
            {
                const int x = 2 * (t0 + j);
                e[j] = row[reflectIndex(x - 1, w)];
                o[j] = row[reflectIndex(x, w)];
            }
        const float* in = row + 2 * t0;
        for (int j = jLo; j <= jHi; ++j)
        {
            e[j] = in[2 * j - 1];
            o[j] = in[2 * j];
        }
        for (int j = 0; j < nt; ++j)
        {
            h[r][0][j] = e[j] - e[j + 1];
            h[r][1][j] = o[j] + e[j + 1];
            h[r][2][j] = e[j + 1] - o[j];
            h[r][3][j] = o[j] - o[j + 1];
        }
    }
    for (int k = 0; k < 4; ++k)
    {
        float* v0 = v + (0 + k) * vStride;
        float* v1 = v + (4 + k) * vStride;
        float* v2 = v + (8 + k) * vStride;
        float* v3 = v + (12 + k) * vStride;
        for (int j = 0; j < nt; ++j)
        {
            v0[j] = h[0][k][j] - h[2][k][j];
            v1[j] = h[1][k][j] + h[2][k][j];
            v2[j] = h[2][k][j] - h[1][k][j];
            v3[j] = h[1][k][j] - h[3][k][j];
        }
    }
}

// Output transform of one output channel: m[xi * mStride + j] -> the tile row's two output rows
// (A^T = [1 1 1 0; 0 1 -1 -1]) plus bias; y1 is null when the second row is past the image, and
// the last column is dropped when it is past the image (odd widths).
NAF_ALWAYS_INLINE inline void winogradOutputImpl(const float* m, size_t mStride, int nt, float bias, float* y0,
                                                 float* y1, int cols)
{
    float s[2][4][kWinogradTiles];
    for (int k = 0; k < 4; ++k)
    {
        const float* m0 = m + (0 + k) * mStride;
        const float* m1 = m + (4 + k) * mStride;
        const float* m2 = m + (8 + k) * mStride;
        const float* m3 = m + (12 + k) * mStride;
        for (int j = 0; j < nt; ++j)
        {
            s[0][k][j] = m0[j] + m1[j] + m2[j];
            s[1][k][j] = m1[j] - m2[j] - m3[j];
        }
    }
    float out[2][2][kWinogradTiles];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < nt; ++j)
        {
            out[i][0][j] = s[i][0][j] + s[i][1][j] + s[i][2][j] + bias;
            out[i][1][j] = s[i][1][j] - s[i][2][j] - s[i][3][j] + bias;
        }
    float* rows[2] = {y0, y1};
    for (int i = 0; i < 2; ++i)
    {
        if (!rows[i]) continue;
        float* y = rows[i];
        for (int j = 0; j < nt; ++j)
        {
            if (2 * j < cols) y[2 * j] = out[i][0][j];
            if (2 * j + 1 < cols) y[2 * j + 1] = out[i][1][j];
        }
    }
}

NAF_TARGET_AVX512 void winogradInputAvx512(const float* const r[4], int w, int t0, int nt, float* v, size_t vs)
{
    winogradInputImpl(r, w, t0, nt, v, vs);
}
NAF_TARGET_AVX2 void winogradInputAvx2(const float* const r[4], int w, int t0, int nt, float* v, size_t vs)
{
    winogradInputImpl(r, w, t0, nt, v, vs);
}
void winogradInputGeneric(const float* const r[4], int w, int t0, int nt, float* v, size_t vs)
{
    winogradInputImpl(r, w, t0, nt, v, vs);
}
NAF_TARGET_AVX512 void winogradOutputAvx512(const float* m, size_t ms, int nt, float b, float* y0, float* y1, int c)
{
    winogradOutputImpl(m, ms, nt, b, y0, y1, c);
}
NAF_TARGET_AVX2 void winogradOutputAvx2(const float* m, size_t ms, int nt, float b, float* y0, float* y1, int c)
{
    winogradOutputImpl(m, ms, nt, b, y0, y1, c);
}
void winogradOutputGeneric(const float* m, size_t ms, int nt, float b, float* y0, float* y1, int c)
{
    winogradOutputImpl(m, ms, nt, b, y0, y1, c);
}

void winogradInput(GemmIsa isa, const float* const r[4], int w, int t0, int nt, float* v, size_t vs)
{
    switch (isa)
    {
    case GemmIsa::Avx512: winogradInputAvx512(r, w, t0, nt, v, vs); break;
    case GemmIsa::Avx2: winogradInputAvx2(r, w, t0, nt, v, vs); break;
    default: winogradInputGeneric(r, w, t0, nt, v, vs); break;
    }
}

void winogradOutput(GemmIsa isa, const float* m, size_t ms, int nt, float b, float* y0, float* y1, int c)
{
    switch (isa)
    {
    case GemmIsa::Avx512: winogradOutputAvx512(m, ms, nt, b, y0, y1, c); break;
    case GemmIsa::Avx2: winogradOutputAvx2(m, ms, nt, b, y0, y1, c); break;
    default: winogradOutputGeneric(m, ms, nt, b, y0, y1, c); break;
    }
}

void conv3x3Winograd(const float* src, int h, int w, const ConvWeights& conv, const std::vector<float>& packed,
                     float* dst, const ParallelFor& parallel)
{
    const GemmIsa isa = gemmIsa();
    const int mr = gemmRows(isa);
    const int cin = conv.cin, cout = conv.cout;
    const size_t perXi = static_cast<size_t>((cout + mr - 1) / mr) * cin * mr;
    const ConvWeights shape{conv.weight, nullptr, cout, cin, 1};  // gemmTile reads cout and bias only
    const int tileRows = (h + 1) / 2, tileCols = (w + 1) / 2;
    const int chunks = (tileCols + kWinogradTiles - 1) / kWinogradTiles;
    const size_t hw = static_cast<size_t>(h) * w;
    std::vector<ptrdiff_t> off(cin);
    for (int ci = 0; ci < cin; ++ci) off[ci] = static_cast<ptrdiff_t>(ci) * kWinogradTiles;
    parallel(static_cast<int64_t>(tileRows) * chunks, [&](int64_t begin, int64_t end) {
        thread_local std::vector<float> v, m;
        v.resize(static_cast<size_t>(16) * cin * kWinogradTiles);
        m.resize(static_cast<size_t>(16) * cout * kWinogradTiles);
        for (int64_t task = begin; task < end; ++task)
        {
            const int ty = static_cast<int>(task / chunks);
            const int t0 = static_cast<int>(task % chunks) * kWinogradTiles;
            const int nt = std::min(kWinogradTiles, tileCols - t0);
            size_t rowOffset[4];
            for (int r = 0; r < 4; ++r) rowOffset[r] = static_cast<size_t>(reflectIndex(2 * ty - 1 + r, h)) * w;
            const size_t vs = static_cast<size_t>(cin) * kWinogradTiles;
            for (int ci = 0; ci < cin; ++ci)
            {
                const float* plane = src + ci * hw;
                const float* const rows[4] = {plane + rowOffset[0], plane + rowOffset[1], plane + rowOffset[2],
                                              plane + rowOffset[3]};
                winogradInput(isa, rows, w, t0, nt, v.data() + static_cast<size_t>(ci) * kWinogradTiles, vs);
            }
            for (int xi = 0; xi < 16; ++xi)
                gemmTile(isa, packed.data() + xi * perXi, shape, cin,
                         v.data() + static_cast<size_t>(xi) * cin * kWinogradTiles, off.data(), nt,
                         m.data() + static_cast<size_t>(xi) * cout * kWinogradTiles, kWinogradTiles);
            const size_t ms = static_cast<size_t>(cout) * kWinogradTiles;
            const int y = 2 * ty;
            const int cols = std::min(w - 2 * t0, 2 * nt);
            for (int co = 0; co < cout; ++co)
            {
                float* out0 = dst + co * hw + static_cast<size_t>(y) * w + 2 * t0;
                float* out1 = y + 1 < h ? out0 + w : nullptr;
                const float* mc = m.data() + static_cast<size_t>(co) * kWinogradTiles;
                winogradOutput(isa, mc, ms, nt, conv.bias ? conv.bias[co] : 0.f, out0, out1, cols);
            }
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
    auto pack = [&] { return winograd ? winogradWeights(conv, mr) : packWeights(conv, conv.cin * conv.k * conv.k, mr); };
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
                   std::vector<PackedConvWeights>* cache)
{
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
        // 1x1: the k-th row of a pixel tile is channel plane k itself.
        std::vector<ptrdiff_t> off(K);
        for (int ci = 0; ci < K; ++ci) off[ci] = static_cast<ptrdiff_t>(ci * hw);  // can exceed 2^31
        const int64_t tasks = static_cast<int64_t>((hw + kPointTile - 1) / kPointTile);
        parallel(tasks, [&](int64_t begin, int64_t end) {
            for (int64_t t = begin; t < end; ++t)
            {
                const size_t p0 = static_cast<size_t>(t) * kPointTile;
                const int np = static_cast<int>(std::min<size_t>(kPointTile, hw - p0));
                gemmTile(isa, packed.data(), conv, K, src + p0, off.data(), np, dst + p0, hw);
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

typedef float Vec8f __attribute__((vector_size(32)));
typedef double Vec8d __attribute__((vector_size(64)));

// Sum and sum of squared deviations from `mean` of n floats, in double, with 8 lane accumulators
// combined in a fixed order (the order depends on n only, never on threads).
NAF_ALWAYS_INLINE inline double sumImpl(const float* p, size_t n, double mean, bool squares)
{
    Vec8d acc = {};
    const Vec8d m = Vec8d{} + mean;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
    {
        Vec8f f;
        std::memcpy(&f, p + i, sizeof f);
        const Vec8d d = __builtin_convertvector(f, Vec8d);
        if (squares)
        {
            const Vec8d e = d - m;
            acc += e * e;
        }
        else
        {
            acc += d;
        }
    }
    double total = 0;
    for (int l = 0; l < 8; ++l) total += acc[l];
    for (; i < n; ++i)
    {
        const double d = squares ? p[i] - mean : p[i];
        total += squares ? d * d : d;
    }
    return total;
}

// p[i] = silu(p[i] * scale + shift), vectorized with expVec16 (the tail with the same formula).
NAF_ALWAYS_INLINE inline void affineSiLUImpl(float* p, size_t n, float scale, float shift)
{
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
    {
        Vec16 v;
        loadVec16(v, p + i);
        v = v * scale + shift;
        Vec16 e;
        expVec16(e, -v);
        storeVec16(p + i, v / (1.f + e));
    }
    if (i < n)
    {
        Vec16 v = {};
        std::memcpy(&v, p + i, (n - i) * sizeof(float));
        v = v * scale + shift;
        Vec16 e;
        expVec16(e, -v);
        v = v / (1.f + e);
        std::memcpy(p + i, &v, (n - i) * sizeof(float));
    }
}

NAF_TARGET_AVX512 double sumAvx512(const float* p, size_t n, double mean, bool sq) { return sumImpl(p, n, mean, sq); }
NAF_TARGET_AVX2 double sumAvx2(const float* p, size_t n, double mean, bool sq) { return sumImpl(p, n, mean, sq); }
double sumGeneric(const float* p, size_t n, double mean, bool sq) { return sumImpl(p, n, mean, sq); }
NAF_TARGET_AVX512 void affineSiLUAvx512(float* p, size_t n, float a, float b) { affineSiLUImpl(p, n, a, b); }
NAF_TARGET_AVX2 void affineSiLUAvx2(float* p, size_t n, float a, float b) { affineSiLUImpl(p, n, a, b); }
void affineSiLUGeneric(float* p, size_t n, float a, float b) { affineSiLUImpl(p, n, a, b); }

double sumFloats(const float* p, size_t n, double mean, bool squares)
{
    if (cpuHasAvx512f()) return sumAvx512(p, n, mean, squares);
    if (cpuHasAvx2Fma()) return sumAvx2(p, n, mean, squares);
    return sumGeneric(p, n, mean, squares);
}

void affineSiLU(float* p, size_t n, float scale, float shift)
{
    if (cpuHasAvx512f())
        affineSiLUAvx512(p, n, scale, shift);
    else if (cpuHasAvx2Fma())
        affineSiLUAvx2(p, n, scale, shift);
    else
        affineSiLUGeneric(p, n, scale, shift);
}

}  // namespace

void groupNormSiLU(float* data, int c, int h, int w, int groups, const float* gamma, const float* beta, float eps,
                   const ParallelFor& parallel)
{
    if (groups <= 0 || c % groups != 0)
        throw std::invalid_argument("groupNormSiLU: " + std::to_string(c) + " channels not divisible into " +
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
            const double m = sumFloats(base, n, 0.0, false) / static_cast<double>(n);
            const double var = sumFloats(base, n, m, true) / static_cast<double>(n);  // biased, as GroupNorm
            mean[g] = static_cast<float>(m);
            invStd[g] = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(eps)));
        }
    });
    parallel(c, [&](int64_t begin, int64_t end) {
        for (int64_t ch = begin; ch < end; ++ch)
        {
            const int g = static_cast<int>(ch) / perGroup;
            const float scale = invStd[g] * (gamma ? gamma[ch] : 1.f);
            const float shift = (beta ? beta[ch] : 0.f) - mean[g] * scale;
            affineSiLU(data + static_cast<size_t>(ch) * hw, hw, scale, shift);
        }
    });
}

// ---- adaptive average pooling ------------------------------------------------------------------

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
    auto start = [](int i, int in, int out) { return static_cast<int>((static_cast<int64_t>(i) * in) / out); };
    auto stop = [](int i, int in, int out) {
        return static_cast<int>((static_cast<int64_t>(i + 1) * in + out - 1) / out);
    };
    parallel(static_cast<int64_t>(c) * dstH, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
        {
            const int ch = static_cast<int>(r / dstH), oy = static_cast<int>(r % dstH);
            const int y0 = start(oy, srcH, dstH), y1 = stop(oy, srcH, dstH);
            const float* plane = src + static_cast<size_t>(ch) * srcH * srcW;
            float* out = dst + (static_cast<size_t>(ch) * dstH + oy) * dstW;
            for (int ox = 0; ox < dstW; ++ox)
            {
                const int x0 = start(ox, srcW, dstW), x1 = stop(ox, srcW, dstW);
                double sum = 0;
                for (int y = y0; y < y1; ++y)
                    for (int x = x0; x < x1; ++x) sum += plane[static_cast<size_t>(y) * srcW + x];
                out[ox] = static_cast<float>(sum / static_cast<double>((y1 - y0) * (x1 - x0)));
            }
        }
    });
}

// ---- RoPE --------------------------------------------------------------------------------------

void applyRope(float* data, int dim, int h, int w, int heads, const float* periods, const ParallelFor& parallel)
{
    if (heads <= 0 || dim % (4 * heads) != 0)
        throw std::invalid_argument("applyRope: dim " + std::to_string(dim) + " must be divisible by 4*heads (" +
                                    std::to_string(4 * heads) + ")");
    const int headDim = dim / heads, half = headDim / 2, quarter = headDim / 4;
    const size_t hw = static_cast<size_t>(h) * w;
    const double twoPi = 6.283185307179586;
    parallel(h, [&](int64_t begin, int64_t end) {
        std::vector<float> cosY(quarter), sinY(quarter), cosX(static_cast<size_t>(w) * quarter),
            sinX(static_cast<size_t>(w) * quarter);
        // Angles as the reference computes them in float32: 2*pi*coord/period.
        for (int x = 0; x < w; ++x)
        {
            const float cx = 2.f * ((static_cast<float>(x) + 0.5f) / static_cast<float>(w)) - 1.f;
            for (int j = 0; j < quarter; ++j)
            {
                const float a = static_cast<float>(twoPi) * cx / periods[j];
                cosX[static_cast<size_t>(x) * quarter + j] = std::cos(a);
                sinX[static_cast<size_t>(x) * quarter + j] = std::sin(a);
            }
        }
        for (int64_t y = begin; y < end; ++y)
        {
            const float cy = 2.f * ((static_cast<float>(y) + 0.5f) / static_cast<float>(h)) - 1.f;
            for (int j = 0; j < quarter; ++j)
            {
                const float a = static_cast<float>(twoPi) * cy / periods[j];
                cosY[j] = std::cos(a);
                sinY[j] = std::sin(a);
            }
            for (int hd = 0; hd < heads; ++hd)
                for (int j = 0; j < half; ++j)
                {
                    float* lo = data + (static_cast<size_t>(hd) * headDim + j) * hw + static_cast<size_t>(y) * w;
                    float* hi = lo + static_cast<size_t>(half) * hw;
                    for (int x = 0; x < w; ++x)
                    {
                        const float cs = j < quarter ? cosY[j] : cosX[static_cast<size_t>(x) * quarter + j - quarter];
                        const float sn = j < quarter ? sinY[j] : sinX[static_cast<size_t>(x) * quarter + j - quarter];
                        const float a = lo[x], b = hi[x];
                        lo[x] = a * cs - b * sn;
                        hi[x] = b * cs + a * sn;
                    }
                }
        }
    });
}

}  // namespace kernels
}  // namespace naf
