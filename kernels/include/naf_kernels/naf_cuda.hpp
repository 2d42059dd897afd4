// CUDA path of the NAF forward. Declared always; defined by the CUDA library (kernels/cuda)
// when it is built, otherwise by a stub in which available() is false and the rest throws.
#pragma once

#include <memory>
#include <string>

#include "naf_kernels/naf_kernels.hpp"

namespace naf {
namespace kernels {
namespace cuda {

/// True when the library was built with CUDA support.
bool compiled();
/// True when compiled() and at least one CUDA device is usable.
bool available();
/// Short description of the current device ("NVIDIA H100 80GB HBM3, cc 9.0"), or why none.
std::string deviceDescription();

/// Numeric mode of the encoder convolutions on the GPU.
enum class MathMode
{
    FP32,  ///< plain fp32 everywhere (matches CPU to ~1e-5 relative L2)
    TF32   ///< tensor-core TF32 convolutions (matches CPU to ~1e-3 relative L2)
};

/// Owns device copies of the weights and device scratch memory; reusable across calls.
/// Not thread-safe: one Engine per concurrent caller.
class Engine
{
public:
    /// Uploads `hostWeights` (host pointers, shapes as in NafConfig) to the current device.
    Engine(const NafConfig& cfg, const NafWeights& hostWeights);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    /// Same contract as kernels::forward, with host pointers in and out; copies in, computes
    /// on the device stream, copies out, synchronizes. The probe (optional) is filled as on CPU.
    void forward(const float* hostImage, const float* hostFeatures, float* hostOut, const ForwardShape& shape,
                 MathMode mode, AttentionProbe* probe = nullptr);

    /// Device bytes held by this engine (weights + scratch).
    size_t deviceBytes() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace cuda
}  // namespace kernels
}  // namespace naf
