// ONNX graphs with a naf.NAF node (written by tools/make_naf_onnx.py --test-set) run in cv::dnn
// and give what cv::naf gives directly.
#include <gtest/gtest.h>

#include <opencv2/dnn.hpp>
#include <opencv2/naf.hpp>

#include "test_support.hpp"

namespace {

// Must match tools/make_naf_onnx.py --test-set.
constexpr int kBatch = 1, kChannels = 8, kLowH = 8, kLowW = 10, kImageH = 64, kImageW = 80, kOutH = 40, kOutW = 50,
              kKernel = 5;

std::string graph(const char* name) { return std::string(NAF_TEST_ONNX_DIR) + "/" + name; }

cv::Mat imageBlob()
{
    return naf_test::randomBlob(kBatch, 3, kImageH, kImageW, 31, 0.f, 1.f);
}

cv::Mat directResult(const cv::Mat& image, const cv::Mat& feats)
{
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create(naf_test::goldenWeights());
    naf->setKernelSize(kKernel);
    cv::Mat out;
    naf->upsampleBlob(image, feats, out, cv::Size(kOutW, kOutH));
    return out;
}

void checkGraph(const char* name)
{
    cv::naf::registerLayers();
    cv::naf::registerLayers();  // idempotent
    cv::dnn::Net net = cv::dnn::readNetFromONNX(graph(name));
    ASSERT_FALSE(net.empty());
    const cv::Mat image = imageBlob();
    const cv::Mat feats = naf_test::randomBlob(kBatch, kChannels, kLowH, kLowW, 32);
    net.setInput(image, "image");
    net.setInput(feats, "features");
    const cv::Mat out = net.forward();
    ASSERT_EQ(out.dims, 4);
    EXPECT_EQ(out.size[0], kBatch);
    EXPECT_EQ(out.size[1], kChannels);
    EXPECT_EQ(out.size[2], kOutH);
    EXPECT_EQ(out.size[3], kOutW);
    const cv::Mat expected = directResult(image, feats);
    EXPECT_LE(naf_test::relativeL2(out, expected), 1e-6);
}

}  // namespace

TEST(DnnLayer, GraphWithWeightsPathRunsLikeTheModule) { checkGraph("naf_weights_path.onnx"); }

TEST(DnnLayer, GraphWithEmbeddedWeightsRunsLikeTheModule) { checkGraph("naf_embedded.onnx"); }

TEST(DnnLayer, GraphWithoutRequiredAttributeIsRefused)
{
    cv::naf::registerLayers();
    try
    {
        cv::dnn::readNetFromONNX(graph("naf_missing_output_size.onnx"));
        FAIL() << "loaded a NAF node without output_height";
    }
    catch (const cv::Exception& e)
    {
        EXPECT_NE(std::string(e.what()).find("output_height"), std::string::npos) << e.what();
    }
}
