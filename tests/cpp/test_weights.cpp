// Weight files: the good one loads; every kind of damage is refused with a clear message.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <limits>

#include <nlohmann/json.hpp>
#include <opencv2/dnn.hpp>
#include <opencv2/dnn/shape_utils.hpp>
#include <opencv2/naf.hpp>

#include "safetensors.hpp"
#include "weights.hpp"
#include "test_support.hpp"

using cv::naf::detail::SafetensorsFile;

namespace {

std::vector<uint8_t> readBytes(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string writeTemp(const std::vector<uint8_t>& bytes, const std::string& name)
{
    const std::string path = cv::tempfile(name.c_str());
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return path;
}

// The golden weights split into header JSON and data section, to be edited and reassembled.
struct Parts
{
    nlohmann::json header;
    std::vector<uint8_t> data;

    Parts()
    {
        const std::vector<uint8_t> bytes = readBytes(naf_test::goldenWeights());
        uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
        header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n));
        data.assign(bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n), bytes.end());
    }

    std::vector<uint8_t> bytes() const
    {
        const std::string h = header.dump();
        std::vector<uint8_t> out;
        out.reserve(8 + h.size() + data.size());
        for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>((static_cast<uint64_t>(h.size()) >> (8 * i)) & 0xff));
        out.insert(out.end(), h.begin(), h.end());
        out.insert(out.end(), data.begin(), data.end());
        return out;
    }
};

void expectRejected(const std::vector<uint8_t>& bytes, const std::string& fragment)
{
    const std::string path = writeTemp(bytes, ".safetensors");
    // The message says what is wrong and names the file.
    naf_test::expectRefused([&] { cv::naf::NAF::create(path); }, {fragment, path});
    std::remove(path.c_str());
}

}  // namespace

TEST(Weights, GoldenFileLoadsAndSaysWhatItIs)
{
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create(naf_test::goldenWeights());
    EXPECT_FALSE(naf->isTrained());
    EXPECT_NE(naf->getWeightsInfo().find("random-init"), std::string::npos) << naf->getWeightsInfo();
    EXPECT_NE(naf->getWeightsInfo().find("NOT TRAINED"), std::string::npos) << naf->getWeightsInfo();
    EXPECT_EQ(naf->getKernelSize(), 9);
    EXPECT_NE(naf->getWeightsMetadata().find("\"heads_attn\""), std::string::npos);
}

TEST(Weights, RoundTripThroughOurReassemblyStillLoads)
{
    const std::string path = writeTemp(Parts().bytes(), ".safetensors");
    EXPECT_NO_THROW(cv::naf::NAF::create(path));
    std::remove(path.c_str());
}

TEST(Weights, MissingFile)
{
    naf_test::expectRefused([] { cv::naf::NAF::create("/nonexistent/dir/naf.safetensors"); },
                            {"cannot open", "/nonexistent/dir/naf.safetensors"});
}

TEST(Weights, DamagedFilesAreRejected)
{
    const std::vector<uint8_t> good = readBytes(naf_test::goldenWeights());
    ASSERT_GT(good.size(), 1000u);

    expectRejected(std::vector<uint8_t>(good.begin(), good.begin() + 5), "fewer than the 8-byte");
    expectRejected(std::vector<uint8_t>(good.begin(), good.end() - 1000), "outside");  // truncated data
    {
        std::vector<uint8_t> b = good;
        b[6] = 0x7f;  // absurd header length
        expectRejected(b, "header length");
    }
    {
        std::vector<uint8_t> b = good;
        b[8] = '#';  // header is no longer JSON
        expectRejected(b, "not JSON");
    }
    {
        Parts p;
        p.header.erase("image_encoder.sem_encoder.2.conv2.bias");
        expectRejected(p.bytes(), "missing tensor 'image_encoder.sem_encoder.2.conv2.bias'");
    }
    {
        Parts p;
        p.header["image_encoder.encoder.1.norm1.weight"]["dtype"] = "I32";
        expectRejected(p.bytes(), "dtype I32");
    }
    {
        Parts p;
        p.header["image_encoder.encoder.1.norm1.weight"]["shape"] = {64, 2};
        expectRejected(p.bytes(), "shape [64, 2], expected [128]");
    }
    {
        Parts p;
        p.header["extra.weight"] = p.header["image_encoder.rope.periods"];
        expectRejected(p.bytes(), "overlap");
    }
    {
        Parts p;
        auto off = p.header["image_encoder.rope.periods"]["data_offsets"];
        p.header["image_encoder.rope.periods"]["data_offsets"] = {off[0].get<uint64_t>() + 4, off[1].get<uint64_t>() + 4};
        expectRejected(p.bytes(), "periods");
    }
    {
        Parts p;
        p.header["__metadata__"].erase("naf_config");
        expectRejected(p.bytes(), "naf_config");
    }
    {
        Parts p;
        p.header["__metadata__"]["naf_config"] = "{\"dim\": 256}";
        expectRejected(p.bytes(), "heads_attn");
    }
    {
        Parts p;
        nlohmann::json cfg = nlohmann::json::parse(p.header["__metadata__"]["naf_config"].get<std::string>());
        cfg["dim"] = 18446744073709551615ull;  // was reported as -1
        p.header["__metadata__"]["naf_config"] = cfg.dump();
        expectRejected(p.bytes(), "'dim' = 18446744073709551615 is outside");
    }
    {
        Parts p;
        p.header["__metadata__"]["format"] = "something-else";
        expectRejected(p.bytes(), "format");
    }
    {
        Parts p;
        const uint64_t begin = p.header["image_encoder.encoder.0.bias"]["data_offsets"][0].get<uint64_t>();
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::memcpy(p.data.data() + begin, &nan, sizeof(float));
        expectRejected(p.bytes(), "NaN or Inf");
    }
    // RoPE divides by its periods: zero or subnormal ones loaded and gave an all-zero output.
    for (const float period : {0.f, 1e-45f, -2.f})
    {
        Parts p;
        const uint64_t begin = p.header["image_encoder.rope.periods"]["data_offsets"][0].get<uint64_t>();
        std::memcpy(p.data.data() + begin + sizeof(float), &period, sizeof(float));
        std::ostringstream value;
        value << period;
        expectRejected(p.bytes(), "RoPE period #1 is " + value.str());
    }
}

// Embedded weights (ONNX initializers): each tensor must have its exact shape, not just the
// element count (a transposed initializer loaded and ran with scrambled weights).
TEST(Weights, EmbeddedTensorsNeedTheirExactShape)
{
    const SafetensorsFile file = SafetensorsFile::read(naf_test::goldenWeights());
    std::map<std::string, cv::Mat> tensors;
    for (const auto& t : file.tensors()) tensors[t.first] = file.mat(t.first);
    // cv::dnn holds 1-D initializers as 2-D rows: still accepted.
    const std::string bias = "image_encoder.encoder.0.bias";
    tensors[bias] = tensors[bias].reshape(1, 1);
    ASSERT_EQ(tensors[bias].dims, 2);
    EXPECT_NO_THROW(cv::naf::detail::weightsFromTensors(tensors, "embedded test"));
    // A 4-D weight with its dimensions reversed has the right count but the wrong shape.
    const std::string conv = "image_encoder.encoder.0.weight";
    const cv::Mat good = tensors[conv];
    ASSERT_EQ(good.dims, 4);
    const int reversed[4] = {good.size[3], good.size[2], good.size[1], good.size[0]};
    tensors[conv] = good.reshape(1, 4, reversed);
    naf_test::expectRefused([&] { cv::naf::detail::weightsFromTensors(tensors, "embedded test"); },
                            {"embedded test", conv, "has shape [" + std::to_string(reversed[0]), "expected [" +
                                                                                                  std::to_string(good.size[0])});
}

// Embedded weights of a non-default config: the node's 'naf_config' attribute carries it (the
// layer used the default config, so image mean/std, groups and heads were silently lost), and
// without a 'kernel_size' attribute the config's kernel size stays (it was forced to 9).
TEST(Weights, EmbeddedWeightsKeepTheirConfigThroughTheDnnLayer)
{
    const SafetensorsFile file = SafetensorsFile::read(naf_test::goldenWeights());
    std::map<std::string, cv::Mat> tensors;
    for (const auto& t : file.tensors()) tensors[t.first] = file.mat(t.first);
    nlohmann::json cfg = nlohmann::json::parse(file.metadata().at("naf_config"));
    cfg["image_mean"] = {0.5, 0.5, 0.5};
    cfg["image_std"] = {0.25, 0.25, 0.25};
    cfg["num_groups"] = 16;
    cfg["heads_attn"] = 8;
    cfg["kernel_size"] = 5;
    std::map<std::string, std::string> metadata = file.metadata();
    metadata["naf_config"] = cfg.dump();
    const std::string path = cv::tempfile(".safetensors");
    {
        const std::vector<uint8_t> bytes = cv::naf::detail::serializeSafetensors(tensors, metadata);
        std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    }
    const cv::Ptr<cv::naf::NAF> reference = cv::naf::NAF::create(path);
    ASSERT_EQ(reference->getKernelSize(), 5);
    const cv::Mat image = naf_test::randomBlob(1, 3, 30, 38, 4, 0.f, 1.f);
    const cv::Mat feats = naf_test::randomBlob(1, 16, 6, 7, 5);
    cv::Mat expected;
    reference->upsampleBlob(image, feats, expected, cv::Size(23, 19));

    cv::naf::registerLayers();
    auto layerOutput = [&](const std::function<void(cv::dnn::LayerParams&)>& edit) {
        cv::dnn::LayerParams p;
        p.name = "embedded";
        p.set("output_height", 19);
        p.set("output_width", 23);
        std::string names;
        for (const auto& t : tensors)
        {
            p.blobs.push_back(t.second);
            names += (names.empty() ? "" : ",") + t.first;
        }
        p.set("weight_names", cv::String(names));
        edit(p);
        cv::Ptr<cv::dnn::Layer> layer = cv::dnn::LayerFactory::createLayerInstance("naf.NAF", p);
        std::vector<cv::Mat> inputs{image, feats}, outputs(1), internals;
        std::vector<cv::dnn::MatShape> outShapes, internalShapes;
        layer->getMemoryShapes({cv::dnn::shape(image), cv::dnn::shape(feats)}, 1, outShapes, internalShapes);
        outputs[0].create(outShapes[0], CV_32F);
        layer->forward(inputs, outputs, internals);
        return outputs[0];
    };
    const cv::Mat withConfig = layerOutput([&](cv::dnn::LayerParams& p) { p.set("naf_config", cv::String(cfg.dump())); });
    EXPECT_LE(naf_test::relativeL2(withConfig, expected), 1e-6);
    const cv::Mat withoutConfig = layerOutput([](cv::dnn::LayerParams&) {});
    EXPECT_GT(naf_test::relativeL2(withoutConfig, expected), 1e-3) << "the config must matter in this test";

    nlohmann::json even = cfg;
    even["kernel_size"] = 4;
    naf_test::expectRefused([&] { layerOutput([&](cv::dnn::LayerParams& p) { p.set("naf_config", cv::String(even.dump())); }); },
                            {"ONNX node 'embedded'", "kernel_size 4 is even"});
    naf_test::expectRefused([&] { layerOutput([](cv::dnn::LayerParams& p) { p.set("naf_config", 3); }); },
                            {"'naf_config' must be a string"});
    naf_test::expectRefused([&] {
        cv::dnn::LayerParams p;
        p.name = "filed";
        p.set("output_height", 19);
        p.set("output_width", 23);
        p.set("weights_path", path);
        p.set("naf_config", cv::String(cfg.dump()));
        cv::dnn::LayerFactory::createLayerInstance("naf.NAF", p);
    }, {"'naf_config' goes with embedded weights only"});
    std::remove(path.c_str());
}

TEST(Safetensors, WriterIsTheInverseOfTheReader)
{
    cv::Mat image(5, 7, CV_8UC3), blob = naf_test::randomBlob(1, 3, 4, 6, 11), column(9, 1, CV_32F), index(2, 3, CV_32S);
    cv::randu(image, 0, 256);
    cv::randu(column, -1.f, 1.f);
    cv::randu(index, -100, 100);
    const std::vector<uint8_t> bytes = cv::naf::detail::serializeSafetensors(
        {{"image", image}, {"blob", blob}, {"column", column}, {"index", index}}, {{"key", "value"}});
    const SafetensorsFile file = SafetensorsFile::parse(bytes, "round trip");
    EXPECT_EQ(file.metadata().at("key"), "value");
    EXPECT_EQ(file.tensor("image").shape, (std::vector<int64_t>{5, 7, 3}));
    EXPECT_EQ(file.tensor("column").shape, (std::vector<int64_t>{9}));
    EXPECT_EQ(file.tensor("index").dtype, "I32");
    EXPECT_EQ(0, std::memcmp(file.data("image"), image.data, image.total() * image.elemSize()));
    EXPECT_EQ(cv::norm(file.mat("blob").reshape(1, 1), blob.reshape(1, 1), cv::NORM_INF), 0.0);
    EXPECT_EQ(cv::norm(file.mat("column"), column, cv::NORM_INF), 0.0);
    EXPECT_EQ(cv::norm(file.mat("index"), index, cv::NORM_INF), 0.0);
    naf_test::expectRefused([] { cv::naf::detail::serializeSafetensors({{"bad", cv::Mat(2, 2, CV_64F)}}, {}); },
                            {"'bad'"});
}
