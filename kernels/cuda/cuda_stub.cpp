// CUDA API of naf_kernels when the library is built without CUDA: nothing is available and
// constructing an Engine throws.
#include <stdexcept>
#include <string>

#include "naf_kernels/naf_cuda.hpp"

namespace naf {
namespace kernels {
namespace cuda {

bool compiled()
{
    return false;
}

bool available()
{
    return false;
}

std::string deviceDescription()
{
    return "built without CUDA";
}

bool cudnnCompiled()
{
    return false;
}

struct Engine::Impl
{
};

Engine::Engine(const NafConfig&, const NafWeights&, ConvolutionPath)
{
    throw std::runtime_error("naf::kernels::cuda::Engine: this build of naf_kernels has no CUDA support "
                             "(built without CUDA)");
}

Engine::~Engine() = default;

void Engine::forward(const float*, const float*, float*, const ForwardShape&, MathMode, AttentionProbe*)
{
    throw std::runtime_error("naf::kernels::cuda::Engine::forward: built without CUDA");
}

void Engine::forwardDevice(const float*, const float*, float*, const ForwardShape&, MathMode, AttentionProbe*)
{
    throw std::runtime_error("naf::kernels::cuda::Engine::forwardDevice: built without CUDA");
}

bool Engine::lastForwardWroteHostOutput() const
{
    return false;
}

size_t Engine::deviceBytes() const
{
    return 0;
}

void Engine::releaseScratch() {}

ConvolutionPath Engine::convolutionPath() const
{
    return ConvolutionPath::Builtin;
}

std::string Engine::convolutionPathNote() const
{
    return "built without CUDA";
}

void Engine::setStageTiming(bool) {}

void Engine::setAttentionKernel(AttentionKernel) {}

void Engine::setNhwcTail(bool) {}

void Engine::setHostParallelFor(ParallelFor) {}

bool Engine::nhwcTail() const
{
    return true;
}

bool Engine::lastUsedNhwcTail() const
{
    return false;
}

AttentionKernel Engine::attentionKernel() const
{
    return AttentionKernel::Auto;
}

AttentionKernel Engine::lastAttentionKernel() const
{
    return AttentionKernel::Tiled;
}

StageTimes Engine::lastStageTimes() const
{
    return StageTimes();
}

}  // namespace cuda
}  // namespace kernels
}  // namespace naf
