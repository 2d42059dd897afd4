// A CPU call that fails after it started writing a reused dst in place (here: an allocation
// failing mid-call) releases dst, whose buffer then holds the forward's scratch, neither its old
// values nor a result; a call that fails earlier leaves dst untouched. Its own executable because
// it replaces the global operator new, to make the k-th allocation of a call fail.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include <opencv2/core.hpp>

#include "opencv2/naf.hpp"
#include "test_support.hpp"

namespace {
// The allocations left before one fails; -1: none fails.
std::atomic<long> allocationsBeforeFailure{-1};
}  // namespace

#if !defined(__SANITIZE_ADDRESS__)  // AddressSanitizer has its own operator new
void* operator new(std::size_t bytes)
{
    if (allocationsBeforeFailure.load(std::memory_order_relaxed) >= 0 &&
        allocationsBeforeFailure.fetch_sub(1, std::memory_order_relaxed) == 0)
        throw std::bad_alloc();
    if (void* p = std::malloc(bytes ? bytes : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#endif

TEST(AllocationFailure, AFailedCallReleasesAReusedDstOrLeavesItUntouched)
{
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "needs the test's own operator new, which AddressSanitizer replaces";
#endif
    cv::setNumThreads(1);  // the same allocations in the same order on every call
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::createRandom(3);
    naf->setBackend(cv::naf::BACKEND_CPU);
    const cv::Mat image = naf_test::randomImage(24, 24, 1);
    // 256 channels: the forward keeps its queries in the output (fewer keep them in the workspace).
    const cv::Mat feats = naf_test::randomBlob(1, 256, 4, 4, 2);
    const cv::Size out(24, 24);
    cv::Mat expected;
    naf->upsample(image, feats, expected, out);  // also packs the weights: later calls allocate less
    int failedCalls = 0, released = 0;
    for (long k = 0; k < 100000; ++k)
    {
        cv::Mat dst(expected.dims, expected.size.p, CV_32F, cv::Scalar(1e6));  // the output's shape: reused
        const uchar* buffer = dst.data;
        bool threw = false;
        allocationsBeforeFailure = k;
        try
        {
            naf->upsample(image, feats, dst, out);
        }
        catch (const cv::Exception&)
        {
            threw = true;
        }
        catch (const std::bad_alloc&)
        {
            threw = true;
        }
        allocationsBeforeFailure = -1;
        if (!threw) break;  // k is past the call's last allocation
        ++failedCalls;
        if (dst.empty())
        {
            ++released;
            continue;
        }
        EXPECT_EQ(dst.data, buffer) << "allocation " << k;
        EXPECT_EQ(cv::countNonZero(dst.reshape(1, 1) != 1e6), 0)
            << "allocation " << k << " failed: dst kept but no longer holds its old values";
    }
    EXPECT_GT(failedCalls, 0) << "no allocation failed: the replaced operator new is not in use";
    EXPECT_GT(released, 0) << "no failure came after the forward had started writing dst";
    cv::Mat again;
    naf->upsample(image, feats, again, out);
    EXPECT_EQ(cv::norm(again.reshape(1, 1), expected.reshape(1, 1), cv::NORM_INF), 0.0);
    std::printf("[ alloc    ] %d of the call's allocations failed it, %d after dst was written (released)\n",
                failedCalls, released);
}
