// GELU (tanh form) and row softmax for the cv::dnn custom layers of converted VFM graphs.
// One template per operation, instantiated at the ISA's native vector width (simd_vec.hpp).
#include "naf_kernels/dnn_ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "gemm.hpp"
#include "simd_vec.hpp"

namespace naf {
namespace kernels {
namespace {

constexpr float kGeluCubic = 0.044715f;
constexpr float kGeluScale = 1.5957691216057308f;  // 2 sqrt(2/pi)

// Out parameter, not a return value: GCC warns (-Wpsabi) about returning a vector wider than the
// translation unit's default ISA, even from always-inlined code.
template <class V>
NAF_ALWAYS_INLINE inline void geluVec(V& y, V x)
{
    V e;
    expVec(e, -(kGeluScale * (x + kGeluCubic * x * x * x)));
    // x * sigmoid(a) = x / (1 + exp(-a)); expVec clamps its argument, so a NaN x gives a finite
    // gate: the division keeps it NaN.
    y = x / (1.f + e);
}

template <class V>
NAF_ALWAYS_INLINE inline void geluImpl(const float* src, float* dst, size_t n)
{
    constexpr size_t W = sizeof(V) / sizeof(float);
    size_t i = 0;
    for (; i + W <= n; i += W)
    {
        V x;
        std::memcpy(&x, src + i, sizeof x);
        V y;
        geluVec(y, x);
        std::memcpy(dst + i, &y, sizeof y);
    }
    if (i < n)  // the tail through the same vector code, so every element gets the same bits
    {
        V x{};
        std::memcpy(&x, src + i, (n - i) * sizeof(float));
        V y;
        geluVec(y, x);
        std::memcpy(dst + i, &y, (n - i) * sizeof(float));
    }
}

// One row: max, exp(x - max) into dst with its sum, then dst /= sum. Lanes past the row's end are
// computed on zeros and neither stored nor summed. A row with a NaN is all NaN (as ONNX's and
// cv::dnn's Softmax give): the max skips NaN and expVec clamps it, which would hide it.
template <class V>
NAF_ALWAYS_INLINE inline void softmaxRowImpl(const float* src, float* dst, size_t n)
{
    constexpr size_t W = sizeof(V) / sizeof(float);
    const size_t full = n / W * W;
    float maxValue = -std::numeric_limits<float>::infinity();
    {
        V m = V{} + maxValue, nanSeen{};
        for (size_t i = 0; i < full; i += W)
        {
            V x;
            std::memcpy(&x, src + i, sizeof x);
            m = x > m ? x : m;
            nanSeen = x != x ? V{} + 1.f : nanSeen;
        }
        bool hasNaN = false;
        for (size_t l = 0; l < W; ++l)
        {
            maxValue = std::max(maxValue, m[l]);
            hasNaN |= nanSeen[l] != 0.f;
        }
        for (size_t i = full; i < n; ++i)
        {
            maxValue = std::max(maxValue, src[i]);
            hasNaN |= std::isnan(src[i]);
        }
        if (hasNaN)
        {
            std::fill(dst, dst + n, std::numeric_limits<float>::quiet_NaN());
            return;
        }
    }
    V sums{};
    for (size_t i = 0; i < full; i += W)
    {
        V x, e;
        std::memcpy(&x, src + i, sizeof x);
        expVec(e, x - maxValue);
        sums += e;
        std::memcpy(dst + i, &e, sizeof e);
    }
    float sum = 0.f;
    for (size_t l = 0; l < W; ++l) sum += sums[l];
    if (full < n)
    {
        V x{}, e;
        std::memcpy(&x, src + full, (n - full) * sizeof(float));
        expVec(e, x - maxValue);
        for (size_t l = 0; l < n - full; ++l) sum += e[l];
        std::memcpy(dst + full, &e, (n - full) * sizeof(float));
    }
    const float inverse = 1.f / sum;
    for (size_t i = 0; i < full; i += W)
    {
        V y;
        std::memcpy(&y, dst + i, sizeof y);
        y *= inverse;
        std::memcpy(dst + i, &y, sizeof y);
    }
    for (size_t i = full; i < n; ++i) dst[i] *= inverse;
}

template <class V>
NAF_ALWAYS_INLINE inline void softmaxRowsImpl(const float* src, float* dst, size_t rows, size_t cols)
{
    for (size_t r = 0; r < rows; ++r) softmaxRowImpl<V>(src + r * cols, dst + r * cols, cols);
}

NAF_TARGET_AVX512 void geluAvx512(const float* s, float* d, size_t n) { geluImpl<Vec16>(s, d, n); }
NAF_TARGET_AVX2 void geluAvx2(const float* s, float* d, size_t n) { geluImpl<Vec8>(s, d, n); }
void geluGeneric(const float* s, float* d, size_t n) { geluImpl<Vec4>(s, d, n); }

NAF_TARGET_AVX512 void softmaxRowsAvx512(const float* s, float* d, size_t r, size_t c) { softmaxRowsImpl<Vec16>(s, d, r, c); }
NAF_TARGET_AVX2 void softmaxRowsAvx2(const float* s, float* d, size_t r, size_t c) { softmaxRowsImpl<Vec8>(s, d, r, c); }
void softmaxRowsGeneric(const float* s, float* d, size_t r, size_t c) { softmaxRowsImpl<Vec4>(s, d, r, c); }

// Splits `count` items into tasks of about `perTask` items (at least one task); the split never
// changes a result, since every item is computed alone.
template <class Body>
void forChunks(size_t count, size_t perTask, const ParallelFor& parallel, Body&& body)
{
    if (count == 0) return;
    const size_t tasks = std::max<size_t>(1, (count + perTask - 1) / perTask);
    const size_t step = (count + tasks - 1) / tasks;
    parallel(static_cast<int64_t>(tasks), [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t)
        {
            const size_t first = static_cast<size_t>(t) * step;
            if (first < count) body(first, std::min(count, first + step));
        }
    });
}

}  // namespace

void geluTanh(const float* src, float* dst, size_t count, const ParallelFor& parallel)
{
    if (count > 0 && (!src || !dst)) throw std::invalid_argument("naf::kernels::geluTanh: null pointer");
    // 16-float multiples per task (64-byte lines are never split between two tasks' stores).
    forChunks((count + 15) / 16, 4096, parallel, [&](size_t first, size_t last) {
        const size_t begin = first * 16, end = std::min(count, last * 16);
        if (cpuHasAvx512f())
            geluAvx512(src + begin, dst + begin, end - begin);
        else if (cpuHasAvx2Fma())
            geluAvx2(src + begin, dst + begin, end - begin);
        else
            geluGeneric(src + begin, dst + begin, end - begin);
    });
}

void softmaxRows(const float* src, float* dst, size_t rows, size_t cols, const ParallelFor& parallel)
{
    if (cols == 0) throw std::invalid_argument("naf::kernels::softmaxRows: rows of 0 values");
    if (rows > 0 && (!src || !dst)) throw std::invalid_argument("naf::kernels::softmaxRows: null pointer");
    forChunks(rows, std::max<size_t>(1, 65536 / cols), parallel, [&](size_t first, size_t last) {
        const float* s = src + first * cols;
        float* d = dst + first * cols;
        if (cpuHasAvx512f())
            softmaxRowsAvx512(s, d, last - first, cols);
        else if (cpuHasAvx2Fma())
            softmaxRowsAvx2(s, d, last - first, cols);
        else
            softmaxRowsGeneric(s, d, last - first, cols);
    });
}

void layerNormRows(const float* src, float* dst, size_t rows, size_t cols, const float* gamma, const float* beta,
                   float eps, const ParallelFor& parallel)
{
    if (cols == 0) throw std::invalid_argument("naf::kernels::layerNormRows: rows of 0 values");
    if (!(eps >= 0.f)) throw std::invalid_argument("naf::kernels::layerNormRows: eps " + std::to_string(eps) + " < 0");
    if ((gamma == nullptr) != (beta == nullptr))
        throw std::invalid_argument("naf::kernels::layerNormRows: gamma and beta go together");
    if (rows > 0 && (!src || !dst)) throw std::invalid_argument("naf::kernels::layerNormRows: null pointer");
    forChunks(rows, std::max<size_t>(1, 65536 / cols), parallel, [&](size_t first, size_t last) {
        for (size_t r = first; r < last; ++r)
        {
            const float* x = src + r * cols;
            float* y = dst + r * cols;
            // Sums in double, in 8 interleaved partial sums (vectorizable, a fixed order).
            double s[8] = {}, mean = 0, var = 0;
            size_t i = 0;
            for (; i + 8 <= cols; i += 8)
                for (int l = 0; l < 8; ++l) s[l] += x[i + l];
            for (; i < cols; ++i) s[0] += x[i];
            mean = ((s[0] + s[1]) + (s[2] + s[3]) + ((s[4] + s[5]) + (s[6] + s[7]))) / static_cast<double>(cols);
            double q[8] = {};
            for (i = 0; i + 8 <= cols; i += 8)
                for (int l = 0; l < 8; ++l)
                {
                    const double d = x[i + l] - mean;
                    q[l] += d * d;
                }
            for (; i < cols; ++i) q[0] += (x[i] - mean) * (x[i] - mean);
            var = ((q[0] + q[1]) + (q[2] + q[3]) + ((q[4] + q[5]) + (q[6] + q[7]))) / static_cast<double>(cols);
            // (x - mean) first: x * scale - mean * scale would cancel badly for rows far from 0.
            const float scale = static_cast<float>(1.0 / std::sqrt(var + eps));
            const float m = static_cast<float>(mean);
            if (gamma)
                for (size_t c = 0; c < cols; ++c) y[c] = (x[c] - m) * scale * gamma[c] + beta[c];
            else
                for (size_t c = 0; c < cols; ++c) y[c] = (x[c] - m) * scale;
        }
    });
}

void matmul(const float* a, const float* b, float* c, const MatMulShape& shape, const ParallelFor& parallel)
{
    const int M = shape.M, K = shape.K, N = shape.N;  // the layer handles empty products itself
    if (M <= 0 || K <= 0 || N <= 0)
        throw std::invalid_argument("naf::kernels::matmul: sizes M=" + std::to_string(M) + " K=" + std::to_string(K) +
                                    " N=" + std::to_string(N) + " must be positive");
    if (shape.batch == 0) return;
    if (!a || !b || !c) throw std::invalid_argument("naf::kernels::matmul: null pointer");
    const detail::GemmIsa isa = detail::gemmIsa();
    const int mr = detail::gemmRows(isa);
    const int kp = K + (shape.biasRow ? 1 : 0);  // rows of B, the bias row included
    // Up to 64 rows of one item per task: 8 (AVX-512) or 16 register blocks that reuse each
    // column tile of B while it is in cache.
    constexpr int kRowsPerTask = 64;
    const int blocksPerItem = (M + kRowsPerTask - 1) / kRowsPerTask;
    const size_t itemA = static_cast<size_t>(M) * K, itemB = shape.sharedB ? 0 : static_cast<size_t>(kp) * N,
                 itemC = static_cast<size_t>(M) * N;
    parallel(static_cast<int64_t>(shape.batch * blocksPerItem), [&](int64_t begin, int64_t end) {
        thread_local std::vector<float> packed;
        thread_local std::vector<ptrdiff_t> offsets;
        offsets.resize(kp);
        for (int k = 0; k < kp; ++k) offsets[k] = static_cast<ptrdiff_t>(k) * N;
        for (int64_t task = begin; task < end; ++task)
        {
            const size_t item = static_cast<size_t>(task / blocksPerItem);
            const int r0 = static_cast<int>(task % blocksPerItem) * kRowsPerTask;
            const int rows = std::min(kRowsPerTask, M - r0);
            // A's rows as the GEMM's "weights": [kp][mr] per block of mr rows, zero past the last row.
            const int blocks = (rows + mr - 1) / mr;
            packed.assign(static_cast<size_t>(blocks) * kp * mr, 0.f);
            const float* rowsA = a + item * itemA + static_cast<size_t>(r0) * K;
            for (int r = 0; r < rows; ++r)
            {
                float* dst = packed.data() + static_cast<size_t>(r / mr) * kp * mr + r % mr;
                const float* src = rowsA + static_cast<size_t>(r) * K;
                for (int k = 0; k < K; ++k) dst[static_cast<size_t>(k) * mr] = src[k];
                if (shape.biasRow) dst[static_cast<size_t>(K) * mr] = 1.f;
            }
            ConvWeights rowsOfA;
            rowsOfA.cout = rows;
            rowsOfA.cin = kp;
            rowsOfA.k = 1;
            detail::gemmTile(isa, packed.data(), rowsOfA, kp, b + item * itemB, offsets.data(), N,
                             c + item * itemC + static_cast<size_t>(r0) * N, static_cast<size_t>(N));
        }
    });
}

}  // namespace kernels
}  // namespace naf
