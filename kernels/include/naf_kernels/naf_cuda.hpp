// CUDA path of the NAF forward. Declared always; defined by the CUDA library (kernels/cuda)
// when it is built, otherwise by a stub in which available() is false and the rest throws.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

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
/// True when the CUDA library was built against cuDNN (the convolutions can run through it).
bool cudnnCompiled();

/// Thrown when the device lacks the memory for a call or for an Engine's construction (a CUDA or
/// cuDNN allocation). The message says what was being allocated, and for the engine's own buffers
/// how many MiB it needed and how many were free. Nothing of the call's output was written (a
/// failure during the output's copy to the host is a plain std::runtime_error) and the engine
/// stays usable, so a caller may retry smaller, after freeing device memory, or on the CPU path
/// (the module's BACKEND_AUTO does the last).
class OutOfDeviceMemory : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

/// Numeric mode of the encoder convolutions on the GPU.
enum class MathMode
{
    FP32,  ///< plain fp32 everywhere (relative L2 1e-7 to 5e-7 against the CPU path on H100/H200)
    TF32,  ///< tensor-core TF32 convolutions (relative L2 1e-5 to 7e-4 against the CPU path)
    /// float16 encoder: the guide, the convolution outputs and the GroupNorm+SiLU outputs stored in
    /// float16, the convolutions on FP16 tensor cores (cuDNN; the built-in kernel multiplies the
    /// float16 values on TF32 tensor cores) with float32 accumulation; GroupNorm statistics in
    /// double. The last convolution of each branch, where the queries come from, runs as in TF32
    /// on float tensors; queries, keys and attention are float32. About TF32's error: relative L2
    /// 1e-5 to 8e-4 against the CPU path (H100, the CUDA tests), and emulated on the CPU with the
    /// shipped weights (tools/reduced_precision_study.py, fp16-encoder-tf32-last). 18-20 % less
    /// time than TF32 on an H100. An encoder tensor beyond float16's range (65504) makes the
    /// forward throw std::runtime_error after the encoder, before any output is written (one
    /// extra synchronization per call); FP32 and TF32 take such inputs.
    FP16
};

/// Which code runs the encoder convolutions.
enum class ConvolutionPath
{
    Auto,    ///< cuDNN when the library was built with it and it initializes, else Builtin
    CuDnn,   ///< cuDNN (construction throws when it is not built in or does not initialize)
    Builtin  ///< the library's own implicit-GEMM kernel (FP32 SIMT or TF32 WMMA)
};

/// Neighborhood-attention kernel of the CUDA path (new enumerators go last: Engine::setAttentionKernel
/// accepts the range Tiled .. Measured).
enum class AttentionKernel
{
    Tiled,    ///< one thread per pixel, each 4 x 32 tile's window union in shared memory
    General,  ///< one warp per pixel, keys and values from global memory (any head dim)
    /// one block per 128 output pixels that share a window: two register-tiled matrix products
    /// (kernels/cuda/cell_attention.hpp); for outputs much finer than the features (rectangles
    /// of shared windows at least half a block on average), head dim 32/64, kernel <= 9; else Tiled.
    /// 3-10 % slower than Tiled on an H100 where Tiled fits two blocks per SM, 35 % faster where
    /// it fits one (docs/PERFORMANCE.md, GPU item 19b)
    Cell,
    /// the default: CellTensorCore wherever the cell work list is worthwhile and it runs
    /// (compute capability 8.0 or newer, its shared memory within the device's limit: up to 256
    /// value channels per head on an H100, 1024 channels in 4 heads); on an H100 the attention 2.2-2.4x faster than Tiled,
    /// float32 accuracy (GPU item 31). Where it does not run: Cell where the tiled kernel's largest
    /// window union leaves room for only one of its blocks per SM, or none (14-pixel cells such as
    /// DINOv2's 518 / 37); else Tiled. Each falls back as documented (Cell to Tiled, Tiled to
    /// General)
    Auto,
    /// Tiled with the values staged 32 channels at a time into the keys' shared memory once the
    /// logits are done: 65 instead of 99 KB per block at 16x, so three blocks per SM instead of two.
    /// Same bits as Tiled. ~8 % faster than Tiled on an H100 at paper and x72 (docs/PERFORMANCE.md,
    /// GPU items 25 and 31); falls back like Tiled
    TiledChunked,
    /// Cell on tensor cores: the same work list, each warp's 16 pixels through mma.sync TF32
    /// products split in three (3xTF32, float32 accuracy), logits and softmax in registers
    /// (kernels/cuda/cell_mma_attention.hpp). Needs compute capability 8.0 or newer, head dim
    /// 32/64, kernel <= 9 (88 window entries), and shared memory for the window's keys and values
    /// (99 KB at head dim 64 with 96 value channels per head, growing with them); else Tiled.
    /// Relative L2 under 7e-7 against Tiled in
    /// FP32 (docs/PERFORMANCE.md, GPU items 26 and 31)
    CellTensorCore,
    /// On the first forward at each size, times every kernel above that runs there (Tiled,
    /// TiledChunked, and Cell and CellTensorCore where the cell work list is worthwhile; three
    /// launches each, back to back, the first untimed, the faster of the other two by CUDA events)
    /// and keeps the fastest for that size; a cell kernel (whose bits differ from Tiled's in the last
    /// places) must beat the Tiled ones by more than 3 %, so that near-ties fall the same way in
    /// every process. That first forward waits for the timings and costs
    /// about twelve more attention passes; later ones at any size measured before run its kept
    /// kernel (lastAttentionKernel() names it). Chooses per device without a rule
    /// measured on another card (GPU item 28; on an H100 it kept CellTensorCore at paper, x72 and
    /// dinov2, item 31)
    Measured
};

/// Device time of the stages of the last forward, in milliseconds (filled when stage timing is on).
struct StageTimes
{
    float encoderMs = 0.f;    ///< guide normalization + both encoder branches + RoPE + key pooling
    float convolutionMs = 0.f;  ///< the encoder's convolutions alone (part of encoderMs)
    float attentionMs = 0.f;  ///< value layout + neighborhood attention (output written)
    float totalMs = 0.f;      ///< the whole forward on the device (no host copies)
    std::vector<float> convolutionCallMs;  ///< each convolution of the forward, in call order
};

/// Owns device copies of the weights and device scratch memory; reusable across calls.
/// Not thread-safe: one Engine per concurrent caller.
class Engine
{
public:
    /// Uploads `hostWeights` (host pointers, shapes as in NafConfig) to the current device.
    Engine(const NafConfig& cfg, const NafWeights& hostWeights, ConvolutionPath path = ConvolutionPath::Auto);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    /// Same contract as kernels::forward, with host pointers in and out; copies in, computes
    /// on the device stream, copies out, synchronizes. The probe (optional) is filled as on CPU.
    /// hostOut is written only after every check that can refuse the call (MathMode::FP16's
    /// range), so a refused call leaves it as it was. The output comes back through two pinned
    /// host buffers of up to 32 MiB each (kept by the engine), chunk by chunk, each chunk copied
    /// into hostOut by setHostParallelFor's threads while the device copies the next; a hostOut
    /// that is itself page-locked (cudaHostAlloc, cudaHostRegister) is written directly. A hostOut
    /// in device memory is refused (std::invalid_argument) before anything runs: see forwardDevice.
    void forward(const float* hostImage, const float* hostFeatures, float* hostOut, const ForwardShape& shape,
                 MathMode mode, AttentionProbe* probe = nullptr);

    /// Whether the last forward() began writing its hostOut (false when it failed before that:
    /// a refusal, a lack of device memory, a device error in the computation). A forward that
    /// fails after this became true (a CUDA error while the output is copied) leaves hostOut
    /// partly written, so a caller that passed memory it cares about should discard it.
    bool lastForwardWroteHostOutput() const;

    /// The same forward on device memory of this engine's device: image [3,H,W], features
    /// [C,h,w] and out [C,outH,outW], fp32, contiguous. The inputs must be ready (their producers
    /// synchronized); returns when `deviceOut` is written. No host copies of the tensors.
    void forwardDevice(const float* deviceImage, const float* deviceFeatures, float* deviceOut,
                       const ForwardShape& shape, MathMode mode, AttentionProbe* probe = nullptr);

    /// Device bytes held by this engine (weights + scratch, cuDNN workspace included).
    size_t deviceBytes() const;

    /// Frees the scratch memory (every buffer a forward grows, and the cuDNN workspace), keeping
    /// the weights, cuDNN's algorithm choices and the pinned host buffers; the next forward
    /// allocates what it needs again. For giving device memory back between calls, e.g. after
    /// a large call or one that ran out of memory half-way through its allocations.
    void releaseScratch();

    /// The convolution path in use (never Auto): CuDnn or Builtin.
    ConvolutionPath convolutionPath() const;
    /// With cuDNN: its version and the algorithm chosen per convolution shape so far, and any
    /// float16 shape it refused (MathMode::FP16 runs those on the built-in kernel); with the
    /// built-in path: why Auto did not take cuDNN (empty when cuDNN is not built in).
    std::string convolutionPathNote() const;

    /// Records CUDA events between the stages of each forward (a little overhead when on).
    void setStageTiming(bool enable);
    /// The attention kernel (for tests and benchmarks: all give the same result to fp32
    /// rounding). Tiled kernels need head dim 32 or 64 and a window union per tile that fits in
    /// shared memory, else the general one runs. An unknown value throws std::invalid_argument.
    void setAttentionKernel(AttentionKernel kernel);

    /// The attention kernel asked for (setAttentionKernel; Auto unless set).
    AttentionKernel attentionKernel() const;
    /// The attention kernel the last forward ran (the requested one, or its fallback when the
    /// requested one's limits did not hold).
    AttentionKernel lastAttentionKernel() const;

    /// Channels-last tail (on by default; docs/PERFORMANCE.md, GPU item 20: 2-4 % faster on an
    /// H100): each branch's last GroupNorm+SiLU writes pixel-major, cuDNN runs the last
    /// convolution on NHWC tensors (no layout transforms staged around it) and RoPE reads its
    /// output pixel by pixel. Applies with cuDNN in MathMode::TF32 and FP16 (on tensor cores,
    /// sm >= 80), when the guide has the output size and each branch holds whole RoPE heads; other
    /// forwards run the usual tail, as do shapes for which cuDNN has no NHWC algorithm
    /// (convolutionPathNote() names them). Same result up to the convolution algorithm's rounding.
    void setNhwcTail(bool enable);
    /// setNhwcTail's value (true unless set).
    bool nhwcTail() const;
    /// Whether the last forward ran the channels-last tail.
    bool lastUsedNhwcTail() const;

    /// Threads for forward()'s host side of the output copy (memcpy from the pinned staging
    /// buffers into hostOut, in 4 MiB stripes); empty (the default): the calling thread only.
    void setHostParallelFor(ParallelFor parallel);

    /// Stage times of the last forward (zeros when stage timing was off).
    StageTimes lastStageTimes() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace cuda
}  // namespace kernels
}  // namespace naf
