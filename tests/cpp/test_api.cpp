// Public API behaviour: the bad-input matrix (each a clear cv::Exception, nothing written),
// batches, colour order, probes, backends, and the one-shot function.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <thread>

#include <opencv2/naf.hpp>

#include "test_support.hpp"

using naf_test::expectRefused;
using naf_test::randomBlob;
using naf_test::randomImage;

namespace {

struct Fixture : ::testing::Test
{
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::createRandom(7);
    cv::Mat image = randomImage(40, 52, 1);
    cv::Mat feats = randomBlob(1, 8, 5, 6, 2);
    cv::Size out{26, 21};
    // A batch of two images of different sizes (sizes may differ inside a batch).
    std::vector<cv::Mat> twoImages{image, randomImage(33, 61, 9)};
    cv::Mat twoFeats = randomBlob(2, 8, 5, 6, 4);
};

// Every fraction a progress callback got, and whether one came from another thread than the one
// that made the callback.
struct ProgressLog
{
    std::vector<double> fractions;
    bool otherThread = false;

    cv::naf::ProgressCallback recorder()
    {
        const std::thread::id caller = std::this_thread::get_id();
        return [this, caller](double fraction) {
            fractions.push_back(fraction);
            otherThread |= std::this_thread::get_id() != caller;
            return true;
        };
    }
};

}  // namespace

TEST_F(Fixture, ProducesNchwOutputOfTheRequestedSize)
{
    cv::Mat dst;
    naf->upsample(image, feats, dst, out);
    ASSERT_EQ(dst.dims, 4);
    EXPECT_EQ(dst.type(), CV_32F);
    EXPECT_EQ(dst.size[0], 1);
    EXPECT_EQ(dst.size[1], 8);
    EXPECT_EQ(dst.size[2], 21);
    EXPECT_EQ(dst.size[3], 26);
    EXPECT_TRUE(cv::checkRange(dst));
    // Attention is a convex combination: each output lies within its channel's low-res range.
    for (int c = 0; c < 8; ++c)
    {
        double lo, hi, olo, ohi;
        cv::minMaxIdx(cv::Mat(5, 6, CV_32F, feats.ptr<float>(0, c)), &lo, &hi);
        cv::minMaxIdx(cv::Mat(21, 26, CV_32F, dst.ptr<float>(0, c)), &olo, &ohi);
        EXPECT_GE(olo, lo - 1e-5);
        EXPECT_LE(ohi, hi + 1e-5);
    }
}

TEST_F(Fixture, BadInputsGiveClearErrorsAndLeaveDstUntouched)
{
    cv::Mat dst = cv::Mat::ones(3, 3, CV_8U);
    const cv::Mat before = dst.clone();
    expectRefused([&] { naf->upsample(cv::Mat(), feats, dst, out); }, {"guide image is empty"});
    expectRefused([&] { naf->upsample(cv::Mat(40, 52, CV_8UC1), feats, dst, out); }, {"CV_8UC3", "8UC1"});
    expectRefused([&] { naf->upsample(cv::Mat(40, 52, CV_32FC3), feats, dst, out); }, {"CV_8UC3", "32FC3"});
    expectRefused([&] { naf->upsample(cv::Mat(1, 52, CV_8UC3), feats, dst, out); }, {"1x52"});
    expectRefused([&] { naf->upsample(image, cv::Mat(5, 6, CV_32F), dst, out); }, {"4-D", "2 dims"});
    cv::Mat feats64;
    feats.convertTo(feats64, CV_64F);
    expectRefused([&] { naf->upsample(image, feats64, dst, out); }, {"CV_32F", "64F"});
    expectRefused([&] { naf->upsample(image, randomBlob(2, 8, 5, 6, 3), dst, out); }, {"batch mismatch", "1 guide", "batch 2"});
    expectRefused([&] { naf->upsample(image, feats, dst, cv::Size(5, 21)); }, {"dstSize 5x21", "6x5"});
    expectRefused([&] { naf->upsample(image, randomBlob(1, 6, 5, 6, 3), dst, out); }, {"channels 6", "4 attention heads"});
    cv::Mat nan = feats.clone();
    nan.ptr<float>()[17] = std::numeric_limits<float>::quiet_NaN();
    expectRefused([&] { naf->upsample(image, nan, dst, out); }, {"NaN or Inf", "index 17"});
    cv::Mat inf = feats.clone();
    inf.ptr<float>()[3] = std::numeric_limits<float>::infinity();
    expectRefused([&] { naf->upsample(image, inf, dst, out); }, {"NaN or Inf"});
    expectRefused([&] { naf->setKernelSize(4); }, {"odd", "4"});
    expectRefused([&] { naf->setBackend(42); }, {"unknown backend 42"});
    expectRefused([&] { naf->setImageColorOrder(5); }, {"5"});
    // A dst that cannot hold a CV_32F blob is refused before any work (a Mat_<uchar> ended up with
    // float data under its old type; a vector<Mat> failed only after the whole computation).
    cv::Mat_<uchar> typed = cv::Mat_<uchar>::ones(3, 3);
    expectRefused([&] { naf->upsample(image, feats, typed, out); }, {"fixed type", "8UC1", "CV_32F"});
    EXPECT_EQ(cv::countNonZero(typed != 1), 0);
    std::vector<cv::Mat> list;
    expectRefused([&] { naf->upsample(image, feats, list, out); }, {"dst must be a cv::Mat or cv::UMat"});
    expectRefused([&] { naf->upsampleBlob(cv::Mat(), feats, list, out); }, {"image blob is empty"});
    // An image instead of a blob: its shape as given (a 2-D Mat's size[1] is its width).
    expectRefused([&] { naf->upsampleBlob(image, feats, dst, out); }, {"CV_8UC3 of shape 40 x 52 (3 interleaved"});
    naf->setAttentionProbe(cv::Point(30, 3));
    expectRefused([&] { naf->upsample(image, feats, dst, out); }, {"probe (30, 3)", "26x21"});
    // Nothing was written by any failed call.
    ASSERT_EQ(dst.size(), before.size());
    EXPECT_EQ(cv::norm(dst, before, cv::NORM_INF), 0.0);
}

TEST_F(Fixture, BatchOfImagesEqualsOneByOne)
{
    cv::Mat batch;
    naf->upsample(twoImages, twoFeats, batch, out);
    for (int n = 0; n < 2; ++n)
    {
        const int sizes[4] = {1, 8, 5, 6};
        const cv::Mat one(4, sizes, CV_32F, const_cast<float*>(twoFeats.ptr<float>(n)));
        cv::Mat single;
        naf->upsample(twoImages[n], one, single, out);
        const cv::Mat slice(1, static_cast<int>(single.total()), CV_32F, batch.ptr<float>(n));
        EXPECT_EQ(cv::norm(slice, single.reshape(1, 1), cv::NORM_INF), 0.0) << "item " << n;
    }
    // The same batch as a list of UMats (it failed inside OpenCV with "0 <= i && i < (int)v.size()").
    const std::vector<cv::UMat> umats = {twoImages[0].getUMat(cv::ACCESS_READ), twoImages[1].getUMat(cv::ACCESS_READ)};
    cv::Mat fromUMats;
    naf->upsample(umats, twoFeats, fromUMats, out);
    EXPECT_EQ(cv::norm(fromUMats.reshape(1, 1), batch.reshape(1, 1), cv::NORM_INF), 0.0);
}

// A dst that already has the output shape is written in place (no fresh blob per call, as
// cv::Mat::create does), with exactly the values a fresh call gives.
TEST_F(Fixture, MatchingDstIsWrittenInPlaceWithTheSameValues)
{
    cv::Mat fresh;
    naf->upsample(image, feats, fresh, out);
    const int sizes[4] = {1, 8, out.height, out.width};
    cv::Mat dst(4, sizes, CV_32F, cv::Scalar(1e6));
    const cv::Mat view = dst;  // another header on the same buffer sees the result, as with cv::resize
    const uchar* before = dst.data;
    naf->upsample(image, feats, dst, out);
    EXPECT_EQ(dst.data, before);
    EXPECT_EQ(cv::norm(dst.reshape(1, 1), fresh.reshape(1, 1), cv::NORM_INF), 0.0);
    EXPECT_EQ(cv::norm(view.reshape(1, 1), fresh.reshape(1, 1), cv::NORM_INF), 0.0);

    // A batch of images of different sizes into a reused 2-item dst.
    cv::Mat batchFresh;
    naf->upsample(twoImages, twoFeats, batchFresh, out);
    const int batchSizes[4] = {2, 8, out.height, out.width};
    cv::Mat batch(4, batchSizes, CV_32F, cv::Scalar(-3));
    const uchar* batchBefore = batch.data;
    naf->upsample(twoImages, twoFeats, batch, out);
    // On the CUDA engine a batch always gets a new buffer (documented in upsample()): item 2 could
    // be refused after item 1 was written.
    if (naf->getActiveBackend() == cv::naf::BACKEND_CUDA)
        EXPECT_NE(batch.data, batchBefore);
    else
        EXPECT_EQ(batch.data, batchBefore);
    EXPECT_EQ(cv::norm(batch.reshape(1, 1), batchFresh.reshape(1, 1), cv::NORM_INF), 0.0);

    // Other shapes or types are replaced by a new blob, as create() would.
    cv::Mat wrongType(4, sizes, CV_64F, cv::Scalar(0));
    naf->upsample(image, feats, wrongType, out);
    EXPECT_EQ(wrongType.type(), CV_32F);
    EXPECT_EQ(cv::norm(wrongType.reshape(1, 1), fresh.reshape(1, 1), cv::NORM_INF), 0.0);
}

// The same Mat as features and dst (possible when dstSize equals the feature grid): the
// features are read whole before anything is written.
TEST_F(Fixture, DstThatIsTheFeaturesGivesTheSameResult)
{
    const cv::Size same(feats.size[3], feats.size[2]);
    cv::Mat expected;
    naf->upsample(image, feats, expected, same);
    cv::Mat inOut = feats.clone();
    naf->upsample(image, inOut, inOut, same);
    EXPECT_EQ(cv::norm(inOut.reshape(1, 1), expected.reshape(1, 1), cv::NORM_INF), 0.0);
}

// Refused input leaves a dst of the right shape (which would be written in place) untouched.
TEST_F(Fixture, RefusedInputLeavesAMatchingDstUntouched)
{
    const int sizes[4] = {1, 8, out.height, out.width};
    cv::Mat dst(4, sizes, CV_32F, cv::Scalar(7));
    cv::Mat bad = feats.clone();
    bad.ptr<float>(0, 3)[4] = std::numeric_limits<float>::quiet_NaN();
    expectRefused([&] { naf->upsample(image, bad, dst, out); }, {"NaN"});
    double lo = 0, hi = 0;
    cv::minMaxIdx(dst.reshape(1, 1), &lo, &hi);
    EXPECT_EQ(lo, 7.0);
    EXPECT_EQ(hi, 7.0);
}

// The progress callback sees a whole batch in order, on the calling thread, from 0 to 1 (item i
// of n as (i + f) / n), and does not change the result.
// The CPU path reports inside each item (encoder convolutions, attention rows); the CUDA path
// only each item's ends (CudaProgressReportsEachItemsEndsAndCancels).
TEST_F(Fixture, ProgressCallbackCoversTheCallInOrderOnTheCallingThread)
{
    naf->setBackend(cv::naf::BACKEND_CPU);
    cv::Mat plain, tracked;
    naf->upsample(twoImages, twoFeats, plain, out);
    EXPECT_FALSE(naf->getProgressCallback());
    ProgressLog log;
    naf->setProgressCallback(log.recorder());
    EXPECT_TRUE(naf->getProgressCallback());
    naf->upsample(twoImages, twoFeats, tracked, out);
    EXPECT_EQ(cv::norm(plain.reshape(1, 1), tracked.reshape(1, 1), cv::NORM_INF), 0.0);
    EXPECT_FALSE(log.otherThread);
    const std::vector<double>& fractions = log.fractions;
    ASSERT_GE(fractions.size(), 2u * 20u);  // each image: start, encoder convolutions, attention, end
    EXPECT_EQ(fractions.front(), 0.0);
    EXPECT_EQ(fractions.back(), 1.0);
    for (size_t i = 1; i < fractions.size(); ++i) EXPECT_GE(fractions[i], fractions[i - 1]) << "#" << i;
    // Item 0 ends and item 1 starts at exactly 0.5, and each half moves on its own.
    EXPECT_GE(std::count(fractions.begin(), fractions.end(), 0.5), 2);
    EXPECT_TRUE(std::any_of(fractions.begin(), fractions.end(), [](double f) { return f > 0.3 && f < 0.5; }));
    EXPECT_TRUE(std::any_of(fractions.begin(), fractions.end(), [](double f) { return f > 0.8 && f < 1.0; }));
    // An empty callback switches reporting off.
    naf->setProgressCallback(cv::naf::ProgressCallback());
    const size_t reports = fractions.size();
    naf->upsample(twoImages, twoFeats, tracked, out);
    EXPECT_EQ(fractions.size(), reports);
}

// Returning false cancels: a cv::Exception that says so and where, dst released (even one that was
// being written in place), and the object gives the usual result afterwards. A callback that throws
// ends the call the same way with its own message.
TEST_F(Fixture, CancelFromTheProgressCallbackReleasesDstAndKeepsTheObjectUsable)
{
    cv::Mat reference;
    naf->upsample(image, feats, reference, out);
    const int sizes[4] = {1, 8, out.height, out.width};
    for (int stopAt : {0, 3, 12, 1000})
    {
        int calls = 0;
        naf->setProgressCallback([&](double fraction) { return calls++ < stopAt && fraction < 1.0; });
        cv::Mat dst(4, sizes, CV_32F, cv::Scalar(5));  // the in-place case
        const cv::Mat view = dst;
        try
        {
            naf->upsample(image, feats, dst, out);
            ADD_FAILURE() << "no cv::Exception at report " << stopAt;
        }
        catch (const cv::Exception& e)
        {
            EXPECT_EQ(e.code, cv::Error::StsError);
            EXPECT_NE(e.msg.find("cv::naf::NAF::upsample: cancelled by the progress callback at "), std::string::npos)
                << e.msg;
            EXPECT_NE(e.msg.find("dst was released"), std::string::npos) << e.msg;
        }
        EXPECT_TRUE(dst.empty()) << "report " << stopAt;
        EXPECT_EQ(view.size[3], out.width);  // the caller's other header keeps the buffer
        naf->setProgressCallback(cv::naf::ProgressCallback());
        cv::Mat again(4, sizes, CV_32F, cv::Scalar(5));
        naf->upsample(image, feats, again, out);
        EXPECT_EQ(cv::norm(again.reshape(1, 1), reference.reshape(1, 1), cv::NORM_INF), 0.0) << "report " << stopAt;
    }
    // The callback's own exception comes out unchanged (a caller catches its own type), dst released.
    struct StoppedByTheTest : std::runtime_error
    {
        using std::runtime_error::runtime_error;
    };
    naf->setProgressCallback([](double fraction) -> bool {
        if (fraction > 0.3) throw StoppedByTheTest("stopped by the test at 0.3");
        return true;
    });
    cv::Mat dst = reference.clone();
    bool caught = false;
    try
    {
        naf->upsample(image, feats, dst, out);
    }
    catch (const StoppedByTheTest& e)
    {
        caught = true;
        EXPECT_STREQ(e.what(), "stopped by the test at 0.3");
    }
    EXPECT_TRUE(caught) << "the callback's exception did not come out as its own type";
    EXPECT_TRUE(dst.empty());
    naf->setProgressCallback([](double fraction) -> bool {
        if (fraction > 0.3) throw std::bad_alloc();  // not reported as NAF running out of memory
        return true;
    });
    dst = reference.clone();
    EXPECT_THROW(naf->upsample(image, feats, dst, out), std::bad_alloc);
    EXPECT_TRUE(dst.empty());
    // The blob entry point cancels the same way.
    naf->setProgressCallback([](double) { return false; });
    const int blobSizes[4] = {1, 3, image.rows, image.cols};
    cv::Mat blob(4, blobSizes, CV_32F, cv::Scalar(0.5)), blobDst;
    expectRefused([&] { naf->upsampleBlob(blob, feats, blobDst, out); },
                {"cv::naf::NAF::upsampleBlob: cancelled by the progress callback at 0 %"});
}

TEST_F(Fixture, ColourOrderFlagSwapsChannels)
{
    cv::Mat rgb, a, b;
    cv::cvtColor(image, rgb, cv::COLOR_BGR2RGB);
    naf->upsample(image, feats, a, out);
    naf->setImageColorOrder(cv::naf::IMAGE_RGB);
    naf->upsample(rgb, feats, b, out);
    EXPECT_EQ(cv::norm(a.reshape(1, 1), b.reshape(1, 1), cv::NORM_INF), 0.0);
    // And the order matters (the encoder is not colour-symmetric).
    naf->upsample(image, feats, b, out);
    EXPECT_GT(cv::norm(a.reshape(1, 1), b.reshape(1, 1), cv::NORM_INF), 1e-6);
}

TEST_F(Fixture, BlobInputEqualsImageInput)
{
    cv::Mat a, b;
    naf->upsample(image, feats, a, out);
    cv::Mat rgb;
    cv::cvtColor(image, rgb, cv::COLOR_BGR2RGB);
    cv::Mat f32;
    rgb.convertTo(f32, CV_32F, 1.0 / 255);
    const int sizes[4] = {1, 3, image.rows, image.cols};
    cv::Mat blob(4, sizes, CV_32F);
    std::vector<cv::Mat> planes;
    for (int c = 0; c < 3; ++c) planes.emplace_back(image.rows, image.cols, CV_32F, blob.ptr<float>(0, c));
    cv::split(f32, planes);
    naf->upsampleBlob(blob, feats, b, out);
    EXPECT_LE(naf_test::relativeL2(b, a), 1e-6);
}

TEST_F(Fixture, AttentionProbeReportsWindowAndWeights)
{
    naf->setKernelSize(3);
    naf->setAttentionProbe(cv::Point(23, 0));
    cv::Mat dst, weights, positions;
    naf->upsample(image, feats, dst, cv::Size(24, 20));  // exact multiples (x4) of the 6x5 grid
    naf->getAttentionWeights(weights, positions);
    ASSERT_EQ(weights.dims, 4);
    EXPECT_EQ(weights.size[1], 4);  // heads
    EXPECT_EQ(weights.size[2], 3);
    EXPECT_EQ(weights.size[3], 3);
    ASSERT_EQ(positions.size(), cv::Size(3, 3));
    // Top-right output pixel: window shifted inward to the last 3 columns and first 3 rows.
    EXPECT_EQ(positions.at<cv::Vec2i>(0, 0), cv::Vec2i(3, 0));
    EXPECT_EQ(positions.at<cv::Vec2i>(2, 2), cv::Vec2i(5, 2));
    for (int h = 0; h < 4; ++h)
        EXPECT_NEAR(cv::sum(cv::Mat(1, 9, CV_32F, weights.ptr<float>(0, h)))[0], 1.0, 1e-5);
    naf->setAttentionProbe(cv::Point(-1, -1));
}

TEST_F(Fixture, LowResGridSmallerThanKernelUsesTheWholeAxis)
{
    naf->setKernelSize(9);
    naf->setAttentionProbe(cv::Point(10, 10));
    cv::Mat dst, weights, positions;
    naf->upsample(image, feats, dst, out);  // 5x6 grid < 9x9 kernel
    naf->getAttentionWeights(weights, positions);
    EXPECT_EQ(positions.size(), cv::Size(6, 5));
    EXPECT_EQ(weights.size[2], 5);
    EXPECT_EQ(weights.size[3], 6);
}

TEST_F(Fixture, WeightsInfoSaysRandom)
{
    EXPECT_FALSE(naf->isTrained());
    EXPECT_NE(naf->getWeightsInfo().find("random-init (seed 7, NOT TRAINED)"), std::string::npos);
    EXPECT_NE(naf->getWeightsMetadata().find("\"trained\":false"), std::string::npos) << naf->getWeightsMetadata();
}

TEST_F(Fixture, CudaBackendIsRefusedClearlyWhenUnavailable)
{
    if (cv::naf::isCudaAvailable()) GTEST_SKIP() << "a CUDA device is present";
    expectRefused([&] { naf->setBackend(cv::naf::BACKEND_CUDA); }, {"CUDA requested but not available"});
    naf->setBackend(cv::naf::BACKEND_AUTO);
    cv::Mat dst;
    naf->upsample(image, feats, dst, out);
    EXPECT_EQ(naf->getActiveBackend(), cv::naf::BACKEND_CPU);
}

TEST_F(Fixture, GpuPrecisionDefaultsToFp32AndRoundTrips)
{
    EXPECT_EQ(naf->getGpuPrecision(), cv::naf::GPU_PRECISION_FP32);
    EXPECT_FALSE(naf->getUseTF32());
    for (int p : {cv::naf::GPU_PRECISION_TF32, cv::naf::GPU_PRECISION_FP16, cv::naf::GPU_PRECISION_FP32})
    {
        naf->setGpuPrecision(p);
        EXPECT_EQ(naf->getGpuPrecision(), p);
        EXPECT_EQ(naf->getUseTF32(), p == cv::naf::GPU_PRECISION_TF32);
    }
}

TEST_F(Fixture, UseTF32IsAShorthandOfGpuPrecision)
{
    naf->setUseTF32(true);
    EXPECT_EQ(naf->getGpuPrecision(), cv::naf::GPU_PRECISION_TF32);
    EXPECT_TRUE(naf->getUseTF32());
    naf->setUseTF32(false);
    EXPECT_EQ(naf->getGpuPrecision(), cv::naf::GPU_PRECISION_FP32);
    EXPECT_FALSE(naf->getUseTF32());
    // FP16 is not TF32, and switching TF32 off leaves FP32, not the previous FP16.
    naf->setGpuPrecision(cv::naf::GPU_PRECISION_FP16);
    EXPECT_FALSE(naf->getUseTF32());
    naf->setUseTF32(false);
    EXPECT_EQ(naf->getGpuPrecision(), cv::naf::GPU_PRECISION_FP32);
}

TEST_F(Fixture, UnknownGpuPrecisionIsRefusedAndLeavesTheSettingUnchanged)
{
    for (int kept : {cv::naf::GPU_PRECISION_FP32, cv::naf::GPU_PRECISION_FP16})
    {
        naf->setGpuPrecision(kept);
        for (int bad : {-1, 3})
        {
            SCOPED_TRACE(bad);
            try
            {
                naf->setGpuPrecision(bad);
                ADD_FAILURE() << "no cv::Exception thrown";
            }
            catch (const cv::Exception& e)
            {
                EXPECT_EQ(e.code, cv::Error::StsOutOfRange);
                const std::string msg = e.what();
                for (const std::string& frag :
                     {std::string("setGpuPrecision"), "got " + std::to_string(bad), std::string("GPU_PRECISION_FP32 (0)"),
                      std::string("GPU_PRECISION_TF32 (1)"), std::string("GPU_PRECISION_FP16 (2)")})
                    EXPECT_NE(msg.find(frag), std::string::npos) << "message: " << msg << "\nmissing: " << frag;
            }
            EXPECT_EQ(naf->getGpuPrecision(), kept);
        }
    }
}

// The CPU backend always computes in float32: every precision gives the same bits.
TEST_F(Fixture, GpuPrecisionIsIgnoredOnTheCpuBackend)
{
    naf->setBackend(cv::naf::BACKEND_CPU);
    cv::Mat fp32;
    naf->upsample(image, feats, fp32, out);
    for (int p : {cv::naf::GPU_PRECISION_TF32, cv::naf::GPU_PRECISION_FP16})
    {
        SCOPED_TRACE(p);
        naf->setGpuPrecision(p);
        cv::Mat other;
        naf->upsample(image, feats, other, out);
        EXPECT_EQ(naf->getActiveBackend(), cv::naf::BACKEND_CPU);
        ASSERT_EQ(other.total(), fp32.total());
        EXPECT_EQ(std::memcmp(other.ptr<float>(), fp32.ptr<float>(), fp32.total() * sizeof(float)), 0);
    }
}

// GPU only. Each precision against the CPU path (the bound of the kernels' CUDA tests), and
// FP16's float16 range refusal reaching the caller as a cv::Exception with dst untouched.
TEST_F(Fixture, CudaPrecisionsMatchTheCpuAndFp16RefusesOutOfRangeInput)
{
    if (!cv::naf::isCudaAvailable()) GTEST_SKIP() << "no CUDA device";
    naf->setBackend(cv::naf::BACKEND_CPU);
    cv::Mat cpu;
    naf->upsample(image, feats, cpu, out);
    naf->setBackend(cv::naf::BACKEND_CUDA);
    for (int p : {cv::naf::GPU_PRECISION_FP32, cv::naf::GPU_PRECISION_TF32, cv::naf::GPU_PRECISION_FP16})
    {
        SCOPED_TRACE(p);
        naf->setGpuPrecision(p);
        cv::Mat gpu;
        naf->upsample(image, feats, gpu, out);
        EXPECT_EQ(naf->getActiveBackend(), cv::naf::BACKEND_CUDA);
        EXPECT_LE(naf_test::relativeL2(gpu, cpu), p == cv::naf::GPU_PRECISION_FP32 ? 1e-4 : 1e-3);
    }
    // A guide blob of ~1e5: finite, so validation takes it, but its normalized values are past 65504.
    const cv::Mat blob = randomBlob(1, 3, image.rows, image.cols, 5, 0.f, 1e5f);
    const int sizes[4] = {1, 8, out.height, out.width};
    cv::Mat dst(4, sizes, CV_32F, cv::Scalar(7));
    naf->setGpuPrecision(cv::naf::GPU_PRECISION_FP16);
    expectRefused([&] { naf->upsampleBlob(blob, feats, dst, out); }, {"CUDA forward", "float16"});
    double lo = 0, hi = 0;
    cv::minMaxIdx(dst.reshape(1, 1), &lo, &hi);
    EXPECT_EQ(lo, 7.0);
    EXPECT_EQ(hi, 7.0);
    // The same object still runs, and FP32 takes that input.
    naf->setGpuPrecision(cv::naf::GPU_PRECISION_FP32);
    naf->upsampleBlob(blob, feats, dst, out);
    EXPECT_TRUE(cv::checkRange(dst));
}

// GPU only. The CUDA path enqueues an item's device work at once, so it reports each item's start
// and end, in order and on the calling thread; stopping at the first item's end cancels the call
// there and releases dst.
TEST_F(Fixture, CudaProgressReportsEachItemsEndsAndCancels)
{
    if (!cv::naf::isCudaAvailable()) GTEST_SKIP() << "no CUDA device";
    naf->setBackend(cv::naf::BACKEND_CUDA);
    cv::Mat plain, tracked;
    naf->upsample(twoImages, twoFeats, plain, out);
    ProgressLog log;
    naf->setProgressCallback(log.recorder());
    naf->upsample(twoImages, twoFeats, tracked, out);
    EXPECT_EQ(naf->getActiveBackend(), cv::naf::BACKEND_CUDA);
    EXPECT_EQ(cv::norm(plain.reshape(1, 1), tracked.reshape(1, 1), cv::NORM_INF), 0.0);
    EXPECT_FALSE(log.otherThread);
    EXPECT_EQ(log.fractions, (std::vector<double>{0.0, 0.5, 0.5, 1.0}));
    naf->setProgressCallback([](double fraction) { return fraction < 0.5; });
    expectRefused([&] { naf->upsample(twoImages, twoFeats, tracked, out); },
                {"cancelled by the progress callback at 50 %", "dst was released"});
    EXPECT_TRUE(tracked.empty());
}

TEST_F(Fixture, OneShotFunctionUsesDefaultWeights)
{
    setenv("NAF_WEIGHTS", naf_test::goldenWeights().c_str(), 1);
    EXPECT_EQ(cv::naf::getDefaultWeightsPath(), naf_test::goldenWeights());
    cv::Mat viaFunction, viaObject;
    cv::naf::upsample(image, feats, viaFunction, out);
    cv::Ptr<cv::naf::NAF> fromFile = cv::naf::NAF::create(naf_test::goldenWeights());
    EXPECT_NE(fromFile->getWeightsInfo().find("weights_seed0.safetensors"), std::string::npos);
    fromFile->upsample(image, feats, viaObject, out);
    EXPECT_EQ(cv::norm(viaFunction.reshape(1, 1), viaObject.reshape(1, 1), cv::NORM_INF), 0.0);
    setenv("NAF_WEIGHTS", "/nonexistent/naf.safetensors", 1);
    expectRefused([&] { cv::naf::upsample(image, feats, viaFunction, out); }, {"/nonexistent/naf.safetensors"});
    unsetenv("NAF_WEIGHTS");
}

TEST(DefaultWeights, ShippedTrainedWeightsAreTheDefault)
{
    // models/naf/naf_default.safetensors ships with the project (issue 4): without NAF_WEIGHTS the
    // one-shot function and NAF::create("") use it, and its metadata says how it was trained.
    unsetenv("NAF_WEIGHTS");
    const std::string path = cv::naf::getDefaultWeightsPath();
    const std::string suffix = "models/naf/naf_default.safetensors";
    ASSERT_GE(path.size(), suffix.size());
    EXPECT_EQ(path.substr(path.size() - suffix.size()), suffix);
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create();
    EXPECT_TRUE(naf->isTrained()) << naf->getWeightsInfo();
    // says "trained" once (its source), not "trained, trained"
    EXPECT_NE(naf->getWeightsInfo().find("(trained, "), std::string::npos) << naf->getWeightsInfo();
    EXPECT_EQ(naf->getWeightsInfo().find("trained, trained"), std::string::npos) << naf->getWeightsInfo();
    const std::string meta = naf->getWeightsMetadata();
    for (const char* field : {"\"trained\": true", "\"vfm\": \"mobilesam\"", "\"steps\"", "\"hardware\"", "\"final_loss\""})
        EXPECT_NE(meta.find(field), std::string::npos) << "metadata lacks " << field << ": " << meta;
}

TEST(Concurrency, OneShotFunctionFromManyThreadsEqualsSerial)
{
    // cv::naf::upsample keeps one upsampler per thread, so concurrent calls are safe.
    const int threads = 4;
    std::vector<cv::Mat> images, feats, serial(threads), parallel(threads);
    for (int t = 0; t < threads; ++t)
    {
        images.push_back(randomImage(30 + t, 41, 100 + t));
        feats.push_back(randomBlob(1, 8, 4, 5, 200 + t));
        cv::naf::upsample(images[t], feats[t], serial[t], cv::Size(23, 17));
    }
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] { cv::naf::upsample(images[t], feats[t], parallel[t], cv::Size(23, 17)); });
    for (auto& th : pool) th.join();
    for (int t = 0; t < threads; ++t)
        EXPECT_EQ(cv::norm(serial[t].reshape(1, 1), parallel[t].reshape(1, 1), cv::NORM_INF), 0.0) << "thread " << t;
}
