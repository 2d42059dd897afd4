// Every CPU kernel against a plain, independently written reference, on odd sizes with fixed
// seeds; plus the window rule on hand-computed cases and thread-count determinism.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <thread>
#include <vector>

#include "../cuda/cell_attention.hpp"  // host/device code: its phases run here thread by thread
#include "../cuda/cell_mma_attention.hpp"  // host/device code: its warps run here lane by lane
#include "../cuda/hwc_tail.hpp"        // host/device index arithmetic of the CUDA channels-last tail
#include "../cuda/staged_copy.hpp"     // the schedule of the CUDA engine's output copy
#include "../cuda/device_memory.hpp"   // the CUDA engine's out-of-memory message
#include "../cuda/attention_choice.hpp"  // AttentionKernel::Measured's rule
#include "naf_kernels/naf_kernels.hpp"
#include "test_support.hpp"

using namespace naf::kernels;
using naf::kernels::testing::randomUniform;
using naf::kernels::testing::RandomNafWeights;
using naf::kernels::testing::relativeL2;
using naf::kernels::testing::makeShape;

namespace {

const ParallelFor& pool()
{
    static const ParallelFor p = threadParallelFor(3);
    return p;
}

// ATen's nearest-exact, written as its CPU kernel does: double product, rounded to float, floorf.
int nearestExactAten(int p, int outLen, int inLen)
{
    const float scale = static_cast<float>(inLen) / outLen;
    const int v = static_cast<int>(std::floor(static_cast<float>((p + 0.5) * scale)));
    return std::min(v, inLen - 1);
}

// NATTEN's dilated neighborhood on the upsampled grid, written from its definition: the query's
// dilation group is the subsequence {g, g+d, g+2d, ...}; inside it the window is k consecutive
// members centered on the query, slid back inside the subsequence when it would leave it.
std::vector<int> bruteWindow(int i, int outLen, int lowLen, int kernel)
{
    const int k = std::min(kernel, lowLen);
    const int d = std::max(1, outLen / lowLen);
    std::vector<int> members;
    for (int p = i % d; p < outLen; p += d) members.push_back(p);
    int pos = 0;
    while (members[pos] != i) ++pos;
    int first = pos - k / 2;
    if (first + k > static_cast<int>(members.size())) first = static_cast<int>(members.size()) - k;
    if (first < 0) first = 0;
    std::vector<int> low;
    for (int t = 0; t < k; ++t) low.push_back(nearestExactAten(members[first + t], outLen, lowLen));
    return low;
}

}  // namespace

TEST(WindowRule, HandComputedCases)
{
    // 28 -> 448, k = 9: dilation 16; corners shift inward, the middle is centered.
    for (int t = 0; t < 9; ++t)
    {
        EXPECT_EQ(neighborLowIndex(0, t, 448, 28, 9), t);
        EXPECT_EQ(neighborLowIndex(447, t, 448, 28, 9), 19 + t);
        EXPECT_EQ(neighborLowIndex(200, t, 448, 28, 9), 8 + t);  // 200 = 12*16 + 8
    }
    // 4 -> 10, k = 3 (not a multiple): d = 2, query 9 is in group 1 of 5 members {1,3,5,7,9};
    // window {5,7,9} -> nearest-exact at scale 0.4 -> {2, 3, 3} (a repeated key, as the reference).
    EXPECT_EQ(neighborLowIndex(9, 0, 10, 4, 3), 2);
    EXPECT_EQ(neighborLowIndex(9, 1, 10, 4, 3), 3);
    EXPECT_EQ(neighborLowIndex(9, 2, 10, 4, 3), 3);
    // Float rounding at an integer boundary, as PyTorch 1.13's F.interpolate(mode="nearest-exact")
    // maps 50 -> 12 (index 12 reads source 3; the exact rational value is 3 - 1e-16 away).
    EXPECT_EQ(nearestExactSource(12, 50, 12), 3);
    EXPECT_EQ(nearestExactSource(11, 50, 12), 2);
    // Low grid shorter than the kernel: the window is the whole axis.
    EXPECT_EQ(effectiveKernel(9, 5), 5);
    for (int i = 0; i < 23; ++i)
    {
        std::vector<int> seen;
        for (int t = 0; t < 5; ++t) seen.push_back(neighborLowIndex(i, t, 25, 5, 5));
        EXPECT_EQ(seen, (std::vector<int>{0, 1, 2, 3, 4})) << "query " << i;
    }
}

TEST(WindowRule, MatchesBruteForceOnManySizes)
{
    const int sizes[][2] = {{448, 28}, {300, 37}, {233, 29}, {23, 5}, {31, 7}, {10, 4}, {9, 9}, {50, 12}, {41, 10},
                            {130, 24}, {100, 20}, {1000, 64}, {17, 16}};
    for (const auto& s : sizes)
        for (int kernel : {1, 3, 5, 9})
        {
            const int k = effectiveKernel(kernel, s[1]);
            for (int i = 0; i < s[0]; ++i)
            {
                const std::vector<int> expected = bruteWindow(i, s[0], s[1], kernel);
                for (int t = 0; t < k; ++t)
                    ASSERT_EQ(neighborLowIndex(i, t, s[0], s[1], k), expected[t])
                        << "out " << s[0] << " low " << s[1] << " k " << kernel << " i " << i << " t " << t;
            }
        }
}

TEST(Kernels, ResizeBilinearMatchesReference)
{
    const int planes = 3, sh = 13, sw = 17, dh = 5, dw = 7;
    const auto src = randomUniform(planes * sh * sw, 1);
    std::vector<float> dst(planes * dh * dw);
    resizeBilinear(src.data(), planes, sh, sw, dst.data(), dh, dw, pool());
    for (int p = 0; p < planes; ++p)
        for (int y = 0; y < dh; ++y)
            for (int x = 0; x < dw; ++x)
            {
                const double fy = std::max(0.0, (y + 0.5) * sh / dh - 0.5), fx = std::max(0.0, (x + 0.5) * sw / dw - 0.5);
                const int y0 = static_cast<int>(fy), x0 = static_cast<int>(fx);
                const int y1 = std::min(y0 + 1, sh - 1), x1 = std::min(x0 + 1, sw - 1);
                const double ly = fy - y0, lx = fx - x0;
                auto at = [&](int yy, int xx) { return static_cast<double>(src[(p * sh + yy) * sw + xx]); };
                const double ref = (1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1)) +
                                   ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1));
                EXPECT_NEAR(dst[(p * dh + y) * dw + x], ref, 1e-5);
            }
}

TEST(Kernels, ConvReflectMatchesDirectConvolution)
{
    for (int k : {1, 3})
    {
        const int cin = 5, cout = 7, h = 9, w = 13;  // cout and h*w not multiples of the GEMM blocks
        const auto src = randomUniform(cin * h * w, 2);
        const auto weight = randomUniform(cout * cin * k * k, 3);
        const auto bias = randomUniform(cout, 4);
        ConvWeights conv{weight.data(), bias.data(), cout, cin, k};
        std::vector<float> dst(cout * h * w);
        conv2dReflect(src.data(), h, w, conv, dst.data(), pool());
        auto reflect = [](int i, int n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); };
        for (int co = 0; co < cout; ++co)
            for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x)
                {
                    double acc = bias[co];
                    for (int ci = 0; ci < cin; ++ci)
                        for (int ky = 0; ky < k; ++ky)
                            for (int kx = 0; kx < k; ++kx)
                                acc += static_cast<double>(weight[((co * cin + ci) * k + ky) * k + kx]) *
                                       src[(ci * h + reflect(y + ky - k / 2, h)) * w + reflect(x + kx - k / 2, w)];
                    ASSERT_NEAR(dst[(co * h + y) * w + x], acc, 1e-5) << "k " << k << " co " << co;
                }
    }
    // A larger case that spans many tiles and the full 4x16 register blocks.
    const int cin = 16, cout = 12, h = 21, w = 19, k = 3;
    const auto src = randomUniform(cin * h * w, 5);
    const auto weight = randomUniform(cout * cin * k * k, 6);
    ConvWeights conv{weight.data(), nullptr, cout, cin, k};
    std::vector<float> a(cout * h * w), b(cout * h * w);
    conv2dReflect(src.data(), h, w, conv, a.data(), pool());
    conv2dReflect(src.data(), h, w, conv, b.data(), serialParallelFor());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

// 1x1 tasks gather 512 pixels each and write whole 16-float runs with non-temporal stores where a
// row starts on a 64-byte boundary: 23x29 (667 pixels) has misaligned rows, a partial last task and
// a group that is not a multiple of the micro-kernel's 32 or 16 pixels; 32x48 (planes of a
// multiple of 16 floats, on an aligned base) takes the streamed stores in 3 tasks. Against the
// direct sum in double, and bit-identical for any thread split.
TEST(Kernels, PointConvMatchesDirectSumAcrossTasks)
{
    for (const auto& [h, w] : {std::pair<int, int>{23, 29}, std::pair<int, int>{32, 48}})
    {
        const int cin = 40, cout = 17;
        const auto src = randomUniform(cin * h * w, 61);
        const auto weight = randomUniform(cout * cin, 62);
        const auto bias = randomUniform(cout, 63);
        ConvWeights conv{weight.data(), bias.data(), cout, cin, 1};
        AlignedFloatVector dst(static_cast<size_t>(cout) * h * w, std::nanf("")), serial(dst.size(), 0.f);
        conv2dReflect(src.data(), h, w, conv, dst.data(), pool());
        for (int co = 0; co < cout; ++co)
            for (int p = 0; p < h * w; ++p)
            {
                double acc = bias[co];
                for (int ci = 0; ci < cin; ++ci)
                    acc += static_cast<double>(weight[co * cin + ci]) * src[ci * h * w + p];
                ASSERT_NEAR(dst.data()[static_cast<size_t>(co) * h * w + p], acc, 1e-5)
                    << h << "x" << w << " co " << co << " pixel " << p;
            }
        conv2dReflect(src.data(), h, w, conv, serial.data(), serialParallelFor());
        EXPECT_EQ(0, std::memcmp(dst.data(), serial.data(), dst.size() * sizeof(float))) << h << "x" << w;
    }
}

// Wide 3x3 convolutions take the Winograd F(6x6, 3x3) path (>= 32 input channels, both sides >= 4):
// every size modulo the 6x6 tile on both axes (partial last tiles, images smaller than one tile),
// more tiles than one task holds (32 tiles) and tasks that continue on the next tile row (7x150,
// 6x135, 10x200, 13x100), runs of 16 or more tiles (the vector (de)interleaving, whose last block
// overlaps the one before unless the run is a multiple of 16: 6x96, 8x190), output channels not a
// multiple of the GEMM block, against the direct sum in double; and bit-identical for any thread
// split.
TEST(Kernels, WinogradConvMatchesDirectConvolution)
{
    struct Case
    {
        int cin, cout, h, w;
    };
    // 6x144 (rows of a multiple of 16 floats, on an aligned base) takes the output transform's
    // non-temporal row stores, in one task of 24 tiles.
    for (const Case c : {Case{32, 7, 4, 4}, Case{40, 12, 9, 13}, Case{33, 9, 5, 4}, Case{64, 17, 7, 150},
                         Case{48, 10, 6, 135}, Case{128, 16, 11, 7}, Case{32, 9, 6, 144}, Case{32, 8, 10, 200},
                         Case{36, 5, 13, 100}, Case{32, 8, 8, 190}, Case{34, 9, 6, 96}, Case{32, 8, 14, 17}})
    {
        const int k = 3;
        const auto src = randomUniform(c.cin * c.h * c.w, 11);
        const auto weight = randomUniform(c.cout * c.cin * k * k, 12);
        const auto bias = randomUniform(c.cout, 13);
        ConvWeights conv{weight.data(), bias.data(), c.cout, c.cin, k};
        AlignedFloatVector dst(static_cast<size_t>(c.cout) * c.h * c.w, std::nanf(""));
        conv2dReflect(src.data(), c.h, c.w, conv, dst.data(), pool());
        auto reflect = [](int i, int n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); };
        double worst = 0;
        for (int co = 0; co < c.cout; ++co)
            for (int y = 0; y < c.h; ++y)
                for (int x = 0; x < c.w; ++x)
                {
                    double acc = bias[co], mag = std::fabs(bias[co]);
                    for (int ci = 0; ci < c.cin; ++ci)
                        for (int ky = 0; ky < k; ++ky)
                            for (int kx = 0; kx < k; ++kx)
                            {
                                const double t = static_cast<double>(weight[((co * c.cin + ci) * k + ky) * k + kx]) *
                                                 src[(ci * c.h + reflect(y + ky - 1, c.h)) * c.w + reflect(x + kx - 1, c.w)];
                                acc += t;
                                mag += std::fabs(t);
                            }
                    const float got = dst.data()[(static_cast<size_t>(co) * c.h + y) * c.w + x];
                    ASSERT_TRUE(std::isfinite(got)) << "unwritten output at co " << co << " y " << y << " x " << x;
                    // fp32 rounding of a sum of cin*9 terms, relative to the sum of their magnitudes.
                    worst = std::max(worst, std::fabs(got - acc) / mag);
                }
        std::cout << "  Winograd worst error / magnitude sum, cin " << c.cin << " " << c.h << "x" << c.w << ": " << worst << "\n";
        // F(6x6)'s rounding reaches 2.4e-6 on these cases (F(4x4)'s 1.6e-6, F(2x2)'s under 1e-7);
        // one transform coefficient off by 0.1 % gives ~7e-5.
        EXPECT_LT(worst, 4e-6) << "cin " << c.cin << " " << c.h << "x" << c.w;
        std::vector<float> serial(dst.size());
        conv2dReflect(src.data(), c.h, c.w, conv, serial.data(), serialParallelFor());
        EXPECT_EQ(0, std::memcmp(dst.data(), serial.data(), dst.size() * sizeof(float)));
    }
}

// The packed-weight cache: a second call reuses the entry; weights changed in place (same
// address) are noticed and repacked, so a cached call always equals an uncached one.
TEST(Kernels, ConvWeightCacheFollowsTheWeightsValues)
{
    for (int cin : {5, 40})  // direct and Winograd paths
    {
        const int cout = 9, h = 11, w = 10, k = 3;
        const auto src = randomUniform(cin * h * w, 21);
        auto weight = randomUniform(cout * cin * k * k, 22);
        ConvWeights conv{weight.data(), nullptr, cout, cin, k};
        std::vector<PackedConvWeights> cache;
        std::vector<float> cached(cout * h * w), uncached(cout * h * w);
        conv2dReflect(src.data(), h, w, conv, cached.data(), pool(), &cache);
        conv2dReflect(src.data(), h, w, conv, cached.data(), pool(), &cache);
        ASSERT_EQ(cache.size(), 1u);
        conv2dReflect(src.data(), h, w, conv, uncached.data(), pool());
        EXPECT_EQ(0, std::memcmp(cached.data(), uncached.data(), cached.size() * sizeof(float)));
        for (float& v : weight) v = -2.f * v;
        conv2dReflect(src.data(), h, w, conv, cached.data(), pool(), &cache);
        conv2dReflect(src.data(), h, w, conv, uncached.data(), pool());
        EXPECT_EQ(cache.size(), 1u);
        EXPECT_EQ(0, std::memcmp(cached.data(), uncached.data(), cached.size() * sizeof(float))) << "cin " << cin;
    }
}

TEST(Kernels, ConvRejectsInputTooSmallForReflectPadding)
{
    const auto weight = randomUniform(9, 1);
    ConvWeights conv{weight.data(), nullptr, 1, 1, 3};
    std::vector<float> src(3), dst(3);
    EXPECT_THROW(conv2dReflect(src.data(), 1, 3, conv, dst.data(), pool()), std::invalid_argument);
}

// GroupNorm+SiLU folded into the next 1x1 convolution (the point branch): the same bits as the
// in-place pass followed by the convolution, across several tasks and a partial last group
// (23 x 29 pixels), for any thread split; the input is left as it was; only 1x1 takes it.
TEST(Kernels, PointConvThroughGroupNormActivationEqualsSeparatePasses)
{
    const int c = 48, cout = 20, h = 23, w = 29, groups = 8;
    const auto src = randomUniform(c * h * w, 71, -2.f, 3.f);
    const auto gamma = randomUniform(c, 72, 0.5f, 1.5f), beta = randomUniform(c, 73);
    const auto weight = randomUniform(cout * c, 74), bias = randomUniform(cout, 75);
    const ConvWeights conv{weight.data(), bias.data(), cout, c, 1};
    std::vector<float> normalized = src;
    groupNormSiLU(normalized.data(), c, h, w, groups, gamma.data(), beta.data(), 1e-5f, pool());
    std::vector<float> separate(static_cast<size_t>(cout) * h * w);
    conv2dReflect(normalized.data(), h, w, conv, separate.data(), pool());

    std::vector<float> scale(c), shift(c);
    groupNormAffine(src.data(), c, h, w, groups, gamma.data(), beta.data(), 1e-5f, pool(), scale.data(), shift.data());
    InputActivation activation;
    activation.scale = scale.data();
    activation.shift = shift.data();
    for (const ParallelFor& parallel : {pool(), serialParallelFor()})
    {
        std::vector<float> input = src, fused(separate.size(), std::nanf(""));
        conv2dReflect(input.data(), h, w, conv, fused.data(), parallel, nullptr, &activation);
        EXPECT_EQ(0, std::memcmp(fused.data(), separate.data(), fused.size() * sizeof(float)));
        EXPECT_EQ(0, std::memcmp(input.data(), src.data(), src.size() * sizeof(float))) << "input modified";
    }
    const auto weight3 = randomUniform(cout * c * 9, 76);
    std::vector<float> out(separate.size());
    EXPECT_THROW(conv2dReflect(src.data(), h, w, ConvWeights{weight3.data(), nullptr, cout, c, 3}, out.data(), pool(),
                               nullptr, &activation),
                 std::invalid_argument);
}

// A 1x1 convolution with cin == cout runs in place (the point branch does, so that the encoder
// needs no activation buffer when the guide has the output size): the same bits as out of place,
// with and without the GroupNorm activation on its input, over several tasks and a partial last
// tile (the 128 channels of the encoder, 37 x 53 pixels), for any thread split.
TEST(Kernels, PointConvInPlaceEqualsOutOfPlace)
{
    const int c = 128, h = 37, w = 53, groups = 8;
    const auto src = randomUniform(static_cast<size_t>(c) * h * w, 81, -2.f, 3.f);
    const auto gamma = randomUniform(c, 82, 0.5f, 1.5f), beta = randomUniform(c, 83);
    const auto weight = randomUniform(static_cast<size_t>(c) * c, 84, -0.1f, 0.1f), bias = randomUniform(c, 85);
    const ConvWeights conv{weight.data(), bias.data(), c, c, 1};
    std::vector<float> scale(c), shift(c);
    groupNormAffine(src.data(), c, h, w, groups, gamma.data(), beta.data(), 1e-5f, pool(), scale.data(), shift.data());
    InputActivation activation;
    activation.scale = scale.data();
    activation.shift = shift.data();
    for (const InputActivation* act : {static_cast<const InputActivation*>(nullptr), static_cast<const InputActivation*>(&activation)})
    {
        std::vector<float> outOfPlace(src.size(), std::nanf(""));
        conv2dReflect(src.data(), h, w, conv, outOfPlace.data(), pool(), nullptr, act);
        for (const ParallelFor& parallel : {pool(), serialParallelFor()})
        {
            std::vector<float> inPlace = src;
            conv2dReflect(inPlace.data(), h, w, conv, inPlace.data(), parallel, nullptr, act);
            EXPECT_EQ(0, std::memcmp(inPlace.data(), outOfPlace.data(), src.size() * sizeof(float)))
                << (act ? "with" : "without") << " the activation";
        }
    }
}

TEST(Kernels, GroupNormSiLUMatchesReference)
{
    // Statistics are one shifted pass; the reference is the two-pass textbook form. The offset case
    // has a mean 20x its spread, where the shift matters.
    for (const float offset : {0.f, 40.f})
    {
    const int c = 12, h = 5, w = 7, groups = 3;
    auto src = randomUniform(c * h * w, 7, -2.f, 3.f);
    for (float& v : src) v += offset;
    const auto gamma = randomUniform(c, 8, 0.5f, 1.5f), beta = randomUniform(c, 9);
    std::vector<float> data = src;
    groupNormSiLU(data.data(), c, h, w, groups, gamma.data(), beta.data(), 1e-5f, pool());
    const int per = c / groups, n = per * h * w;
    for (int g = 0; g < groups; ++g)
    {
        double mean = 0, var = 0;
        for (int i = 0; i < n; ++i) mean += src[g * n + i];
        mean /= n;
        for (int i = 0; i < n; ++i) var += (src[g * n + i] - mean) * (src[g * n + i] - mean);
        var /= n;
        for (int i = 0; i < n; ++i)
        {
            const int ch = g * per + i / (h * w);
            const double v = (src[g * n + i] - mean) / std::sqrt(var + 1e-5) * gamma[ch] + beta[ch];
            ASSERT_NEAR(data[g * n + i], v / (1 + std::exp(-v)), 1e-5) << "offset " << offset;
        }
    }
    }
}

TEST(Kernels, AdaptiveAvgPoolMatchesReferenceDownAndUp)
{
    const int sizes[][4] = {{13, 17, 5, 7}, {5, 7, 13, 17}, {448, 448, 28, 28}, {9, 4, 9, 4}};
    for (const auto& s : sizes)
    {
        const int c = 2;
        const auto src = randomUniform(c * s[0] * s[1], 10);
        std::vector<float> dst(c * s[2] * s[3]);
        adaptiveAvgPool(src.data(), c, s[0], s[1], dst.data(), s[2], s[3], pool());
        for (int ch = 0; ch < c; ++ch)
            for (int oy = 0; oy < s[2]; ++oy)
                for (int ox = 0; ox < s[3]; ++ox)
                {
                    const int y0 = static_cast<int>(std::floor(double(oy) * s[0] / s[2]));
                    const int y1 = static_cast<int>(std::ceil(double(oy + 1) * s[0] / s[2]));
                    const int x0 = static_cast<int>(std::floor(double(ox) * s[1] / s[3]));
                    const int x1 = static_cast<int>(std::ceil(double(ox + 1) * s[1] / s[3]));
                    double sum = 0;
                    for (int y = y0; y < y1; ++y)
                        for (int x = x0; x < x1; ++x) sum += src[(ch * s[0] + y) * s[1] + x];
                    ASSERT_NEAR(dst[(ch * s[2] + oy) * s[3] + ox], sum / ((y1 - y0) * (x1 - x0)), 1e-5);
                }
    }
}

TEST(Kernels, RopeRotatesPairsByAxisAngles)
{
    const int dim = 32, heads = 2, h = 5, w = 3;  // head dim 16: 4 row + 4 column frequencies
    const auto src = randomUniform(dim * h * w, 11);
    const std::vector<float> periods = {1.f, 3.f, 10.f, 31.f};
    std::vector<float> data = src;
    applyRope(data.data(), dim, h, w, heads, periods.data(), pool());
    const double pi = 3.141592653589793;
    for (int hd = 0; hd < heads; ++hd)
        for (int j = 0; j < 8; ++j)
            for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x)
                {
                    const double coord = j < 4 ? (2.0 * (y + 0.5) / h - 1) : (2.0 * (x + 0.5) / w - 1);
                    const double angle = 2 * pi * coord / periods[j % 4];
                    const int lo = (hd * 16 + j) * h * w + y * w + x, hi = lo + 8 * h * w;
                    EXPECT_NEAR(data[lo], src[lo] * std::cos(angle) - src[hi] * std::sin(angle), 1e-5);
                    EXPECT_NEAR(data[hi], src[hi] * std::cos(angle) + src[lo] * std::sin(angle), 1e-5);
                }
}

// RoPE with the keys' pooling folded in (the forward's path): the same bits as applyRope then
// adaptiveAvgPool, for sizes that divide, that do not (bins sharing a row, which must be rotated
// once), a pooled size equal to the data's, and any thread split. Bad sizes are refused.
TEST(Kernels, RopeAndPoolEqualsRopeThenPool)
{
    const int dim = 32, heads = 2;
    const std::vector<float> periods = {1.f, 3.f, 10.f, 31.f};
    struct Case { int h, w, ph, pw; };
    for (const Case& c : {Case{32, 48, 4, 6}, Case{37, 29, 5, 7}, Case{11, 13, 11, 13}, Case{23, 9, 1, 2}})
    {
        SCOPED_TRACE(std::to_string(c.w) + "x" + std::to_string(c.h) + " -> " + std::to_string(c.pw) + "x" +
                     std::to_string(c.ph));
        const auto src = randomUniform(static_cast<size_t>(dim) * c.h * c.w, 91);
        std::vector<float> separate = src, separatePooled(static_cast<size_t>(dim) * c.ph * c.pw);
        applyRope(separate.data(), dim, c.h, c.w, heads, periods.data(), pool());
        adaptiveAvgPool(separate.data(), dim, c.h, c.w, separatePooled.data(), c.ph, c.pw, pool());
        for (const ParallelFor& parallel : {pool(), serialParallelFor()})
        {
            std::vector<float> fused = src, fusedPooled(separatePooled.size(), std::nanf(""));
            applyRopeAndPool(fused.data(), dim, c.h, c.w, heads, periods.data(), fusedPooled.data(), c.ph, c.pw,
                             parallel);
            EXPECT_EQ(0, std::memcmp(fused.data(), separate.data(), fused.size() * sizeof(float)));
            EXPECT_EQ(0, std::memcmp(fusedPooled.data(), separatePooled.data(), fusedPooled.size() * sizeof(float)));
        }
    }
    std::vector<float> data(static_cast<size_t>(dim) * 4 * 4), pooled(dim * 25);
    EXPECT_THROW(applyRopeAndPool(data.data(), dim, 4, 4, heads, periods.data(), pooled.data(), 5, 5, pool()),
                 std::invalid_argument);
    EXPECT_THROW(applyRopeAndPool(data.data(), dim, 4, 4, 3, periods.data(), pooled.data(), 2, 2, pool()),
                 std::invalid_argument);
}

// The CUDA channels-last tail's index arithmetic (hwc_tail.hpp), run here on every build: the
// padded pixel-major layout covers every slot once with the reflect-padded value, and RoPE from
// a branch's pixel-major output (plus bias) gives the CPU's applyRope of the channel-major queries.
TEST(Kernels, ChannelsLastTailIndexingMatchesCpuPaddingAndRope)
{
    auto reflect = [](int i, int n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); };
    for (int pad : {1, 2})
    {
        const int c = 5, h = 7, w = 9;
        const auto src = randomUniform(c * h * w, 51);
        std::vector<float> dst(static_cast<size_t>(c) * (h + 2 * pad) * (w + 2 * pad), std::nanf(""));
        for (int yp = 0; yp < h + 2 * pad; ++yp)
            for (int xp = 0; xp < w + 2 * pad; ++xp)
                for (int ch = 0; ch < c; ++ch)
                {
                    const size_t at = hwc::paddedHwcOffset(yp, xp, ch, w, pad, c);
                    ASSERT_LT(at, dst.size());
                    ASSERT_TRUE(std::isnan(dst[at])) << "slot written twice";
                    dst[at] = src[hwc::paddedSourceOffset(ch, yp, xp, h, w, pad)];
                    EXPECT_EQ(dst[at], src[(ch * h + reflect(yp - pad, h)) * w + reflect(xp - pad, w)]);
                }
        for (float v : dst) ASSERT_FALSE(std::isnan(v)) << "slot never written";
    }

    const int dim = 32, heads = 2, h = 5, w = 3, hidden = dim / 2, headDim = dim / heads, quarter = headDim / 4;
    const auto queries = randomUniform(dim * h * w, 52);
    const auto bias = randomUniform(dim, 53);
    const std::vector<float> periods = {1.f, 3.f, 10.f, 31.f};
    std::vector<float> expected = queries;
    applyRope(expected.data(), dim, h, w, heads, periods.data(), pool());
    for (int branch = 0; branch < 2; ++branch)
    {
        const int offset = branch * hidden;
        // The branch's convolution output, pixel-major and without its bias.
        std::vector<float> pixelMajor(static_cast<size_t>(h) * w * hidden);
        for (int p = 0; p < h * w; ++p)
            for (int cc = 0; cc < hidden; ++cc)
                pixelMajor[static_cast<size_t>(p) * hidden + cc] = queries[(offset + cc) * h * w + p] - bias[offset + cc];
        for (int p = 0; p < h * w; ++p)
            for (int cc = 0; cc < hidden; ++cc)
            {
                const hwc::RopeChannel r = hwc::ropeChannel(cc, headDim);
                const int len = r.fromRow ? h : w, pos = r.fromRow ? p / w : p % w;
                ASSERT_LT(r.angle, quarter);
                const float coord = 2.f * ((static_cast<float>(pos) + 0.5f) / static_cast<float>(len)) - 1.f;
                const float angle = 6.283185307179586f * coord / periods[r.angle];
                const float mine = pixelMajor[static_cast<size_t>(p) * hidden + cc] + bias[offset + cc];
                const float partner = pixelMajor[static_cast<size_t>(p) * hidden + r.partner] + bias[offset + r.partner];
                const float got = hwc::ropeValue(mine, partner, std::cos(angle), std::sin(angle), r.sign);
                ASSERT_NEAR(got, expected[(offset + cc) * h * w + p], 1e-5) << "branch " << branch << " channel " << cc;
            }
    }
}

// Official-style reference: keys/values nearest-exact upsampled to the output grid, then the
// dilated window on that grid, per pixel, in double.
static std::vector<float> referenceAttention(const std::vector<float>& q, const std::vector<float>& k,
                                             const std::vector<float>& v, int dim, int channels, int heads, int lowH,
                                             int lowW, int outH, int outW, int kernel)
{
    std::vector<float> out(static_cast<size_t>(channels) * outH * outW);
    const int hd = dim / heads, hv = channels / heads;
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    for (int y = 0; y < outH; ++y)
        for (int x = 0; x < outW; ++x)
        {
            const std::vector<int> rows = bruteWindow(y, outH, lowH, kernel), cols = bruteWindow(x, outW, lowW, kernel);
            for (int h = 0; h < heads; ++h)
            {
                std::vector<double> logits;
                for (int r : rows)
                    for (int c : cols)
                    {
                        double dot = 0;
                        for (int e = 0; e < hd; ++e)
                            dot += static_cast<double>(q[((h * hd + e) * outH + y) * outW + x]) *
                                   k[((h * hd + e) * lowH + r) * lowW + c];
                        logits.push_back(dot * scale);
                    }
                double mx = -1e300, sum = 0;
                for (double l : logits) mx = std::max(mx, l);
                for (double& l : logits) sum += (l = std::exp(l - mx));
                for (int e = 0; e < hv; ++e)
                {
                    double acc = 0;
                    size_t t = 0;
                    for (int r : rows)
                        for (int c : cols) acc += logits[t++] / sum * v[((h * hv + e) * lowH + r) * lowW + c];
                    out[((h * hv + e) * outH + y) * outW + x] = static_cast<float>(acc);
                }
            }
        }
    return out;
}

TEST(Kernels, NeighborhoodAttentionMatchesOfficialStyleReference)
{
    // 8 -> 48 (rows of 48 floats on an aligned base) takes the AVX-512 path's non-temporal stores of
    // whole 16-pixel runs (an output row is a few runs of one window: 6x).
    struct Case { int lowH, lowW, outH, outW, kernel, channels; };
    // 44 channels: 11 per head, so the value blocks of 6 (AVX2 row pairs) or 8, then 4, then single
    // channels all run; 25 and 81 window entries leave a partial group of 6 or 8 keys.
    // AVX2's wide runs (two 8-pixel vectors): 3 -> 50 has cells of 12-13 pixels (a partial second
    // vector); a low-res grid narrower than the kernel gives a whole row one window, so 64-wide
    // rows are whole 16-pixel runs, streamed, and 61-wide rows start mid-line (the run before the
    // line's end is cut short); with 44 channels the blocks of 3 channels (2 rows x 2 vectors),
    // then single channels run.
    const Case cases[] = {{7, 6, 30, 27, 5, 8},  {11, 9, 45, 40, 9, 12}, {5, 4, 23, 17, 9, 4}, {6, 6, 6, 6, 3, 8},
                          {8, 8, 48, 48, 5, 8},    {9, 7, 37, 29, 5, 44},  {10, 9, 41, 23, 9, 44},
                          {3, 4, 21, 50, 3, 8},    {4, 2, 20, 64, 3, 44},  {5, 2, 9, 61, 5, 12}};
    for (const Case& c : cases)
    {
        const int dim = 16, heads = 4;
        const auto q = randomUniform(dim * c.outH * c.outW, 12, -2.f, 2.f);
        const auto k = randomUniform(dim * c.lowH * c.lowW, 13, -2.f, 2.f);
        const auto v = randomUniform(c.channels * c.lowH * c.lowW, 14);
        AlignedFloatVector out(static_cast<size_t>(c.channels) * c.outH * c.outW, std::nanf(""));
        AttentionProbe probe;
        probe.y = c.outH - 1;
        probe.x = 1;
        neighborhoodAttention(q.data(), k.data(), v.data(), out.data(), dim, c.channels, heads, c.lowH, c.lowW, c.outH,
                              c.outW, c.kernel, 0.5f, pool(), &probe);
        const auto ref = referenceAttention(q, k, v, dim, c.channels, heads, c.lowH, c.lowW, c.outH, c.outW, c.kernel);
        EXPECT_LT(relativeL2(out.data(), ref.data(), out.size()), 1e-6) << c.outH << "x" << c.outW;
        // The probe reports the same window and weights that sum to one per head.
        EXPECT_EQ(probe.lowY, bruteWindow(probe.y, c.outH, c.lowH, c.kernel));
        EXPECT_EQ(probe.lowX, bruteWindow(probe.x, c.outW, c.lowW, c.kernel));
        ASSERT_EQ(probe.weights.size(), static_cast<size_t>(heads * probe.kh * probe.kw));
        for (int h = 0; h < heads; ++h)
        {
            double sum = 0;
            for (int t = 0; t < probe.kh * probe.kw; ++t) sum += probe.weights[h * probe.kh * probe.kw + t];
            EXPECT_NEAR(sum, 1.0, 1e-5);
        }
    }
}

// A low-res grid shorter than the kernel gives every output row the same window rows, so the
// AVX-512 and AVX2 builds take the rows in pairs (0-1, 2-3, ...) and, with an odd height, the
// last row alone, with other groupings of keys and value channels. Given row 0's queries, the
// last row must give row 0's bits: each lane does the same operations in the same order. (Row
// 0 and row 8 also start at different offsets within a cache line: other run splits.)
TEST(Kernels, NeighborhoodAttentionRowPairsGiveTheSingleRowsBits)
{
    const int dim = 32, heads = 4, channels = 44, lowH = 3, lowW = 7, outH = 9, outW = 37, kernel = 5;
    const size_t outPlane = static_cast<size_t>(outH) * outW;
    auto q = randomUniform(dim * outPlane, 21, -2.f, 2.f);
    for (int c = 0; c < dim; ++c)
        std::copy_n(q.begin() + c * outPlane, outW, q.begin() + c * outPlane + (outH - 1) * outW);
    const auto k = randomUniform(dim * lowH * lowW, 22, -2.f, 2.f);
    const auto v = randomUniform(channels * lowH * lowW, 23);
    AlignedFloatVector out(channels * outPlane, std::nanf(""));
    neighborhoodAttention(q.data(), k.data(), v.data(), out.data(), dim, channels, heads, lowH, lowW, outH, outW,
                          kernel, 0.35f, pool());
    for (int c = 0; c < channels; ++c)
        for (int x = 0; x < outW; ++x)
        {
            const float first = out[c * outPlane + x], last = out[c * outPlane + (outH - 1) * outW + x];
            ASSERT_EQ(std::memcmp(&first, &last, sizeof(float)), 0)
                << "channel " << c << ", x " << x << ": " << first << " vs " << last;
        }
    // And the rows between differ from row 0 (other queries): the comparison above is not vacuous.
    EXPECT_NE(out[outW + 3], out[3]);
}

// With the same query at every pixel, pixels whose windows have the same row and column tables
// (window.hpp) must give the same bits, whatever run they fall in: AVX2's wide runs (2 rows x 2
// vectors of 8, blocks of 3 keys and channels), a wide run of one row (the odd last row), a second
// vector with a few pixels, narrow runs, runs cut at a line's end (53-wide rows start at other
// offsets within a line), streamed whole lines (row 0), AVX-512's runs of 16 and the portable
// build's of 4. The low-res grid is smaller than the kernel, so most pixels share a window.
TEST(Kernels, NeighborhoodAttentionGivesTheSameBitsInEveryRunShape)
{
    const int dim = 32, heads = 4, channels = 44, lowH = 3, lowW = 3, outH = 5, outW = 53, kernel = 5;
    const size_t outPlane = static_cast<size_t>(outH) * outW;
    const auto perChannel = randomUniform(dim, 31, -2.f, 2.f);
    std::vector<float> q(dim * outPlane);
    for (int c = 0; c < dim; ++c) std::fill_n(q.begin() + c * outPlane, outPlane, perChannel[c]);
    const auto k = randomUniform(dim * lowH * lowW, 32, -2.f, 2.f);
    const auto v = randomUniform(channels * lowH * lowW, 33);
    AlignedFloatVector out(channels * outPlane, std::nanf(""));
    neighborhoodAttention(q.data(), k.data(), v.data(), out.data(), dim, channels, heads, lowH, lowW, outH, outW,
                          kernel, 0.35f, pool());
    // The first pixel of each window (its row and column tables), and how many pixels share it.
    auto table = [](int i, int outLen, int lowLen, int kernelSize) {
        const int kEff = effectiveKernel(kernelSize, lowLen);
        std::vector<int> t(kEff);
        for (int j = 0; j < kEff; ++j) t[j] = neighborLowIndex(i, j, outLen, lowLen, kEff);
        return t;
    };
    std::vector<std::pair<std::vector<int>, size_t>> firstOfWindow;
    std::vector<int> sharing;
    for (size_t p = 0; p < outPlane; ++p)
    {
        std::vector<int> key = table(static_cast<int>(p / outW), outH, lowH, kernel);
        const std::vector<int> cols = table(static_cast<int>(p % outW), outW, lowW, kernel);
        key.insert(key.end(), cols.begin(), cols.end());
        size_t w = 0;
        while (w < firstOfWindow.size() && firstOfWindow[w].first != key) ++w;
        if (w == firstOfWindow.size())
        {
            firstOfWindow.emplace_back(key, p);
            sharing.push_back(0);
        }
        ++sharing[w];
        for (int c = 0; c < channels; ++c)
        {
            const float first = out[c * outPlane + firstOfWindow[w].second], here = out[c * outPlane + p];
            ASSERT_FALSE(std::isnan(here)) << "channel " << c << ", pixel " << p;
            ASSERT_EQ(std::memcmp(&first, &here, sizeof(float)), 0)
                << "channel " << c << ", pixel (" << p % outW << ", " << p / outW << "): " << here << " vs " << first;
        }
    }
    // Not vacuous: some window spans whole lines of both rows of a pair, and windows differ.
    EXPECT_GE(*std::max_element(sharing.begin(), sharing.end()), 64);
    EXPECT_GT(sharing.size(), 1u);
}

// The CUDA cell attention kernel (kernels/cuda/cell_attention.hpp) is a sequence of phases
// separated by block barriers that talk only through shared memory, so running each phase for
// every thread of a block in turn is what the GPU computes. This runs them on the CPU against the
// CPU attention: index arithmetic, partial chunks, padded window entries, channel passes and
// masking are tested on every build; the GPU test (test_cuda.cpp) adds the device itself.
template <int HD>
void emulateCellAttention(const cell::Params& p, const std::vector<cell::Chunk>& chunks)
{
    std::vector<float> region1(static_cast<size_t>(cell::region1Floats<HD>()), std::nanf(""));
    std::vector<float> region2(static_cast<size_t>(cell::region2Floats()), std::nanf(""));
    const int vPerHead = p.channels / p.heads;
    for (const cell::Chunk& c : chunks)
        for (int h = 0; h < p.heads; ++h)
        {
            for (int t = 0; t < cell::kThreads; ++t) cell::stageQueriesAndKeys<HD>(p, c, h, t, region1.data());
            for (int t = 0; t < cell::kThreads; ++t) cell::logits<HD>(p, t, region1.data(), region2.data());
            for (int t = 0; t < cell::kThreads; ++t) cell::softmaxRows(p, t, region1.data(), region2.data());
            for (int c0 = 0; c0 < vPerHead; c0 += cell::kChannelsPerPass)
            {
                for (int t = 0; t < cell::kThreads; ++t) cell::stageValues(p, c, h, c0, t, region2.data());
                for (int t = 0; t < cell::kThreads; ++t)
                    cell::values(p, c, h, c0, t, region1.data(), region2.data());
            }
        }
}

std::vector<float> pixelMajor(const std::vector<float>& chw, int c, int64_t plane)
{
    std::vector<float> hwc(chw.size());
    for (int ch = 0; ch < c; ++ch)
        for (int64_t i = 0; i < plane; ++i)
            hwc[static_cast<size_t>(i * c + ch)] = chw[static_cast<size_t>(ch * plane + i)];
    return hwc;
}

// One attention problem for the cell kernels' CPU runs: seeded queries, keys and values, the CPU
// attention as reference, the window tables as the GPU builds them, the work list and the
// pixel-major copies the kernels read; `out` starts as NaN, so an element left unwritten cannot
// pass.
struct CellProblem
{
    static constexpr int kDim = 256;
    int outH, outW, lowH, lowW, channels, heads, kernel, kh, kw;
    float scale;
    std::vector<float> ref, qT, kT, vT, out;
    std::vector<int> rowTable, colTable;
    std::vector<cell::Chunk> chunks;

    CellProblem(int outH_, int outW_, int lowH_, int lowW_, int channels_, int heads_, int kernel_, uint32_t seed,
                float valueRange)
        : outH(outH_), outW(outW_), lowH(lowH_), lowW(lowW_), channels(channels_), heads(heads_), kernel(kernel_),
          kh(effectiveKernel(kernel_, lowH_)), kw(effectiveKernel(kernel_, lowW_)),
          scale(1.f / std::sqrt(static_cast<float>(kDim / heads_)))
    {
        const int64_t outPlane = int64_t(outH) * outW, lowPlane = int64_t(lowH) * lowW;
        const auto q = randomUniform(static_cast<size_t>(kDim * outPlane), seed, -2.f, 2.f);
        const auto k = randomUniform(static_cast<size_t>(kDim * lowPlane), seed + 1, -2.f, 2.f);
        const auto v = randomUniform(static_cast<size_t>(channels * lowPlane), seed + 2, -valueRange, valueRange);
        ref.resize(static_cast<size_t>(channels * outPlane));
        neighborhoodAttention(q.data(), k.data(), v.data(), ref.data(), kDim, channels, heads, lowH, lowW, outH, outW,
                              kernel, scale, pool());
        auto windowTable = [](int outLen, int lowLen, int kernelSize) {  // [outLen][kernel]
            std::vector<int> table(static_cast<size_t>(outLen) * kernelSize);
            for (int i = 0; i < outLen; ++i)
                for (int t = 0; t < kernelSize; ++t)
                    table[static_cast<size_t>(i) * kernelSize + t] = neighborLowIndex(i, t, outLen, lowLen, kernelSize);
            return table;
        };
        rowTable = windowTable(outH, lowH, kh);
        colTable = windowTable(outW, lowW, kw);
        chunks = cell::buildChunks(outH, outW, lowH, lowW, kh, kw);
        qT = pixelMajor(q, kDim, outPlane);
        kT = pixelMajor(k, kDim, lowPlane);
        vT = pixelMajor(v, channels, lowPlane);
        out.assign(ref.size(), std::nanf(""));
    }

    int headDim() const { return kDim / heads; }
    cell::Params params()
    {
        return cell::Params{qT.data(), kT.data(), vT.data(), out.data(), kDim, channels, heads, lowW, outH, outW,
                            rowTable.data(), colTable.data(), kh, kw, scale};
    }
    std::string describe() const
    {
        return std::to_string(lowH) + "x" + std::to_string(lowW) + " -> " + std::to_string(outH) + "x" +
               std::to_string(outW) + ", " + std::to_string(channels) + " channels, " + std::to_string(heads) +
               " heads, kernel " + std::to_string(kernel);
    }
    /// Relative L2 of `out` against the reference; infinite if any element is not finite.
    double error() const
    {
        for (float x : out)
            if (!std::isfinite(x)) return INFINITY;
        return relativeL2(out.data(), ref.data(), out.size());
    }
};

TEST(Kernels, CellAttentionPhasesMatchCpuAttention)
{
    // Head dims 64 and 32; value channels per head 10, 50, 75 and 100 (two passes of 96);
    // integer (16x) and non-integer (16.7x rows: 27 row bands of 3-4 windows) upsampling;
    // kernels 9, 7, 3 and low grids smaller than the kernel (6x5 window entries); one case is a
    // single 216x144 rectangle cut into 243 chunks, the last one partial.
    struct Case { int outH, outW, lowH, lowW, channels, heads, kernel; };
    const Case cases[] = {{96, 80, 6, 5, 40, 4, 9},     {100, 90, 6, 5, 200, 4, 9},
                          {176, 144, 11, 9, 600, 8, 7}, {64, 64, 4, 4, 400, 4, 3},
                          {216, 144, 3, 2, 24, 4, 9}};
    uint32_t seed = 40;
    for (const Case& cs : cases)
    {
        CellProblem pb(cs.outH, cs.outW, cs.lowH, cs.lowW, cs.channels, cs.heads, cs.kernel, seed, 1.f);
        seed += 3;
        SCOPED_TRACE(pb.describe());
        ASSERT_TRUE(cell::worthwhile(pb.chunks, cs.outH, cs.outW, pb.headDim(), pb.kh, pb.kw));

        // The chunks cover every pixel once, and every pixel of a chunk has its origin's window.
        std::vector<int> covered(pb.out.size() / static_cast<size_t>(cs.channels), 0);
        for (const cell::Chunk& c : pb.chunks)
        {
            ASSERT_GT(c.count, 0);
            ASSERT_LE(c.count, cell::kPixels);
            for (int i = 0; i < c.count; ++i)
            {
                const int64_t pix = cell::pixelOf(c, i, cs.outW);
                ++covered[static_cast<size_t>(pix)];
                const int y = static_cast<int>(pix / cs.outW), x = static_cast<int>(pix % cs.outW);
                for (int t = 0; t < pb.kh; ++t)
                    ASSERT_EQ(pb.rowTable[static_cast<size_t>(y * pb.kh + t)],
                              pb.rowTable[static_cast<size_t>(c.y0 * pb.kh + t)]);
                for (int t = 0; t < pb.kw; ++t)
                    ASSERT_EQ(pb.colTable[static_cast<size_t>(x * pb.kw + t)],
                              pb.colTable[static_cast<size_t>(c.x0 * pb.kw + t)]);
            }
        }
        for (int n : covered) ASSERT_EQ(n, 1);

        if (pb.headDim() == 64)
            emulateCellAttention<64>(pb.params(), pb.chunks);
        else
            emulateCellAttention<32>(pb.params(), pb.chunks);
        EXPECT_LT(pb.error(), 1e-6);
    }
}

// The tensor-core cell kernel (cell_mma_attention.hpp) as the device runs it, block by block: per
// head, each warp's query load, every thread's staging, then each warp's products, softmax and
// stores, with the warp-wide operations (mma.sync m16n8k8 TF32, quad shuffles) emulated from all
// 32 lanes' registers by the PTX fragment layouts. Shared memory starts as NaN, so a read of a
// slot no thread staged poisons the output.
template <int HD>
void emulateCellMmaAttention(const cell::Params& p, const std::vector<cell::Chunk>& chunks)
{
    const int vPerHead = p.channels / p.heads;
    const size_t floats = cellmma::sharedBytes<HD>(vPerHead) / sizeof(float);
    std::vector<float> shared(floats, std::nanf(""));
    const cellmma::SharedLayout sh = cellmma::sharedLayout<HD>(shared.data(), vPerHead);
    ASSERT_EQ(reinterpret_cast<char*>(sh.windowOffsets + cellmma::kMaxEntries),
              reinterpret_cast<char*>(shared.data()) + cellmma::sharedBytes<HD>(vPerHead));
    std::vector<cellmma::HostWarp<HD>> warps(cellmma::kWarps);
    for (const cell::Chunk& c : chunks)
    {
        std::fill(sh.windowOffsets, sh.windowOffsets + cellmma::kMaxEntries, 0x7fffffff);  // unset: far out
        for (int t = 0; t < cellmma::kThreads; ++t) cellmma::computeWindowOffsets(p, c, t, sh.windowOffsets);
        for (int h = 0; h < p.heads; ++h)
        {
            for (int t = 0; t < cellmma::kThreads; ++t) cellmma::stageKeysAndValues<HD>(p, h, t, sh);
            for (int w = 0; w < cellmma::kWarps; ++w)
            {
                if (w * cellmma::kTilePixels >= c.count) continue;  // the kernel's inactive warps
                cellmma::loadQueries<HD>(p, c, h, w, warps[static_cast<size_t>(w)]);
                cellmma::logitsAndSoftmax<HD>(p, sh.keys, warps[static_cast<size_t>(w)]);
                cellmma::valuesAndStore<HD>(p, c, h, w, sh, warps[static_cast<size_t>(w)]);
            }
        }
    }
}

// The emulated mma itself against a plain product, on one fragment, with operands that TF32
// cannot hold: one TF32 product would be off by ~1e-3 relative, 3xTF32 must stay near float32.
TEST(Kernels, CellMmaThreeTf32ProductsKeepFloat32Accuracy)
{
    cellmma::HostWarp<32> warp;
    const auto a = randomUniform(16 * 8, 7, -1.f, 1.f), b = randomUniform(8 * 8, 8, -1.f, 1.f);
    float acc[32][4] = {};
    warp.mma3([&](cellmma::LaneRegs<32>&, int lane) {
        const int g = lane >> 2, t = lane & 3;
        cellmma::MmaOperands op;
        op.d = acc[lane];
        op.a[0] = a[static_cast<size_t>(g * 8 + t)];
        op.a[1] = a[static_cast<size_t>((g + 8) * 8 + t)];
        op.a[2] = a[static_cast<size_t>(g * 8 + t + 4)];
        op.a[3] = a[static_cast<size_t>((g + 8) * 8 + t + 4)];
        op.b[0] = b[static_cast<size_t>(t * 8 + g)];
        op.b[1] = b[static_cast<size_t>((t + 4) * 8 + g)];
        op.aPreSplit = op.bPreSplit = false;
        return op;
    });
    double worst = 0.0, worstBig = 0.0;
    for (int lane = 0; lane < 32; ++lane)
        for (int k = 0; k < 4; ++k)
        {
            const int row = (lane >> 2) + 8 * (k >> 1), col = 2 * (lane & 3) + (k & 1);
            double exact = 0.0, big = 0.0;
            for (int i = 0; i < 8; ++i)
            {
                const float x = a[static_cast<size_t>(row * 8 + i)], y = b[static_cast<size_t>(i * 8 + col)];
                exact += double(x) * y;
                uint32_t xb, xs, yb, ys;
                cellmma::splitTf32(x, xb, xs);
                cellmma::splitTf32(y, yb, ys);
                big += double(cellmma::bitsFloat(xb)) * cellmma::bitsFloat(yb);
            }
            worst = std::max(worst, std::abs(acc[lane][k] - exact));
            worstBig = std::max(worstBig, std::abs(big - exact));
        }
    EXPECT_LT(worst, 2e-6);
    EXPECT_GT(worstBig, 1e-4);  // the operands really need the small parts
}

TEST(Kernels, CellMmaAttentionWarpEmulationMatchesCpuAttention)
{
    // Head dims 64 and 32; value channels per head 10, 50, 75 (three 32-channel passes, the last
    // one partial), 96 and 100; integer and non-integer (16.7x rows) upsampling; kernels 9, 7 and 3
    // and a low grid smaller than the kernel (6x5 = 30 window entries); partial chunks and tiles
    // (rectangles whose pixel counts are not multiples of 16). Values in [-3, 3].
    struct Case { int outH, outW, lowH, lowW, channels, heads, kernel; };
    const Case cases[] = {{48, 40, 6, 5, 40, 4, 9},    {50, 45, 3, 3, 200, 4, 9},   {88, 72, 11, 9, 600, 8, 7},
                          {32, 32, 4, 4, 400, 4, 3},   {100, 64, 6, 4, 384, 4, 9}, {72, 48, 3, 2, 24, 4, 9}};
    uint32_t seed = 90;
    for (const Case& cs : cases)
    {
        CellProblem pb(cs.outH, cs.outW, cs.lowH, cs.lowW, cs.channels, cs.heads, cs.kernel, seed, 3.f);
        seed += 3;
        SCOPED_TRACE(pb.describe());
        ASSERT_TRUE(cellmma::fits(pb.headDim(), pb.kh, pb.kw));
        if (pb.headDim() == 64)
            emulateCellMmaAttention<64>(pb.params(), pb.chunks);
        else
            emulateCellMmaAttention<32>(pb.params(), pb.chunks);
        EXPECT_LT(pb.error(), 2e-6);  // measured 1.8-3.3e-7; one TF32 product instead of three: ~1e-4
    }
}

// The cell kernel is left to the tiled one where rectangles of shared windows are small or its
// limits do not hold.
TEST(Kernels, CellAttentionIsNotChosenWhereItWouldNotPay)
{
    const auto small = cell::buildChunks(100, 130, 20, 24, 9, 9);  // 5x: ~27 pixels per rectangle
    EXPECT_FALSE(cell::worthwhile(small, 100, 130, 64, 9, 9));
    const auto fine = cell::buildChunks(448, 448, 28, 28, 9, 9);  // 16x: 256 pixels, two full chunks each
    EXPECT_EQ(fine.size(), static_cast<size_t>(28 * 28 * 2));
    EXPECT_TRUE(cell::worthwhile(fine, 448, 448, 64, 9, 9));
    EXPECT_FALSE(cell::worthwhile(fine, 448, 448, 128, 9, 9));  // head dim
    const auto wide = cell::buildChunks(448, 448, 28, 28, 11, 11);
    EXPECT_FALSE(cell::worthwhile(wide, 448, 448, 64, 11, 11));  // 121 window entries
}

TEST(Kernels, AttentionRejectsBadShapes)
{
    std::vector<float> buf(4096);
    EXPECT_THROW(neighborhoodAttention(buf.data(), buf.data(), buf.data(), buf.data(), 16, 6, 4, 4, 4, 8, 8, 3, 1.f,
                                       pool()),
                 std::invalid_argument);  // channels % heads
    EXPECT_THROW(neighborhoodAttention(buf.data(), buf.data(), buf.data(), buf.data(), 16, 8, 4, 8, 8, 4, 8, 3, 1.f,
                                       pool()),
                 std::invalid_argument);  // output smaller than low grid
    EXPECT_THROW(neighborhoodAttention(buf.data(), buf.data(), buf.data(), buf.data(), 16, 8, 4, 4, 4, 8, 8, 4, 1.f,
                                       pool()),
                 std::invalid_argument);  // even kernel
}

TEST(Forward, IdenticalWithOneAndManyThreads)
{
    RandomNafWeights weights(21);
    const ForwardShape shape = makeShape(47, 61, 12, 6, 11, 25, 58);
    const auto image = randomUniform(3 * shape.imageH * shape.imageW, 22, 0.f, 1.f);
    const auto features = randomUniform(shape.channels * shape.lowH * shape.lowW, 23);
    std::vector<float> serial(shape.channels * shape.outH * shape.outW), threaded(serial.size());
    Workspace ws1, ws2;
    forward(weights.cfg, weights.view, image.data(), features.data(), serial.data(), shape, ws1, serialParallelFor());
    forward(weights.cfg, weights.view, image.data(), features.data(), threaded.data(), shape, ws2,
            threadParallelFor(4));
    EXPECT_EQ(0, std::memcmp(serial.data(), threaded.data(), serial.size() * sizeof(float)));
    // Reusing a workspace with another shape gives the same as a fresh one.
    ForwardShape other = shape;
    other.imageH = 200;  // larger than 4x the output height: the guide is resized
    other.outH = 13;
    const auto image2 = randomUniform(3 * other.imageH * other.imageW, 24, 0.f, 1.f);
    std::vector<float> reused(other.channels * other.outH * other.outW), fresh(reused.size());
    Workspace ws3;
    forward(weights.cfg, weights.view, image2.data(), features.data(), reused.data(), other, ws1, pool());
    forward(weights.cfg, weights.view, image2.data(), features.data(), fresh.data(), other, ws3, pool());
    EXPECT_EQ(0, std::memcmp(reused.data(), fresh.data(), reused.size() * sizeof(float)));
}

TEST(Forward, RepeatedCallsReuseTheWorkspace)
{
    // A NAF object keeps one Workspace: the second call of the same shape must not reallocate
    // any scratch buffer, and must give the same bits.
    RandomNafWeights weights(31);
    const ForwardShape shape = makeShape(40, 52, 8, 5, 7, 40, 52);
    const auto image = randomUniform(3 * shape.imageH * shape.imageW, 32, 0.f, 1.f);
    const auto features = randomUniform(shape.channels * shape.lowH * shape.lowW, 33);
    std::vector<float> first(shape.channels * shape.outH * shape.outW), second(first.size());
    Workspace ws;
    forward(weights.cfg, weights.view, image.data(), features.data(), first.data(), shape, ws, pool());
    const std::vector<const float*> buffers = {ws.guide.data(), ws.bufA.data(), ws.bufB.data(), ws.queries.data(),
                                               ws.keys.data()};
    const size_t bytes = ws.bytes();
    EXPECT_GT(bytes, 0u);
    // The guide has the output size: the branches' slices of the queries are their activation
    // buffers, so neither bufA nor bufB is allocated.
    EXPECT_EQ(ws.bufA.capacity(), 0u);
    EXPECT_EQ(ws.bufB.capacity(), 0u);
    // The scratch starts on cache lines, so that the convolutions' non-temporal stores apply.
    for (const float* buffer : {ws.guide.data(), ws.queries.data(), ws.keys.data()})
        EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer) % 64, 0u);
    forward(weights.cfg, weights.view, image.data(), features.data(), second.data(), shape, ws, pool());
    EXPECT_EQ(bytes, ws.bytes());
    const std::vector<const float*> after = {ws.guide.data(), ws.bufA.data(), ws.bufB.data(), ws.queries.data(),
                                             ws.keys.data()};
    EXPECT_EQ(buffers, after);
    EXPECT_EQ(0, std::memcmp(first.data(), second.data(), first.size() * sizeof(float)));
}

// The workspace's allocator leaves resized floats unwritten (no single-threaded zeroing of fresh
// scratch): every buffer must be written in full before it is read. Scratch left full of NaN, in
// both shapes (with and without the guide resize and its second encoder buffer), must not reach
// the output.
TEST(Forward, StaleWorkspaceContentsNeverReachTheOutput)
{
    RandomNafWeights weights(45);
    const std::vector<ForwardShape> shapes = {makeShape(90, 70, 8, 5, 4, 20, 16), makeShape(41, 53, 8, 5, 7, 41, 53)};
    for (const ForwardShape& shape : shapes)
    {
        const auto image = randomUniform(3 * shape.imageH * shape.imageW, 46, 0.f, 1.f);
        const auto features = randomUniform(shape.channels * shape.lowH * shape.lowW, 47);
        std::vector<float> clean(static_cast<size_t>(shape.channels) * shape.outH * shape.outW), poisoned(clean.size());
        Workspace fresh, stale;
        forward(weights.cfg, weights.view, image.data(), features.data(), clean.data(), shape, fresh, pool());
        reserveWorkspace(weights.cfg, weights.view, shape, stale);
        for (AlignedFloatVector* buffer :
             {&stale.normalized, &stale.guide, &stale.bufA, &stale.bufB, &stale.queries, &stale.keys})
        {
            const size_t capacity = buffer->capacity();
            buffer->assign(capacity, std::nanf(""));
            buffer->clear();  // keeps the NaNs in the allocation: the next resize does not write them
        }
        forward(weights.cfg, weights.view, image.data(), features.data(), poisoned.data(), shape, stale, pool());
        EXPECT_EQ(0, std::memcmp(clean.data(), poisoned.data(), clean.size() * sizeof(float)))
            << "shape " << shape.imageH << "x" << shape.imageW << " -> " << shape.outH << "x" << shape.outW;
    }
}

// Shapes for the progress tests: the guide at output size (one activation buffer), a guide that
// is pooled to the output (two buffers, the pooling stages), and 256 channels (the queries and
// the activation buffer in the output). Each has at least 16 attention work items (rows or row
// pairs), one per slice.
std::vector<ForwardShape> progressShapes()
{
    return {makeShape(41, 53, 8, 5, 7, 41, 53), makeShape(150, 70, 12, 5, 4, 36, 16),
            makeShape(33, 29, 256, 4, 3, 33, 29)};
}

// A random image and features for a shape, and the output size.
struct ForwardInputs
{
    std::vector<float> image, features;
    size_t outFloats;
    ForwardInputs(const ForwardShape& shape, uint32_t seed)
        : image(randomUniform(3 * static_cast<size_t>(shape.imageH) * shape.imageW, seed, 0.f, 1.f)),
          features(randomUniform(static_cast<size_t>(shape.channels) * shape.lowH * shape.lowW, seed + 1)),
          outFloats(static_cast<size_t>(shape.channels) * shape.outH * shape.outW)
    {
    }
};

// A ProgressFn reports 0 first, never goes back, ends at 1, is called on the calling thread
// only (between parallel calls, never from a worker), once per stage and attention slice, and
// does not change a bit of the output.
TEST(Forward, ProgressIsReportedInOrderOnTheCallingThread)
{
    RandomNafWeights weights(51);
    for (const ForwardShape& shape : progressShapes())
    {
        const ForwardInputs in(shape, 52);
        const auto& image = in.image;
        const auto& features = in.features;
        std::vector<float> plain(in.outFloats), tracked(in.outFloats);
        Workspace ws1, ws2;
        forward(weights.cfg, weights.view, image.data(), features.data(), plain.data(), shape, ws1, pool());
        std::vector<double> fractions;
        std::vector<std::thread::id> threads;
        forward(weights.cfg, weights.view, image.data(), features.data(), tracked.data(), shape, ws2,
                threadParallelFor(4), nullptr, [&](double fraction) {
                    fractions.push_back(fraction);
                    threads.push_back(std::this_thread::get_id());
                    return true;
                });
        const std::string where = "shape " + std::to_string(shape.imageW) + "x" + std::to_string(shape.imageH) +
                                  " -> " + std::to_string(shape.outW) + "x" + std::to_string(shape.outH);
        EXPECT_EQ(0, std::memcmp(plain.data(), tracked.data(), plain.size() * sizeof(float))) << where;
        // Start, normalize, 2 x 5 convolutions, RoPE with the keys, 16 attention slices, the end;
        // pooled guides add one report per branch.
        const bool pooled = shape.imageH != shape.outH;
        ASSERT_EQ(fractions.size(), 30u + (pooled ? 2u : 0u)) << where;
        EXPECT_EQ(fractions.front(), 0.0) << where;
        EXPECT_EQ(fractions.back(), 1.0) << where;
        // The cost model's stages add up to its total: the last slice already reaches ~1.
        EXPECT_GT(fractions[fractions.size() - 2], 0.999) << where;
        for (size_t i = 1; i < fractions.size(); ++i) EXPECT_GE(fractions[i], fractions[i - 1]) << where << " #" << i;
        // Every stage moves it: no report repeats the previous one before the end.
        for (size_t i = 2; i + 1 < fractions.size(); ++i) EXPECT_GT(fractions[i], fractions[i - 1]) << where << " #" << i;
        for (const std::thread::id& id : threads) EXPECT_EQ(id, std::this_thread::get_id()) << where;
    }
}

// Returning false stops the forward at that report with Cancelled (carrying the fraction), at any
// stage: the start, the encoder, the attention's slices, the end. The workspace then serves the
// next call, which gives the same bits as a fresh one, into the output the cancelled call left
// half-written.
TEST(Forward, CancelledForwardThrowsAndLeavesTheWorkspaceUsable)
{
    RandomNafWeights weights(55);
    for (const ForwardShape& shape : progressShapes())
    {
        const ForwardInputs in(shape, 56);
        const auto& image = in.image;
        const auto& features = in.features;
        std::vector<float> reference(in.outFloats), out(in.outFloats);
        Workspace fresh;
        forward(weights.cfg, weights.view, image.data(), features.data(), reference.data(), shape, fresh, pool());
        size_t reports = 0;
        forward(weights.cfg, weights.view, image.data(), features.data(), out.data(), shape, fresh, pool(), nullptr,
                [&](double) { return ++reports > 0; });
        for (size_t stopAt : {size_t(0), size_t(1), size_t(5), reports / 2, reports - 3, reports - 1})
        {
            Workspace ws;
            size_t calls = 0;
            double stoppedAt = -1;
            try
            {
                forward(weights.cfg, weights.view, image.data(), features.data(), out.data(), shape, ws, pool(), nullptr,
                        [&](double fraction) {
                            if (calls++ < stopAt) return true;
                            stoppedAt = fraction;
                            return false;
                        });
                ADD_FAILURE() << "no Cancelled at report " << stopAt;
            }
            catch (const Cancelled& e)
            {
                EXPECT_EQ(calls, stopAt + 1);
                EXPECT_EQ(e.fraction(), stoppedAt);
                EXPECT_NE(std::string(e.what()).find("cancelled"), std::string::npos) << e.what();
            }
            forward(weights.cfg, weights.view, image.data(), features.data(), out.data(), shape, ws, pool());
            EXPECT_EQ(0, std::memcmp(reference.data(), out.data(), out.size() * sizeof(float)))
                << "after a cancel at report " << stopAt << " of " << reports;
        }
    }
}

// Until the attention writes it, forward()'s output holds the queries (its last dim planes, when
// it has that many channels) and, in the planes before them, the encoder's activation buffers
// that fit (128 channels at guide size each), so none of these take workspace memory: the same
// bits (and the same probe) as the encoder on its own workspace followed by the pooling and the
// attention, into an output that starts as NaN. The guide has the output size (no activation
// buffer: the encoder's branches use the queries' slices) or is pooled to it (two buffers), with
// room for everything, for part or for nothing.
TEST(Forward, OutputHoldsTheQueriesAndTheEncoderActivationsThatFit)
{
    RandomNafWeights weights(48);
    ASSERT_EQ(weights.cfg.dim, 256);
    struct Case
    {
        ForwardShape shape;
        bool queriesInOutput, bufAInOutput, bufBInOutput;
    };
    const std::vector<Case> cases = {
        // No pooling: neither activation buffer is ever needed.
        {makeShape(41, 53, 384, 5, 7, 41, 53), true, true, true},
        {makeShape(41, 53, 256, 5, 7, 41, 53), true, true, true},
        {makeShape(41, 53, 124, 5, 7, 41, 53), false, true, true},
        // Guide 50x40 pooled to 20x16: each buffer is 128 x 2000 floats, 800 output planes.
        {makeShape(50, 40, 256 + 800, 5, 4, 20, 16), true, true, false},
        {makeShape(50, 40, 256 + 1600, 5, 4, 20, 16), true, true, true},
        {makeShape(50, 40, 800, 5, 4, 20, 16), true, false, false},
    };
    for (const Case& c : cases)
    {
        const ForwardShape& s = c.shape;
        SCOPED_TRACE(std::to_string(s.channels) + " channels, " + std::to_string(s.outH) + "x" + std::to_string(s.outW));
        const auto image = randomUniform(3 * s.imageH * s.imageW, 49, 0.f, 1.f);
        const auto features = randomUniform(s.channels * s.lowH * s.lowW, 50);
        const size_t outFloats = static_cast<size_t>(s.channels) * s.outH * s.outW;
        AttentionProbe expectedProbe, probe;
        expectedProbe.y = probe.y = s.outH - 2;
        expectedProbe.x = probe.x = 3;

        // Reference: the encoder on its own workspace only, then keys and attention.
        Workspace own;
        std::vector<float> queries(static_cast<size_t>(weights.cfg.dim) * s.outH * s.outW);
        std::vector<float> keys(static_cast<size_t>(weights.cfg.dim) * s.lowH * s.lowW), expected(outFloats);
        encodeQueries(weights.cfg, weights.view, image.data(), s.imageH, s.imageW, s.outH, s.outW, queries.data(), own,
                      pool());
        const bool pooled = s.outH != s.imageH;
        EXPECT_EQ(own.bufA.capacity() > 0, pooled);
        EXPECT_EQ(own.bufB.capacity() > 0, pooled);
        adaptiveAvgPool(queries.data(), weights.cfg.dim, s.outH, s.outW, keys.data(), s.lowH, s.lowW, pool());
        neighborhoodAttention(queries.data(), keys.data(), features.data(), expected.data(), weights.cfg.dim, s.channels,
                              weights.cfg.headsAttn, s.lowH, s.lowW, s.outH, s.outW, s.kernelSize,
                              1.f / std::sqrt(static_cast<float>(weights.cfg.dim / weights.cfg.headsAttn)), pool(),
                              &expectedProbe);

        Workspace ws;
        reserveWorkspace(weights.cfg, weights.view, s, ws);
        auto placements = [&] {
            return std::vector<bool>{ws.queries.capacity() == 0, ws.bufA.capacity() == 0, ws.bufB.capacity() == 0};
        };
        const std::vector<bool> expectedPlacements = {c.queriesInOutput, c.bufAInOutput, c.bufBInOutput};
        EXPECT_EQ(placements(), expectedPlacements);
        AlignedFloatVector out(outFloats, std::nanf(""));
        forward(weights.cfg, weights.view, image.data(), features.data(), out.data(), s, ws, pool(), &probe);
        EXPECT_EQ(0, std::memcmp(out.data(), expected.data(), outFloats * sizeof(float)));
        EXPECT_EQ(probe.weights, expectedProbe.weights);
        EXPECT_EQ(placements(), expectedPlacements) << "forward agrees with reserveWorkspace";
    }
}

TEST(Forward, RefusesAnOutputOverlappingItsInputs)
{
    RandomNafWeights weights(51);
    const ForwardShape s = makeShape(20, 24, 8, 4, 5, 20, 24);
    const size_t imageFloats = 3 * static_cast<size_t>(s.imageH) * s.imageW;
    const size_t featureFloats = static_cast<size_t>(s.channels) * s.lowH * s.lowW;
    const size_t outFloats = static_cast<size_t>(s.channels) * s.outH * s.outW;
    std::vector<float> arena(imageFloats + featureFloats + outFloats, 0.5f);
    Workspace ws;
    auto refusal = [&](const float* image, const float* features, float* out) {
        try
        {
            forward(weights.cfg, weights.view, image, features, out, s, ws, pool());
        }
        catch (const std::invalid_argument& e)
        {
            return std::string(e.what());
        }
        return std::string("no exception");
    };
    // The output starting on the features' last float, then ending on the image's first.
    const std::string intoFeatures =
        refusal(arena.data(), arena.data() + imageFloats, arena.data() + imageFloats + featureFloats - 1);
    EXPECT_NE(intoFeatures.find("overlaps the features (" + std::to_string(featureFloats) + " floats, starting -" +
                                std::to_string((featureFloats - 1) * sizeof(float)) + " bytes"),
              std::string::npos)
        << intoFeatures;
    const std::string intoImage =
        refusal(arena.data() + outFloats - 1, arena.data() + outFloats + imageFloats, arena.data());
    EXPECT_NE(intoImage.find("overlaps the image"), std::string::npos) << intoImage;
    // Adjacent but separate: accepted.
    EXPECT_NO_THROW(forward(weights.cfg, weights.view, arena.data(), arena.data() + imageFloats,
                            arena.data() + imageFloats + featureFloats, s, ws, pool()));
}

// The module writes into the caller's dst only after reserveWorkspace() for every batch item:
// the forward must then not grow any scratch buffer (an allocation failure after the first
// output byte would leave dst half-written). One item needs the guide resize, one does not.
TEST(Forward, ReservedWorkspaceIsNotGrownByForward)
{
    RandomNafWeights weights(41);
    const std::vector<ForwardShape> shapes = {makeShape(90, 70, 8, 5, 4, 20, 16), makeShape(40, 52, 8, 5, 7, 40, 52)};
    Workspace ws;
    for (const ForwardShape& shape : shapes) reserveWorkspace(weights.cfg, weights.view, shape, ws);
    auto capacities = [&] {
        return std::vector<size_t>{ws.normalized.capacity(), ws.guide.capacity(), ws.bufA.capacity(),
                                   ws.bufB.capacity(), ws.queries.capacity(), ws.keys.capacity()};
    };
    const std::vector<size_t> reserved = capacities();
    EXPECT_GT(reserved[0], 0u);  // the first shape resizes its guide (90 x 70 > 4 x 20 x 16)
    EXPECT_GT(reserved[3], 0u);  // and pools it to the output size, so it needs the second buffer
    for (const ForwardShape& shape : shapes)
    {
        const auto image = randomUniform(3 * shape.imageH * shape.imageW, 42, 0.f, 1.f);
        const auto features = randomUniform(shape.channels * shape.lowH * shape.lowW, 43);
        std::vector<float> out(static_cast<size_t>(shape.channels) * shape.outH * shape.outW);
        forward(weights.cfg, weights.view, image.data(), features.data(), out.data(), shape, ws, pool());
        EXPECT_EQ(capacities(), reserved);
    }
}

TEST(Forward, GuideSizeFollowsTheOfficialRule)
{
    int gh = 0, gw = 0;
    guideSize(448, 448, 448, 448, 4, &gh, &gw);
    EXPECT_EQ(gh, 448);
    EXPECT_EQ(gw, 448);
    guideSize(2000, 1000, 100, 300, 4, &gh, &gw);  // 2000 > 400: capped by min(4*100, 4*300) on both sides
    EXPECT_EQ(gh, 400);
    EXPECT_EQ(gw, 400);
    guideSize(140, 180, 23, 31, 4, &gh, &gw);
    EXPECT_EQ(gh, 92);
    EXPECT_EQ(gw, 92);
}

TEST(Forward, RejectsShapesWithAClearMessage)
{
    RandomNafWeights weights(3);
    ForwardShape shape;
    shape.imageH = shape.imageW = 32;
    shape.channels = 8;
    shape.lowH = shape.lowW = 8;
    shape.outH = shape.outW = 32;
    EXPECT_NO_THROW(checkForwardShape(weights.cfg, shape));
    ForwardShape bad = shape;
    bad.channels = 6;
    try
    {
        checkForwardShape(weights.cfg, bad);
        FAIL() << "no exception";
    }
    catch (const std::invalid_argument& e)
    {
        EXPECT_NE(std::string(e.what()).find("6 feature channels"), std::string::npos) << e.what();
    }
    bad = shape;
    bad.outW = 7;
    EXPECT_THROW(checkForwardShape(weights.cfg, bad), std::invalid_argument);
    bad = shape;
    bad.imageH = 1;
    EXPECT_THROW(checkForwardShape(weights.cfg, bad), std::invalid_argument);
    bad = shape;
    bad.outH = bad.outW = 100000;
    EXPECT_THROW(checkForwardShape(weights.cfg, bad), std::invalid_argument);
}

// The CUDA engine's output copy (staged_copy.hpp) against a simulated device: a stream of
// device-to-staging copies that runs them either as soon as they are enqueued (a device faster
// than the host) or only when the host waits (a slower one). Either way every byte must arrive,
// each chunk must be drained once and in order, and no copy may overwrite a staging buffer whose
// chunk the host has not copied out yet.
TEST(Kernels, StagedOutputCopyDeliversEveryByteWithAnyDeviceSpeed)
{
    for (bool eagerDevice : {true, false})
        for (size_t bytes : {size_t(1), size_t(7), size_t(96), size_t(100), size_t(1000)})
            for (size_t chunk : {size_t(1), size_t(7), size_t(32), size_t(4096)})
            {
                SCOPED_TRACE(::testing::Message() << "eager " << eagerDevice << ", " << bytes << " bytes, chunk " << chunk);
                std::vector<unsigned char> device(bytes), host(bytes, 0xee);
                for (size_t i = 0; i < bytes; ++i) device[i] = static_cast<unsigned char>(i * 37 + 11);
                std::vector<unsigned char> staging[2] = {std::vector<unsigned char>(chunk),
                                                         std::vector<unsigned char>(chunk)};
                bool pendingOut[2] = {false, false};  // a staged chunk not yet copied out
                struct Copy
                {
                    size_t k;
                    int buffer;
                    size_t offset, size;
                };
                std::deque<Copy> stream;
                std::vector<size_t> drained;
                auto run = [&](const Copy& c) {
                    ASSERT_FALSE(pendingOut[c.buffer]) << "chunk " << c.k << " overwrote an undrained buffer";
                    std::memcpy(staging[c.buffer].data(), device.data() + c.offset, c.size);
                    pendingOut[c.buffer] = true;
                };
                staged::copyInChunks(
                    bytes, chunk,
                    [&](size_t k, int buffer, size_t offset, size_t size) {
                        ASSERT_EQ(buffer, static_cast<int>(k % 2));
                        stream.push_back({k, buffer, offset, size});
                        if (eagerDevice)
                        {
                            run(stream.front());
                            stream.pop_front();
                        }
                    },
                    [&](size_t k, int buffer, size_t offset, size_t size) {
                        while (!stream.empty() && stream.front().k <= k)  // the wait on chunk k's event
                        {
                            run(stream.front());
                            stream.pop_front();
                        }
                        ASSERT_TRUE(pendingOut[buffer]) << "chunk " << k << " drained before its copy";
                        std::memcpy(host.data() + offset, staging[buffer].data(), size);
                        pendingOut[buffer] = false;
                        drained.push_back(k);
                    });
                EXPECT_TRUE(stream.empty());
                ASSERT_EQ(drained.size(), (bytes + chunk - 1) / chunk);
                for (size_t k = 0; k < drained.size(); ++k) EXPECT_EQ(drained[k], k);
                EXPECT_EQ(host, device);
            }
}

// A device allocation that does not fit (DeviceBuffer::ensure on cudaErrorMemoryAllocation) says
// which buffer, how much it needs (rounded up) and how much the device has free (rounded down), so
// that a caller can pick a smaller output or the CPU path.
TEST(Kernels, OutOfDeviceMemoryMessageSaysWhatItNeedsAndWhatIsFree)
{
    using naf::kernels::cuda::detail::outOfDeviceMemoryMessage;
    const size_t MiB = size_t(1) << 20;
    const std::string full = outOfDeviceMemoryMessage("allocating the query buffer", 4180 * MiB - 100, 1020 * MiB + 5,
                                                      16384 * MiB);
    EXPECT_EQ(full, "naf::kernels::cuda: allocating the query buffer failed: it needs 4180 MiB of device memory and "
                    "1020 of 16384 MiB are free (out of memory; a smaller output or the CPU path needs less)");
    const std::string unknownFree = outOfDeviceMemoryMessage("allocating encoder scratch", 1, 0, 0);
    EXPECT_EQ(unknownFree, "naf::kernels::cuda: allocating encoder scratch failed: it needs 1 MiB of device memory "
                           "(out of memory; a smaller output or the CPU path needs less)");
}

// threadParallelFor keeps its worker threads across loops. Every loop must run each item exactly
// once, also thousands of short loops in a row (a lost wake-up would hang or skip items), loops
// nested inside an item (run on that item's thread), and loops started by several threads at once
// (they take turns); the first exception reaches the caller and the pool still works afterwards.
TEST(Parallel, ThreadPoolRunsEveryItemOnceNestedConcurrentAndAfterAnError)
{
    const ParallelFor parallel = threadParallelFor(4);
    for (int loop = 0; loop < 2000; ++loop)
    {
        const int64_t count = 1 + loop % 7;
        std::vector<std::atomic<int>> hits(count);
        parallel(count, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) ++hits[i];
        });
        for (int64_t i = 0; i < count; ++i) ASSERT_EQ(hits[i].load(), 1) << "loop " << loop << " item " << i;
    }
    std::vector<std::atomic<int>> nested(6 * 5);
    parallel(6, [&](int64_t begin, int64_t) {
        parallel(5, [&](int64_t b, int64_t e) {
            for (int64_t j = b; j < e; ++j) ++nested[begin * 5 + j];
        });
    });
    for (const std::atomic<int>& n : nested) EXPECT_EQ(n.load(), 1);
    std::vector<std::atomic<int>> shared(3 * 100);
    std::vector<std::thread> callers;
    for (int c = 0; c < 3; ++c)
        callers.emplace_back([&, c] {
            for (int rep = 0; rep < 20; ++rep)
                parallel(100, [&](int64_t b, int64_t e) {
                    for (int64_t i = b; i < e; ++i)
                        if (rep == 0) ++shared[c * 100 + i];
                });
        });
    for (std::thread& t : callers) t.join();
    for (const std::atomic<int>& n : shared) EXPECT_EQ(n.load(), 1);
    EXPECT_THROW(parallel(50,
                          [](int64_t b, int64_t) {
                              if (b == 17) throw std::runtime_error("item 17");
                          }),
                 std::runtime_error);
    std::atomic<int64_t> sum(0);
    parallel(100, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) sum += i;
    });
    EXPECT_EQ(sum.load(), 4950);
}

// AttentionKernel::Measured keeps the fastest kernel, but a cell kernel (other bits than Tiled's)
// only when it beats the Tiled family by more than the margin; TiledChunked gives Tiled's bits and
// wins on time alone.
TEST(Kernels, MeasuredAttentionPrefersTiledBitsOnNearTies)
{
    using cuda::AttentionKernel;
    using cuda::detail::chooseMeasuredAttention;
    const AttentionKernel tiled = AttentionKernel::Tiled, chunked = AttentionKernel::TiledChunked,
                          cell = AttentionKernel::Cell, mma = AttentionKernel::CellTensorCore;
    EXPECT_EQ(chooseMeasuredAttention({{tiled, 10.f}, {chunked, 9.9f}, {cell, 12.f}}), chunked);
    EXPECT_EQ(chooseMeasuredAttention({{tiled, 10.f}, {chunked, 10.5f}, {cell, 9.8f}}), tiled);  // 2 % faster
    EXPECT_EQ(chooseMeasuredAttention({{tiled, 10.f}, {chunked, 9.9f}, {cell, 9.0f}, {mma, 7.f}}), mma);
    EXPECT_EQ(chooseMeasuredAttention({{tiled, 10.f}, {cell, 9.6f}}), cell);                      // 4 % faster
    EXPECT_EQ(chooseMeasuredAttention({{tiled, 10.f}, {cell, 9.8f}}, 0.f), cell);                 // no margin
    EXPECT_EQ(chooseMeasuredAttention({{cell, 5.f}}), cell);  // no Tiled timed (it did not fit)
    EXPECT_EQ(chooseMeasuredAttention({{tiled, 3.f}, {chunked, 3.f}}), tiled);  // the first of equals
    EXPECT_EQ(chooseMeasuredAttention({}), tiled);
}

// AttentionKernel::Auto's rule: the tensor-core cell kernel wherever the cell work list pays and
// it runs; without it, the FMA cell kernel only where the tiled one fits at most one block per SM
// (and the tiled occupancy is asked only then).
TEST(Kernels, AutoAttentionPrefersTheTensorCoreCellKernel)
{
    using cuda::AttentionKernel;
    using cuda::detail::chooseAutoAttention;
    int asked = 0;
    auto blocks = [&asked](int n) {
        return [&asked, n] {
            ++asked;
            return n;
        };
    };
    EXPECT_EQ(chooseAutoAttention(true, true, blocks(2)), AttentionKernel::CellTensorCore);
    EXPECT_EQ(chooseAutoAttention(true, true, blocks(0)), AttentionKernel::CellTensorCore);
    EXPECT_EQ(asked, 0);
    EXPECT_EQ(chooseAutoAttention(false, true, blocks(1)), AttentionKernel::Tiled);
    EXPECT_EQ(chooseAutoAttention(false, false, blocks(0)), AttentionKernel::Tiled);
    EXPECT_EQ(asked, 0);
    EXPECT_EQ(chooseAutoAttention(true, false, blocks(1)), AttentionKernel::Cell);
    EXPECT_EQ(chooseAutoAttention(true, false, blocks(0)), AttentionKernel::Cell);
    EXPECT_EQ(chooseAutoAttention(true, false, blocks(2)), AttentionKernel::Tiled);
    EXPECT_EQ(asked, 3);
}
