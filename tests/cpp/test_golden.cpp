// The C++ CPU path against golden files written by our PyTorch re-implementation of the
// official NAF forward (tools/make_golden.py): outputs, intermediate queries and attention.
#include <gtest/gtest.h>

#include <cstring>

#include <opencv2/naf.hpp>
#include <opencv2/core/utils/filesystem.hpp>

#include "naf_kernels/naf_kernels.hpp"
#include "safetensors.hpp"
#include "test_support.hpp"
#include "weights.hpp"

using cv::naf::detail::SafetensorsFile;

namespace {

std::vector<std::string> goldenCases()
{
    std::vector<cv::String> files;
    cv::utils::fs::glob(naf_test::goldenDir(), "*.safetensors", files);
    std::vector<std::string> cases;
    for (const auto& f : files)
        if (f.find("weights") == std::string::npos) cases.push_back(f);
    return cases;
}

int metaInt(const SafetensorsFile& f, const std::string& key)
{
    auto it = f.metadata().find(key);
    if (it == f.metadata().end()) throw std::runtime_error("golden file has no metadata '" + key + "'");
    return std::stoi(it->second);
}

std::vector<cv::Mat> images(const SafetensorsFile& f)
{
    const cv::Mat all = f.mat("image");  // N x H x W x 3, RGB
    std::vector<cv::Mat> out;
    for (int n = 0; n < all.size[0]; ++n)
        out.push_back(cv::Mat(all.size[1], all.size[2], CV_8UC3, const_cast<uchar*>(all.ptr<uchar>(n))).clone());
    return out;
}

struct GoldenRun
{
    SafetensorsFile file;
    cv::Mat output;
    cv::Mat probeWeights;
};

GoldenRun runCase(const std::string& path, bool withProbe)
{
    GoldenRun r{SafetensorsFile::read(path), cv::Mat(), cv::Mat()};
    const std::string weights = naf_test::goldenDir() + "/" + r.file.metadata().at("weights");
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create(weights);
    naf->setImageColorOrder(cv::naf::IMAGE_RGB);
    naf->setBackend(cv::naf::BACKEND_CPU);
    naf->setKernelSize(metaInt(r.file, "kernel_size"));
    if (withProbe && r.file.has("probe_pixel"))
    {
        const cv::Mat p = r.file.mat("probe_pixel");
        naf->setAttentionProbe(cv::Point(p.at<int>(2), p.at<int>(1)));
    }
    naf->upsample(images(r.file), r.file.mat("features"), r.output,
                  cv::Size(metaInt(r.file, "output_width"), metaInt(r.file, "output_height")));
    if (withProbe && r.file.has("probe_pixel"))
    {
        cv::Mat positions;
        naf->getAttentionWeights(r.probeWeights, positions);
    }
    return r;
}

// Output values at the sampled (n, y, x) pixels, P x C.
cv::Mat gatherSamples(const cv::Mat& blob, const cv::Mat& index)
{
    const int c = blob.size[1];
    cv::Mat out(index.size[0], c, CV_32F);
    for (int i = 0; i < index.size[0]; ++i)
    {
        const int* s = index.ptr<int>(i);
        for (int ch = 0; ch < c; ++ch) out.at<float>(i, ch) = blob.at<float>(cv::Vec4i(s[0], ch, s[1], s[2]));
    }
    return out;
}

}  // namespace

TEST(Golden, AllCasesArePresent)
{
    ASSERT_TRUE(cv::utils::fs::exists(naf_test::goldenWeights())) << naf_test::goldenWeights();
    EXPECT_GE(goldenCases().size(), 6u) << "run tools/make_golden.py";
}

TEST(Golden, CpuOutputMatchesReference)
{
    int probes = 0;
    for (const std::string& path : goldenCases())
    {
        SCOPED_TRACE(path);
        GoldenRun r = runCase(path, true);
        const auto& meta = r.file.metadata();
        std::cout << "[golden] " << path.substr(path.find_last_of('/') + 1) << ": " << (meta.count("description") ? meta.at("description") : "")
                  << "\n";
        if (r.file.has("expected"))
        {
            const cv::Mat expected = r.file.mat("expected");
            ASSERT_EQ(expected.total(), r.output.total());
            const double err = naf_test::relativeL2(r.output, expected);
            std::cout << "  full output relative L2 " << err << "\n";
            EXPECT_LE(err, 1e-4);
        }
        ASSERT_TRUE(r.file.has("expected") || r.file.has("sample_index")) << "golden case without reference output";
        if (!r.file.has("sample_index")) continue;
        const cv::Mat samples = gatherSamples(r.output, r.file.mat("sample_index"));
        const double err = naf_test::relativeL2(samples, r.file.mat("expected_samples"));
        std::cout << "  sampled output relative L2 " << err << " over " << samples.rows << " pixels\n";
        EXPECT_LE(err, 1e-4);
        if (r.file.has("probe_weights"))
        {
            ++probes;
            const cv::Mat expected = r.file.mat("probe_weights");  // heads x kh x kw
            const int n = r.file.mat("probe_pixel").at<int>(0);
            ASSERT_EQ(r.probeWeights.total() / r.probeWeights.size[0], expected.total());
            const cv::Mat mine(1, static_cast<int>(expected.total()), CV_32F,
                               r.probeWeights.ptr<float>() + n * expected.total());
            EXPECT_LE(cv::norm(mine, expected.reshape(1, 1), cv::NORM_INF), 1e-4);
        }
    }
    EXPECT_GT(probes, 0) << "no golden case records attention weights";
}

TEST(Golden, QueriesMatchReference)
{
    namespace K = ::naf::kernels;
    const auto weights = cv::naf::detail::loadWeightsFile(naf_test::goldenWeights());
    int checked = 0;
    for (const std::string& path : goldenCases())
    {
        SCOPED_TRACE(path);
        const SafetensorsFile f = SafetensorsFile::read(path);
        if (!f.has("query_samples")) continue;
        ++checked;
        const std::vector<cv::Mat> imgs = images(f);
        const cv::Mat index = f.mat("sample_index");
        const cv::Mat expected = f.mat("query_samples");
        const int outH = metaInt(f, "output_height"), outW = metaInt(f, "output_width");
        cv::Mat mine(expected.rows, expected.cols, CV_32F);
        K::Workspace ws;
        for (size_t n = 0; n < imgs.size(); ++n)
        {
            const cv::Mat& img = imgs[n];
            std::vector<float> planar(3 * img.total());
            for (int y = 0; y < img.rows; ++y)
                for (int x = 0; x < img.cols; ++x)
                    for (int c = 0; c < 3; ++c)
                        planar[c * img.total() + y * img.cols + x] = img.at<cv::Vec3b>(y, x)[c] / 255.f;
            std::vector<float> queries(static_cast<size_t>(weights->cfg.dim) * outH * outW);
            K::encodeQueries(weights->cfg, weights->view, planar.data(), img.rows, img.cols, outH, outW, queries.data(),
                             ws, K::threadParallelFor());
            for (int i = 0; i < index.rows; ++i)
            {
                const int* s = index.ptr<int>(i);
                if (s[0] != static_cast<int>(n)) continue;
                for (int c = 0; c < weights->cfg.dim; ++c)
                    mine.at<float>(i, c) = queries[(static_cast<size_t>(c) * outH + s[1]) * outW + s[2]];
            }
        }
        const double err = naf_test::relativeL2(mine, expected);
        std::cout << "  queries relative L2 " << err << "\n";
        EXPECT_LE(err, 1e-4);
    }
    EXPECT_GT(checked, 0) << "no golden case has query_samples";
}

TEST(Golden, OneThreadAndManyThreadsGiveIdenticalBits)
{
    const std::vector<std::string> cases = goldenCases();
    ASSERT_FALSE(cases.empty());
    const int saved = cv::getNumThreads();
    for (const std::string& path : cases)
    {
        if (path.find("odd_c4") == std::string::npos && path.find("batch2") == std::string::npos) continue;
        // Many threads first: OpenCV's TBB backend cannot grow its pool after a limit of 1.
        cv::setNumThreads(4);
        const GoldenRun threaded = runCase(path, false);
        cv::setNumThreads(1);
        const GoldenRun serial = runCase(path, false);
        ASSERT_EQ(serial.output.total(), threaded.output.total());
        EXPECT_EQ(0, std::memcmp(serial.output.ptr(), threaded.output.ptr(), serial.output.total() * sizeof(float)))
            << path;
    }
    cv::setNumThreads(saved);
}
