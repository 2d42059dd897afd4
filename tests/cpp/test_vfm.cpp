// The VFM registry (models/vfm/*.json) and runner (cv::naf::VisionFoundationModel).
// Fixtures (tests/CMakeLists.txt): make_tiny_vfm exports a small random-weight ViT with
// tools/export_vfm.py into NAF_VFM_TEST_DIR; vfm_mobilesam_reference evaluates the ORIGINAL
// MobileSAM graph with our numpy evaluator on a real photo (skipped when MobileSAM is not fetched).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <limits>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/core/utils/filesystem.hpp>
#include <opencv2/dnn.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/naf.hpp>

#include "safetensors.hpp"
#include "test_support.hpp"

namespace {

using cv::naf::VfmGeometry;
using cv::naf::VfmRegistry;
using cv::naf::VfmSpec;
using cv::naf::VisionFoundationModel;
using nlohmann::json;

std::string vfmTestDir() { return NAF_VFM_TEST_DIR; }
std::string tinyRegistry() { return vfmTestDir() + "/registry"; }

json validEntry()
{
    return json::parse(R"({
      "display_name": "test model", "onnx": "/nonexistent/model.onnx", "fetch": "echo fetch",
      "input": {"size": 64, "size_policy": "longest_side_pad", "color_order": "RGB",
                "mean": [1, 2, 3], "std": [4, 5, 6]},
      "output": {"name": "features", "channels": 32, "stride": 8},
      "license": "MIT"})");
}

std::string writeEntry(const std::string& name, const std::string& text)
{
    const std::string dir = vfmTestDir() + "/broken/models/vfm";
    cv::utils::fs::createDirectories(dir);
    const std::string path = dir + "/" + name + ".json";
    std::ofstream(path) << text;
    return path;
}

// ---------------------------------------------------------------- registry

TEST(VfmRegistry, ShippedMobileSamEntry)
{
    const VfmSpec s = VfmRegistry::find("mobilesam");
    EXPECT_EQ(s.name, "mobilesam");
    EXPECT_EQ(s.inputSize, 1024);
    EXPECT_EQ(s.sizePolicy, "longest_side_pad");
    EXPECT_TRUE(s.rgb);
    EXPECT_EQ(s.stride, 16);
    EXPECT_EQ(s.channels, 256);
    EXPECT_EQ(s.outputName, "output");
    EXPECT_DOUBLE_EQ(s.mean[0], 123.675);
    EXPECT_DOUBLE_EQ(s.std[2], 57.375);
    EXPECT_EQ(s.onnxPath.front(), '/');  // resolved against the project root
    EXPECT_NE(s.onnxPath.find("models/cache/mobilesam_encoder_1024_cv46.onnx"), std::string::npos);
    EXPECT_NE(s.fetchCommand.find("fetch_models.sh"), std::string::npos);
    EXPECT_FALSE(s.license.empty());
}

TEST(VfmRegistry, LoadDirectoryIsSortedAndHoldsTheDefault)
{
    const std::vector<VfmSpec> specs = VfmRegistry::loadDirectory();
    ASSERT_FALSE(specs.empty());
    bool found = false;
    for (size_t i = 0; i < specs.size(); ++i)
    {
        found = found || specs[i].name == "mobilesam";
        if (i) EXPECT_LT(specs[i - 1].name, specs[i].name);
    }
    EXPECT_TRUE(found);
}

TEST(VfmRegistry, EnvironmentOverridesTheDefaultFolder)
{
    ASSERT_EQ(setenv("NAF_VFM_REGISTRY", "/some/where", 1), 0);
    EXPECT_EQ(VfmRegistry::defaultDirectory(), "/some/where");
    ASSERT_EQ(unsetenv("NAF_VFM_REGISTRY"), 0);
    EXPECT_NE(VfmRegistry::defaultDirectory().find("models/vfm"), std::string::npos);
}

TEST(VfmRegistry, UnknownNameListsTheKnownOnes)
{
    naf_test::expectRefused([] { VfmRegistry::find("no_such_model"); }, {"no_such_model", "mobilesam"});
}

TEST(VfmRegistry, RelativeOnnxPathResolvesAgainstTheProjectRoot)
{
    json j = validEntry();
    j["onnx"] = "models/cache/x.onnx";
    const std::string path = writeEntry("relative", j.dump());
    const VfmSpec s = VfmRegistry::loadFile(path);
    EXPECT_EQ(s.onnxPath, vfmTestDir() + "/broken/models/cache/x.onnx");
    EXPECT_EQ(s.name, "relative");
    EXPECT_EQ(s.fetchCommand, "echo fetch");
    // The entry given by a relative path (the registry folder's parent was taken by text, so
    // "vfm/x.json" resolved against the wrong folder): the same absolute ONNX path.
    const std::filesystem::path relative = std::filesystem::relative(path, std::filesystem::current_path());
    ASSERT_FALSE(relative.is_absolute());
    const VfmSpec r = VfmRegistry::loadFile(relative.string());
    EXPECT_EQ(r.onnxPath, s.onnxPath);
    const std::filesystem::path dotted = std::filesystem::path(path).parent_path() / "." / "relative.json";
    EXPECT_EQ(VfmRegistry::loadFile(dotted.string()).onnxPath, s.onnxPath);
}

struct Broken
{
    const char* what;
    std::function<void(json&)> edit;
    std::vector<std::string> mentions;  // besides the file name
};

TEST(VfmRegistry, BrokenFilesAreRejectedNamingFieldAndValue)
{
    const std::vector<Broken> cases = {
        {"missing display_name", [](json& j) { j.erase("display_name"); }, {"display_name", "missing"}},
        {"missing onnx", [](json& j) { j.erase("onnx"); }, {"'onnx'", "missing"}},
        {"missing license", [](json& j) { j.erase("license"); }, {"license", "missing"}},
        {"missing input", [](json& j) { j.erase("input"); }, {"'input'", "missing"}},
        {"missing input.size", [](json& j) { j["input"].erase("size"); }, {"input.size", "missing"}},
        {"missing output.channels", [](json& j) { j["output"].erase("channels"); }, {"output.channels", "missing"}},
        {"size as string", [](json& j) { j["input"]["size"] = "64"; }, {"input.size", "\"64\"", "integer"}},
        {"size fractional", [](json& j) { j["input"]["size"] = 64.5; }, {"input.size", "64.5"}},
        {"size zero", [](json& j) { j["input"]["size"] = 0; }, {"input.size", "0", "[16, 8192]"}},
        {"stride zero", [](json& j) { j["output"]["stride"] = 0; }, {"output.stride", "0"}},
        {"stride not dividing", [](json& j) { j["output"]["stride"] = 7; }, {"output.stride", "7", "divide"}},
        {"channels negative", [](json& j) { j["output"]["channels"] = -3; }, {"output.channels", "-3"}},
        {"std zero", [](json& j) { j["input"]["std"] = {1, 0, 1}; }, {"input.std", "[1,0,1]", "[1e-6, 1e6]"}},
        {"mean huge", [](json& j) { j["input"]["mean"] = {1e308, 0, 0}; }, {"input.mean", "1e+308", "[-1e6, 1e6]"}},
        {"mean two values", [](json& j) { j["input"]["mean"] = {1, 2}; }, {"input.mean", "[1,2]", "3 numbers"}},
        {"mean not numbers", [](json& j) { j["input"]["mean"] = {"a", 2, 3}; }, {"input.mean", "\"a\""}},
        {"colour order", [](json& j) { j["input"]["color_order"] = "RGBA"; }, {"input.color_order", "\"RGBA\""}},
        {"size policy", [](json& j) { j["input"]["size_policy"] = "crop"; }, {"input.size_policy", "\"crop\""}},
        {"onnx not string", [](json& j) { j["onnx"] = 5; }, {"'onnx'", "5", "string"}},
        {"onnx empty", [](json& j) { j["onnx"] = ""; }, {"'onnx'", "empty"}},
        {"input not object", [](json& j) { j["input"] = 3; }, {"'input'", "3", "object"}},
        {"unknown field (typo)", [](json& j) { j["output"]["chanels"] = 3; }, {"output.chanels", "unknown"}},
    };
    for (const Broken& c : cases)
    {
        SCOPED_TRACE(c.what);
        json j = validEntry();
        c.edit(j);
        const std::string path = writeEntry("broken", j.dump());
        std::vector<std::string> mentions = c.mentions;
        mentions.push_back(path);
        naf_test::expectRefused([&] { VfmRegistry::loadFile(path); }, mentions);
    }
    const std::string notJson = writeEntry("notjson", "{\"display_name\": ");
    naf_test::expectRefused([&] { VfmRegistry::loadFile(notJson); }, {notJson, "not valid JSON"});
    naf_test::expectRefused([] { VfmRegistry::loadFile("/nonexistent/x.json"); }, {"/nonexistent/x.json", "cannot be opened"});
    naf_test::expectRefused([] { VfmRegistry::loadDirectory("/nonexistent/dir"); }, {"/nonexistent/dir"});
    // Not regular files: a FIFO blocked the read, /dev/zero never ended it.
    naf_test::expectRefused([] { VfmRegistry::loadFile("/dev/zero"); }, {"/dev/zero", "not a regular file"});
    // A deeply nested bad value: the message names the field with a short description of the
    // value (dumping it whole recursed once per level and overflowed the stack at ~200k levels).
    const int depth = 300000;
    const std::string nested = std::string(depth, '[') + std::string(depth, ']');
    const std::string deep = writeEntry("deep", validEntry().dump().insert(1, "\"notes\": 1, \"extra\": " + nested + ", "));
    std::string message;
    try
    {
        VfmRegistry::loadFile(deep);
    }
    catch (const cv::Exception& e)
    {
        message = e.err;
    }
    EXPECT_NE(message.find("'extra' = an array of 1 items"), std::string::npos) << message.substr(0, 400);
    EXPECT_LT(message.size(), 1000u);
}

TEST(VisionFoundationModel, MissingModelFileSaysHowToFetchIt)
{
    json j = validEntry();
    const VfmSpec spec = VfmRegistry::loadFile(writeEntry("missingmodel", j.dump()));
    naf_test::expectRefused([&] { VisionFoundationModel::create(spec); }, {"/nonexistent/model.onnx", "echo fetch"});
    // A model path that is not a regular file is refused before cv::dnn reads (and blocks on) it.
    j["onnx"] = "/dev/zero";
    const VfmSpec device = VfmRegistry::loadFile(writeEntry("devicemodel", j.dump()));
    naf_test::expectRefused([&] { VisionFoundationModel::create(device); }, {"/dev/zero", "not a regular file"});
}

// ---------------------------------------------------------------- runner on the tiny exported ViT

cv::Ptr<VisionFoundationModel> tinyVit()
{
    return VisionFoundationModel::create(VfmRegistry::find("tiny_vit", tinyRegistry()));
}

// A registry input size the graph was not exported for: cv::dnn's assertion comes with the model,
// the size and the likely cause in front (it was the bare "total(srcShape, ...) == maskTotal").
TEST(VisionFoundationModel, ForwardFailureNamesTheModelAndInputSize)
{
    VfmSpec spec = VfmRegistry::find("tiny_vit", tinyRegistry());
    spec.inputSize = 128;
    cv::Ptr<VisionFoundationModel> vfm = VisionFoundationModel::create(spec);
    cv::Mat features;
    naf_test::expectRefused([&] { vfm->extract(naf_test::randomImage(40, 50, 1), features); },
                            {"VFM 'tiny_vit'", "128x128 input failed", "input.size"});
}

TEST(VisionFoundationModel, GeometryLandscapeAndPortrait)
{
    cv::Ptr<VisionFoundationModel> vfm = tinyVit();  // input 64, stride 8
    ASSERT_EQ(vfm->getSpec().inputSize, 64);
    cv::Mat features;
    VfmGeometry g;
    vfm->extract(naf_test::randomImage(30, 100, 1), features, &g);  // landscape 100 x 30
    EXPECT_EQ(g.imageSize, cv::Size(100, 30));
    EXPECT_DOUBLE_EQ(g.scale, 0.64);
    EXPECT_EQ(g.inputSize, cv::Size(64, 64));
    EXPECT_EQ(g.imageInInput, cv::Rect(0, 0, 64, 19));  // 30 * 0.64 = 19.2
    EXPECT_EQ(g.gridSize, cv::Size(8, 8));
    EXPECT_EQ(g.validCells, cv::Rect(0, 0, 8, 3));  // ceil(19 / 8)
    ASSERT_EQ(features.dims, 4);
    EXPECT_EQ(features.size[0], 1);
    EXPECT_EQ(features.size[1], 32);
    EXPECT_EQ(features.size[2], 3);
    EXPECT_EQ(features.size[3], 8);
    EXPECT_TRUE(features.isContinuous());

    vfm->extract(naf_test::randomImage(50, 20, 2), features, &g);  // portrait 20 x 50
    EXPECT_DOUBLE_EQ(g.scale, 1.28);
    EXPECT_EQ(g.imageInInput, cv::Rect(0, 0, 26, 64));  // 20 * 1.28 = 25.6
    EXPECT_EQ(g.validCells, cv::Rect(0, 0, 4, 8));
    EXPECT_EQ(features.size[2], 8);
    EXPECT_EQ(features.size[3], 4);
}

TEST(VisionFoundationModel, CoveredOutputSizeAddsThePaddedPartOfTheLastCells)
{
    cv::Ptr<VisionFoundationModel> vfm = tinyVit();  // input 64, stride 8
    cv::Mat features;
    VfmGeometry g;
    vfm->extract(naf_test::randomImage(30, 100, 1), features, &g);
    // 3 cell rows = 24 network rows for the image's 19: 30 * 24 / 19 = 37.9 output rows; the
    // 8 columns end at the image's right border.
    EXPECT_EQ(cv::naf::coveredOutputSize(g, cv::Size(100, 30)), cv::Size(100, 38));
    EXPECT_EQ(cv::naf::coveredOutputSize(g, cv::Size(200, 60)), cv::Size(200, 76));
    // A grid that ends exactly at the image: nothing is added.
    vfm->extract(naf_test::randomImage(64, 64, 2), features, &g);
    EXPECT_EQ(cv::naf::coveredOutputSize(g, cv::Size(64, 64)), cv::Size(64, 64));
    EXPECT_EQ(cv::naf::coveredOutputSize(g, cv::Size(333, 333)), cv::Size(333, 333));

    naf_test::expectRefused([] { cv::naf::coveredOutputSize(VfmGeometry(), cv::Size(64, 64)); },
                        {"empty or inconsistent geometry"});
    naf_test::expectRefused([&] { cv::naf::coveredOutputSize(g, cv::Size(0, 64)); }, {"0x64"});
    // Valid cells outside the grid (a 1e6-wide output came back), and a covered size past int.
    VfmGeometry wide = g;
    wide.validCells.width = 1000000;
    naf_test::expectRefused([&] { cv::naf::coveredOutputSize(wide, cv::Size(64, 64)); },
                            {"inconsistent geometry", "valid cells 1000000x"});
    vfm->extract(naf_test::randomImage(30, 100, 1), features, &g);
    const int big = std::numeric_limits<int>::max() - 5;
    naf_test::expectRefused([&] { cv::naf::coveredOutputSize(g, cv::Size(big, big)); }, {"does not fit in int"});
}

TEST(VisionFoundationModel, ExtractIsTheValidCropOfTheFullGrid)
{
    cv::Ptr<VisionFoundationModel> vfm = tinyVit();
    const cv::Mat image = naf_test::randomImage(40, 64, 3);
    cv::Mat features, blob;
    VfmGeometry g;
    vfm->extract(image, features, &g);
    vfm->preprocess(image, blob);
    cv::dnn::Net net = cv::dnn::readNetFromONNX(vfm->getSpec().onnxPath);
    net.setInput(blob);
    const cv::Mat full = net.forward("features");
    ASSERT_EQ(full.size[2], 8);
    for (int c = 0; c < 32; c += 7)
        for (int y = 0; y < g.validCells.height; ++y)
            for (int x = 0; x < g.validCells.width; ++x)
                ASSERT_EQ(features.at<float>(cv::Vec4i(0, c, y, x)), full.at<float>(cv::Vec4i(0, c, y, x)));
    EXPECT_EQ(g.validCells, cv::Rect(0, 0, 8, 5));
}

TEST(VisionFoundationModel, PreprocessEqualsHandComputedBlob)
{
    // 4 x 2 BGR image into a 64 input: scale 16, longest side 64, RGB, (x - mean) / std, zero pad.
    VfmSpec spec = VfmRegistry::find("tiny_vit", tinyRegistry());
    spec.mean = cv::Scalar(10, 20, 30);
    spec.std = cv::Scalar(2, 4, 5);
    cv::Ptr<VisionFoundationModel> vfm = VisionFoundationModel::create(spec);
    cv::Mat image(2, 4, CV_8UC3, cv::Scalar(50, 100, 200));  // uniform: any interpolation keeps it
    image.at<cv::Vec3b>(0, 0) = cv::Vec3b(50, 100, 200);
    cv::Mat blob;
    VfmGeometry g;
    vfm->preprocess(image, blob, &g);
    ASSERT_EQ(blob.dims, 4);
    EXPECT_EQ(blob.size[1], 3);
    EXPECT_EQ(blob.size[2], 64);
    EXPECT_EQ(g.imageInInput, cv::Rect(0, 0, 64, 32));
    const float expected[3] = {(200.f - 10) / 2, (100.f - 20) / 4, (50.f - 30) / 5};  // R, G, B
    for (int c = 0; c < 3; ++c)
        for (int y = 0; y < 64; y += 3)
            for (int x = 0; x < 64; x += 5)
            {
                const float v = blob.at<float>(cv::Vec4i(0, c, y, x));
                ASSERT_FLOAT_EQ(v, y < 32 ? expected[c] : 0.f) << c << " " << y << " " << x;
            }
    // BGR models keep the order
    spec.rgb = false;
    VisionFoundationModel::create(spec)->preprocess(image, blob);
    EXPECT_FLOAT_EQ(blob.at<float>(cv::Vec4i(0, 0, 0, 0)), (50.f - 10) / 2);
    // "resize" stretches to the full input
    spec.sizePolicy = "resize";
    VisionFoundationModel::create(spec)->preprocess(image, blob, &g);
    EXPECT_EQ(g.imageInInput, cv::Rect(0, 0, 64, 64));
    EXPECT_EQ(g.validCells, cv::Rect(0, 0, 8, 8));
    EXPECT_FLOAT_EQ(blob.at<float>(cv::Vec4i(0, 0, 63, 63)), (50.f - 10) / 2);
}

TEST(VisionFoundationModel, PreprocessPixelsFollowTheResize)
{
    // a non-uniform image: the blob's valid region is cv::resize + normalization, exactly
    cv::Ptr<VisionFoundationModel> vfm = tinyVit();
    const cv::Mat image = naf_test::randomImage(20, 32, 9);
    cv::Mat blob, resized, rgb;
    vfm->preprocess(image, blob);
    cv::resize(image, resized, cv::Size(64, 40), 0, 0, cv::INTER_LINEAR);
    const VfmSpec& s = vfm->getSpec();
    for (int c = 0; c < 3; ++c)
        for (int y = 0; y < 40; ++y)
            for (int x = 0; x < 64; ++x)
            {
                const float want = static_cast<float>((resized.at<cv::Vec3b>(y, x)[2 - c] - s.mean[c]) / s.std[c]);
                ASSERT_NEAR(blob.at<float>(cv::Vec4i(0, c, y, x)), want, 1e-5);
            }
}

TEST(VisionFoundationModel, BadInputsGiveClearErrors)
{
    cv::Ptr<VisionFoundationModel> vfm = tinyVit();
    cv::Mat features;
    naf_test::expectRefused([&] { vfm->extract(cv::Mat(), features); }, {"empty"});
    naf_test::expectRefused([&] { vfm->extract(cv::Mat(10, 10, CV_8UC1, cv::Scalar(0)), features); }, {"CV_8UC3", "CV_8UC1"});
    naf_test::expectRefused([&] { vfm->extract(cv::Mat(10, 10, CV_32FC3, cv::Scalar(0)), features); }, {"CV_32FC3"});
    naf_test::expectRefused([&] { vfm->extract(cv::Mat(1, 10, CV_8UC3, cv::Scalar(0)), features); }, {"2x2", "10x1"});
    const int dims3[3] = {4, 4, 4};
    naf_test::expectRefused([&] { vfm->extract(cv::Mat(3, dims3, CV_8UC3, cv::Scalar(0)), features); },
                            {"2-D", "got 3 dimensions"});
    EXPECT_TRUE(features.empty());  // nothing written on failure
    VfmSpec spec = vfm->getSpec();
    spec.channels = 33;  // registry disagrees with the network
    cv::Ptr<VisionFoundationModel> wrong = VisionFoundationModel::create(spec);
    naf_test::expectRefused([&] { wrong->extract(naf_test::randomImage(8, 8, 0), features); }, {"1 x 32 x 8 x 8", "1 x 33 x 8 x 8"});
    spec = vfm->getSpec();
    spec.stride = 5;
    naf_test::expectRefused([&] { VisionFoundationModel::create(spec); }, {"stride 5", "64"});
    // The registry loader's bounds hold for a spec built in code too (a std of 1e-300 gave
    // all-NaN features without an error).
    for (const auto& meanStd : {std::make_pair(0.0, 1e-300), std::make_pair(1e300, 1.0), std::make_pair(0.0, 1e7)})
    {
        spec = vfm->getSpec();
        spec.mean[1] = meanStd.first;
        spec.std[1] = meanStd.second;
        naf_test::expectRefused([&] { VisionFoundationModel::create(spec); }, {"mean/std of channel 1", "[1e-6, 1e6]"});
    }
    spec = vfm->getSpec();
    spec.channels = (1 << 20) + 1;
    naf_test::expectRefused([&] { VisionFoundationModel::create(spec); }, {"channels 1048577"});
}

// ---------------------------------------------------------------- MobileSAM on a real photo

// Cosine between `features` (1 x C x h x w, the valid cells of an extract) and the same cells of the
// reference's full grid (1 x C x H x W, H >= h, W >= w); NaN when a value is not finite.
double cosineOverValidCells(const cv::Mat& features, const cv::Mat& reference)
{
    double dot = 0, na = 0, nb = 0;
    for (int c = 0; c < features.size[1]; ++c)
        for (int y = 0; y < features.size[2]; ++y)
            for (int x = 0; x < features.size[3]; ++x)
            {
                const double a = features.at<float>(cv::Vec4i(0, c, y, x));
                const double b = reference.at<float>(cv::Vec4i(0, c, y, x));
                if (!std::isfinite(a)) return std::numeric_limits<double>::quiet_NaN();
                dot += a * b, na += a * a, nb += b * b;
            }
    return dot / std::sqrt(na * nb);
}

// The exported ViT with cv::naf's GELU and Softmax layers (the default) and the same ViT on cv::dnn's
// own layers (--no-naf-layers) give the same features to float rounding, and the first really
// runs the naf layers.
TEST(VisionFoundationModel, NafLayersGiveThePlainLayersFeatures)
{
    cv::naf::registerLayers();
    cv::dnn::Net withLayers = cv::dnn::readNetFromONNX(vfmTestDir() + "/tiny_vit.onnx");
    cv::dnn::Net plain = cv::dnn::readNetFromONNX(vfmTestDir() + "/tiny_vit_plain.onnx");
    std::vector<cv::String> types;
    withLayers.getLayerTypes(types);
    EXPECT_EQ(std::count(types.begin(), types.end(), "NafGelu"), 1) << "one type, two layers";
    EXPECT_EQ(std::count(types.begin(), types.end(), "NafSoftmax"), 1);
    EXPECT_EQ(withLayers.getLayersCount("NafGelu"), 2);  // depth 2
    EXPECT_EQ(withLayers.getLayersCount("NafSoftmax"), 2);
    EXPECT_EQ(plain.getLayersCount("NafGelu"), 0);
    const int shape[4] = {1, 3, 64, 64};
    cv::Mat input(4, shape, CV_32F);
    cv::randn(input, 0, 1);
    cv::Mat a, b;
    withLayers.setInput(input);
    withLayers.forward(a, "features");
    plain.setInput(input);
    plain.forward(b, "features");
    ASSERT_EQ(a.total(), b.total());
    EXPECT_LT(naf_test::relativeL2(a.reshape(1, 1), b.reshape(1, 1)), 1e-5);
}

// extract() reports as each cv::naf layer of the graph starts (cv::dnn runs them on the calling
// thread), and a cancel stops the forward there, leaving the outputs as they were.
TEST(VisionFoundationModel, ExtractReportsProgressFromItsLayersAndStopsWhenCancelled)
{
    cv::Ptr<VisionFoundationModel> vfm = tinyVit();
    cv::dnn::Net net = cv::dnn::readNetFromONNX(vfm->getSpec().onnxPath);
    int nafLayers = 0;
    for (const char* type : {"NafGelu", "NafSoftmax", "NafMatMul", "NafLayerNorm", "NafConv1x1"})
        nafLayers += net.getLayersCount(type);
    ASSERT_GE(nafLayers, 4) << "the tiny ViT fixture lost its cv::naf layers";
    EXPECT_EQ(vfm->getProgressSteps(), nafLayers);
    EXPECT_FALSE(vfm->getProgressCallback());

    const cv::Mat image = naf_test::randomImage(40, 64, 3);
    cv::Mat reference;
    vfm->extract(image, reference);

    const std::thread::id caller = std::this_thread::get_id();
    std::vector<double> fractions;
    bool onCaller = true;
    vfm->setProgressCallback([&](double f) {
        fractions.push_back(f);
        onCaller = onCaller && std::this_thread::get_id() == caller;
        return true;
    });
    EXPECT_TRUE(vfm->getProgressCallback());
    for (int call = 0; call < 2; ++call)  // the first spaces the reports evenly, the second by the first's times
    {
        fractions.clear();
        cv::Mat features;
        vfm->extract(image, features);
        EXPECT_EQ(cv::norm(features, reference, cv::NORM_INF), 0.0) << "call " << call;
        ASSERT_EQ(fractions.size(), static_cast<size_t>(nafLayers) + 2) << "call " << call;
        EXPECT_EQ(fractions.front(), 0.0);
        EXPECT_EQ(fractions.back(), 1.0);
        for (size_t i = 1; i < fractions.size(); ++i) EXPECT_GE(fractions[i], fractions[i - 1]) << "call " << call;
        if (call == 0)
            for (int k = 1; k <= nafLayers; ++k) EXPECT_DOUBLE_EQ(fractions[k], static_cast<double>(k) / (nafLayers + 1));
        else
        {
            EXPECT_LT(fractions[nafLayers], 1.0) << "the last layer's own time is still ahead of its report";
            // Timed, not even: the layers' times differ (a product against a GELU).
            int even = 0;
            for (int k = 1; k <= nafLayers; ++k) even += fractions[k] == static_cast<double>(k) / (nafLayers + 1);
            EXPECT_LT(even, nafLayers) << "the second call did not use the first one's timings";
        }
    }
    EXPECT_TRUE(onCaller) << "the callback ran on another thread";

    // Cancel at the third report: that layer does not run, nothing is written, no more reports.
    cv::Mat untouched(2, 3, CV_32F, cv::Scalar(7));
    const float* before = untouched.ptr<float>();
    VfmGeometry geometry;
    geometry.scale = -1;
    int reports = 0;
    vfm->setProgressCallback([&](double) { return ++reports != 3; });
    EXPECT_EQ(naf_test::expectRefused([&] { vfm->extract(image, untouched, &geometry); },
                                      {"tiny_vit", "cancelled by the progress callback at"}),
              cv::Error::StsError);
    EXPECT_EQ(reports, 3);
    EXPECT_EQ(untouched.ptr<float>(), before);
    EXPECT_EQ(cv::norm(untouched, cv::Mat(2, 3, CV_32F, cv::Scalar(7)), cv::NORM_INF), 0.0);
    EXPECT_EQ(geometry.scale, -1);

    // The callback's own exception leaves as itself, from inside cv::dnn's forward.
    vfm->setProgressCallback([&](double f) -> bool {
        if (f > 0) throw std::runtime_error("the viewer closed");
        return true;
    });
    EXPECT_THROW(vfm->extract(image, untouched), std::runtime_error);
    // ... a cv::Exception of its own too (forwardNet's wrapping of cv::dnn's errors let it
    // through before, prefixed with the model's name and input size), with its code and text.
    for (double at : {0.0, 0.5, 1.0})
    {
        vfm->setProgressCallback([&](double f) -> bool {
            if (f >= at) CV_Error(cv::Error::StsAutoTrace, "the caller's own reason");
            return true;
        });
        try
        {
            vfm->extract(image, untouched);
            ADD_FAILURE() << "no exception at " << at;
        }
        catch (const cv::Exception& e)
        {
            EXPECT_EQ(e.code, cv::Error::StsAutoTrace) << at;
            EXPECT_EQ(e.err, "the caller's own reason") << at;
        }
        EXPECT_EQ(untouched.ptr<float>(), before);
    }

    // A cancel at the final report (1) still cancels.
    vfm->setProgressCallback([&](double f) { return f < 1.0; });
    naf_test::expectRefused([&] { vfm->extract(image, untouched); }, {"cancelled", "at 100 %"});

    // An extract() run from inside a callback (another model, same thread) reports only to its
    // own callback, and a model without one reports to nobody.
    cv::Ptr<VisionFoundationModel> inner = tinyVit();
    int outerReports = 0, innerReports = 0;
    inner->setProgressCallback([&](double) { return ++innerReports > 0; });
    cv::Ptr<VisionFoundationModel> silent = tinyVit();
    vfm->setProgressCallback([&](double f) {
        ++outerReports;
        if (f > 0 && f < 1 && innerReports == 0)
        {
            cv::Mat innerFeatures;
            inner->extract(image, innerFeatures);
            silent->extract(image, innerFeatures);
        }
        return true;
    });
    cv::Mat outerFeatures;
    vfm->extract(image, outerFeatures);
    EXPECT_EQ(outerReports, nafLayers + 2);
    EXPECT_EQ(innerReports, nafLayers + 2);
    EXPECT_EQ(cv::norm(outerFeatures, reference, cv::NORM_INF), 0.0);

    // The caller's own cv::dnn forward of a graph with cv::naf layers, inside the callback,
    // reports nothing to this extract() (it re-entered the callback, 2 x the reports before).
    cv::dnn::Net own = cv::dnn::readNet(VfmRegistry::find("tiny_vit", tinyRegistry()).onnxPath);
    cv::Mat blob;
    vfm->preprocess(image, blob);
    int ownReports = 0, depth = 0, deepest = 0;
    vfm->setProgressCallback([&](double) {
        ++ownReports;
        deepest = std::max(deepest, ++depth);
        own.setInput(blob);
        own.forward();
        --depth;
        return true;
    });
    vfm->extract(image, outerFeatures);
    EXPECT_EQ(ownReports, nafLayers + 2);
    EXPECT_EQ(deepest, 1);
    EXPECT_EQ(cv::norm(outerFeatures, reference, cv::NORM_INF), 0.0);

    // extract() on this same object from its callback would replace the net's input mid-forward
    // (wrong features, no error before): refused, and the outer call stops with that refusal.
    vfm->setProgressCallback([&](double f) {
        if (f > 0 && f < 1)
        {
            cv::Mat nested;
            vfm->extract(image, nested);
        }
        return true;
    });
    cv::Mat kept = reference.clone();
    naf_test::expectRefused([&] { vfm->extract(image, kept); }, {"tiny_vit", "extract() called while"});
    EXPECT_EQ(cv::norm(kept, reference, cv::NORM_INF), 0.0);

    // The object is usable after all of that, with and without a callback.
    vfm->setProgressCallback(cv::naf::ProgressCallback());
    cv::Mat after;
    vfm->extract(image, after);
    EXPECT_EQ(cv::norm(after, reference, cv::NORM_INF), 0.0);
}

// A graph without cv::naf layers reports only its ends: 0, then 1.
TEST(VisionFoundationModel, PlainGraphReportsOnlyTheStartAndTheEnd)
{
    VfmSpec spec = VfmRegistry::find("tiny_vit", tinyRegistry());
    spec.onnxPath = vfmTestDir() + "/tiny_vit_plain.onnx";
    cv::Ptr<VisionFoundationModel> vfm = VisionFoundationModel::create(spec);
    EXPECT_EQ(vfm->getProgressSteps(), 0);
    std::vector<double> fractions;
    vfm->setProgressCallback([&](double f) {
        fractions.push_back(f);
        return true;
    });
    cv::Mat features;
    vfm->extract(naf_test::randomImage(40, 64, 3), features);
    EXPECT_EQ(fractions, (std::vector<double>{0.0, 1.0}));
    EXPECT_EQ(features.size[1], 32);
}

TEST(VisionFoundationModel, MobileSamMatchesTheOriginalGraphOnARealPhoto)
{
    const VfmSpec spec = VfmRegistry::find("mobilesam");
    if (!cv::utils::fs::exists(spec.onnxPath))
        GTEST_SKIP() << "MobileSAM not fetched (" << spec.onnxPath << " missing; run " << spec.fetchCommand << ")";
    const std::string refPath = vfmTestDir() + "/mobilesam_bus_reference.safetensors";
    ASSERT_TRUE(cv::utils::fs::exists(refPath)) << "the model is fetched but the reference fixture wrote no " << refPath;
    const auto ref = cv::naf::detail::SafetensorsFile::read(refPath);
    const cv::Mat refInput = ref.mat("input"), refFeatures = ref.mat("features");

    const cv::Mat image = cv::imread(std::string(NAF_SAMPLE_DATA_DIR) + "/coco_000000000471_bus.jpg");
    ASSERT_FALSE(image.empty());
    cv::Ptr<VisionFoundationModel> vfm = VisionFoundationModel::create(spec);
    cv::Mat blob;
    vfm->preprocess(image, blob);
    ASSERT_EQ(blob.total(), refInput.total());
    EXPECT_LT(naf_test::relativeL2(blob.reshape(1, 1), refInput.reshape(1, 1)), 1e-6);

    cv::Mat features;
    VfmGeometry g;
    const auto t0 = std::chrono::steady_clock::now();
    vfm->extract(image, features, &g);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "MobileSAM extract at 1024, " << cv::getNumThreads() << " threads: " << ms << " ms\n";
    EXPECT_EQ(g.validCells, cv::Rect(0, 0, std::stoi(ref.metadata().at("valid_cells_w")),
                                     std::stoi(ref.metadata().at("valid_cells_h"))));
    ASSERT_EQ(features.size[1], 256);
    const double cosine = cosineOverValidCells(features, refFeatures);
    std::cout << "cosine(cv::dnn converted graph, numpy original graph) = " << std::setprecision(8) << cosine << "\n";
    EXPECT_GE(cosine, 0.9999);
}

// The second shipped entry reads an inner layer of the same graph (the TinyViT trunk before the SAM
// neck): the zero-shot feature source of docs/EVALUATION.md, metric 3.
TEST(VisionFoundationModel, MobileSamTrunkEntryMatchesTheOriginalGraphsInnerLayer)
{
    const VfmSpec spec = VfmRegistry::find("mobilesam_trunk");
    EXPECT_EQ(spec.channels, 320);
    EXPECT_EQ(spec.onnxPath, VfmRegistry::find("mobilesam").onnxPath);
    if (!cv::utils::fs::exists(spec.onnxPath))
        GTEST_SKIP() << "MobileSAM not fetched (" << spec.onnxPath << " missing; run " << spec.fetchCommand << ")";
    const auto ref = cv::naf::detail::SafetensorsFile::read(vfmTestDir() + "/mobilesam_bus_reference.safetensors");
    ASSERT_TRUE(ref.has("extra:/Transpose_output_0")) << "the reference fixture saved no trunk output";
    const cv::Mat refTrunk = ref.mat("extra:/Transpose_output_0");
    const cv::Mat image = cv::imread(std::string(NAF_SAMPLE_DATA_DIR) + "/coco_000000000471_bus.jpg");
    ASSERT_FALSE(image.empty());
    cv::Mat features;
    VfmGeometry g;
    cv::Ptr<VisionFoundationModel> trunk = VisionFoundationModel::create(spec);
    // The trunk's forward stops before the neck: only the cv::naf layers before its output report.
    const int steps = trunk->getProgressSteps();
    EXPECT_GT(steps, 0);
    EXPECT_LT(steps, VisionFoundationModel::create(VfmRegistry::find("mobilesam"))->getProgressSteps());
    int reports = 0;
    trunk->setProgressCallback([&](double) { return ++reports > 0; });
    trunk->extract(image, features, &g);
    EXPECT_EQ(reports, steps + 2);
    ASSERT_EQ(features.dims, 4);
    ASSERT_EQ(features.size[1], 320);
    ASSERT_EQ(refTrunk.dims, 4);
    ASSERT_EQ(refTrunk.size[1], 320);
    const double cosine = cosineOverValidCells(features, refTrunk);
    std::cout << "trunk: cosine(cv::dnn, numpy original graph) = " << std::setprecision(8) << cosine << "\n";
    EXPECT_GE(cosine, 0.9999);
}

}  // namespace
