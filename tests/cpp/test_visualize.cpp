// Baseline upsamplers and visualizations (opencv2/naf/visualize.hpp) on constructed inputs whose
// right answer is known.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include <opencv2/imgproc.hpp>
#include <opencv2/naf.hpp>

#include "test_support.hpp"

namespace {

// 1 x C x h x w blob whose channel c at (y, x) is f(c, y, x).
template <typename F>
cv::Mat blobOf(int c, int h, int w, F f)
{
    const int sizes[4] = {1, c, h, w};
    cv::Mat m(4, sizes, CV_32F);
    for (int k = 0; k < c; ++k)
        for (int y = 0; y < h; ++y)
            for (int x = 0; x < w; ++x) m.at<float>(cv::Vec4i(0, k, y, x)) = f(k, y, x);
    return m;
}

cv::Mat channel(const cv::Mat& blob, int c)
{
    return cv::Mat(blob.size[2], blob.size[3], CV_32F, const_cast<float*>(blob.ptr<float>(0, c)));
}

template <typename Fn>
void expectError(Fn&& fn, const std::string& needle)
{
    try
    {
        fn();
        FAIL() << "no exception; expected one mentioning '" << needle << "'";
    }
    catch (const cv::Exception& e)
    {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
}

}  // namespace

TEST(Visualize, MethodNamesRoundTrip)
{
    for (int m = cv::naf::UPSAMPLE_NEAREST; m <= cv::naf::UPSAMPLE_NAF; ++m)
        EXPECT_EQ(cv::naf::upsampleMethodFromName(cv::naf::upsampleMethodName(m)), m);
    expectError([] { cv::naf::upsampleMethodFromName("lanczos"); }, "known: nearest, bilinear");
    expectError([] { cv::naf::upsampleMethodName(17); }, "17");
}

TEST(Visualize, ClassicalUpsamplersMatchCvResizePerChannel)
{
    const cv::Mat low = naf_test::randomBlob(1, 5, 7, 9, 4);
    const cv::Mat image = naf_test::randomImage(30, 40, 5);
    const std::pair<int, int> cases[] = {{cv::naf::UPSAMPLE_NEAREST, cv::INTER_NEAREST},
                                         {cv::naf::UPSAMPLE_BILINEAR, cv::INTER_LINEAR},
                                         {cv::naf::UPSAMPLE_BICUBIC, cv::INTER_CUBIC}};
    for (const auto& [method, interpolation] : cases)
    {
        cv::Mat out;
        cv::naf::upsampleWith(method, image, low, out, cv::Size(40, 30));
        ASSERT_EQ(out.dims, 4);
        ASSERT_EQ(out.size[1], 5);
        for (int c = 0; c < 5; ++c)
        {
            cv::Mat expected;
            cv::resize(channel(low, c), expected, cv::Size(40, 30), 0, 0, interpolation);
            EXPECT_EQ(cv::norm(channel(out, c), expected, cv::NORM_INF), 0.0) << cv::naf::upsampleMethodName(method);
        }
    }
}

// The guided and joint bilateral methods need ximgproc (NAF_WITH_XIMGPROC); a build without it
// says so, and which method, rather than failing inside OpenCV or returning bilinear.
TEST(Visualize, MethodAvailabilityFollowsTheBuild)
{
    const bool expectXimgproc = NAF_EXPECT_XIMGPROC;
    for (int m = cv::naf::UPSAMPLE_NEAREST; m <= cv::naf::UPSAMPLE_NAF; ++m)
    {
        const bool needsXimgproc = m == cv::naf::UPSAMPLE_GUIDED_FILTER || m == cv::naf::UPSAMPLE_JOINT_BILATERAL;
        EXPECT_EQ(cv::naf::isUpsampleMethodAvailable(m), expectXimgproc || !needsXimgproc)
            << cv::naf::upsampleMethodName(m);
    }
    expectError([] { cv::naf::isUpsampleMethodAvailable(-1); }, "unknown method -1");
    if (expectXimgproc) return;
    const cv::Mat low = naf_test::randomBlob(1, 3, 4, 4, 1);
    const cv::Mat image = naf_test::randomImage(16, 16, 2);
    for (int m : {cv::naf::UPSAMPLE_GUIDED_FILTER, cv::naf::UPSAMPLE_JOINT_BILATERAL})
    {
        cv::Mat out;
        expectError([&] { cv::naf::upsampleWith(m, image, low, out, image.size()); },
                    "method '" + cv::naf::upsampleMethodName(m) + "' needs OpenCV's ximgproc");
        EXPECT_TRUE(out.empty());
    }
}

TEST(Visualize, GuidedMethodsSharpenAnEdgeTheImageShows)
{
    if (!cv::naf::isUpsampleMethodAvailable(cv::naf::UPSAMPLE_GUIDED_FILTER))
        GTEST_SKIP() << "built without ximgproc (MethodAvailabilityFollowsTheBuild checks the refusal)";
    // Image: left half black, right half white, edge at x = 32. Features: one channel that is 0 on
    // low-res cells left of the edge and 1 right of it (8 cells, edge between cells 3 and 4).
    cv::Mat image(32, 64, CV_8UC3, cv::Scalar::all(0));
    image(cv::Rect(32, 0, 32, 32)).setTo(cv::Scalar::all(255));
    const cv::Mat low = blobOf(4, 4, 8, [](int, int, int x) { return x < 4 ? 0.f : 1.f; });
    cv::Mat bilinear;
    cv::naf::upsampleWith(cv::naf::UPSAMPLE_BILINEAR, image, low, bilinear, image.size());
    for (int method : {cv::naf::UPSAMPLE_GUIDED_FILTER, cv::naf::UPSAMPLE_JOINT_BILATERAL})
    {
        cv::Mat out;
        cv::naf::upsampleWith(method, image, low, out, image.size());
        // Next to the edge the guided result is closer to the step than bilinear's ramp.
        const double stepErrorGuided = std::abs(channel(out, 0).at<float>(16, 30)) +
                                       std::abs(1.f - channel(out, 0).at<float>(16, 33));
        const double stepErrorBilinear = std::abs(channel(bilinear, 0).at<float>(16, 30)) +
                                         std::abs(1.f - channel(bilinear, 0).at<float>(16, 33));
        EXPECT_LT(stepErrorGuided, 0.8 * stepErrorBilinear) << cv::naf::upsampleMethodName(method);
    }
    expectError([&] { cv::naf::upsampleWith(cv::naf::UPSAMPLE_GUIDED_FILTER, cv::Mat(), low, bilinear, image.size()); },
                "needs a CV_8UC3 guide image");
}

TEST(Visualize, NafMethodEqualsTheNafObject)
{
    const cv::Mat image = naf_test::randomImage(40, 48, 6);
    const cv::Mat low = naf_test::randomBlob(1, 8, 5, 6, 7);
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create(naf_test::goldenWeights());
    cv::Mat viaMethod, direct;
    cv::naf::upsampleWith(cv::naf::UPSAMPLE_NAF, image, low, viaMethod, cv::Size(24, 20), naf);
    naf->upsample(image, low, direct, cv::Size(24, 20));
    EXPECT_EQ(cv::norm(viaMethod.reshape(1, 1), direct.reshape(1, 1), cv::NORM_INF), 0.0);
}

TEST(Visualize, PcaColoursFollowTheDominantDirection)
{
    // 6 channels; the signal varies along x in direction (1,1,0,0,0,0) only: the first component
    // (shown as red) must follow x monotonically; the same basis applied to a 2x map agrees.
    const cv::Mat low = blobOf(6, 5, 10, [](int c, int, int x) { return c < 2 ? static_cast<float>(x) : 0.3f; });
    cv::naf::FeaturePca pca;
    EXPECT_TRUE(pca.empty());
    expectError([&] { cv::Mat o; pca.apply(low, o); }, "fit() first");
    pca.fit(low);
    EXPECT_EQ(pca.channels(), 6);
    cv::Mat bgr;
    pca.apply(low, bgr);
    ASSERT_EQ(bgr.type(), CV_8UC3);
    ASSERT_EQ(bgr.size(), cv::Size(10, 5));
    const int red0 = bgr.at<cv::Vec3b>(2, 0)[2], red9 = bgr.at<cv::Vec3b>(2, 9)[2];
    EXPECT_GE(std::abs(red9 - red0), 200);
    for (int x = 1; x < 10; ++x)
        EXPECT_EQ((bgr.at<cv::Vec3b>(2, x)[2] - bgr.at<cv::Vec3b>(2, x - 1)[2] >= 0), (red9 > red0)) << x;
    cv::Mat up, upBgr;
    cv::naf::upsampleWith(cv::naf::UPSAMPLE_NEAREST, cv::Mat(), low, up, cv::Size(20, 10));
    pca.apply(up, upBgr);
    EXPECT_EQ(upBgr.at<cv::Vec3b>(4, 0), bgr.at<cv::Vec3b>(2, 0));
    EXPECT_EQ(upBgr.at<cv::Vec3b>(4, 19), bgr.at<cv::Vec3b>(2, 9));
    expectError([&] { cv::Mat o; pca.apply(naf_test::randomBlob(1, 4, 3, 3, 1), o); }, "fitted on 6 channels, got 4");
}

TEST(Visualize, KMeansFindsPlantedRegionsAndSimilarityMapsThem)
{
    // Three regions with orthogonal feature directions plus noise.
    cv::RNG rng(9);
    const cv::Mat feats = blobOf(3, 30, 45, [&](int c, int, int x) {
        const int region = x / 15;
        return (c == region ? 1.f : 0.f) + static_cast<float>(rng.gaussian(0.05));
    });
    cv::Mat labels;
    cv::naf::kmeansSegmentation(feats, 3, labels, 1);
    ASSERT_EQ(labels.type(), CV_32S);
    ASSERT_EQ(labels.size(), cv::Size(45, 30));
    for (int y = 0; y < 30; ++y)
        for (int x = 0; x < 45; ++x) EXPECT_EQ(labels.at<int>(y, x), labels.at<int>(0, (x / 15) * 15 + 7));
    EXPECT_NE(labels.at<int>(0, 0), labels.at<int>(0, 20));
    EXPECT_NE(labels.at<int>(0, 20), labels.at<int>(0, 40));
    EXPECT_NE(labels.at<int>(0, 0), labels.at<int>(0, 40));
    cv::Mat again;
    cv::naf::kmeansSegmentation(feats, 3, again, 1);
    EXPECT_EQ(cv::norm(labels, again, cv::NORM_INF), 0.0) << "same seed, same labels";

    cv::Mat sim;
    cv::naf::cosineSimilarityMap(feats, cv::Point(3, 3), sim);
    ASSERT_EQ(sim.size(), cv::Size(45, 30));
    EXPECT_NEAR(sim.at<float>(3, 3), 1.f, 1e-5);
    EXPECT_GT(sim.at<float>(20, 10), 0.95f);
    EXPECT_LT(std::abs(sim.at<float>(20, 40)), 0.2f);
    expectError([&] { cv::naf::cosineSimilarityMap(feats, cv::Point(45, 0), sim); }, "(45, 0) outside the 45x30");
    expectError([&] { cv::naf::kmeansSegmentation(feats, 0, labels); }, "k = 0");
}

TEST(Visualize, SimilarityMapMatchesAPlainCosineOnAnOddSize)
{
    // 41 x 53 = 2173 pixels: more than two of the streaming chunks, the last one partial; a zero
    // feature gets similarity 0.
    cv::Mat feats = naf_test::randomBlob(1, 7, 41, 53, 5);
    for (int c = 0; c < 7; ++c) feats.ptr<float>(0, c)[17 * 53 + 30] = 0.f;
    cv::Mat sim;
    cv::naf::cosineSimilarityMap(feats, cv::Point(52, 40), sim);
    ASSERT_EQ(sim.type(), CV_32F);
    ASSERT_EQ(sim.size(), cv::Size(53, 41));
    auto feature = [&](int y, int x) {
        std::vector<double> v(7);
        for (int c = 0; c < 7; ++c) v[c] = feats.ptr<float>(0, c)[y * 53 + x];
        return v;
    };
    const std::vector<double> ref = feature(40, 52);
    double worst = 0;
    for (int y = 0; y < 41; ++y)
        for (int x = 0; x < 53; ++x)
        {
            const std::vector<double> v = feature(y, x);
            double dot = 0, nv = 0, nr = 0;
            for (int c = 0; c < 7; ++c) dot += v[c] * ref[c], nv += v[c] * v[c], nr += ref[c] * ref[c];
            const double expected = nv > 0 ? dot / std::sqrt(nv * nr) : 0.0;
            worst = std::max(worst, std::abs(expected - sim.at<float>(y, x)));
        }
    EXPECT_LT(worst, 1e-5);
    EXPECT_EQ(sim.at<float>(17, 30), 0.f);
    // Within the documented [-1, 1], also where the float dot of two unit vectors rounds past it
    // (each pixel against itself, on seeds where that happened: 8 of 20 before the clamp).
    for (int seed = 0; seed < 20; ++seed)
    {
        cv::Mat f = naf_test::randomBlob(1, 384, 3, 5, 100 + seed);
        for (int p = 0; p < 15; ++p)
        {
            cv::naf::cosineSimilarityMap(f, cv::Point(p % 5, p / 5), sim);
            double lo = 0, hi = 0;
            cv::minMaxLoc(sim, &lo, &hi);
            ASSERT_LE(hi, 1.0) << seed << " " << p;
            ASSERT_GE(lo, -1.0) << seed << " " << p;
            ASSERT_GT(sim.at<float>(p / 5, p % 5), 0.99999f);
        }
    }
}

TEST(Visualize, NonFiniteFeaturesAreRefusedByTheirPixelAndLeaveTheOutputAlone)
{
    cv::Mat feats = naf_test::randomBlob(1, 5, 33, 47, 8);
    feats.ptr<float>(0, 3)[29 * 47 + 44] = std::numeric_limits<float>::quiet_NaN();
    cv::Mat labels(2, 2, CV_32S, cv::Scalar(7)), sim(2, 2, CV_32F, cv::Scalar(7));
    expectError([&] { cv::naf::kmeansSegmentation(feats, 4, labels); }, "pixel (44, 29) contains NaN or Inf");
    expectError([&] { cv::naf::cosineSimilarityMap(feats, cv::Point(0, 0), sim); }, "pixel (44, 29) contains NaN or Inf");
    expectError([&] { cv::naf::cosineSimilarityMap(feats, cv::Point(44, 29), sim); }, "pixel (44, 29)");
    // PCA colours (a NaN came out black, like a dark colour): refused the same way.
    cv::naf::FeaturePca pca;
    pca.fit(naf_test::randomBlob(1, 5, 6, 7, 3));
    cv::Mat bgr(2, 2, CV_8UC3, cv::Scalar::all(7));
    expectError([&] { pca.apply(feats, bgr); }, "FeaturePca::apply: the feature of pixel (44, 29) contains NaN or Inf");
    EXPECT_EQ(bgr.size(), cv::Size(2, 2));
    EXPECT_EQ(bgr.at<cv::Vec3b>(1, 1), cv::Vec3b(7, 7, 7));
    EXPECT_EQ(labels.size(), cv::Size(2, 2));
    EXPECT_EQ(labels.at<int>(1, 1), 7);
    EXPECT_EQ(sim.size(), cv::Size(2, 2));
    EXPECT_EQ(sim.at<float>(1, 1), 7.f);
    feats.ptr<float>(0, 3)[29 * 47 + 44] = std::numeric_limits<float>::infinity();
    expectError([&] { cv::naf::kmeansSegmentation(feats, 4, labels); }, "pixel (44, 29)");
    // The first bad pixel in row-major order is named, whichever the sampling or the threads saw.
    cv::Mat wide = naf_test::randomBlob(1, 4, 200, 200, 9);
    wide.ptr<float>(0, 1)[2] = std::numeric_limits<float>::quiet_NaN();       // (2, 0): sampled by k-means
    wide.ptr<float>(0, 2)[1] = std::numeric_limits<float>::quiet_NaN();       // (1, 0): the first
    wide.ptr<float>(0, 0)[150 * 200] = std::numeric_limits<float>::quiet_NaN();  // a later chunk
    expectError([&] { cv::naf::kmeansSegmentation(wide, 3, labels); }, "pixel (1, 0)");
    expectError([&] { cv::naf::cosineSimilarityMap(wide, cv::Point(5, 5), sim); }, "pixel (1, 0)");
}

TEST(Visualize, TinyAndHugeFeaturesGiveTheirCosines)
{
    // Squared norms of 1e-23 underflow a float (all similarities came out 0) and those of 1e20
    // overflow it (the features were refused): they are summed in double.
    for (const float scale : {1e-23f, 1e20f})
    {
        cv::Mat feats = naf_test::randomBlob(1, 6, 9, 11, 3);
        feats *= scale;
        cv::Mat sim, labels;
        cv::naf::cosineSimilarityMap(feats, cv::Point(4, 4), sim);
        EXPECT_NEAR(sim.at<float>(4, 4), 1.f, 1e-5) << scale;
        cv::Mat unit = feats / scale, simUnit;
        cv::naf::cosineSimilarityMap(unit, cv::Point(4, 4), simUnit);
        EXPECT_LT(cv::norm(sim, simUnit, cv::NORM_INF), 1e-5) << scale;
        EXPECT_NO_THROW(cv::naf::kmeansSegmentation(feats, 3, labels)) << scale;
    }
}

TEST(Visualize, KMeansLabelsEveryPixelWithItsNearestCentre)
{
    // Fitted on a subsample (maxSamples 50 of 2173 pixels), so most pixels are assigned by the
    // streaming pass: each must sit with the cluster whose normalized mean is nearest (the
    // centres' fixpoint, checked on the resulting clusters, up to ties).
    const cv::Mat feats = naf_test::randomBlob(1, 6, 41, 53, 12);
    cv::Mat labels;
    cv::naf::kmeansSegmentation(feats, 5, labels, 3, 50);
    ASSERT_EQ(labels.size(), cv::Size(53, 41));
    double minV, maxV;
    cv::minMaxLoc(labels, &minV, &maxV);
    EXPECT_GE(minV, 0);
    EXPECT_LE(maxV, 4);
    // The same run at maxSamples = every pixel (the whole k-means on all pixels) gives clusters
    // whose pixels are nearer to their own centre than to any other: Lloyd's fixpoint.
    cv::Mat full;
    cv::naf::kmeansSegmentation(feats, 5, full, 3, 41 * 53);
    std::vector<std::vector<double>> centres(5, std::vector<double>(6, 0.0));
    std::vector<int> counts(5, 0);
    auto normalized = [&](int i) {
        std::vector<double> v(6);
        double n = 0;
        for (int c = 0; c < 6; ++c) v[c] = feats.ptr<float>(0, c)[i], n += v[c] * v[c];
        for (double& x : v) x /= std::sqrt(n);
        return v;
    };
    for (int i = 0; i < 41 * 53; ++i)
    {
        const std::vector<double> v = normalized(i);
        const int l = full.ptr<int>()[i];
        ++counts[l];
        for (int c = 0; c < 6; ++c) centres[l][c] += v[c];
    }
    for (int l = 0; l < 5; ++l)
    {
        ASSERT_GT(counts[l], 0) << "cluster " << l << " is empty";
        for (double& x : centres[l]) x /= counts[l];
    }
    int misplaced = 0;
    for (int i = 0; i < 41 * 53; ++i)
    {
        const std::vector<double> v = normalized(i);
        auto dist = [&](int l) {
            double d = 0;
            for (int c = 0; c < 6; ++c) d += (v[c] - centres[l][c]) * (v[c] - centres[l][c]);
            return d;
        };
        const int own = full.ptr<int>()[i];
        for (int l = 0; l < 5; ++l)
            if (dist(l) < dist(own) - 1e-4) ++misplaced;
    }
    // cv::kmeans stops at eps 1e-4 or 50 iterations, so a handful may sit on a moving boundary.
    EXPECT_LE(misplaced, 41 * 53 / 100);
}

TEST(Visualize, ColoursOverlaysAndPanels)
{
    EXPECT_NE(cv::naf::labelColor(0), cv::naf::labelColor(1));
    EXPECT_NE(cv::naf::labelColor(1), cv::naf::labelColor(2));
    cv::Mat labels = (cv::Mat_<int>(1, 3) << 0, 2, 0), colours;
    cv::naf::colorizeLabels(labels, colours);
    EXPECT_EQ(colours.at<cv::Vec3b>(0, 1), cv::naf::labelColor(2));
    EXPECT_EQ(colours.at<cv::Vec3b>(0, 0), colours.at<cv::Vec3b>(0, 2));

    cv::Mat black(4, 4, CV_8UC3, cv::Scalar::all(0)), white(4, 4, CV_8UC3, cv::Scalar::all(200)), mixed;
    cv::naf::overlay(black, white, 0.25, mixed);
    EXPECT_EQ(mixed.at<cv::Vec3b>(1, 1), cv::Vec3b(50, 50, 50));
    expectError([&] { cv::naf::overlay(black, white, 1.5, mixed); }, "alpha 1.5");

    cv::Mat ramp(1, 256, CV_32F), turbo;
    for (int i = 0; i < 256; ++i) ramp.at<float>(i) = i / 255.f;
    cv::naf::colorizeScalarMap(ramp, 0, 1, turbo);
    EXPECT_NE(turbo.at<cv::Vec3b>(0, 0), turbo.at<cv::Vec3b>(0, 255));

    cv::Mat panel;
    cv::naf::makePanel({black, white}, {"a", "b"}, panel);
    EXPECT_EQ(panel.cols, 4 + 4 + 4);
    EXPECT_GT(panel.rows, 4);
    EXPECT_EQ(panel.at<cv::Vec3b>(panel.rows - 1, 9), cv::Vec3b(200, 200, 200));
    expectError([&] { cv::naf::makePanel({black, cv::Mat(5, 4, CV_8UC3)}, {}, panel); }, "tile 1");
    expectError([&] { cv::naf::makePanel({cv::Mat(0, 0, CV_8UC3), cv::Mat(0, 0, CV_8UC3)}, {}, panel); }, "tile 0");
    expectError([&] { cv::naf::colorizeScalarMap(ramp, 0, std::numeric_limits<double>::infinity(), turbo); },
                "not finite");

    // Labels past the table are coloured one by one (the table grew up to the largest label:
    // INT_MAX never returned); a 3-D map is refused (it came back as uninitialized pixels).
    cv::Mat large = (cv::Mat_<int>(1, 3) << 1000000, std::numeric_limits<int>::max(), 3);
    cv::naf::colorizeLabels(large, colours);
    EXPECT_EQ(colours.at<cv::Vec3b>(0, 0), cv::naf::labelColor(1000000));
    EXPECT_EQ(colours.at<cv::Vec3b>(0, 1), cv::naf::labelColor(std::numeric_limits<int>::max()));
    EXPECT_EQ(colours.at<cv::Vec3b>(0, 2), cv::naf::labelColor(3));
    const int dims3[3] = {2, 2, 2};
    expectError([&] { cv::naf::colorizeLabels(cv::Mat(3, dims3, CV_32S, cv::Scalar(0)), colours); }, "3-D CV_32S");

    // k-means leaves the caller's random state as it was.
    cv::theRNG().state = 12345;
    cv::Mat km;
    cv::naf::kmeansSegmentation(naf_test::randomBlob(1, 4, 9, 11, 2), 3, km);
    EXPECT_EQ(cv::theRNG().state, 12345u);
}
