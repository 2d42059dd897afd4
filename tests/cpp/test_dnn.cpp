// ONNX graphs with a naf.NAF node (written by tools/make_naf_onnx.py --test-set) run in cv::dnn
// and give what cv::naf gives directly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include <opencv2/dnn.hpp>
#include <opencv2/dnn/shape_utils.hpp>
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
    naf_test::expectRefused([] { cv::dnn::readNetFromONNX(graph("naf_missing_output_size.onnx")); },
                            {"output_height"});
    // A weights_path that is not a string (it said only "isString()").
    cv::dnn::LayerParams params;
    params.name = "upsampler";
    params.set("output_height", 32);
    params.set("output_width", 32);
    params.set("weights_path", 5);
    naf_test::expectRefused([&] { cv::dnn::LayerFactory::createLayerInstance("NAF", params); },
                            {"'upsampler'", "'weights_path' must be a string"});
}

namespace {

// A CV_32F blob of `shape`, uniform in [-1, 1].
cv::Mat uniformBlob(std::vector<int> shape, cv::RNG& rng)
{
    cv::Mat m(static_cast<int>(shape.size()), shape.data(), CV_32F);
    rng.fill(m, cv::RNG::UNIFORM, -1, 1);
    return m;
}

// A cv::naf layer made by cv::dnn's factory, run as cv::dnn runs it (shapes, then forward).
cv::Mat runLayer(const char* type, const cv::Mat& input, const std::function<void(cv::dnn::LayerParams&)>& edit = {},
                 bool inPlace = false)
{
    cv::naf::registerLayers();
    cv::dnn::LayerParams params;
    params.name = "layer";
    params.type = type;
    if (edit) edit(params);
    cv::Ptr<cv::dnn::Layer> layer = cv::dnn::LayerFactory::createLayerInstance(type, params);
    EXPECT_FALSE(layer.empty());
    std::vector<cv::dnn::MatShape> inShapes{cv::dnn::shape(input)}, outShapes, internals;
    EXPECT_TRUE(layer->getMemoryShapes(inShapes, 1, outShapes, internals)) << "elementwise layers may run in place";
    EXPECT_EQ(outShapes, inShapes);
    std::vector<cv::Mat> inputs{input.clone()}, outputs{inPlace ? inputs[0] : cv::Mat(outShapes[0], CV_32F)}, none;
    layer->forward(inputs, outputs, none);
    return outputs[0];
}

}  // namespace

// NafGelu is GELU's tanh form, element by element, also in place (as cv::dnn may run it).
TEST(DnnOpsLayers, GeluIsTheTanhFormOfGelu)
{
    const cv::Mat x = naf_test::randomBlob(2, 3, 7, 9, 5, -5.f, 5.f);
    const cv::Mat y = runLayer("NafGelu", x);
    const cv::Mat same = runLayer("NafGelu", x, {}, true);
    EXPECT_EQ(cv::norm(y.reshape(1, 1), same.reshape(1, 1), cv::NORM_INF), 0.0);
    double worst = 0;
    for (size_t i = 0; i < x.total(); ++i)
    {
        const double v = x.ptr<float>()[i];
        const double want = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
        worst = std::max(worst, std::abs(y.ptr<float>()[i] - want));
    }
    EXPECT_LT(worst, 1e-5);
}

// NafSoftmax over the last axis of a 4-D blob (axis given as 3 or as -1): each row sums to 1
// and equals exp(x - max) / sum; another axis is refused with the axis and the rank.
TEST(DnnOpsLayers, SoftmaxTakesTheLastAxisAndRefusesOthers)
{
    const cv::Mat x = naf_test::randomBlob(1, 2, 5, 49, 6, -4.f, 4.f);
    for (int axis : {3, -1})
    {
        const cv::Mat y = runLayer("NafSoftmax", x, [&](cv::dnn::LayerParams& p) { p.set("axis", axis); });
        const float* in = x.ptr<float>();
        const float* out = y.ptr<float>();
        double worst = 0, worstSum = 0;
        for (size_t r = 0; r < x.total() / 49; ++r)
        {
            double m = -1e30, sum = 0, outSum = 0;
            for (int i = 0; i < 49; ++i) m = std::max(m, double(in[r * 49 + i]));
            for (int i = 0; i < 49; ++i) sum += std::exp(in[r * 49 + i] - m);
            for (int i = 0; i < 49; ++i)
            {
                worst = std::max(worst, std::abs(out[r * 49 + i] - std::exp(in[r * 49 + i] - m) / sum));
                outSum += out[r * 49 + i];
            }
            worstSum = std::max(worstSum, std::abs(outSum - 1));
        }
        EXPECT_LT(worst, 1e-6) << "axis " << axis;
        EXPECT_LT(worstSum, 1e-5) << "axis " << axis;
    }
    cv::naf::registerLayers();
    cv::dnn::LayerParams params;
    params.name = "attn/Softmax";
    params.set("axis", 1);
    cv::Ptr<cv::dnn::Layer> layer = cv::dnn::LayerFactory::createLayerInstance("NafSoftmax", params);
    std::vector<cv::dnn::MatShape> outShapes, internals;
    const int code = naf_test::expectRefused([&] { layer->getMemoryShapes({cv::dnn::shape(x)}, 1, outShapes, internals); },
                                             {"'attn/Softmax' (NafSoftmax): axis 1 of a 4-D input"});
    EXPECT_EQ(code, cv::Error::StsNotImplemented);
}

// NafMatMul with a constant B and bias (rows = every axis of A but the last) and as a batch of
// products of two inputs, against cv::gemm; mismatched shapes are refused with both shapes.
TEST(DnnOpsLayers, MatMulIsALinearLayerOrABatchOfProducts)
{
    cv::naf::registerLayers();
    cv::RNG rng(11);
    // Linear: A [1, 5, 7, 33] x B [33, 17] + bias [17].
    const cv::Mat a = uniformBlob({1, 5, 7, 33}, rng), w = uniformBlob({33, 17}, rng), bias = uniformBlob({1, 17}, rng);
    cv::dnn::LayerParams params;
    params.name = "fc";
    params.blobs = {w, bias};
    cv::Ptr<cv::dnn::Layer> linear = cv::dnn::LayerFactory::createLayerInstance("NafMatMul", params);
    std::vector<cv::dnn::MatShape> outShapes, internals;
    linear->getMemoryShapes({cv::dnn::shape(a)}, 1, outShapes, internals);
    ASSERT_EQ(outShapes.size(), 1u);
    EXPECT_EQ(outShapes[0], (cv::dnn::MatShape{1, 5, 7, 17}));
    std::vector<cv::Mat> inputs{a}, outputs{cv::Mat(outShapes[0], CV_32F)}, none;
    linear->forward(inputs, outputs, none);
    cv::Mat want;
    cv::gemm(a.reshape(1, 35), w, 1.0, cv::repeat(bias, 35, 1), 1.0, want);
    EXPECT_LT(cv::norm(outputs[0].reshape(1, 35), want, cv::NORM_INF), 1e-5);

    // Batched: A [2, 3, 9, 5] x B [2, 3, 5, 11]: six products.
    cv::Mat p = uniformBlob({2, 3, 9, 5}, rng), q = uniformBlob({2, 3, 5, 11}, rng);
    cv::dnn::LayerParams batchedParams;
    batchedParams.name = "attn";
    cv::Ptr<cv::dnn::Layer> batched = cv::dnn::LayerFactory::createLayerInstance("NafMatMul", batchedParams);
    batched->getMemoryShapes({cv::dnn::shape(p), cv::dnn::shape(q)}, 1, outShapes, internals);
    EXPECT_EQ(outShapes[0], (cv::dnn::MatShape{2, 3, 9, 11}));
    inputs = {p, q};
    outputs = {cv::Mat(outShapes[0], CV_32F)};
    batched->forward(inputs, outputs, none);
    for (int i = 0; i < 6; ++i)
    {
        const cv::Mat pi(9, 5, CV_32F, p.ptr<float>() + i * 45), qi(5, 11, CV_32F, q.ptr<float>() + i * 55);
        const cv::Mat got(9, 11, CV_32F, outputs[0].ptr<float>() + i * 99);
        EXPECT_LT(cv::norm(got, pi * qi, cv::NORM_INF), 1e-5) << "product " << i;
    }

    const int wrongShape[4] = {2, 3, 6, 11};
    naf_test::expectRefused(
        [&] {
            batched->getMemoryShapes({cv::dnn::shape(p), cv::dnn::shape(cv::Mat(4, wrongShape, CV_32F))}, 1,
                                     outShapes, internals);
        },
        {"'attn' (NafMatMul): A [ 2 3 9 5 ] and B [ 2 3 6 11 ]"});  // K = 5 against 6
    params.blobs = {w, cv::Mat(1, 16, CV_32F)};
    naf_test::expectRefused([&] { cv::dnn::LayerFactory::createLayerInstance("NafMatMul", params); },
                            {"the bias has 16 values, B has N = 17 columns"});
}

// NafLayerNorm normalizes each row of the last axis (mean 0, variance 1 up to eps), then applies
// gamma and beta; gamma of another length than the last axis is refused.
TEST(DnnOpsLayers, LayerNormNormalizesTheLastAxisThenScalesAndShifts)
{
    const cv::Mat x = naf_test::randomBlob(1, 3, 10, 40, 8, -2.f, 5.f);
    const cv::Mat plain = runLayer("NafLayerNorm", x, [](cv::dnn::LayerParams& p) { p.set("eps", 1e-6); });
    cv::Mat gamma(1, 40, CV_32F), beta(1, 40, CV_32F);
    cv::randu(gamma, 0.5, 2.0);
    cv::randu(beta, -1.0, 1.0);
    const cv::Mat affine = runLayer("NafLayerNorm", x, [&](cv::dnn::LayerParams& p) {
        p.set("eps", 1e-6);
        p.blobs = {gamma, beta};
    }, true);
    const cv::Mat rows = plain.reshape(1, 30), affineRows = affine.reshape(1, 30);
    for (int r = 0; r < 30; ++r)
    {
        cv::Scalar mean, stddev;
        cv::meanStdDev(rows.row(r), mean, stddev);
        EXPECT_NEAR(mean[0], 0.0, 1e-5) << "row " << r;
        EXPECT_NEAR(stddev[0], 1.0, 1e-4) << "row " << r;
        const cv::Mat want = rows.row(r).mul(gamma) + beta;
        EXPECT_LT(cv::norm(affineRows.row(r), want, cv::NORM_INF), 1e-5) << "row " << r;
    }
    cv::naf::registerLayers();
    cv::dnn::LayerParams params;
    params.name = "norm";
    params.blobs = {cv::Mat::ones(1, 39, CV_32F), cv::Mat::zeros(1, 39, CV_32F)};
    cv::Ptr<cv::dnn::Layer> layer = cv::dnn::LayerFactory::createLayerInstance("NafLayerNorm", params);
    std::vector<cv::dnn::MatShape> outShapes, internals;
    naf_test::expectRefused([&] { layer->getMemoryShapes({cv::dnn::shape(x)}, 1, outShapes, internals); },
                            {"the last axis has 40 values, gamma and beta 39"});
    // eps: NaN was reported as "eps nan < 0", and 1e39 became inf as a float (all-zero output).
    for (double eps : {std::nan(""), 1e39, -1.0})
    {
        cv::dnn::LayerParams bad;
        bad.name = "norm";
        bad.set("eps", eps);
        naf_test::expectRefused([&] { cv::dnn::LayerFactory::createLayerInstance("NafLayerNorm", bad); },
                                {"must be finite, >= 0 and within float's range"});
    }
}

// NafConv1x1 equals cv::dnn's own Convolution layer with the same 1x1 weight and bias (batch of 2,
// odd sizes), and refuses a weight that is not 1x1 or an input of another channel count.
TEST(DnnOpsLayers, Conv1x1EqualsCvDnnsConvolution)
{
    cv::naf::registerLayers();
    cv::RNG rng(12);
    const cv::Mat w = uniformBlob({19, 13, 1, 1}, rng), bias = uniformBlob({1, 19}, rng),
                  x = uniformBlob({2, 13, 9, 23}, rng);
    cv::dnn::LayerParams params;
    params.name = "pw";
    params.blobs = {w, bias};
    cv::Ptr<cv::dnn::Layer> ours = cv::dnn::LayerFactory::createLayerInstance("NafConv1x1", params);
    std::vector<cv::dnn::MatShape> outShapes, internals;
    ours->getMemoryShapes({cv::dnn::shape(x)}, 1, outShapes, internals);
    EXPECT_EQ(outShapes[0], (cv::dnn::MatShape{2, 19, 9, 23}));
    std::vector<cv::Mat> inputs{x}, outputs{cv::Mat(outShapes[0], CV_32F)}, none;
    ours->forward(inputs, outputs, none);
    for (int call = 0; call < 2; ++call)  // the second call reuses the packed weights
    {
        cv::Mat again(outShapes[0], CV_32F);
        std::vector<cv::Mat> outs{again};
        ours->forward(inputs, outs, none);
        EXPECT_EQ(cv::norm(again.reshape(1, 1), outputs[0].reshape(1, 1), cv::NORM_INF), 0.0);
    }
    // cv::dnn's Convolution as the reference, in a one-layer net.
    cv::dnn::Net net;
    cv::dnn::LayerParams convParams;
    convParams.name = "conv";
    convParams.type = "Convolution";
    convParams.set("kernel_size", 1);
    convParams.set("num_output", 19);
    convParams.set("bias_term", true);
    convParams.blobs = {w, bias.reshape(1, 19)};
    net.addLayerToPrev("conv", "Convolution", convParams);
    net.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
    net.setInput(x);
    const cv::Mat want = net.forward();
    EXPECT_LT(cv::norm(outputs[0].reshape(1, 1), want.reshape(1, 1), cv::NORM_INF), 1e-5);

    naf_test::expectRefused([&] { ours->getMemoryShapes({cv::dnn::MatShape{2, 12, 9, 23}}, 1, outShapes, internals); },
                            {"expects one NCHW input of 13 channels"});
    const int wide[4] = {19, 13, 3, 3};
    params.blobs = {cv::Mat(4, wide, CV_32F, cv::Scalar(0))};
    naf_test::expectRefused([&] { cv::dnn::LayerFactory::createLayerInstance("NafConv1x1", params); },
                            {"the weight must be CV_32F [cout, cin, 1, 1]"});
}

// Edge shapes: a 1-D input to the last-axis layers is refused (cv::dnn 4.6 keeps it as a column,
// so its "last axis" would be 1); empty products write nothing or zeros, never divide by zero.
TEST(DnnOpsLayers, OneDimensionalAndEmptyShapes)
{
    cv::naf::registerLayers();
    for (const char* type : {"NafSoftmax", "NafLayerNorm"})
    {
        SCOPED_TRACE(type);
        cv::dnn::LayerParams params;
        params.name = "row";
        cv::Ptr<cv::dnn::Layer> layer = cv::dnn::LayerFactory::createLayerInstance(type, params);
        std::vector<cv::dnn::MatShape> outShapes, internals;
        naf_test::expectRefused([&] { layer->getMemoryShapes({cv::dnn::MatShape{7}}, 1, outShapes, internals); },
                                {"a 1-D input; the last axis of at least 2 dims"});
    }
    cv::dnn::LayerParams params;
    params.name = "attn";
    cv::Ptr<cv::dnn::Layer> batched = cv::dnn::LayerFactory::createLayerInstance("NafMatMul", params);
    std::vector<cv::Mat> none;
    {
        const int aShape[3] = {2, 0, 5}, bShape[3] = {2, 5, 3}, cShape[3] = {2, 0, 3};  // M = 0
        std::vector<cv::Mat> inputs{cv::Mat(3, aShape, CV_32F), cv::Mat(3, bShape, CV_32F, cv::Scalar(1))};
        std::vector<cv::Mat> outputs{cv::Mat(3, cShape, CV_32F)};
        batched->forward(inputs, outputs, none);
        EXPECT_EQ(outputs[0].total(), 0u);
    }
    {
        const int aShape[3] = {2, 3, 0}, bShape[3] = {2, 0, 4}, cShape[3] = {2, 3, 4};  // K = 0
        std::vector<cv::Mat> inputs{cv::Mat(3, aShape, CV_32F), cv::Mat(3, bShape, CV_32F)};
        std::vector<cv::Mat> outputs{cv::Mat(3, cShape, CV_32F, cv::Scalar(7))};
        batched->forward(inputs, outputs, none);
        EXPECT_EQ(cv::countNonZero(outputs[0].reshape(1, 1)), 0);
    }
}
