// Guide-encoder building blocks on the CPU: resize, reflect-padded convolution (tiled im2col +
// register-blocked GEMM), GroupNorm+SiLU, adaptive average pooling, RoPE.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "naf_kernels/naf_kernels.hpp"
#include "simd_dispatch.hpp"

namespace naf {
namespace kernels {

namespace {

inline int reflectIndex(int i, int n)
{
    if (i < 0) return -i;
    if (i >= n) return 2 * n - 2 - i;
    return i;
}

// ---- GEMM: out[co, p] = bias[co] + sum_k W[co, k] * col[k, p] --------------------------------

constexpr int kGemmRows = 4;   // output channels per register block
constexpr int kGemmCols = 16;  // pixels per register block (two AVX2 vectors)

template <int NR>
NAF_ALWAYS_INLINE inline void gemmBlock(const float* W, int K, const float* col, int ldc, float* out, int ldo,
                                        const float* bias, int rows)
{
    float acc[kGemmRows][NR];
    for (int r = 0; r < kGemmRows; ++r)
        for (int j = 0; j < NR; ++j) acc[r][j] = 0.f;
    const float* w0 = W;
    const float* w1 = W + (rows > 1 ? K : 0);
    const float* w2 = W + (rows > 2 ? 2 * K : 0);
    const float* w3 = W + (rows > 3 ? 3 * K : 0);
    for (int k = 0; k < K; ++k)
    {
        const float* c = col + static_cast<size_t>(k) * ldc;
        const float a0 = w0[k], a1 = w1[k], a2 = w2[k], a3 = w3[k];
        for (int j = 0; j < NR; ++j)
        {
            const float v = c[j];
            acc[0][j] += a0 * v;
            acc[1][j] += a1 * v;
            acc[2][j] += a2 * v;
            acc[3][j] += a3 * v;
        }
    }
    for (int r = 0; r < rows; ++r)
    {
        const float b = bias ? bias[r] : 0.f;
        for (int j = 0; j < NR; ++j) out[static_cast<size_t>(r) * ldo + j] = acc[r][j] + b;
    }
}

NAF_ALWAYS_INLINE inline void gemmBiasImpl(const float* W, const float* bias, int cout, int K, const float* col,
                                           int ldc, int np, float* out, int ldo)
{
    for (int co = 0; co < cout; co += kGemmRows)
    {
        const int rows = std::min(kGemmRows, cout - co);
        const float* Wb = W + static_cast<size_t>(co) * K;
        const float* bb = bias ? bias + co : nullptr;
        float* ob = out + static_cast<size_t>(co) * ldo;
        int p = 0;
        for (; p + kGemmCols <= np; p += kGemmCols)
            gemmBlock<kGemmCols>(Wb, K, col + p, ldc, ob + p, ldo, bb, rows);
        for (; p < np; ++p) gemmBlock<1>(Wb, K, col + p, ldc, ob + p, ldo, bb, rows);
    }
}

NAF_TARGET_AVX2 void gemmBiasAvx2(const float* W, const float* bias, int cout, int K, const float* col, int ldc,
                                  int np, float* out, int ldo)
{
    gemmBiasImpl(W, bias, cout, K, col, ldc, np, out, ldo);
}

void gemmBiasGeneric(const float* W, const float* bias, int cout, int K, const float* col, int ldc, int np,
                     float* out, int ldo)
{
    gemmBiasImpl(W, bias, cout, K, col, ldc, np, out, ldo);
}

void gemmBias(const float* W, const float* bias, int cout, int K, const float* col, int ldc, int np, float* out,
              int ldo)
{
    if (cpuHasAvx2Fma())
        gemmBiasAvx2(W, bias, cout, K, col, ldc, np, out, ldo);
    else
        gemmBiasGeneric(W, bias, cout, K, col, ldc, np, out, ldo);
}

constexpr int kConvTile = 64;  // pixels per convolution task (fixed: results never depend on threads)

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

void conv2dReflect(const float* src, int h, int w, const ConvWeights& conv, float* dst, const ParallelFor& parallel)
{
    if (!conv.weight || conv.cout <= 0 || conv.cin <= 0 || conv.k <= 0 || conv.k % 2 == 0)
        throw std::invalid_argument("conv2dReflect: invalid convolution parameters (k=" + std::to_string(conv.k) +
                                    ")");
    const int pad = conv.k / 2;
    if (h <= pad || w <= pad)
        throw std::invalid_argument("conv2dReflect: reflect padding " + std::to_string(pad) + " needs an input larger "
                                    "than " + std::to_string(pad) + " on both axes, got " + std::to_string(h) + "x" +
                                    std::to_string(w));
    const int hw = h * w;
    const int K = conv.cin * conv.k * conv.k;
    const int64_t tiles = (hw + kConvTile - 1) / kConvTile;
    parallel(tiles, [&](int64_t begin, int64_t end) {
        thread_local std::vector<float> colBuffer;
        thread_local std::vector<float> outBuffer;
        for (int64_t t = begin; t < end; ++t)
        {
            const int p0 = static_cast<int>(t * kConvTile);
            const int np = std::min(kConvTile, hw - p0);
            const float* col;
            int ldc;
            if (conv.k == 1)
            {
                col = src + p0;
                ldc = hw;
            }
            else
            {
                colBuffer.resize(static_cast<size_t>(K) * kConvTile);
                for (int ci = 0; ci < conv.cin; ++ci)
                    for (int ky = 0; ky < conv.k; ++ky)
                        for (int kx = 0; kx < conv.k; ++kx)
                        {
                            float* row = colBuffer.data() +
                                         static_cast<size_t>((ci * conv.k + ky) * conv.k + kx) * kConvTile;
                            const float* plane = src + static_cast<size_t>(ci) * hw;
                            for (int j = 0; j < np; ++j)
                            {
                                const int p = p0 + j;
                                const int y = reflectIndex(p / w + ky - pad, h);
                                const int x = reflectIndex(p % w + kx - pad, w);
                                row[j] = plane[y * w + x];
                            }
                        }
                col = colBuffer.data();
                ldc = kConvTile;
            }
            // Compute into a compact tile, then scatter rows (dst rows are hw apart).
            outBuffer.resize(static_cast<size_t>(conv.cout) * kConvTile);
            gemmBias(conv.weight, conv.bias, conv.cout, K, col, ldc, np, outBuffer.data(), kConvTile);
            for (int co = 0; co < conv.cout; ++co)
                std::copy(outBuffer.data() + static_cast<size_t>(co) * kConvTile,
                          outBuffer.data() + static_cast<size_t>(co) * kConvTile + np,
                          dst + static_cast<size_t>(co) * hw + p0);
        }
    });
}

// ---- GroupNorm + SiLU --------------------------------------------------------------------------

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
            double sum = 0;
            for (size_t i = 0; i < n; ++i) sum += base[i];
            const double m = sum / static_cast<double>(n);
            double sq = 0;
            for (size_t i = 0; i < n; ++i)
            {
                const double d = base[i] - m;
                sq += d * d;
            }
            const double var = sq / static_cast<double>(n);  // biased, as GroupNorm
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
            float* p = data + static_cast<size_t>(ch) * hw;
            for (size_t i = 0; i < hw; ++i)
            {
                const float v = p[i] * scale + shift;
                p[i] = v / (1.f + std::exp(-v));
            }
        }
    });
}

// ---- adaptive average pooling ------------------------------------------------------------------

void adaptiveAvgPool(const float* src, int c, int srcH, int srcW, float* dst, int dstH, int dstW,
                     const ParallelFor& parallel)
{
    if (srcH <= 0 || srcW <= 0 || dstH <= 0 || dstW <= 0)
        throw std::invalid_argument("adaptiveAvgPool: sizes must be positive");
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
