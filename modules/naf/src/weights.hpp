// NAF weights: loading (cv::naf safetensors format, docs/FORMATS.md), validation, random init.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "naf_kernels/naf_kernels.hpp"

namespace cv {
namespace naf {
namespace detail {

/// One expected tensor of the official state dict.
struct TensorSpec
{
    std::string name;
    std::vector<int> shape;
};

/// Every tensor a NAF with this config has, in a canonical order (official state-dict names).
std::vector<TensorSpec> expectedTensors(const ::naf::kernels::NafConfig& cfg);

/// Weights in one contiguous host block plus the kernels' pointer view into it. Immutable once
/// built, so one instance can be shared by many NAF objects and threads.
struct LoadedWeights
{
    ::naf::kernels::NafConfig cfg;
    ::naf::kernels::NafWeights view;
    std::vector<float> storage;
    std::string path;            ///< file the weights came from; empty for random/embedded
    std::string configJson;      ///< naf_config
    std::string provenanceJson;  ///< naf_provenance
    bool trained = false;
    std::string info;            ///< one-line summary for users
};

/// Loads and validates a weights file; cv::Exception with the reason on any problem.
std::shared_ptr<const LoadedWeights> loadWeightsFile(const std::string& path);

class SafetensorsFile;
/// Validates a parsed file as NAF weights (config, names, dtypes, shapes, checksum, finiteness).
std::shared_ptr<const LoadedWeights> loadWeightsFromFile(const SafetensorsFile& file);

/// Same as loadWeightsFile() on the bytes of a file (fuzzing, embedded resources); `origin` names
/// it in messages and info.
std::shared_ptr<const LoadedWeights> loadWeightsBytes(std::vector<uint8_t> bytes, const std::string& origin);

/// Metadata key of the optional SHA-256 (64 lowercase hex digits) of the data section.
constexpr const char* kDataSha256Key = "data_sha256";

/// PyTorch-default random initialization from `seed` (untrained).
std::shared_ptr<const LoadedWeights> randomWeights(int seed, const ::naf::kernels::NafConfig& cfg = {});

/// Builds weights from named tensors (e.g. ONNX initializers); every expected tensor required
/// with its exact shape. `configJson`: the naf_config JSON (validated like a file's), empty for
/// the default config. `origin` names the source in messages and info.
std::shared_ptr<const LoadedWeights> weightsFromTensors(const std::map<std::string, Mat>& tensors,
                                                        const std::string& origin,
                                                        const std::string& configJson = std::string());

}  // namespace detail
}  // namespace naf
}  // namespace cv
