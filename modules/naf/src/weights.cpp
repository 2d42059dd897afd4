#include "weights.hpp"

#include <cmath>
#include <cstring>
#include <random>
#include <limits>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "size_limits.hpp"
#include "safetensors.hpp"
#include "sha256.hpp"

namespace cv {
namespace naf {
namespace detail {

using ::naf::kernels::NafConfig;

namespace {

[[noreturn]] void weightsError(const std::string& origin, const std::string& what)
{
    CV_Error(Error::StsParseError, "cv::naf: weights '" + origin + "' rejected: " + what);
}

template <typename T>
std::string shapeString(const std::vector<T>& s)
{
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

NafConfig parseConfig(const std::string& text, const std::string& origin)
{
    nlohmann::json j;
    try
    {
        j = nlohmann::json::parse(text);
    }
    catch (const nlohmann::json::exception& e)
    {
        weightsError(origin, std::string("naf_config is not JSON (") + e.what() + ")");
    }
    if (!j.is_object()) weightsError(origin, "naf_config is not a JSON object");
    NafConfig cfg;
    auto integer = [&](const char* key, int* out, int lo, int hi, bool required) {
        if (!j.contains(key))
        {
            if (required) weightsError(origin, std::string("naf_config has no '") + key + "'");
            return;
        }
        if (!j[key].is_number_integer()) weightsError(origin, std::string("naf_config '") + key + "' is not an integer");
        const int64_t v = j[key].get<int64_t>();
        if (v < lo || v > hi)
            weightsError(origin, std::string("naf_config '") + key + "' = " + j[key].dump() + " is outside [" +
                                     std::to_string(lo) + ", " + std::to_string(hi) + "]");  // as written (2^64-1 read as -1)
        *out = static_cast<int>(v);
    };
    integer("dim", &cfg.dim, 8, 4096, true);
    integer("heads_attn", &cfg.headsAttn, 1, 64, true);
    integer("heads_rope", &cfg.headsRope, 1, 64, true);
    integer("kernel_size", &cfg.kernelSize, 1, 63, true);
    integer("img_layers", &cfg.imgLayers, 0, 16, true);
    integer("num_groups", &cfg.numGroups, 1, 4096, true);
    integer("max_guide_scale", &cfg.maxGuideScale, 1, 64, false);
    auto triple = [&](const char* key, float* out) {
        if (!j.contains(key)) return;
        const auto& a = j[key];
        if (!a.is_array() || a.size() != 3) weightsError(origin, std::string("naf_config '") + key + "' is not [r, g, b]");
        for (int i = 0; i < 3; ++i)
        {
            // Range-checked as double first: converting an out-of-range double to float is undefined.
            const double v = a[i].is_number() ? a[i].get<double>() : std::nan("");
            if (!(std::abs(v) <= 1e6))
                weightsError(origin, std::string("naf_config '") + key + "' has a non-number or a value beyond 1e6");
            out[i] = static_cast<float>(v);
        }
    };
    triple("image_mean", cfg.mean);
    triple("image_std", cfg.stdev);
    for (int i = 0; i < 3; ++i)
        if (!(cfg.stdev[i] > 0.f) || !std::isfinite(cfg.mean[i]))
            weightsError(origin, "naf_config image_std must be positive and image_mean finite");
    if (cfg.kernelSize % 2 == 0) weightsError(origin, "naf_config kernel_size " + std::to_string(cfg.kernelSize) + " is even");
    if (cfg.dim % cfg.headsAttn != 0 || cfg.dim % (4 * cfg.headsRope) != 0 || (cfg.dim / 2) % cfg.numGroups != 0)
        weightsError(origin, "naf_config dim " + std::to_string(cfg.dim) + " does not split into " +
                                 std::to_string(cfg.headsAttn) + " attention heads, 4 x " +
                                 std::to_string(cfg.headsRope) + " RoPE heads and " + std::to_string(cfg.numGroups) +
                                 " groups per branch");
    return cfg;
}

std::string configToJson(const NafConfig& cfg)
{
    nlohmann::json j;
    j["dim"] = cfg.dim;
    j["heads_attn"] = cfg.headsAttn;
    j["heads_rope"] = cfg.headsRope;
    j["kernel_size"] = cfg.kernelSize;
    j["img_layers"] = cfg.imgLayers;
    j["num_groups"] = cfg.numGroups;
    j["rope_base"] = 100.0;
    j["max_guide_scale"] = cfg.maxGuideScale;
    j["image_mean"] = {cfg.mean[0], cfg.mean[1], cfg.mean[2]};
    j["image_std"] = {cfg.stdev[0], cfg.stdev[1], cfg.stdev[2]};
    return j.dump();
}

size_t elementCount(const std::vector<int>& shape)
{
    size_t n = 1;
    for (int d : shape) n *= static_cast<size_t>(d);
    return n;
}

// Points the kernels' view at the tensors laid out in expectedTensors() order.
std::shared_ptr<LoadedWeights> assemble(const NafConfig& cfg, std::vector<float> storage)
{
    auto w = std::make_shared<LoadedWeights>();
    w->cfg = cfg;
    w->storage = std::move(storage);
    const std::vector<TensorSpec> specs = expectedTensors(cfg);
    std::map<std::string, const float*> ptr;
    size_t offset = 0;
    for (const TensorSpec& s : specs)
    {
        ptr[s.name] = w->storage.data() + offset;
        offset += elementCount(s.shape);
    }
    CV_Assert(offset == w->storage.size());
    const int hidden = cfg.dim / 2;
    auto branch = [&](const std::string& prefix, int k) {
        ::naf::kernels::EncoderBranchWeights b;
        b.stem = {ptr[prefix + ".0.weight"], ptr[prefix + ".0.bias"], hidden, 3, k};
        for (int l = 1; l <= cfg.imgLayers; ++l)
        {
            const std::string p = prefix + "." + std::to_string(l) + ".";
            ::naf::kernels::EncBlockWeights blk;
            blk.norm1Gamma = ptr[p + "norm1.weight"];
            blk.norm1Beta = ptr[p + "norm1.bias"];
            blk.conv1 = {ptr[p + "conv1.weight"], ptr[p + "conv1.bias"], hidden, hidden, k};
            blk.norm2Gamma = ptr[p + "norm2.weight"];
            blk.norm2Beta = ptr[p + "norm2.bias"];
            blk.conv2 = {ptr[p + "conv2.weight"], ptr[p + "conv2.bias"], hidden, hidden, k};
            b.blocks.push_back(blk);
        }
        return b;
    };
    w->view.pointBranch = branch("image_encoder.encoder", 1);
    w->view.contextBranch = branch("image_encoder.sem_encoder", 3);
    w->view.ropePeriods = ptr["image_encoder.rope.periods"];
    w->configJson = configToJson(cfg);
    return w;
}

void checkFinite(const std::vector<float>& storage, const std::string& origin)
{
    for (size_t i = 0; i < storage.size(); ++i)
        if (!std::isfinite(storage[i])) weightsError(origin, "contains NaN or Inf (value #" + std::to_string(i) + ")");
}

// RoPE divides by its periods: a zero or subnormal period gives an infinite angle, NaN queries
// and an all-zero output with no error, so it is refused here with its value.
void checkRopePeriods(const LoadedWeights& w, const NafConfig& cfg, const std::string& origin)
{
    const int count = cfg.dim / cfg.headsRope / 4;
    for (int i = 0; i < count; ++i)
    {
        const float period = w.view.ropePeriods[i];
        if (!(period >= std::numeric_limits<float>::min()))
        {
            std::ostringstream value;
            value << period;
            weightsError(origin, "RoPE period #" + std::to_string(i) + " is " + value.str() +
                                     "; periods must be positive normal floats");
        }
    }
}

// assemble() for values from outside (a file, ONNX initializers): every value finite and every
// RoPE period usable, or an error naming `origin`.
std::shared_ptr<LoadedWeights> assembleChecked(const NafConfig& cfg, std::vector<float> storage,
                                               const std::string& origin)
{
    checkFinite(storage, origin);
    auto w = assemble(cfg, std::move(storage));
    checkRopePeriods(*w, cfg, origin);
    return w;
}

}  // namespace

std::vector<TensorSpec> expectedTensors(const NafConfig& cfg)
{
    std::vector<TensorSpec> specs;
    const int hidden = cfg.dim / 2;
    for (const auto& branch : {std::make_pair(std::string("image_encoder.encoder"), 1),
                               std::make_pair(std::string("image_encoder.sem_encoder"), 3)})
    {
        const int k = branch.second;
        specs.push_back({branch.first + ".0.weight", {hidden, 3, k, k}});
        specs.push_back({branch.first + ".0.bias", {hidden}});
        for (int l = 1; l <= cfg.imgLayers; ++l)
        {
            const std::string p = branch.first + "." + std::to_string(l) + ".";
            specs.push_back({p + "norm1.weight", {hidden}});
            specs.push_back({p + "norm1.bias", {hidden}});
            specs.push_back({p + "conv1.weight", {hidden, hidden, k, k}});
            specs.push_back({p + "conv1.bias", {hidden}});
            specs.push_back({p + "norm2.weight", {hidden}});
            specs.push_back({p + "norm2.bias", {hidden}});
            specs.push_back({p + "conv2.weight", {hidden, hidden, k, k}});
            specs.push_back({p + "conv2.bias", {hidden}});
        }
    }
    specs.push_back({"image_encoder.rope.periods", {cfg.dim / cfg.headsRope / 4}});
    return specs;
}

std::shared_ptr<const LoadedWeights> loadWeightsFile(const std::string& path)
{
    return loadWeightsFromFile(SafetensorsFile::read(path));
}

std::shared_ptr<const LoadedWeights> loadWeightsBytes(std::vector<uint8_t> bytes, const std::string& origin)
{
    return loadWeightsFromFile(SafetensorsFile::parse(std::move(bytes), origin));
}

namespace {

// Verifies the optional data_sha256; returns what getWeightsInfo() says about it.
std::string verifyDataChecksum(const SafetensorsFile& file)
{
    const auto& meta = file.metadata();
    auto it = meta.find(kDataSha256Key);
    if (it == meta.end()) return "data not checksummed";
    const std::string& expected = it->second;
    const bool wellFormed = expected.size() == 64 &&
        expected.find_first_not_of("0123456789abcdef") == std::string::npos;
    if (!wellFormed)
        weightsError(file.origin(), std::string(kDataSha256Key) + " '" + expected.substr(0, 80) +
                                        "' is not 64 lowercase hex digits");
    const std::string actual = sha256Hex(file.dataSection(), file.dataSectionSize());
    if (actual != expected)
        weightsError(file.origin(), "tensor data SHA-256 is " + actual + " but the metadata says " + expected +
                                        " (file corrupted or tampered with)");
    return "data sha256 verified";
}

}  // namespace

std::shared_ptr<const LoadedWeights> loadWeightsFromFile(const SafetensorsFile& file)
{
    const std::string& path = file.origin();
    const auto& meta = file.metadata();
    auto metaValue = [&](const char* key) -> std::string {
        auto it = meta.find(key);
        if (it == meta.end()) weightsError(path, std::string("__metadata__ has no '") + key + "' (not a cv::naf weights file; "
                                                 "convert official checkpoints with tools/convert_official_checkpoint.py)");
        return it->second;
    };
    if (metaValue("format") != "cv-naf-weights")
        weightsError(path, "__metadata__ format is '" + metaValue("format") + "', expected 'cv-naf-weights'");
    if (metaValue("format_version") != "1")
        weightsError(path, "format_version '" + metaValue("format_version") + "' is not supported (1 is)");
    const NafConfig cfg = parseConfig(metaValue("naf_config"), path);
    const std::string provenanceText = metaValue("naf_provenance");
    nlohmann::json provenance;
    try
    {
        provenance = nlohmann::json::parse(provenanceText);
    }
    catch (const nlohmann::json::exception& e)
    {
        weightsError(path, std::string("naf_provenance is not JSON (") + e.what() + ")");
    }
    if (!provenance.is_object() || !provenance.contains("source") || !provenance["source"].is_string() ||
        !provenance.contains("trained") || !provenance["trained"].is_boolean())
        weightsError(path, "naf_provenance needs 'source' (string) and 'trained' (bool)");

    const std::vector<TensorSpec> specs = expectedTensors(cfg);
    std::set<std::string> expectedNames;
    for (const TensorSpec& s : specs) expectedNames.insert(s.name);
    for (const auto& t : file.tensors())
        if (!expectedNames.count(t.first)) weightsError(path, "unexpected tensor '" + t.first + "'");
    // Every tensor is checked against the config before anything is allocated, so a small file
    // with a huge naf_config cannot make us allocate for tensors it does not hold.
    size_t total = 0;
    for (const TensorSpec& s : specs)
    {
        if (!file.has(s.name)) weightsError(path, "missing tensor '" + s.name + "'");
        const SafetensorsTensor& t = file.tensor(s.name);
        if (t.dtype != "F32") weightsError(path, "tensor '" + s.name + "' has dtype " + t.dtype + ", expected F32");
        const std::vector<int64_t> expectedShape(s.shape.begin(), s.shape.end());
        if (t.shape != expectedShape)
            weightsError(path, "tensor '" + s.name + "' has shape " + shapeString(t.shape) + ", expected " +
                                   shapeString(expectedShape));
        CV_Assert(t.end - t.begin == elementCount(s.shape) * sizeof(float));  // checked by the parser
        total += elementCount(s.shape);
    }
    checkMemoryBudget(checkedProduct({static_cast<int64_t>(total), 4}, "weights"), "loading weights '" + path + "'");
    std::vector<float> storage(total);
    size_t offset = 0;
    for (const TensorSpec& s : specs)
    {
        const SafetensorsTensor& t = file.tensor(s.name);
        std::memcpy(storage.data() + offset, file.data(s.name), t.end - t.begin);
        offset += elementCount(s.shape);
    }
    const std::string checksum = verifyDataChecksum(file);
    auto w = assembleChecked(cfg, std::move(storage), path);
    w->path = path;
    w->configJson = metaValue("naf_config");
    w->provenanceJson = provenanceText;
    w->trained = provenance["trained"].get<bool>();
    std::ostringstream info;
    const std::string source = provenance["source"].get<std::string>();
    info << path << " (" << source;
    if (provenance.contains("seed") && (provenance["seed"].is_number() || provenance["seed"].is_string()))
        info << ", seed " << provenance["seed"].dump();
    if (!w->trained) info << ", NOT TRAINED";
    else if (source != "trained") info << ", trained";  // source "trained" says it already
    info << ", " << checksum << ")";
    w->info = info.str();
    return w;
}

std::shared_ptr<const LoadedWeights> randomWeights(int seed, const NafConfig& cfg)
{
    std::mt19937 rng(static_cast<uint32_t>(seed));
    auto uniform = [&](float bound) {
        return (static_cast<float>(rng() >> 8) * (1.0f / 16777216.0f) * 2.f - 1.f) * bound;
    };
    std::vector<float> storage;
    int lastFanIn = 1;
    for (const TensorSpec& s : expectedTensors(cfg))
    {
        const size_t n = elementCount(s.shape);
        const bool isNorm = s.name.find(".norm") != std::string::npos;
        const bool isPeriods = s.name.find("periods") != std::string::npos;
        if (isPeriods)
        {
            // base 100: periods_j = 100 ** (2j / (head_dim / 2)).
            const int headDim = cfg.dim / cfg.headsRope;
            for (size_t j = 0; j < n; ++j)
                storage.push_back(std::pow(100.f, static_cast<float>(2 * j) / static_cast<float>(headDim / 2)));
        }
        else if (isNorm)
        {
            const bool gamma = s.name.find(".weight") != std::string::npos;
            storage.insert(storage.end(), n, gamma ? 1.f : 0.f);
        }
        else
        {
            // PyTorch's Conv2d default: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); a bias
            // follows its weight in expectedTensors(), so it reuses that weight's fan-in.
            if (s.shape.size() == 4) lastFanIn = s.shape[1] * s.shape[2] * s.shape[3];
            const float bound = 1.f / std::sqrt(static_cast<float>(lastFanIn));
            for (size_t i = 0; i < n; ++i) storage.push_back(uniform(bound));
        }
    }
    auto w = assemble(cfg, std::move(storage));
    nlohmann::json provenance;
    provenance["source"] = "random-init";
    provenance["trained"] = false;
    provenance["seed"] = seed;
    provenance["init"] = "PyTorch defaults (conv U(+-1/sqrt(fan_in)), GroupNorm 1/0), std::mt19937";
    w->provenanceJson = provenance.dump();
    w->trained = false;
    w->info = "random-init (seed " + std::to_string(seed) + ", NOT TRAINED)";
    return w;
}

std::shared_ptr<const LoadedWeights> weightsFromTensors(const std::map<std::string, Mat>& tensors,
                                                        const std::string& origin, const std::string& configJson)
{
    const NafConfig cfg = configJson.empty() ? NafConfig() : parseConfig(configJson, origin);
    const std::vector<TensorSpec> specs = expectedTensors(cfg);
    std::set<std::string> expectedNames;
    for (const TensorSpec& s : specs) expectedNames.insert(s.name);
    for (const auto& t : tensors)
        if (!expectedNames.count(t.first)) weightsError(origin, "unexpected tensor '" + t.first + "'");
    std::vector<float> storage;
    for (const TensorSpec& s : specs)
    {
        auto it = tensors.find(s.name);
        if (it == tensors.end()) weightsError(origin, "missing tensor '" + s.name + "'");
        const Mat& m = it->second;
        if (m.depth() != CV_32F || m.channels() != 1)
            weightsError(origin, "tensor '" + s.name + "' is not single-channel float32");
        if (m.total() != elementCount(s.shape))
            weightsError(origin, "tensor '" + s.name + "' has " + std::to_string(m.total()) + " values, expected " +
                                     shapeString(s.shape));
        // The shape too, not just the count: a transposed or reshaped initializer would load and
        // run with scrambled weights. cv::dnn holds a 1-D initializer as a 2-D row or column.
        const std::vector<int> shape(m.size.p, m.size.p + m.dims);
        const bool vectorAs2d = s.shape.size() == 1 && m.dims == 2 && (m.rows == 1 || m.cols == 1);
        if (shape != s.shape && !vectorAs2d)
            weightsError(origin, "tensor '" + s.name + "' has shape " + shapeString(shape) + ", expected " +
                                     shapeString(s.shape));
        Mat c = m.isContinuous() ? m : m.clone();
        const float* p = c.ptr<float>();
        storage.insert(storage.end(), p, p + c.total());
    }
    auto w = assembleChecked(cfg, std::move(storage), origin);
    nlohmann::json provenance;
    provenance["source"] = "embedded";
    provenance["trained"] = true;
    w->provenanceJson = provenance.dump();
    if (!configJson.empty()) w->configJson = configJson;  // as written (assemble() wrote the parsed one)
    w->trained = true;
    w->info = origin + " (embedded weights, provenance unknown)";
    return w;
}

}  // namespace detail
}  // namespace naf
}  // namespace cv
