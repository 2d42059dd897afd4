// Hostile inputs, limits and concurrency (docs/RELIABILITY.md has the table of what each test
// covers): damaged and malicious weight files, the memory budget, overflow-prone sizes, the
// data checksum, and one NAF object shared by many threads.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>
#include <opencv2/dnn.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/naf.hpp>

#include "sha256.hpp"
#include "test_support.hpp"

#if defined(NAF_HAVE_CUDA)
#include <cuda_runtime_api.h>  // to take the device's memory (DeviceMemoryTaken)
#endif

using naf_test::expectRefused;
using naf_test::randomBlob;
using naf_test::randomImage;

namespace {

std::string seedWeights(const char* name) { return std::string(NAF_FUZZ_CORPUS_DIR) + "/weights/" + name; }

std::vector<uint8_t> readBytes(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Writes bytes to a temporary file, removed when the object goes.
struct TempFile
{
    std::string path;
    explicit TempFile(const std::vector<uint8_t>& bytes) : path(cv::tempfile(".safetensors"))
    {
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    }
    ~TempFile() { std::remove(path.c_str()); }
};

std::vector<uint8_t> withHeader(const std::string& header, const std::vector<uint8_t>& data = {})
{
    std::vector<uint8_t> out;
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>((static_cast<uint64_t>(header.size()) >> (8 * i)) & 0xff));
    out.insert(out.end(), header.begin(), header.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

// Splits a safetensors file into its header JSON and data section.
std::pair<nlohmann::json, std::vector<uint8_t>> split(const std::vector<uint8_t>& bytes)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
    const auto headerEnd = bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n);
    return {nlohmann::json::parse(bytes.begin() + 8, headerEnd), std::vector<uint8_t>(headerEnd, bytes.end())};
}

void expectFileRefused(const std::vector<uint8_t>& bytes, std::initializer_list<std::string> fragments)
{
    TempFile f(bytes);
    expectRefused([&] { cv::naf::NAF::create(f.path); }, fragments);
}

#if defined(NAF_HAVE_CUDA)
// Takes the device's free memory but about `leaveFree` bytes (in blocks of 1 GiB down to 1 MiB),
// as another process would; gives it back when the object goes.
struct DeviceMemoryTaken
{
    std::vector<void*> blocks;
    explicit DeviceMemoryTaken(size_t leaveFree)
    {
        for (size_t block = size_t(1) << 30; block >= (size_t(1) << 20);)
        {
            size_t freeBytes = 0, totalBytes = 0;
            void* p = nullptr;
            if (cudaMemGetInfo(&freeBytes, &totalBytes) != cudaSuccess || freeBytes < leaveFree + block ||
                cudaMalloc(&p, block) != cudaSuccess)
            {
                (void)cudaGetLastError();
                block /= 2;
                continue;
            }
            blocks.push_back(p);
        }
    }
    ~DeviceMemoryTaken()
    {
        for (void* p : blocks) (void)cudaFree(p);
    }
    static size_t freeBytes()
    {
        size_t freeBytes = 0, totalBytes = 0;
        return cudaMemGetInfo(&freeBytes, &totalBytes) == cudaSuccess ? freeBytes : 0;
    }
};
#endif

// Restores the default memory budget when a test ends.
struct BudgetGuard
{
    ~BudgetGuard() { cv::naf::NAF::setMemoryBudget(0); }
};

}  // namespace

// ---- SHA-256 ---------------------------------------------------------------------------------

TEST(Sha256, MatchesTheFipsTestVectors)
{
    using cv::naf::detail::sha256Hex;
    auto hex = [](const std::string& s) { return sha256Hex(reinterpret_cast<const uint8_t*>(s.data()), s.size()); };
    EXPECT_EQ(hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    // One million 'a', fed in uneven pieces to exercise the block buffering.
    cv::naf::detail::Sha256 s;
    const std::string chunk(997, 'a');
    size_t fed = 0;
    while (fed < 1000000)
    {
        const size_t n = std::min<size_t>(chunk.size() - (fed % 13), 1000000 - fed);
        s.update(reinterpret_cast<const uint8_t*>(chunk.data()), n);
        fed += n;
    }
    EXPECT_EQ(s.hexDigest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// ---- weights checksum ------------------------------------------------------------------------

TEST(WeightsChecksum, FileWrittenByThePythonToolsIsVerified)
{
    // fuzz/corpus/weights/tiny_valid_sha256: tools/naf_reference.py save_weights (dim 8) with data_sha256.
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create(seedWeights("tiny_valid_sha256"));
    EXPECT_NE(naf->getWeightsInfo().find("data sha256 verified"), std::string::npos) << naf->getWeightsInfo();
    cv::Mat out;
    naf->upsample(randomImage(12, 10, 1), randomBlob(1, 4, 3, 2, 2), out, cv::Size(5, 6));
    EXPECT_EQ(out.size[1], 4);
    EXPECT_TRUE(cv::checkRange(out));
}

TEST(WeightsChecksum, FilesWithoutChecksumStillLoadAndSaySo)
{
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create(naf_test::goldenWeights());
    EXPECT_NE(naf->getWeightsInfo().find("data not checksummed"), std::string::npos) << naf->getWeightsInfo();
}

TEST(WeightsChecksum, TamperedOrMalformedChecksumIsRejected)
{
    const std::vector<uint8_t> good = readBytes(seedWeights("tiny_valid_sha256"));
    ASSERT_GT(good.size(), 1000u);
    {
        // Lowest mantissa bit of the last float: still finite, same sizes; only the digest can tell.
        std::vector<uint8_t> bad = good;
        bad[bad.size() - 4] ^= 0x01;
        expectFileRefused(bad, {"SHA-256", "tampered"});
    }
    {
        auto parts = split(good);
        parts.first["__metadata__"]["data_sha256"] = "not-a-digest";
        expectFileRefused(withHeader(parts.first.dump(), parts.second), {"data_sha256", "64 lowercase hex"});
    }
}

// ---- hostile weight files --------------------------------------------------------------------

TEST(HostileWeights, ContainerAttacksAreRefused)
{
    const std::vector<uint8_t> golden = readBytes(naf_test::goldenWeights());
    {
        std::vector<uint8_t> b = golden;
        for (int i = 0; i < 8; ++i) b[i] = 0xff;  // header length 2^64 - 1
        expectFileRefused(b, {"header length 18446744073709551615"});
    }
    expectFileRefused({}, {"0 bytes"});
    // Header JSON (with an 8-byte data section) -> what the refusal must say.
    const std::vector<std::pair<std::string, std::string>> headers = {
        {"", "not JSON"},
        {"[1, 2]", "not a JSON object"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], \"data_offsets\": [0, 0]}}",
         "overflows"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 18446744073709551615]}}", "outside"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}", "outside"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [-8, 0]}}", "negative"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}", "non-negative"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2.5], \"data_offsets\": [0, 8]}}", "non-negative"},
        {"{\"t\": {\"dtype\": \"Q7\", \"shape\": [2], \"data_offsets\": [0, 8]}}", "unknown dtype 'Q7'"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [2]}}", "needs dtype"},
        {"{\"__metadata__\": {\"format\": 3}}", "not a string"},
    };
    for (const auto& h : headers) expectFileRefused(withHeader(h.first, std::vector<uint8_t>(8)), {h.second});
    expectFileRefused(withHeader("{\"t\": \"\xff\xfe\"}"), {"not JSON"});  // invalid UTF-8
}

TEST(HostileWeights, DeeplyNestedJsonIsRefusedWithoutStackOverflow)
{
    const int depth = 200000;
    const std::string nested = std::string(depth, '[') + std::string(depth, ']');
    expectFileRefused(withHeader("{\"t\": " + nested + "}"), {"needs dtype"});
    expectFileRefused(withHeader("{\"t\": " + std::string(depth, '[') + "}"), {"not JSON"});
    // Nested inside a metadata string that we parse as JSON (the provenance).
    auto parts = split(readBytes(seedWeights("tiny_valid_no_sha256")));
    parts.first["__metadata__"]["naf_provenance"] = "{\"source\": \"x\", \"trained\": false, \"seed\": " + nested + "}";
    TempFile f(withHeader(parts.first.dump(), parts.second));
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create(f.path);  // a strange seed is not an error, and not printed
    EXPECT_EQ(naf->getWeightsInfo().find("[["), std::string::npos);
}

TEST(HostileWeights, HugeConfigInASmallFileAllocatesNothing)
{
    BudgetGuard guard;
    // dim 4096 x 16 layers would be ~4.8 GB of tensors; the file holds none. It must be refused for
    // the missing tensors before any allocation: with a 1 MB budget the message is still that one.
    cv::naf::NAF::setMemoryBudget(1 << 20);
    auto parts = split(readBytes(seedWeights("tiny_valid_no_sha256")));
    nlohmann::json cfg = nlohmann::json::parse(parts.first["__metadata__"]["naf_config"].get<std::string>());
    cfg["dim"] = 4096;
    cfg["img_layers"] = 16;
    cfg["num_groups"] = 8;
    parts.first["__metadata__"]["naf_config"] = cfg.dump();
    expectFileRefused(withHeader(parts.first.dump(), parts.second),
                      {"'image_encoder.encoder.0.weight' has shape [4, 3, 1, 1], expected [2048, 3, 1, 1]"});
    nlohmann::json onlyMeta;
    onlyMeta["__metadata__"] = parts.first["__metadata__"];
    expectFileRefused(withHeader(onlyMeta.dump()), {"missing tensor 'image_encoder.encoder.0.weight'"});
}

TEST(HostileWeights, FileLargerThanTheBudgetIsRefusedBeforeReading)
{
    BudgetGuard guard;
    cv::naf::NAF::setMemoryBudget(1 << 20);
    const int code = expectRefused([] { cv::naf::NAF::create(naf_test::goldenWeights()); },
                                   {"needs 26", "memory budget of 1048576 bytes", "weights_seed0"});
    EXPECT_EQ(code, cv::Error::StsNoMem);
}

TEST(HostileWeights, OnlyRegularFilesAreOpened)
{
    expectRefused([] { cv::naf::NAF::create("/dev/zero"); }, {"not a regular file"});
    expectRefused([] { cv::naf::NAF::create(naf_test::goldenDir()); }, {"not a regular file"});
}

// ---- memory budget and size overflow ---------------------------------------------------------

TEST(MemoryBudget, DefaultIsSaneAndConfigurable)
{
    BudgetGuard guard;
    const size_t def = cv::naf::NAF::getMemoryBudget();
    EXPECT_GT(def, size_t(256) << 20);
    EXPECT_LE(def, size_t(8) << 30);
    cv::naf::NAF::setMemoryBudget(12345);
    EXPECT_EQ(cv::naf::NAF::getMemoryBudget(), 12345u);
    setenv("NAF_MEMORY_BUDGET", "3M", 1);
    cv::naf::NAF::setMemoryBudget(0);  // back to the default, which reads the environment
    EXPECT_EQ(cv::naf::NAF::getMemoryBudget(), size_t(3) << 20);
    setenv("NAF_MEMORY_BUDGET", "lots", 1);  // unparsable: ignored with a warning
    cv::naf::NAF::setMemoryBudget(0);
    EXPECT_EQ(cv::naf::NAF::getMemoryBudget(), def);
    unsetenv("NAF_MEMORY_BUDGET");
    cv::naf::NAF::setMemoryBudget(0);
    EXPECT_EQ(cv::naf::NAF::getMemoryBudget(), def);
}

TEST(MemoryBudget, HugeOutputsAreRefusedWithTheNumbersAndDstUntouched)
{
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::createRandom(1);
    const cv::Mat image = randomImage(32, 32, 1), feats = randomBlob(1, 8, 4, 4, 2);
    cv::Mat dst = cv::Mat::ones(2, 2, CV_8U);
    const std::string budget = std::to_string(cv::naf::NAF::getMemoryBudget());
    // 100000 x 100000 x 8 channels of float: 320 GB for the output alone.
    int code = expectRefused([&] { naf->upsample(image, feats, dst, cv::Size(100000, 100000)); },
                             {"needs", "bytes, more than the memory budget of " + budget, "1 x 8 x 100000x100000"});
    EXPECT_EQ(code, cv::Error::StsNoMem);
    // Products that overflow 32 bits are computed exactly; one that overflows 64 bits is refused.
    code = expectRefused([&] { naf->upsample(image, feats, dst, cv::Size(INT_MAX, 70000)); },
                         {"memory budget", "2147483647x70000"});
    EXPECT_EQ(code, cv::Error::StsNoMem);
    code = expectRefused([&] { naf->upsample(image, feats, dst, cv::Size(INT_MAX, INT_MAX)); },
                         {"overflows 64 bits", "2147483647x2147483647"});
    EXPECT_EQ(code, cv::Error::StsOutOfRange);
    code = expectRefused([&] { naf->upsampleBlob(randomBlob(1, 3, 8, 8, 3, 0.f, 1.f), feats, dst, cv::Size(50000, 50000)); },
                         {"upsampleBlob", "memory budget"});
    EXPECT_EQ(code, cv::Error::StsNoMem);
    EXPECT_EQ(dst.size(), cv::Size(2, 2));
    EXPECT_EQ(dst.type(), CV_8U);
}

TEST(MemoryBudget, SmallBudgetRefusesWhatALargerOneAllows)
{
    BudgetGuard guard;
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::createRandom(1);
    const cv::Mat image = randomImage(40, 52, 1), feats = randomBlob(1, 8, 5, 6, 2);
    cv::Mat dst;
    cv::naf::NAF::setMemoryBudget(1 << 20);
    expectRefused([&] { naf->upsample(image, feats, dst, cv::Size(26, 21)); }, {"memory budget of 1048576 bytes"});
    EXPECT_TRUE(dst.empty());
    cv::naf::NAF::setMemoryBudget(64 << 20);
    naf->upsample(image, feats, dst, cv::Size(26, 21));
    EXPECT_EQ(dst.size[3], 26);
}

// GPU only. A device without the memory for a call (here taken but 96 MiB; the call needs ~400
// MiB): BACKEND_AUTO runs it on the CPU, with the CPU's bits and progress that never goes back;
// BACKEND_CUDA refuses it (StsNoMem, what it needed, dst untouched); with the memory back, AUTO
// runs on the device again.
TEST(DeviceMemory, AutoRunsACallTheDeviceCannotHoldOnTheCpu)
{
    if (!cv::naf::isCudaAvailable()) GTEST_SKIP() << "no CUDA device";
#if !defined(NAF_HAVE_CUDA)
    FAIL() << "a CUDA device in a build without CUDA";
#else
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::createRandom(3);
    const cv::Mat image = randomImage(400, 480, 1), feats = randomBlob(1, 16, 10, 12, 2);
    const cv::Size out(480, 400);  // queries alone: 256 x 400 x 480 floats = 188 MiB
    cv::Mat onCpu, small;
    naf->setBackend(cv::naf::BACKEND_CPU);
    naf->upsample(image, feats, onCpu, out);
    naf->setBackend(cv::naf::BACKEND_AUTO);
    naf->upsample(image, feats, small, cv::Size(24, 20));  // the device engine exists before the memory goes
    EXPECT_EQ(naf->getActiveBackend(), cv::naf::BACKEND_CUDA);
    {
        DeviceMemoryTaken taken(size_t(96) << 20);
        ASSERT_LT(DeviceMemoryTaken::freeBytes(), size_t(128) << 20);
        std::vector<double> fractions;
        naf->setProgressCallback([&](double f) {
            fractions.push_back(f);
            return true;
        });
        cv::Mat autoDst;
        naf->upsample(image, feats, autoDst, out);
        EXPECT_EQ(naf->getActiveBackend(), cv::naf::BACKEND_CPU);
        EXPECT_EQ(cv::norm(onCpu.reshape(1, 1), autoDst.reshape(1, 1), cv::NORM_INF), 0.0);
        ASSERT_FALSE(fractions.empty());
        EXPECT_EQ(fractions.back(), 1.0);
        for (size_t i = 1; i < fractions.size(); ++i) EXPECT_GE(fractions[i], fractions[i - 1]) << "#" << i;
        naf->setProgressCallback(cv::naf::ProgressCallback());

        naf->setBackend(cv::naf::BACKEND_CUDA);
        const int sizes[4] = {1, 16, out.height, out.width};
        cv::Mat cudaDst(4, sizes, CV_32F, cv::Scalar(5));
        const int code = expectRefused([&] { naf->upsample(image, feats, cudaDst, out); },
                                       {"MiB of device memory", "MiB are free", "BACKEND_AUTO runs such a call on the CPU"});
        EXPECT_EQ(code, cv::Error::StsNoMem);
        EXPECT_EQ(cv::countNonZero(cudaDst.reshape(1, 1) != 5), 0);
    }
    naf->setBackend(cv::naf::BACKEND_AUTO);
    cv::Mat onDevice;
    naf->upsample(image, feats, onDevice, out);
    EXPECT_EQ(naf->getActiveBackend(), cv::naf::BACKEND_CUDA);
    EXPECT_LT(cv::norm(onCpu.reshape(1, 1), onDevice.reshape(1, 1), cv::NORM_L2) / cv::norm(onCpu.reshape(1, 1), cv::NORM_L2),
              1e-5);
#endif
}

// A photo much larger than the output makes the encoder run on up to 4x the output per side (as
// the official code does): a refusal then says so, and how many bytes images of the output's size
// would need; that number is right (such a call runs within it).
TEST(MemoryBudget, RefusalForALargeGuideSaysWhatAnOutputSizedImageNeeds)
{
    BudgetGuard guard;
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::createRandom(1);
    const cv::Mat photo = randomImage(400, 360, 1), feats = randomBlob(1, 8, 5, 5, 2);
    const cv::Size out(90, 100);  // guide 400x360: pooled, two 128-channel buffers of 73 MB
    cv::naf::NAF::setMemoryBudget(64 << 20);
    std::string message;
    try
    {
        cv::Mat dst;
        naf->upsample(photo, feats, dst, out);
        ADD_FAILURE() << "accepted";
    }
    catch (const cv::Exception& e)
    {
        message = e.what();
    }
    const std::string marker = "with images resized to the output's 90x100 it would need ";
    ASSERT_NE(message.find("The guide encoder runs on 360x400 pixels (the image, up to 4x the output per side)"),
              std::string::npos) << message;
    const size_t at = message.find(marker);
    ASSERT_NE(at, std::string::npos) << message;
    const long long hinted = std::stoll(message.substr(at + marker.size()));
    EXPECT_GT(hinted, 0);
    EXPECT_LT(hinted, 64ll << 20);
    // The hinted number is the estimate of that call: a budget of exactly that runs it, one byte
    // less refuses it.
    cv::Mat small, dst;
    cv::resize(photo, small, out, 0, 0, cv::INTER_AREA);
    cv::naf::NAF::setMemoryBudget(static_cast<size_t>(hinted) - 1);
    expectRefused([&] { naf->upsample(small, feats, dst, out); }, {"needs " + std::to_string(hinted) + " bytes"});
    cv::naf::NAF::setMemoryBudget(static_cast<size_t>(hinted));
    naf->upsample(small, feats, dst, out);
    EXPECT_EQ(dst.size[3], out.width);
    // An output-sized image's refusal has no such hint.
    cv::naf::NAF::setMemoryBudget(1 << 20);
    cv::Mat none;
    try
    {
        naf->upsample(small, feats, none, out);
        ADD_FAILURE() << "accepted";
    }
    catch (const cv::Exception& e)
    {
        EXPECT_EQ(std::string(e.what()).find("guide encoder runs on"), std::string::npos) << e.what();
    }
}

TEST(MemoryBudget, DnnLayerRefusesOversizedOutputsBeforeDnnAllocates)
{
    cv::naf::registerLayers();
    cv::dnn::LayerParams params;
    params.name = "huge";
    params.set("output_height", 1 << 20);
    params.set("output_width", 1 << 20);
    params.set("weights_path", naf_test::goldenWeights());
    cv::Ptr<cv::dnn::Layer> layer = cv::dnn::LayerFactory::createLayerInstance("naf.NAF", params);
    ASSERT_TRUE(layer);
    std::vector<cv::dnn::MatShape> in{{1, 3, 64, 64}, {1, 384, 4, 4}}, out, internals;
    const int code = expectRefused([&] { layer->getMemoryShapes(in, 1, out, internals); },
                                   {"dnn layer 'huge'", "1 x 384 x 1048576 x 1048576", "memory budget"});
    EXPECT_EQ(code, cv::Error::StsNoMem);
}

TEST(HostileGraphs, BadNodeAttributesAreRefusedWhenTheLayerIsCreated)
{
    cv::naf::registerLayers();
    auto create = [](const std::function<void(cv::dnn::LayerParams&)>& edit) {
        cv::dnn::LayerParams p;
        p.name = "n";
        p.set("output_height", 40);
        p.set("output_width", 50);
        p.set("weights_path", naf_test::goldenWeights());
        edit(p);
        cv::dnn::LayerFactory::createLayerInstance("naf.NAF", p);
    };
    expectRefused([&](){ create([](cv::dnn::LayerParams& p) { p.set("output_height", cv::String("tall")); }); },
                  {"'output_height' must be one integer"});
    expectRefused([&](){ create([](cv::dnn::LayerParams& p) { p.set("output_width", 0); }); },
                  {"'output_width' = 0 is outside [1, 1048576]"});
    expectRefused([&](){ create([](cv::dnn::LayerParams& p) { p.set("output_width", 1 << 21); }); },
                  {"'output_width' = 2097152"});
    const int pair[2] = {4, 5};
    expectRefused([&](){ create([&](cv::dnn::LayerParams& p) { p.set("kernel_size", cv::dnn::DictValue::arrayInt(pair, 2)); }); },
                  {"'kernel_size' must be one integer"});
    expectRefused([&](){ create([](cv::dnn::LayerParams& p) { p.set("kernel_size", 4); }); }, {"odd", "4"});
    expectRefused([&](){ create([](cv::dnn::LayerParams& p) { p.set("weights_path", cv::String("/dev/stdin")); }); },
                  {"not a regular file"});
    expectRefused([&](){ create([](cv::dnn::LayerParams& p) { p.blobs.push_back(cv::Mat::zeros(2, 2, CV_32F)); }); },
                  {"no 'weight_names'"});
    expectRefused([&](){ create([](cv::dnn::LayerParams& p) {
                      p.blobs.push_back(cv::Mat::zeros(2, 2, CV_32F));
                      p.set("weight_names", cv::String("a,b"));
                  }); },
                  {"lists 2 names for 1 embedded"});
    expectRefused([&](){ create([](cv::dnn::LayerParams& p) {
                      p.blobs.push_back(cv::Mat::zeros(2, 2, CV_32F));
                      p.set("weight_names", cv::String("image_encoder.rope.periods"));
                  }); },
                  {"missing tensor"});
}

// ---- concurrency -----------------------------------------------------------------------------

namespace {

struct Job
{
    std::vector<cv::Mat> images;
    cv::Mat feats;
    cv::Size out;
    bool blob = false;
};

cv::Mat runJob(cv::naf::NAF& naf, const Job& j)
{
    cv::Mat dst;
    if (j.blob)
    {
        const int sizes[4] = {1, 3, j.images[0].rows, j.images[0].cols};
        cv::Mat b(4, sizes, CV_32F);
        cv::RNG(5).fill(b, cv::RNG::UNIFORM, 0.f, 1.f);
        naf.upsampleBlob(b, j.feats, dst, j.out);
    }
    else
        naf.upsample(j.images, j.feats, dst, j.out);
    return dst;
}

std::vector<Job> makeJobs()
{
    std::vector<Job> jobs;
    for (int i = 0; i < 6; ++i)
    {
        Job j;
        const int n = i % 3 == 2 ? 2 : 1;
        for (int k = 0; k < n; ++k) j.images.push_back(randomImage(12 + 2 * i, 15 + i, 10 * i + k));
        j.feats = randomBlob(n, 4 * (1 + i % 3), 4 + i % 2, 5, 100 + i);
        j.out = cv::Size(13 + 2 * i, 11 + i);
        j.blob = i == 4;
        jobs.push_back(j);
    }
    return jobs;
}

bool bitIdentical(const cv::Mat& a, const cv::Mat& b)
{
    return a.total() == b.total() && a.type() == b.type() && std::memcmp(a.data, b.data, a.total() * a.elemSize()) == 0;
}

}  // namespace

TEST(Concurrency, OneSharedObjectFromManyThreadsEqualsSerialBitForBit)
{
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::createRandom(3);
    const std::vector<Job> jobs = makeJobs();
    std::vector<cv::Mat> serial;
    for (const Job& j : jobs) serial.push_back(runJob(*naf, j));
    const int threads = 4, rounds = 2;
    std::vector<std::vector<cv::Mat>> results(threads, std::vector<cv::Mat>(rounds * jobs.size()));
    std::atomic<int> failures{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            try
            {
                // Each thread walks the jobs in its own order so different shapes overlap.
                for (int r = 0; r < rounds; ++r)
                    for (size_t k = 0; k < jobs.size(); ++k)
                    {
                        const size_t j = (k + t) % jobs.size();
                        results[t][r * jobs.size() + j] = runJob(*naf, jobs[j]);
                    }
            }
            catch (...)
            {
                ++failures;
            }
        });
    for (auto& th : pool) th.join();
    ASSERT_EQ(failures.load(), 0);
    for (int t = 0; t < threads; ++t)
        for (int r = 0; r < rounds; ++r)
            for (size_t j = 0; j < jobs.size(); ++j)
                EXPECT_TRUE(bitIdentical(results[t][r * jobs.size() + j], serial[j]))
                    << "thread " << t << " round " << r << " job " << j;
}

// A progress callback on a shared object is called by every call, each from its own thread: each
// thread sees its own calls' reports (0 first, non-decreasing, 1 last) and only those, and the
// results stay those of serial calls.
TEST(Concurrency, SharedProgressCallbackReportsEachCallOnItsOwnThread)
{
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::createRandom(5);
    const std::vector<Job> jobs = makeJobs();
    std::vector<cv::Mat> serial;
    for (const Job& j : jobs) serial.push_back(runJob(*naf, j));
    std::mutex mutex;
    std::map<std::thread::id, std::vector<double>> reports;
    naf->setProgressCallback([&](double fraction) {
        std::lock_guard<std::mutex> lock(mutex);
        reports[std::this_thread::get_id()].push_back(fraction);
        return true;
    });
    const int threads = 3;
    std::vector<std::vector<cv::Mat>> results(threads, std::vector<cv::Mat>(jobs.size()));
    std::vector<std::thread::id> ids(threads);
    std::atomic<int> failures{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            ids[t] = std::this_thread::get_id();
            try
            {
                for (size_t k = 0; k < jobs.size(); ++k)
                {
                    const size_t j = (k + t) % jobs.size();
                    results[t][j] = runJob(*naf, jobs[j]);
                }
            }
            catch (...)
            {
                ++failures;
            }
        });
    for (auto& th : pool) th.join();
    ASSERT_EQ(failures.load(), 0);
    EXPECT_EQ(reports.size(), static_cast<size_t>(threads)) << "reports from threads that made no call";
    for (int t = 0; t < threads; ++t)
    {
        for (size_t j = 0; j < jobs.size(); ++j)
            EXPECT_TRUE(bitIdentical(results[t][j], serial[j])) << "thread " << t << " job " << j;
        const std::vector<double>& mine = reports[ids[t]];
        // Each call runs from 0 to 1; split the thread's reports into its calls at every 0 after a 1.
        int calls = 0;
        for (size_t i = 0; i < mine.size(); ++i)
        {
            if (i == 0 || (mine[i - 1] == 1.0 && mine[i] == 0.0))
            {
                EXPECT_EQ(mine[i], 0.0) << "thread " << t << " report " << i;
                ++calls;
                continue;
            }
            EXPECT_GE(mine[i], mine[i - 1]) << "thread " << t << " report " << i;
        }
        EXPECT_EQ(calls, static_cast<int>(jobs.size())) << "thread " << t;
        EXPECT_EQ(mine.back(), 1.0) << "thread " << t;
    }
}

TEST(Concurrency, SettersRacingWithCallsGiveOneOfTheConsistentResults)
{
    // A call reads all settings once when it starts: each result equals the serial result of one
    // of the kernel sizes, never a mixture.
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::createRandom(4);
    const cv::Mat image = randomImage(20, 16, 3), feats = randomBlob(1, 8, 8, 6, 4);
    const cv::Size out(12, 16);
    cv::Mat with3, with7;
    naf->setKernelSize(3);
    naf->upsample(image, feats, with3, out);
    naf->setKernelSize(7);
    naf->upsample(image, feats, with7, out);
    ASSERT_FALSE(bitIdentical(with3, with7));
    std::atomic<bool> stop{false};
    std::thread toggler([&] {
        for (int i = 0; !stop; ++i)
        {
            naf->setKernelSize(i % 2 ? 3 : 7);
            naf->setAttentionProbe(i % 3 ? cv::Point(-1, -1) : cv::Point(5, 5));
            std::this_thread::yield();
        }
    });
    std::vector<std::thread> callers;
    std::atomic<int> mismatches{0}, calls{0};
    for (int t = 0; t < 3; ++t)
        callers.emplace_back([&] {
            for (int i = 0; i < 5; ++i)
            {
                cv::Mat r, w, p;
                naf->upsample(image, feats, r, out);
                if (!bitIdentical(r, with3) && !bitIdentical(r, with7)) ++mismatches;
                ++calls;
                try
                {
                    naf->getAttentionWeights(w, p);  // the last finished call's, whole or none
                    if (w.dims != 4 || p.empty()) ++mismatches;
                }
                catch (const cv::Exception&)
                {
                }
            }
        });
    for (auto& th : callers) th.join();
    stop = true;
    toggler.join();
    EXPECT_EQ(calls.load(), 15);
    EXPECT_EQ(mismatches.load(), 0);
}
