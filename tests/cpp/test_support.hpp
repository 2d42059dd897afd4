// Shared helpers of the module tests.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/core/utils/filesystem.hpp>

namespace naf_test {

// Expects f() to throw cv::Exception whose message contains every fragment (so the user sees the
// values); returns its code (0 when nothing was thrown, after a test failure).
template <typename F>
int expectRefused(F&& f, const std::vector<std::string>& fragments)
{
    try
    {
        f();
        ADD_FAILURE() << "accepted (expected a cv::Exception)";
    }
    catch (const cv::Exception& e)
    {
        for (const std::string& frag : fragments)
            EXPECT_NE(std::string(e.what()).find(frag), std::string::npos) << "message: " << e.what()
                                                                            << "\nmissing: " << frag;
        return e.code;
    }
    return 0;
}

inline std::string dataDir() { return NAF_TEST_DATA_DIR; }
inline std::string goldenDir() { return std::string(NAF_TEST_DATA_DIR) + "/golden"; }
inline std::string goldenWeights() { return goldenDir() + "/weights_seed0.safetensors"; }

/// ||a - b|| / ||b|| over all elements (same total, CV_32F).
inline double relativeL2(const cv::Mat& a, const cv::Mat& b)
{
    CV_Assert(a.total() == b.total() && a.type() == CV_32F && b.type() == CV_32F);
    const float* pa = a.ptr<float>();
    const float* pb = b.ptr<float>();
    double num = 0, den = 0;
    for (size_t i = 0; i < a.total(); ++i)
    {
        const double d = static_cast<double>(pa[i]) - pb[i];
        num += d * d;
        den += static_cast<double>(pb[i]) * pb[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

/// A 4-D N x C x H x W CV_32F blob of seeded uniform values.
inline cv::Mat randomBlob(int n, int c, int h, int w, int seed, float lo = -1.f, float hi = 1.f)
{
    const int sizes[4] = {n, c, h, w};
    cv::Mat m(4, sizes, CV_32F);
    cv::RNG rng(static_cast<uint64>(seed));
    rng.fill(m, cv::RNG::UNIFORM, lo, hi);
    return m;
}

inline cv::Mat randomImage(int h, int w, int seed)
{
    cv::Mat m(h, w, CV_8UC3);
    cv::RNG rng(static_cast<uint64>(seed));
    rng.fill(m, cv::RNG::UNIFORM, 0, 256);
    return m;
}

}  // namespace naf_test
