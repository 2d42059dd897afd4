// Internal declarations of the CUDA path: error checking, device-side weight views and the
// launchers of the kernels (defined in encoder_kernels.cu and attention_kernels.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "naf_kernels/naf_kernels.hpp"

namespace naf {
namespace kernels {
namespace cuda {
namespace detail {

/// Throws std::runtime_error("naf::kernels::cuda: <what>: <CUDA error>") when err != cudaSuccess.
inline void check(cudaError_t err, const char* what)
{
    if (err == cudaSuccess) return;
    (void)cudaGetLastError();  // clear a non-sticky error so later calls are not poisoned by it
    throw std::runtime_error(std::string("naf::kernels::cuda: ") + what + " failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
}

/// Checks the launch of the kernel that was just enqueued.
inline void checkLaunch(const char* what)
{
    check(cudaGetLastError(), what);
}

/// One convolution with device pointers (bias may be null).
struct DevConv
{
    const float* weight = nullptr;
    const float* bias = nullptr;
    int cout = 0, cin = 0, k = 0;
};

/// Threads per block of the elementwise kernels.
constexpr int kThreads = 256;
/// Elements reduced by one block of the GroupNorm statistics (fixed: results never depend on
/// the device or launch configuration).
constexpr int kGnChunk = 4096;

/// Number of GroupNorm partial sums per group for a group of `groupLen` elements.
inline int64_t gnChunks(int64_t groupLen)
{
    return (groupLen + kGnChunk - 1) / kGnChunk;
}

// ---- encoder kernels (encoder_kernels.cu) -----------------------------------------------------

/// dst [3,dstH,dstW] = bilinear resize (half-pixel, no antialias) of ((src - mean) / stdev);
/// a plain normalization when the sizes are equal.
void launchNormalizeResize(const float* src, int srcH, int srcW, float* dst, int dstH, int dstW, const float mean[3],
                           const float stdev[3], cudaStream_t stream);

/// Stride-1 reflect-padded convolution + bias, src [cin,h,w] -> dst [cout,h,w]. TF32 uses tensor
/// cores when the device supports them (the caller decides; sm < 80 builds fall back to FP32).
void launchConv2dReflect(const float* src, int h, int w, const DevConv& conv, float* dst, bool tf32,
                         cudaStream_t stream);

/// In-place GroupNorm (affine) + SiLU on data [c,h,w]. `partial` holds groups*gnChunks(c/groups*h*w)
/// doubles, `stats` holds 2*groups doubles + 2*groups floats (see the implementation).
void launchGroupNormSiLU(float* data, int c, int h, int w, int groups, const float* gamma, const float* beta,
                         float eps, double* partial, void* stats, cudaStream_t stream);

/// Bytes of the `stats` scratch of launchGroupNormSiLU for `groups` groups.
size_t groupNormStatsBytes(int groups);

/// PyTorch adaptive_avg_pool2d, CHW -> CHW: src [c,srcH,srcW] -> dst [c,dstH,dstW].
void launchAdaptiveAvgPool(const float* src, int c, int srcH, int srcW, float* dst, int dstH, int dstW,
                           cudaStream_t stream);

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

/// Fused neighborhood attention on HWC tensors: qT [outH*outW,dim], kT [lowH*lowW,dim],
/// vT [lowH*lowW,channels] -> outT [outH*outW,channels]. rowTable [outH,kh], colTable [outW,kw].
void launchNeighborhoodAttention(const float* qT, const float* kT, const float* vT, float* outT, int dim,
                                 int channels, int heads, int lowW, int outH, int outW, const int* rowTable,
                                 const int* colTable, int kh, int kw, float scale, cudaStream_t stream);

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
