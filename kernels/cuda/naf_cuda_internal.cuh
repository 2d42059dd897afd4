// Internal declarations of the CUDA path: error checking, device-side weight views and the
// launchers of the kernels (defined in encoder_kernels.cu and attention_kernels.cu).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cell_attention.hpp"
#include "device_memory.hpp"
#include "naf_kernels/naf_cuda.hpp"
#include "naf_kernels/naf_kernels.hpp"

namespace naf {
namespace kernels {
namespace cuda {
namespace detail {

/// Throws std::runtime_error("naf::kernels::cuda: <what>: <CUDA error>") when err != cudaSuccess;
/// OutOfDeviceMemory (a std::runtime_error) when the error is cudaErrorMemoryAllocation.
inline void check(cudaError_t err, const char* what)
{
    if (err == cudaSuccess) return;
    (void)cudaGetLastError();  // clear a non-sticky error so later calls are not poisoned by it
    const std::string message = std::string("naf::kernels::cuda: ") + what + " failed: " + cudaGetErrorName(err) +
                                " (" + cudaGetErrorString(err) + ")";
    if (err == cudaErrorMemoryAllocation) throw OutOfDeviceMemory(message);
    throw std::runtime_error(message);
}

/// cudaMalloc of `bytes`; when the device lacks the memory, throws OutOfDeviceMemory saying what
/// needed how much and how much is free (the one failure a caller can act on).
inline void* allocateDevice(size_t bytes, const char* what)
{
    void* ptr = nullptr;
    const cudaError_t err = cudaMalloc(&ptr, bytes);
    if (err == cudaErrorMemoryAllocation)
    {
        (void)cudaGetLastError();
        size_t freeBytes = 0, totalBytes = 0;
        if (cudaMemGetInfo(&freeBytes, &totalBytes) != cudaSuccess)
        {
            (void)cudaGetLastError();
            totalBytes = 0;
        }
        throw OutOfDeviceMemory(outOfDeviceMemoryMessage(what, bytes, freeBytes, totalBytes));
    }
    check(err, what);
    return ptr;
}

/// Checks the launch of the kernel that was just enqueued.
inline void checkLaunch(const char* what)
{
    check(cudaGetLastError(), what);
}

/// Grow-only device allocation (released explicitly by its owner, on the owner's device).
struct DeviceBuffer
{
    void* ptr = nullptr;
    size_t bytes = 0;

    void ensure(size_t need, const char* what)
    {
        if (need <= bytes) return;
        release();
        need = (need + 255) / 256 * 256;
        ptr = allocateDevice(need, what);
        bytes = need;
    }
    void release() noexcept
    {
        if (ptr) (void)cudaFree(ptr);
        ptr = nullptr;
        bytes = 0;
    }
    template <typename T>
    T* as() const
    {
        return static_cast<T*>(ptr);
    }
};

/// One convolution with device pointers (bias may be null). weightHalf: the same weights rounded
/// to float16, read by convolutions on float16 tensors (MathMode::FP16). weightKrsc: the same
/// weights as [cout][k][k][cin] (cuDNN's NHWC filter layout), only for the last convolution of
/// each branch (Engine::setNhwcTail), else null.
struct DevConv
{
    const float* weight = nullptr;
    const float* bias = nullptr;
    const __half* weightHalf = nullptr;
    const float* weightKrsc = nullptr;
    int cout = 0, cin = 0, k = 0;
};

// ---- cuDNN convolutions (cudnn_conv.cpp; only when built with cuDNN) -------------------------

/// Runs the encoder convolutions through cuDNN on one stream: input reflect-padded by k/2 (same
/// contract as launchConv2dPadded, bias never added). Algorithms are chosen once per shape and
/// math mode by timing (cudnnFindConvolutionForwardAlgorithmEx) within a bounded workspace.
class CudnnConvolver
{
public:
    /// Throws std::runtime_error when cuDNN cannot be initialized (message says why).
    explicit CudnnConvolver(cudaStream_t stream);
    ~CudnnConvolver();
    CudnnConvolver(const CudnnConvolver&) = delete;
    CudnnConvolver& operator=(const CudnnConvolver&) = delete;

    void run(const float* srcPadded, int h, int w, const DevConv& conv, float* dst, bool tf32);
    /// The same on float16 tensors (conv.weightHalf): FP16 tensor cores, float32 accumulation.
    void run(const __half* srcPadded, int h, int w, const DevConv& conv, __half* dst);
    /// The float convolution on pixel-major tensors (cuDNN NHWC, conv.weightKrsc): srcPadded
    /// [h+2*(k/2)][w+2*(k/2)][cin] -> dst [h][w][cout]; no layout transforms around it.
    void runNhwc(const float* srcPadded, int h, int w, const DevConv& conv, float* dst, bool tf32);
    /// Device bytes of the workspace held.
    size_t workspaceBytes() const;
    /// Frees the workspace (the next convolution allocates it again); keeps the chosen algorithms.
    void releaseWorkspace();
    /// The algorithm chosen for each convolution shape so far, for diagnostics.
    std::string plans() const;
    /// "cuDNN 9.19.0" (the runtime library's version).
    static std::string version();

private:
    struct Impl;
    Impl* impl_;
};

/// Threads per block of the elementwise kernels.
constexpr int kThreads = 256;
/// Elements reduced by one block of the GroupNorm statistics (fixed: results never depend on
/// the device or launch configuration).
constexpr int kGnChunk = 8192;

/// Number of GroupNorm partial sums per channel of `hw` elements.
inline int64_t gnChunksPerChannel(int64_t hw)
{
    return (hw + kGnChunk - 1) / kGnChunk;
}

// ---- encoder kernels (encoder_kernels.cu) -----------------------------------------------------

/// dst [3, dstH+2*pad, dstW+2*pad] = bilinear resize (half-pixel, no antialias) of
/// ((src - mean) / stdev), reflect-padded by `pad` for the stem convolution; a plain
/// normalization when the sizes are equal.
/// Dst: float or __half (rounded to nearest).
template <typename Dst>
void launchNormalizeResizePadded(const float* src, int srcH, int srcW, Dst* dst, int dstH, int dstW, int pad,
                                 const float mean[3], const float stdev[3], cudaStream_t stream);

/// Stride-1 convolution without bias on an input already reflect-padded by k/2:
/// src [cin, h+2*(k/2), w+2*(k/2)] -> dst [cout,h,w] (+ conv.bias when non-null). The library's own
/// implicit GEMM; TF32 uses tensor cores on sm >= 80 (older builds fall back to FP32).
void launchConv2dPadded(const float* src, int h, int w, const DevConv& conv, float* dst, bool tf32,
                        cudaStream_t stream);
/// The same on float16 tensors with conv.weightHalf (float32 accumulation; with tf32 the products
/// run on TF32 tensor cores, exact for float16 operands).
void launchConv2dPadded(const __half* src, int h, int w, const DevConv& conv, __half* dst, bool tf32,
                        cudaStream_t stream);

/// GroupNorm (affine) + SiLU of (src + bias[c]) (bias may be null), src [c,h,w], written
/// reflect-padded by `pad` to dst [c, h+2*pad, w+2*pad] (a different buffer). `partial` holds
/// 2*c*gnChunksPerChannel(h*w) doubles, `stats` groupNormStatsBytes(c) bytes. Src/Dst: float/float,
/// __half/__half or __half/float (statistics in double, arithmetic in float32 either way). When
/// `nonFinite` (device int) is given, a group whose statistics are not finite sets it to 1 (a
/// float16 tensor that overflowed; the caller clears it).
template <typename Src, typename Dst>
void launchGroupNormSiLUPadded(const Src* src, const float* bias, int c, int h, int w, int groups,
                               const float* gamma, const float* beta, float eps, Dst* dst, int pad, double* partial,
                               void* stats, cudaStream_t stream, int* nonFinite = nullptr);

/// The same GroupNorm + SiLU written pixel-major: dst [h+2*pad][w+2*pad][c] float (the input of
/// CudnnConvolver::runNhwc; hwc_tail.hpp). Src: float or __half; c <= kMaxFusedRopeChannels.
template <typename Src>
void launchGroupNormSiLUPaddedHwc(const Src* src, const float* bias, int c, int h, int w, int groups,
                                  const float* gamma, const float* beta, float eps, float* dst, int pad,
                                  double* partial, void* stats, cudaStream_t stream, int* nonFinite = nullptr);

/// Bytes of the `stats` scratch of launchGroupNormSiLUPadded for `channels` channels (per-channel
/// scale and shift).
size_t groupNormStatsBytes(int channels);

/// PyTorch adaptive_avg_pool2d of (src + bias[c]), CHW -> CHW: src [c,srcH,srcW] -> dst [c,dstH,dstW].
void launchAdaptiveAvgPool(const float* src, const float* bias, int c, int srcH, int srcW, float* dst, int dstH,
                           int dstW, cudaStream_t stream);

/// Largest branch width the fused pool + RoPE kernel takes (its shared-memory tile).
constexpr int kMaxFusedRopeChannels = 256;

/// True when channels [offset, offset+hidden) of the queries hold whole RoPE heads, so one
/// branch can be pooled, rotated and transposed on its own (launchPoolRopeToHwc).
bool poolRopeFusable(int dim, int hidden, int offset, int ropeHeads);

/// Bytes of the RoPE cos/sin tables of an h x w query grid.
size_t ropeTablesBytes(int h, int w, int dim, int ropeHeads);

/// Fills the RoPE cos/sin tables (rows, then columns) of an h x w query grid.
void launchRopeTables(void* tables, int h, int w, int dim, int ropeHeads, const float* periods, cudaStream_t stream);

/// One branch's output src [hidden,srcH,srcW] (+ bias) -> adaptive pool to outH x outW -> axial
/// RoPE (tables of launchRopeTables) -> qT[:, offset:offset+hidden] of the pixel-major queries
/// qT [outH*outW, dim].
void launchPoolRopeToHwc(const float* src, const float* bias, int hidden, int srcH, int srcW, float* qT, int dim,
                         int offset, int outH, int outW, int ropeHeads, const void* ropeTables, cudaStream_t stream);

/// launchPoolRopeToHwc without the pooling, from a pixel-major branch output src
/// [outH*outW][hidden] (+ bias; CudnnConvolver::runNhwc's output) -> qT[:, offset:offset+hidden].
void launchRopeFromHwc(const float* src, const float* bias, int hidden, float* qT, int dim, int offset, int outH,
                       int outW, int ropeHeads, const void* ropeTables, cudaStream_t stream);

/// Axial RoPE of queries [dim,h,w] (CHW), written transposed to qT [h*w,dim] (HWC).
void launchRopeToHwc(const float* q, float* qT, int dim, int h, int w, int heads, const float* periods,
                     cudaStream_t stream);

/// PyTorch adaptive_avg_pool2d in HWC layout: src [srcH*srcW,c] -> dst [dstH*dstW,c].
void launchAdaptiveAvgPoolHwc(const float* src, int c, int srcH, int srcW, float* dst, int dstH, int dstW,
                              cudaStream_t stream);

/// dst [cols,rows] = transpose of src [rows,cols].
void launchTranspose(const float* src, int64_t rows, int64_t cols, float* dst, cudaStream_t stream);

// ---- attention kernels (attention_kernels.cu) -------------------------------------------------

/// table[i*kernel + t] = neighborLowIndex(i, t, outLen, lowLen, kernel) for i < outLen, t < kernel.
void launchWindowTable(int* table, int outLen, int lowLen, int kernel, cudaStream_t stream);

/// Fused neighborhood attention: qT [outH*outW,dim], kT [lowH*lowW,dim], vT [lowH*lowW,channels]
/// (pixel-major) -> out [channels,outH,outW] (channel-major, the API layout). rowTable [outH,kh],
/// colTable [outW,kw]. Head dims 32 and 64 run the tiled kernel (window unions in shared memory)
/// when the union fits; otherwise, or with AttentionKernel::General, the warp-per-pixel one.
/// Returns the kernel that was launched.
/// AttentionKernel::Cell runs when cellChunks (device copy of cell::buildChunks, worthwhile) is
/// given and the kernel fits; else Tiled's rules apply.
AttentionKernel launchNeighborhoodAttention(const float* qT, const float* kT, const float* vT, float* out, int dim,
                                            int channels, int heads, int lowH, int lowW, int outH, int outW,
                                            const int* rowTable, const int* colTable, int kh, int kw, float scale,
                                            cudaStream_t stream, AttentionKernel kernel,
                                            const cell::Chunk* cellChunks = nullptr, int64_t cellChunkCount = 0);

/// Whether the tensor-core cell kernel (AttentionKernel::CellTensorCore) runs on the current
/// device for this problem: compute capability 8.0 or newer, head dim 32/64, at most 88 window
/// entries, and its shared memory (which grows with the value channels per head) within the
/// device's per-block limit.
bool cellTensorCoreRuns(int headDim, int valuesPerHead, int kh, int kw);

/// Blocks of the tiled kernel that fit on one SM for this problem (0: the kernel's limits do not
/// hold). Where the tensor-core cell kernel does not run, AttentionKernel::Auto tries the FMA
/// cell kernel where this is 1 or 0: with 1, the largest window union of a tile takes over
/// half the shared memory (14-pixel cells: 12 x 10 entries).
int tiledAttentionBlocksPerSm(int dim, int channels, int heads, int lowH, int lowW, int outH, int outW, int kh,
                              int kw);

/// Softmax probabilities [heads,kh,kw] of output pixel (y,x) into probs (device).
void launchAttentionProbe(const float* qT, const float* kT, int dim, int heads, int lowW, int outW, int y, int x,
                          const int* rowTable, const int* colTable, int kh, int kw, float scale, float* probs,
                          cudaStream_t stream);

/// Largest head dimension (dim / heads) the attention kernels support.
constexpr int kMaxHeadDim = 128;

}  // namespace detail
}  // namespace cuda
}  // namespace kernels
}  // namespace naf
