// GELU and row softmax of the VFM graphs' custom layers (kernels/src/dnn_ops.cpp) against plain
// double-precision references, on odd sizes with fixed seeds.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "naf_kernels/dnn_ops.hpp"
#include "test_support.hpp"

using namespace naf::kernels;
using naf::kernels::testing::randomUniform;

namespace {

double geluReference(double x)
{
    return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

std::vector<double> softmaxReference(const float* row, size_t n)
{
    double m = -INFINITY, sum = 0;
    for (size_t i = 0; i < n; ++i) m = std::max(m, double(row[i]));
    std::vector<double> out(n);
    for (size_t i = 0; i < n; ++i) sum += out[i] = std::exp(double(row[i]) - m);
    for (double& v : out) v /= sum;
    return out;
}

}  // namespace

// Every element within a few ulps of the formula in double (tanh form), for sizes around the
// vector widths and the task size, in place and not, with the same bits for any split of the work.
TEST(DnnOps, GeluMatchesTheTanhFormulaForAnySizeAndSplit)
{
    const ParallelFor threads = threadParallelFor(3);
    for (size_t n : {size_t(1), size_t(3), size_t(15), size_t(17), size_t(100), size_t(4096 * 16 + 5),
                     size_t(3 * 4096 * 16 + 31)})
    {
        SCOPED_TRACE(n);
        std::vector<float> x = randomUniform(n, static_cast<uint32_t>(n), -6.f, 6.f);
        std::vector<float> serial(n), split(n);
        geluTanh(x.data(), serial.data(), n, serialParallelFor());
        geluTanh(x.data(), split.data(), n, threads);
        EXPECT_EQ(0, std::memcmp(serial.data(), split.data(), n * sizeof(float)));
        double worst = 0;
        for (size_t i = 0; i < n; ++i)
        {
            const double want = geluReference(x[i]);
            worst = std::max(worst, std::abs(serial[i] - want) / std::max(std::abs(want), 1e-3));
        }
        EXPECT_LT(worst, 2e-6) << "worst relative error";
        std::vector<float> inPlace = x;
        geluTanh(inPlace.data(), inPlace.data(), n, threads);
        EXPECT_EQ(0, std::memcmp(serial.data(), inPlace.data(), n * sizeof(float)));
    }
}

// Far from 0 the gate saturates: x for large x, 0 (to 1e-30) for very negative x, where the
// cubic overflows too; NaN stays NaN. -inf gives -inf here (the exponential's argument is clamped);
// the cv::dnn layer chain this replaces gives NaN, and the limit is 0: no VFM feeds infinities.
TEST(DnnOps, GeluSaturatesAndKeepsNaN)
{
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    const std::vector<float> x = {0.f, 50.f, -50.f, 1e6f, -1e6f, inf, -inf, nan, 1e-30f};
    std::vector<float> y(x.size());
    geluTanh(x.data(), y.data(), x.size(), serialParallelFor());
    EXPECT_EQ(y[0], 0.f);
    EXPECT_EQ(y[1], 50.f);
    EXPECT_NEAR(y[2], 0.f, 1e-30f);
    EXPECT_EQ(y[3], 1e6f);
    EXPECT_NEAR(y[4], 0.f, 1e-30f);
    EXPECT_EQ(y[5], inf);
    EXPECT_FALSE(y[6] > 0.f) << y[6];
    EXPECT_TRUE(std::isnan(y[7]));
    EXPECT_NEAR(y[8], 0.5e-30f, 1e-36f);
}

// Each row sums to 1 and matches the double reference; rows of 1, of odd lengths and of the
// window sizes of TinyViT (49, 196) in one call; large offsets do not overflow; the split of the
// rows between threads does not change a bit; in place gives the same.
TEST(DnnOps, SoftmaxRowsMatchTheReferenceForAnyLengthAndSplit)
{
    const ParallelFor threads = threadParallelFor(3);
    for (size_t cols : {size_t(1), size_t(3), size_t(16), size_t(17), size_t(49), size_t(196), size_t(1000)})
        for (size_t rows : {size_t(1), size_t(7), size_t(2000)})
        {
            SCOPED_TRACE(std::to_string(rows) + " x " + std::to_string(cols));
            std::vector<float> x = randomUniform(rows * cols, static_cast<uint32_t>(rows * 7 + cols), -8.f, 8.f);
            for (size_t r = 0; r < rows; r += 3) x[r * cols] += 1000.f;  // exp would overflow without the max
            std::vector<float> serial(x.size()), split(x.size());
            softmaxRows(x.data(), serial.data(), rows, cols, serialParallelFor());
            softmaxRows(x.data(), split.data(), rows, cols, threads);
            EXPECT_EQ(0, std::memcmp(serial.data(), split.data(), x.size() * sizeof(float)));
            double worst = 0, worstSum = 0;
            for (size_t r = 0; r < rows; ++r)
            {
                const std::vector<double> want = softmaxReference(x.data() + r * cols, cols);
                double sum = 0;
                for (size_t i = 0; i < cols; ++i)
                {
                    const float got = serial[r * cols + i];
                    sum += got;
                    worst = std::max(worst, std::abs(got - want[i]) / std::max(want[i], 1e-30));
                }
                worstSum = std::max(worstSum, std::abs(sum - 1.0));
            }
            EXPECT_LT(worst, 1e-5) << "worst relative error";
            EXPECT_LT(worstSum, 1e-5);
            std::vector<float> inPlace = x;
            softmaxRows(inPlace.data(), inPlace.data(), rows, cols, threads);
            EXPECT_EQ(0, std::memcmp(serial.data(), inPlace.data(), x.size() * sizeof(float)));
        }
}

// A NaN anywhere in a row makes the whole row NaN (ONNX's Softmax does the same), in the vector
// part and in the tail; other rows are unaffected.
TEST(DnnOps, SoftmaxRowWithNaNIsNaN)
{
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (size_t cols : {size_t(3), size_t(20), size_t(49)})
        for (size_t at : {size_t(0), cols - 1})
        {
            std::vector<float> x = randomUniform(2 * cols, static_cast<uint32_t>(cols + at));
            x[at] = nan;
            std::vector<float> y(x.size());
            softmaxRows(x.data(), y.data(), 2, cols, serialParallelFor());
            for (size_t i = 0; i < cols; ++i) EXPECT_TRUE(std::isnan(y[i])) << cols << " " << at << " " << i;
            double sum = 0;
            for (size_t i = cols; i < 2 * cols; ++i) sum += y[i];
            EXPECT_NEAR(sum, 1.0, 1e-5);
        }
}

TEST(DnnOps, BadArgumentsThrow)
{
    float v = 1.f;
    EXPECT_THROW(softmaxRows(&v, &v, 1, 0, serialParallelFor()), std::invalid_argument);
    EXPECT_THROW(softmaxRows(nullptr, &v, 1, 1, serialParallelFor()), std::invalid_argument);
    EXPECT_THROW(geluTanh(&v, nullptr, 1, serialParallelFor()), std::invalid_argument);
    geluTanh(nullptr, nullptr, 0, serialParallelFor());  // nothing to do
    softmaxRows(nullptr, nullptr, 0, 4, serialParallelFor());
}

// C = A B (+ bias) against a double reference for sizes around the register blocks (1, 7, 49, 65,
// 130 rows; N below, at and past 16 and 32), batched with and without a shared B, with and
// without the bias row; the same bits for any split of the work.
TEST(DnnOps, MatMulMatchesTheReferenceForOddSizesBatchesAndBias)
{
    const ParallelFor threads = threadParallelFor(3);
    uint32_t seed = 700;
    for (int M : {1, 7, 49, 65, 130})
        for (int K : {1, 3, 49, 320})
            for (int N : {1, 5, 16, 17, 33, 100})
                for (int variant = 0; variant < 3; ++variant)
                {
                    MatMulShape s;
                    s.M = M;
                    s.K = K;
                    s.N = N;
                    s.batch = variant == 0 ? 1 : 3;
                    s.sharedB = variant == 2;
                    s.biasRow = variant != 1;
                    SCOPED_TRACE(std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N) + " variant " +
                                 std::to_string(variant));
                    const int kp = K + (s.biasRow ? 1 : 0);
                    const std::vector<float> a = randomUniform(s.batch * M * K, seed++);
                    const std::vector<float> b = randomUniform((s.sharedB ? 1 : s.batch) * kp * N, seed++);
                    std::vector<float> serial(s.batch * M * N, std::nanf("")), split(serial.size(), std::nanf(""));
                    matmul(a.data(), b.data(), serial.data(), s, serialParallelFor());
                    matmul(a.data(), b.data(), split.data(), s, threads);
                    ASSERT_EQ(0, std::memcmp(serial.data(), split.data(), serial.size() * sizeof(float)));
                    double worst = 0;
                    for (size_t item = 0; item < s.batch; ++item)
                    {
                        const float* ai = a.data() + item * M * K;
                        const float* bi = b.data() + (s.sharedB ? 0 : item * kp * N);
                        for (int m = 0; m < M; ++m)
                            for (int n = 0; n < N; ++n)
                            {
                                double want = s.biasRow ? bi[static_cast<size_t>(K) * N + n] : 0.0;
                                for (int k = 0; k < K; ++k) want += double(ai[m * K + k]) * bi[k * N + n];
                                const float got = serial[(item * M + m) * N + n];
                                worst = std::max(worst, std::abs(got - want) / (1.0 + K));  // float sums of K products
                            }
                    }
                    EXPECT_LT(worst, 1e-6);
                }
}

TEST(DnnOps, MatMulRefusesBadSizes)
{
    float v = 1.f;
    MatMulShape s;
    s.M = 1;
    s.K = 0;
    s.N = 1;
    EXPECT_THROW(matmul(&v, &v, &v, s, serialParallelFor()), std::invalid_argument);
    s.K = 1;
    EXPECT_THROW(matmul(&v, nullptr, &v, s, serialParallelFor()), std::invalid_argument);
    s.batch = 0;
    matmul(nullptr, nullptr, nullptr, s, serialParallelFor());  // nothing to do
}

// LayerNorm rows against a double reference (with and without gamma/beta, odd lengths, rows with a
// large offset), in place, any split; bad arguments refused.
TEST(DnnOps, LayerNormRowsMatchTheReference)
{
    const ParallelFor threads = threadParallelFor(3);
    for (size_t cols : {size_t(1), size_t(7), size_t(64), size_t(161), size_t(320)})
        for (bool affine : {false, true})
        {
            SCOPED_TRACE(std::to_string(cols) + (affine ? " affine" : ""));
            const size_t rows = 301;
            std::vector<float> x = randomUniform(rows * cols, static_cast<uint32_t>(cols * 3 + affine), -3.f, 3.f);
            for (size_t r = 0; r < rows; r += 5)
                for (size_t c = 0; c < cols; ++c) x[r * cols + c] += 100.f;  // the mean must not swamp the variance
            const std::vector<float> gamma = randomUniform(cols, 5, 0.5f, 2.f), beta = randomUniform(cols, 6);
            const float* g = affine ? gamma.data() : nullptr;
            const float* b = affine ? beta.data() : nullptr;
            std::vector<float> serial(x.size()), split(x.size()), inPlace = x;
            layerNormRows(x.data(), serial.data(), rows, cols, g, b, 1e-5f, serialParallelFor());
            layerNormRows(x.data(), split.data(), rows, cols, g, b, 1e-5f, threads);
            layerNormRows(inPlace.data(), inPlace.data(), rows, cols, g, b, 1e-5f, threads);
            EXPECT_EQ(0, std::memcmp(serial.data(), split.data(), x.size() * sizeof(float)));
            EXPECT_EQ(0, std::memcmp(serial.data(), inPlace.data(), x.size() * sizeof(float)));
            double worst = 0;
            for (size_t r = 0; r < rows; ++r)
            {
                double mean = 0, var = 0;
                for (size_t c = 0; c < cols; ++c) mean += x[r * cols + c];
                mean /= cols;
                for (size_t c = 0; c < cols; ++c) var += (x[r * cols + c] - mean) * (x[r * cols + c] - mean);
                var /= cols;
                for (size_t c = 0; c < cols; ++c)
                {
                    double want = (x[r * cols + c] - mean) / std::sqrt(var + 1e-5);
                    if (affine) want = want * gamma[c] + beta[c];
                    worst = std::max(worst, std::abs(serial[r * cols + c] - want));
                }
            }
            EXPECT_LT(worst, 2e-5);
        }
    float v = 1.f;
    EXPECT_THROW(layerNormRows(&v, &v, 1, 0, nullptr, nullptr, 1e-5f, serialParallelFor()), std::invalid_argument);
    EXPECT_THROW(layerNormRows(&v, &v, 1, 1, &v, nullptr, 1e-5f, serialParallelFor()), std::invalid_argument);
    EXPECT_THROW(layerNormRows(&v, &v, 1, 1, nullptr, nullptr, -1.f, serialParallelFor()), std::invalid_argument);
}
