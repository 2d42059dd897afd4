// Cross-scale neighborhood attention on the CPU. Keys and values stay at low resolution: each
// output pixel reads its kh x kw window through per-axis index tables built from window.hpp.
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

struct AttentionGeometry
{
    int dim, channels, heads, headDim, headValues;
    int lowH, lowW, outH, outW, kh, kw;
    float scale;
    std::vector<int> rowIndex;  // [outH * kh]
    std::vector<int> colIndex;  // [outW * kw]
};

std::vector<int> axisTable(int outLen, int lowLen, int kernel)
{
    std::vector<int> table(static_cast<size_t>(outLen) * kernel);
    for (int i = 0; i < outLen; ++i)
        for (int t = 0; t < kernel; ++t) table[static_cast<size_t>(i) * kernel + t] = neighborLowIndex(i, t, outLen, lowLen, kernel);
    return table;
}

// Softmax attention of one output pixel for one head; writes probabilities to `weights`.
NAF_ALWAYS_INLINE inline void pixelHeadWeights(const AttentionGeometry& g, const float* query, const float* keysT,
                                               const int* rows, const int* cols, float* weights)
{
    float maxLogit = -INFINITY;
    for (int a = 0; a < g.kh; ++a)
    {
        const float* keyRow = keysT + static_cast<size_t>(rows[a]) * g.lowW * g.dim;
        for (int b = 0; b < g.kw; ++b)
        {
            const float* key = keyRow + static_cast<size_t>(cols[b]) * g.dim;
            float dot = 0.f;
            for (int c = 0; c < g.headDim; ++c) dot += query[c] * key[c];
            const float logit = dot * g.scale;
            weights[a * g.kw + b] = logit;
            maxLogit = std::max(maxLogit, logit);
        }
    }
    const int n = g.kh * g.kw;
    float sum = 0.f;
    for (int t = 0; t < n; ++t)
    {
        weights[t] = std::exp(weights[t] - maxLogit);
        sum += weights[t];
    }
    const float inv = 1.f / sum;
    for (int t = 0; t < n; ++t) weights[t] *= inv;
}

NAF_ALWAYS_INLINE inline void attentionRowImpl(const AttentionGeometry& g, const float* queries, const float* keysT,
                                               const float* valuesT, float* out, int y, std::vector<float>& queryRow,
                                               std::vector<float>& outRow, std::vector<float>& weights)
{
    const size_t outPlane = static_cast<size_t>(g.outH) * g.outW;
    queryRow.resize(static_cast<size_t>(g.outW) * g.dim);
    outRow.resize(static_cast<size_t>(g.outW) * g.channels);
    weights.resize(static_cast<size_t>(g.kh) * g.kw);
    for (int c = 0; c < g.dim; ++c)
    {
        const float* src = queries + c * outPlane + static_cast<size_t>(y) * g.outW;
        for (int x = 0; x < g.outW; ++x) queryRow[static_cast<size_t>(x) * g.dim + c] = src[x];
    }
    const int* rows = g.rowIndex.data() + static_cast<size_t>(y) * g.kh;
    for (int x = 0; x < g.outW; ++x)
    {
        const int* cols = g.colIndex.data() + static_cast<size_t>(x) * g.kw;
        for (int h = 0; h < g.heads; ++h)
        {
            pixelHeadWeights(g, queryRow.data() + static_cast<size_t>(x) * g.dim + h * g.headDim,
                             keysT + h * g.headDim, rows, cols, weights.data());
            float* acc = outRow.data() + static_cast<size_t>(x) * g.channels + h * g.headValues;
            for (int c = 0; c < g.headValues; ++c) acc[c] = 0.f;
            for (int a = 0; a < g.kh; ++a)
            {
                const float* valueRow = valuesT + static_cast<size_t>(rows[a]) * g.lowW * g.channels + h * g.headValues;
                for (int b = 0; b < g.kw; ++b)
                {
                    const float p = weights[a * g.kw + b];
                    const float* value = valueRow + static_cast<size_t>(cols[b]) * g.channels;
                    for (int c = 0; c < g.headValues; ++c) acc[c] += p * value[c];
                }
            }
        }
    }
    for (int c = 0; c < g.channels; ++c)
    {
        float* dst = out + c * outPlane + static_cast<size_t>(y) * g.outW;
        for (int x = 0; x < g.outW; ++x) dst[x] = outRow[static_cast<size_t>(x) * g.channels + c];
    }
}

NAF_TARGET_AVX2 void attentionRowAvx2(const AttentionGeometry& g, const float* q, const float* kT, const float* vT,
                                      float* out, int y, std::vector<float>& qr, std::vector<float>& orow,
                                      std::vector<float>& w)
{
    attentionRowImpl(g, q, kT, vT, out, y, qr, orow, w);
}

void attentionRowGeneric(const AttentionGeometry& g, const float* q, const float* kT, const float* vT, float* out,
                         int y, std::vector<float>& qr, std::vector<float>& orow, std::vector<float>& w)
{
    attentionRowImpl(g, q, kT, vT, out, y, qr, orow, w);
}

// [c, n] -> [n, c]
std::vector<float> toPixelMajor(const float* src, int c, size_t n)
{
    std::vector<float> dst(static_cast<size_t>(c) * n);
    for (int ch = 0; ch < c; ++ch)
        for (size_t i = 0; i < n; ++i) dst[i * c + ch] = src[static_cast<size_t>(ch) * n + i];
    return dst;
}

}  // namespace

void neighborhoodAttention(const float* queries, const float* keys, const float* values, float* out, int dim,
                           int channels, int heads, int lowH, int lowW, int outH, int outW, int kernelSize,
                           float scale, const ParallelFor& parallel, AttentionProbe* probe)
{
    if (heads <= 0 || dim % heads != 0 || channels % heads != 0)
        throw std::invalid_argument("neighborhoodAttention: dim " + std::to_string(dim) + " and channels " +
                                    std::to_string(channels) + " must be divisible by heads " +
                                    std::to_string(heads));
    if (lowH <= 0 || lowW <= 0 || outH < lowH || outW < lowW)
        throw std::invalid_argument("neighborhoodAttention: output " + std::to_string(outH) + "x" +
                                    std::to_string(outW) + " must be at least the low-res grid " +
                                    std::to_string(lowH) + "x" + std::to_string(lowW));
    if (kernelSize < 1 || kernelSize % 2 == 0)
        throw std::invalid_argument("neighborhoodAttention: kernel size must be odd and >= 1, got " +
                                    std::to_string(kernelSize));
    AttentionGeometry g;
    g.dim = dim;
    g.channels = channels;
    g.heads = heads;
    g.headDim = dim / heads;
    g.headValues = channels / heads;
    g.lowH = lowH;
    g.lowW = lowW;
    g.outH = outH;
    g.outW = outW;
    g.kh = effectiveKernel(kernelSize, lowH);
    g.kw = effectiveKernel(kernelSize, lowW);
    g.scale = scale;
    g.rowIndex = axisTable(outH, lowH, g.kh);
    g.colIndex = axisTable(outW, lowW, g.kw);

    const size_t lowPlane = static_cast<size_t>(lowH) * lowW;
    const std::vector<float> keysT = toPixelMajor(keys, dim, lowPlane);
    const std::vector<float> valuesT = toPixelMajor(values, channels, lowPlane);
    const bool avx2 = cpuHasAvx2Fma();
    if (probe && (probe->y < 0 || probe->y >= outH || probe->x < 0 || probe->x >= outW))
        throw std::invalid_argument("neighborhoodAttention: probe pixel (x=" + std::to_string(probe->x) + ", y=" +
                                    std::to_string(probe->y) + ") outside the " + std::to_string(outW) + "x" +
                                    std::to_string(outH) + " output");

    parallel(outH, [&](int64_t begin, int64_t end) {
        std::vector<float> queryRow, outRow, weights;
        for (int64_t y = begin; y < end; ++y)
        {
            if (avx2)
                attentionRowAvx2(g, queries, keysT.data(), valuesT.data(), out, static_cast<int>(y), queryRow, outRow,
                                 weights);
            else
                attentionRowGeneric(g, queries, keysT.data(), valuesT.data(), out, static_cast<int>(y), queryRow,
                                    outRow, weights);
        }
    });

    if (probe)
    {
        probe->heads = heads;
        probe->kh = g.kh;
        probe->kw = g.kw;
        probe->lowY.assign(g.rowIndex.begin() + static_cast<size_t>(probe->y) * g.kh,
                           g.rowIndex.begin() + static_cast<size_t>(probe->y + 1) * g.kh);
        probe->lowX.assign(g.colIndex.begin() + static_cast<size_t>(probe->x) * g.kw,
                           g.colIndex.begin() + static_cast<size_t>(probe->x + 1) * g.kw);
        probe->weights.assign(static_cast<size_t>(heads) * g.kh * g.kw, 0.f);
        std::vector<float> query(dim);
        const size_t outPlane = static_cast<size_t>(outH) * outW;
        for (int c = 0; c < dim; ++c) query[c] = queries[c * outPlane + static_cast<size_t>(probe->y) * outW + probe->x];
        for (int h = 0; h < heads; ++h)
            pixelHeadWeights(g, query.data() + h * g.headDim, keysT.data() + h * g.headDim, probe->lowY.data(),
                             probe->lowX.data(), probe->weights.data() + static_cast<size_t>(h) * g.kh * g.kw);
    }
}

}  // namespace kernels
}  // namespace naf
