// Guide-encoder kernels of the CUDA path: normalize + bilinear resize (written reflect-padded),
// the built-in convolution on padded input (implicit GEMM, FP32 SIMT or TF32 tensor cores; cuDNN
// runs the convolutions instead when built in, cudnn_conv.cpp), GroupNorm + SiLU (written
// reflect-padded), adaptive average pooling, RoPE (fused with pooling and the transpose to
// pixel-major queries), the channels-last tail (hwc_tail.hpp), layout transposes. Semantics follow naf_kernels.hpp step by step.
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "hwc_tail.hpp"
#include "naf_cuda_internal.cuh"

namespace naf {
namespace kernels {
namespace cuda {
namespace detail {

namespace {

/// Blocks for a grid-stride loop over `n` items (capped; the loops cover the rest).
inline unsigned int gridFor(int64_t n, int threads = kThreads)
{
    const int64_t blocks = (n + threads - 1) / threads;
    return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(1) << 20)));
}

__device__ __forceinline__ int reflectIndex(int i, int n)
{
    if (i < 0) return -i;
    if (i >= n) return 2 * n - 2 - i;
    return i;
}

// Storage of the encoder tensors: float, or __half in MathMode::FP16 (arithmetic in float either way).
__device__ __forceinline__ float toFloat(float v)
{
    return v;
}
__device__ __forceinline__ float toFloat(__half v)
{
    return __half2float(v);
}
template <typename T>
__device__ __forceinline__ T fromFloat(float v);
template <>
__device__ __forceinline__ float fromFloat<float>(float v)
{
    return v;
}
template <>
__device__ __forceinline__ __half fromFloat<__half>(float v)
{
    return __float2half_rn(v);
}

// ---- normalize + bilinear resize ---------------------------------------------------------------

struct Norm3
{
    float mean[3];
    float invStd[3];  // 1 / stdev, multiplied like the CPU path
};

// One block per row of the padded destination [3, dstH+2*pad, dstW+2*pad]; a padded position
// takes the value of its reflection inside the dstH x dstW guide (reflect padding of the conv
// that reads it, done here instead of in the convolution).
template <typename Dst>
__global__ void __launch_bounds__(kThreads)
    normalizeResizePaddedKernel(const float* __restrict__ src, int srcH, int srcW, Dst* __restrict__ dst, int dstH,
                                int dstW, int pad, Norm3 nrm)
{
    const int paddedH = dstH + 2 * pad, paddedW = dstW + 2 * pad;
    const int row = blockIdx.x;  // c * paddedH + yp
    const int c = row / paddedH;
    const int y = reflectIndex(row - c * paddedH - pad, dstH);
    const bool same = srcH == dstH && srcW == dstW;
    const float mean = c == 0 ? nrm.mean[0] : (c == 1 ? nrm.mean[1] : nrm.mean[2]);
    const float inv = c == 0 ? nrm.invStd[0] : (c == 1 ? nrm.invStd[1] : nrm.invStd[2]);
    const float* s = src + static_cast<size_t>(c) * srcH * srcW;
    Dst* d = dst + static_cast<size_t>(row) * paddedW;
    // PyTorch area_pixel_compute_source_index (align_corners=False) in float, as on the CPU.
    const float scaleY = static_cast<float>(srcH) / static_cast<float>(dstH);
    const float scaleX = static_cast<float>(srcW) / static_cast<float>(dstW);
    int y0 = y, y1 = y;
    float wy0 = 1.f, wy1 = 0.f;
    if (!same)
    {
        float fy = scaleY * (static_cast<float>(y) + 0.5f) - 0.5f;
        if (fy < 0.f) fy = 0.f;
        y0 = static_cast<int>(fy);
        if (y0 > srcH - 1) y0 = srcH - 1;
        y1 = y0 < srcH - 1 ? y0 + 1 : y0;
        wy1 = fy - static_cast<float>(y0);
        wy0 = 1.f - wy1;
    }
    const float* r0 = s + static_cast<size_t>(y0) * srcW;
    const float* r1 = s + static_cast<size_t>(y1) * srcW;
    for (int xp = threadIdx.x; xp < paddedW; xp += blockDim.x)
    {
        const int x = reflectIndex(xp - pad, dstW);
        if (same)
        {
            d[xp] = fromFloat<Dst>((r0[x] - mean) * inv);
            continue;
        }
        float fx = scaleX * (static_cast<float>(x) + 0.5f) - 0.5f;
        if (fx < 0.f) fx = 0.f;
        int x0 = static_cast<int>(fx);
        if (x0 > srcW - 1) x0 = srcW - 1;
        const int x1 = x0 < srcW - 1 ? x0 + 1 : x0;
        const float wx1 = fx - static_cast<float>(x0), wx0 = 1.f - wx1;
        const float v00 = (r0[x0] - mean) * inv, v01 = (r0[x1] - mean) * inv;
        const float v10 = (r1[x0] - mean) * inv, v11 = (r1[x1] - mean) * inv;
        d[xp] = fromFloat<Dst>(wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11));
    }
}

// ---- convolution: implicit GEMM out[co, p] = bias[co] + sum_k W[co, k] * col[k, p] --------------
//
// M = cout, N = h*w pixels, K = cin*k*k (PyTorch weight layout [cout][cin][ky][kx]); the input
// arrives reflect-padded by k/2 (written so by the previous kernel), so the gather has no
// border logic. One block
// computes a 64x64 output tile; K is walked in steps of 16 staged in shared memory: As holds the
// weight tile transposed (As[k][m]), Bs the im2col tile gathered on the fly with reflect padding
// (Bs[k][n]). Everything outside [cout) x [hw) x [K) is zero-filled and never written.

constexpr int kConvBM = 64;
constexpr int kConvBN = 64;
constexpr int kConvBK = 16;
constexpr int kConvLd = 68;  // padded leading dimension: multiple of 4 floats, 32-byte aligned wmma tiles
constexpr int kConvThreads = 256;

// T: the storage of src, weight and dst (float, or __half: converted to float when staged).
template <int KS, bool TF32, typename T>
__global__ void __launch_bounds__(kConvThreads)
    conv2dReflectKernel(const T* __restrict__ src, int h, int w, int cin, const T* __restrict__ weight,
                        const float* __restrict__ bias, int cout, int ksRuntime, T* __restrict__ dst)
{
    const int ks = KS > 0 ? KS : ksRuntime;
    const int kk2 = ks * ks;
    const int K = cin * kk2;
    const int pad = ks / 2;
    const int hw = h * w;
    const int paddedW = w + 2 * pad;
    const size_t paddedPlane = static_cast<size_t>(h + 2 * pad) * paddedW;
    const int m0 = blockIdx.y * kConvBM;
    const int n0 = blockIdx.x * kConvBN;
    const int tid = threadIdx.x;

    __shared__ __align__(32) float As[kConvBK * kConvLd];
    __shared__ __align__(32) float Bs[kConvBK * kConvLd];

    // B loader: one pixel column per thread, rows kB0 + 4*i.
    const int nB = tid & 63;
    const int kB0 = tid >> 6;
    const int p = n0 + nB;
    const bool pValid = p < hw;
    const int py = pValid ? p / w : 0;
    const int px = pValid ? p - py * w : 0;
    // A loader: one output channel row per 4 threads, 4 consecutive k each.
    const int mA = tid >> 2;
    const int kA0 = (tid & 3) * 4;
    const int mRow = m0 + mA;
    const T* wRow = weight + static_cast<size_t>(mRow < cout ? mRow : 0) * K;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    constexpr bool useWmma = TF32;
#else
    constexpr bool useWmma = false;
#endif

    // FP32 SIMT accumulators: rows ty + 16*i, columns tx + 16*j.
    const int tx = tid & 15;
    const int ty = tid >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // TF32 tensor cores: warp wid computes rows 16*(wid&3).., columns 32*(wid>>2).. (two 16x16 tiles).
    namespace wmma = nvcuda::wmma;
    const int wid = tid >> 5;
    const int wm = wid & 3;
    const int wn = wid >> 2;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> cFrag[2];
    if (useWmma)
    {
        wmma::fill_fragment(cFrag[0], 0.f);
        wmma::fill_fragment(cFrag[1], 0.f);
    }
#endif

    for (int k0 = 0; k0 < K; k0 += kConvBK)
    {
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            const int kk = k0 + kA0 + i;
            As[(kA0 + i) * kConvLd + mA] = (mRow < cout && kk < K) ? toFloat(wRow[kk]) : 0.f;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            const int kr = kB0 + 4 * i;
            const int kk = k0 + kr;
            float v = 0.f;
            if (pValid && kk < K)
            {
                const int ci = kk / kk2;
                const int r = kk - ci * kk2;
                const int ky = r / ks;
                const int kx = r - ky * ks;
                // src is already reflect-padded by `pad`: tap (ky,kx) of pixel (py,px) is at (py+ky, px+kx).
                v = toFloat(
                    src[static_cast<size_t>(ci) * paddedPlane + static_cast<size_t>(py + ky) * paddedW + (px + kx)]);
            }
            Bs[kr * kConvLd + nB] = v;
        }
        __syncthreads();

        if (useWmma)
        {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#pragma unroll
            for (int kstep = 0; kstep < kConvBK; kstep += 8)
            {
                // A(m, k) = As[k*ld + m]: column-major A with leading dimension ld.
                wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> aFrag;
                wmma::load_matrix_sync(aFrag, As + kstep * kConvLd + wm * 16, kConvLd);
#pragma unroll
                for (int t = 0; t < aFrag.num_elements; ++t) aFrag.x[t] = wmma::__float_to_tf32(aFrag.x[t]);
#pragma unroll
                for (int j = 0; j < 2; ++j)
                {
                    // B(k, n) = Bs[k*ld + n]: row-major B.
                    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> bFrag;
                    wmma::load_matrix_sync(bFrag, Bs + kstep * kConvLd + wn * 32 + j * 16, kConvLd);
#pragma unroll
                    for (int t = 0; t < bFrag.num_elements; ++t) bFrag.x[t] = wmma::__float_to_tf32(bFrag.x[t]);
                    wmma::mma_sync(cFrag[j], aFrag, bFrag, cFrag[j]);
                }
            }
#endif
        }
        else
        {
#pragma unroll
            for (int k = 0; k < kConvBK; ++k)
            {
                float a[4], b[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) a[i] = As[k * kConvLd + ty + 16 * i];
#pragma unroll
                for (int j = 0; j < 4; ++j) b[j] = Bs[k * kConvLd + tx + 16 * j];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
        }
        __syncthreads();
    }

    if (useWmma)
    {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        __shared__ __align__(32) float Cs[kConvBM * kConvLd];
        wmma::store_matrix_sync(Cs + (wm * 16) * kConvLd + wn * 32, cFrag[0], kConvLd, wmma::mem_row_major);
        wmma::store_matrix_sync(Cs + (wm * 16) * kConvLd + wn * 32 + 16, cFrag[1], kConvLd, wmma::mem_row_major);
        __syncthreads();
        for (int e = tid; e < kConvBM * kConvBN; e += kConvThreads)
        {
            const int mi = e / kConvBN;
            const int ni = e - mi * kConvBN;
            const int m = m0 + mi;
            const int n = n0 + ni;
            if (m < cout && n < hw)
                dst[static_cast<size_t>(m) * hw + n] = fromFloat<T>(Cs[mi * kConvLd + ni] + (bias ? bias[m] : 0.f));
        }
#endif
    }
    else
    {
#pragma unroll
        for (int i = 0; i < 4; ++i)
        {
            const int m = m0 + ty + 16 * i;
            if (m >= cout) continue;
            const float b = bias ? bias[m] : 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j)
            {
                const int n = n0 + tx + 16 * j;
                if (n < hw) dst[static_cast<size_t>(m) * hw + n] = fromFloat<T>(acc[i][j] + b);
            }
        }
    }
}

template <bool TF32, typename T>
void launchConvT(const T* src, int h, int w, const DevConv& conv, const T* weight, T* dst, cudaStream_t stream)
{
    const int64_t hw = int64_t(h) * w;
    const dim3 grid(static_cast<unsigned int>((hw + kConvBN - 1) / kConvBN),
                    static_cast<unsigned int>((conv.cout + kConvBM - 1) / kConvBM));
    if (conv.k == 1)
        conv2dReflectKernel<1, TF32, T><<<grid, kConvThreads, 0, stream>>>(src, h, w, conv.cin, weight, conv.bias,
                                                                           conv.cout, 1, dst);
    else if (conv.k == 3)
        conv2dReflectKernel<3, TF32, T><<<grid, kConvThreads, 0, stream>>>(src, h, w, conv.cin, weight, conv.bias,
                                                                           conv.cout, 3, dst);
    else
        conv2dReflectKernel<0, TF32, T><<<grid, kConvThreads, 0, stream>>>(src, h, w, conv.cin, weight, conv.bias,
                                                                           conv.cout, conv.k, dst);
}

// ---- GroupNorm + SiLU --------------------------------------------------------------------------
//
// The input is a convolution's output without its bias (x + bias[c] is the tensor normalized).
// Statistics in double with a fixed reduction tree: each block reduces one kGnChunk-element
// chunk of one group into a partial (sum, sum of squares), a finalize kernel reduces the
// partials of a group in a fixed order; variance = E[x^2] - mean^2 in double (fp32 inputs: the
// cancellation costs nothing measurable against the CPU's fp64 statistics).
// Deterministic. The apply kernel writes the activation reflect-padded for the next convolution.

__device__ __forceinline__ double blockReduceSum(double v, double* shared)
{
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride >>= 1)
    {
        if (static_cast<int>(threadIdx.x) < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
        __syncthreads();
    }
    const double total = shared[0];
    __syncthreads();  // shared[] is reused by the next reduction
    return total;
}

// grid (chunks per channel, channels): each block sums one kGnChunk-element chunk of one channel.
template <typename Src>
__global__ void __launch_bounds__(kThreads)
    gnPartialKernel(const Src* __restrict__ data, const float* __restrict__ bias, int64_t hw, int chunksPerChannel,
                    double* __restrict__ partial)
{
    __shared__ double red[kThreads];
    const int ch = blockIdx.y;
    const Src* base = data + static_cast<size_t>(ch) * hw;
    const int64_t start = int64_t(blockIdx.x) * kGnChunk;
    const int64_t end = start + kGnChunk < hw ? start + kGnChunk : hw;
    const float b = bias ? bias[ch] : 0.f;
    double sum = 0.0, sumSq = 0.0;
    if (std::is_same<Src, __half>::value && hw % 2 == 0)
    {
        // float16 pairs: one 4-byte load per thread and step (a warp's scalar 2-byte loads would
        // fill half of each 128-byte request). start, end and each channel's base are even here.
        const __half2* pairs = reinterpret_cast<const __half2*>(base);
        for (int64_t i = start / 2 + threadIdx.x; i < end / 2; i += kThreads)
        {
            const float2 f = __half22float2(pairs[i]);
            const double v0 = static_cast<double>(f.x + b), v1 = static_cast<double>(f.y + b);
            sum += v0 + v1;
            sumSq += v0 * v0 + v1 * v1;
        }
    }
    else
    {
        for (int64_t i = start + threadIdx.x; i < end; i += kThreads)
        {
            const double v = static_cast<double>(toFloat(base[i]) + b);
            sum += v;
            sumSq += v * v;
        }
    }
    const double totalSum = blockReduceSum(sum, red);
    const double totalSq = blockReduceSum(sumSq, red);
    if (threadIdx.x == 0)
    {
        const size_t slot = static_cast<size_t>(ch) * chunksPerChannel + blockIdx.x;
        partial[2 * slot] = totalSum;
        partial[2 * slot + 1] = totalSq;
    }
}

// One block per group: the partials of its channels, in a fixed order; then each channel's
// affine map with the convolution bias folded in: GN(x + b) = x * scale[c] + shift[c], so the
// apply kernel waits on two loads per row instead of a chain through the group statistics.
__global__ void __launch_bounds__(kThreads)
    gnFinalizeKernel(const double* __restrict__ partial, int partialsPerGroup, int64_t groupLen, float eps,
                     int perGroup, const float* __restrict__ bias, const float* __restrict__ gamma,
                     const float* __restrict__ beta, float* __restrict__ scaleC, float* __restrict__ shiftC,
                     int* __restrict__ nonFinite)
{
    __shared__ double red[kThreads];
    __shared__ float groupStats[2];
    const int g = blockIdx.x;
    double sum = 0.0, sumSq = 0.0;
    for (int i = threadIdx.x; i < partialsPerGroup; i += kThreads)
    {
        const size_t slot = static_cast<size_t>(g) * partialsPerGroup + i;
        sum += partial[2 * slot];
        sumSq += partial[2 * slot + 1];
    }
    const double totalSum = blockReduceSum(sum, red);
    const double totalSq = blockReduceSum(sumSq, red);
    if (threadIdx.x == 0)
    {
        // A float16 input past its range arrives as inf (then NaN): flag it for the caller.
        if (nonFinite && !(isfinite(totalSum) && isfinite(totalSq))) *nonFinite = 1;
        const double n = static_cast<double>(groupLen);
        const double mean = totalSum / n;
        double var = totalSq / n - mean * mean;  // biased, as GroupNorm
        if (var < 0.0) var = 0.0;
        groupStats[0] = static_cast<float>(mean);
        groupStats[1] = static_cast<float>(1.0 / sqrt(var + static_cast<double>(eps)));
    }
    __syncthreads();
    for (int j = threadIdx.x; j < perGroup; j += kThreads)
    {
        const int ch = g * perGroup + j;
        const float scale = groupStats[1] * (gamma ? gamma[ch] : 1.f);
        const float b = bias ? bias[ch] : 0.f;
        scaleC[ch] = scale;
        shiftC[ch] = (beta ? beta[ch] : 0.f) - groupStats[0] * scale + b * scale;
    }
}

// One warp per row of the padded destination [c, h+2*pad, w+2*pad], warps striding over rows.
// - Each lane loads kGnApplyUnroll elements of its row before it computes and stores any (with
//   one load in flight per thread: 1.78 ms per unpadded call at 2016x2016 on the H100; 1.51
//   with 4).
// - Each warp stores 32 consecutive elements starting on a 128-byte line boundary. A padded row
//   (w + 2 elements) starts anywhere inside a line, and stores that split sectors made the H100
//   read those sectors from DRAM first: 3.2 GB read for 2.1 GB of input, 3.1 ms per padded call
//   at 2016x2016; aligned, 1.7 ms.
// - A warp, not a block, per row: a block of 256 threads per row left a 448x448 row (450
//   elements) half a step, and each thread walked ~14 rows one dependent load at a time
//   (~100 us per call at 448x448, ~1.1 TB/s); a warp covers a short row in a few steps.
constexpr int kGnApplyUnroll = 4;

template <typename Src, typename Dst>
__global__ void __launch_bounds__(kThreads)
    gnApplySiLUPaddedKernel(const Src* __restrict__ src, int c, int h, int w, const float* __restrict__ scaleC,
                            const float* __restrict__ shiftC, Dst* __restrict__ dst, int pad)
{
    const int paddedH = h + 2 * pad, paddedW = w + 2 * pad;
    const int rows = c * paddedH;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int warpsPerBlock = static_cast<int>(blockDim.x) >> 5;
    for (int row = blockIdx.x * warpsPerBlock + (static_cast<int>(threadIdx.x) >> 5); row < rows;
         row += gridDim.x * warpsPerBlock)
    {
        const int ch = row / paddedH;
        const int y = reflectIndex(row - ch * paddedH - pad, h);
        const float scale = scaleC[ch], shift = shiftC[ch];
        const Src* s = src + (static_cast<size_t>(ch) * h + y) * w;
        const size_t rowStart = static_cast<size_t>(row) * paddedW;
        Dst* d = dst + rowStart;
        // Row elements before the first 128-byte line boundary of the row (dst is 128-byte aligned).
        constexpr int kPerLine = 128 / static_cast<int>(sizeof(Dst));
        const int lead = static_cast<int>(rowStart & (kPerLine - 1));
        for (int xp0 = lane - lead; xp0 < paddedW; xp0 += kGnApplyUnroll * 32)
        {
            float v[kGnApplyUnroll];
#pragma unroll
            for (int k = 0; k < kGnApplyUnroll; ++k)
            {
                const int xp = xp0 + k * 32;
                v[k] = xp >= 0 && xp < paddedW ? toFloat(s[reflectIndex(xp - pad, w)]) : 0.f;
            }
#pragma unroll
            for (int k = 0; k < kGnApplyUnroll; ++k)
            {
                const int xp = xp0 + k * 32;
                const float t = v[k] * scale + shift;
                // Fast intrinsics (a few ulp; the full-precision pair cost ~1 ms per call at
                // 2016x2016). For t < -88, __expf(-t) is inf and __fdividef gives 0: SiLU's limit.
                if (xp >= 0 && xp < paddedW) d[xp] = fromFloat<Dst>(__fdividef(t, 1.f + __expf(-t)));
            }
        }
    }
}

// ---- adaptive average pooling --------------------------------------------------------------------

__device__ __forceinline__ int poolStart(int i, int in, int out)
{
    return static_cast<int>((static_cast<int64_t>(i) * in) / out);
}

__device__ __forceinline__ int poolStop(int i, int in, int out)
{
    return static_cast<int>((static_cast<int64_t>(i + 1) * in + out - 1) / out);
}

/// Output cell (oy, ox) of PyTorch adaptive_avg_pool2d of (plane + b), plane [srcH, srcW], summed in
/// double.
__device__ __forceinline__ float pooledValue(const float* __restrict__ plane, int srcH, int srcW, int oy, int ox,
                                             int dstH, int dstW, float b)
{
    const int y0 = poolStart(oy, srcH, dstH), y1 = poolStop(oy, srcH, dstH);
    const int x0 = poolStart(ox, srcW, dstW), x1 = poolStop(ox, srcW, dstW);
    double sum = 0.0;
    for (int y = y0; y < y1; ++y)
        for (int x = x0; x < x1; ++x) sum += plane[static_cast<size_t>(y) * srcW + x] + b;
    return static_cast<float>(sum / static_cast<double>((y1 - y0) * (x1 - x0)));
}

__global__ void __launch_bounds__(kThreads)
    adaptiveAvgPoolKernel(const float* __restrict__ src, const float* __restrict__ bias, int c, int srcH, int srcW,
                          float* __restrict__ dst, int dstH, int dstW)
{
    const int64_t total = int64_t(c) * dstH * dstW;
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x)
    {
        const int ox = static_cast<int>(idx % dstW);
        const int64_t t = idx / dstW;
        const int oy = static_cast<int>(t % dstH);
        const int ch = static_cast<int>(t / dstH);
        dst[idx] = pooledValue(src + static_cast<size_t>(ch) * srcH * srcW, srcH, srcW, oy, ox, dstH, dstW,
                               bias ? bias[ch] : 0.f);
    }
}

// Key pooling of the pixel-major queries [srcH*srcW, c] -> [dstH*dstW, c]: one block per output
// cell. Its threads are (group, lane): a lane owns kVec consecutive channels, the groups split
// the cell's columns, and each thread keeps kPoolUnroll loads in flight. The groups' double sums
// are added in a fixed order (deterministic). The former thread-per-output kernel summed a whole
// cell serially, one load in flight; this one reads at about DRAM bandwidth (ncu, H100, 2016x2016:
// 1.34 ms for the 4.2 GB of queries, 3.1 TB/s).
constexpr int kPoolUnroll = 4;

template <int kVec>
__global__ void __launch_bounds__(kThreads)
    cellPoolHwcKernel(const float* __restrict__ src, int c, int srcH, int srcW, float* __restrict__ dst, int dstH,
                      int dstW)
{
    using Vec = typename std::conditional<kVec == 4, float4, float>::type;
    extern __shared__ double groupSums[];  // [groups][lanesPerPass * kVec]
    const int oy = blockIdx.x / dstW, ox = blockIdx.x - oy * dstW;
    const int y0 = poolStart(oy, srcH, dstH), y1 = poolStop(oy, srcH, dstH);
    const int x0 = poolStart(ox, srcW, dstW), x1 = poolStop(ox, srcW, dstW);
    const double inv = 1.0 / static_cast<double>((y1 - y0) * (x1 - x0));
    const int lanes = c / kVec;
    const int lanesPerPass = lanes < kThreads ? lanes : kThreads;
    const int groups = blockDim.x / lanesPerPass;  // the launcher sends whole groups
    const int group = threadIdx.x / lanesPerPass;
    const int laneInPass = threadIdx.x - group * lanesPerPass;
    for (int lane0 = 0; lane0 < lanes; lane0 += lanesPerPass)
    {
        const int lane = lane0 + laneInPass;
        const bool active = lane < lanes;
        double sum[kVec] = {};
        if (active)
        {
            const Vec* base = reinterpret_cast<const Vec*>(src) + lane;
            for (int y = y0; y < y1; ++y)
            {
                const Vec* row = base + static_cast<size_t>(y) * srcW * lanes;
                for (int x = x0 + group; x < x1; x += kPoolUnroll * groups)
                {
                    Vec v[kPoolUnroll];
#pragma unroll
                    for (int k = 0; k < kPoolUnroll; ++k)
                    {
                        const int xi = x + k * groups;
                        if (xi < x1) v[k] = row[static_cast<size_t>(xi) * lanes];
                    }
#pragma unroll
                    for (int k = 0; k < kPoolUnroll; ++k)
                    {
                        if (x + k * groups >= x1) break;
                        const float* f = reinterpret_cast<const float*>(&v[k]);
#pragma unroll
                        for (int j = 0; j < kVec; ++j) sum[j] += f[j];
                    }
                }
            }
        }
        if (groups > 1)
        {
            if (active)
                for (int j = 0; j < kVec; ++j) groupSums[(group * lanesPerPass + laneInPass) * kVec + j] = sum[j];
            __syncthreads();
            if (group == 0 && active)
                for (int g = 1; g < groups; ++g)
                    for (int j = 0; j < kVec; ++j) sum[j] += groupSums[(g * lanesPerPass + laneInPass) * kVec + j];
            __syncthreads();  // groupSums is reused by the next pass
        }
        if (group == 0 && active)
        {
            float* out = dst + static_cast<size_t>(blockIdx.x) * c + static_cast<size_t>(lane) * kVec;
            for (int j = 0; j < kVec; ++j) out[j] = static_cast<float>(sum[j] * inv);
        }
    }
}

// ---- RoPE ----------------------------------------------------------------------------------------
//
// Per head of headDim channels: channel j < headDim/2 pairs with j + headDim/2; the pair's angle
// index a = j (mod headDim/2) uses the row coordinate for a < headDim/4 and the column coordinate
// (period a - headDim/4) otherwise. Angles in float32 as 2*pi*coord/period, like the CPU.

__global__ void __launch_bounds__(kThreads)
    ropeToHwcKernel(const float* __restrict__ q, float* __restrict__ qT, int dim, int h, int w, int heads,
                    const float* __restrict__ periods)
{
    const int headDim = dim / heads, half = headDim / 2, quarter = headDim / 4;
    const int64_t hw = int64_t(h) * w;
    const int64_t total = hw * dim;
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x)
    {
        const int c = static_cast<int>(idx % dim);
        const int64_t pix = idx / dim;
        const int y = static_cast<int>(pix / w);
        const int x = static_cast<int>(pix - int64_t(y) * w);
        const int j = c % headDim;
        const bool low = j < half;
        const int a = low ? j : j - half;
        float coord, period;
        if (a < quarter)
        {
            coord = 2.f * ((static_cast<float>(y) + 0.5f) / static_cast<float>(h)) - 1.f;
            period = periods[a];
        }
        else
        {
            coord = 2.f * ((static_cast<float>(x) + 0.5f) / static_cast<float>(w)) - 1.f;
            period = periods[a - quarter];
        }
        const float angle = 6.283185307179586f * coord / period;
        const float cs = cosf(angle), sn = sinf(angle);
        const int cLo = low ? c : c - half;
        const float lo = q[static_cast<size_t>(cLo) * hw + pix];
        const float hi = q[static_cast<size_t>(cLo + half) * hw + pix];
        qT[idx] = low ? lo * cs - hi * sn : hi * cs + lo * sn;
    }
}

// ---- one encoder branch's output -> RoPE'd queries, pixel-major --------------------------------
//
// Fuses adaptive pooling (+ the last convolution's bias), RoPE and the CHW -> HWC transpose for
// one branch (its channels [offset, offset+hidden) of the queries), when no RoPE head straddles
// two branches. One block per 32 consecutive output pixels: the tile [hidden][32] is read
// along pixels (coalesced), rotated in shared memory, written along channels (coalesced).

constexpr int kRopeTilePixels = 32;
constexpr int kRopeUnroll = 8;

// cos/sin of every RoPE angle: rows [h][quarter] from the row coordinate, columns [w][quarter]
// from the column coordinate (the angle of channel pair a is 2*pi*coord/period[a], in float32
// like the CPU's tables).
__global__ void __launch_bounds__(kThreads)
    ropeTablesKernel(float2* __restrict__ rowCS, float2* __restrict__ colCS, int h, int w, int quarter,
                     const float* __restrict__ periods)
{
    const int total = (h + w) * quarter;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x)
    {
        const bool isRow = idx < h * quarter;
        const int rel = isRow ? idx : idx - h * quarter;
        const int pos = rel / quarter, a = rel - pos * quarter;
        const int len = isRow ? h : w;
        const float coord = 2.f * ((static_cast<float>(pos) + 0.5f) / static_cast<float>(len)) - 1.f;
        const float angle = 6.283185307179586f * coord / periods[a];
        float sn, cs;
        sincosf(angle, &sn, &cs);
        (isRow ? rowCS : colCS)[rel] = make_float2(cs, sn);
    }
}

// Row and column of the block's kRopeTilePixels output pixels from pix0 on, into shared memory
// (then a barrier): the 64-bit divisions once per pixel, not once per element (ncu: 238 us per
// call at 448x448 when they were per element).
__device__ __forceinline__ void tilePixelCoordinates(int64_t pix0, int64_t outPlane, int outW, int* pixY, int* pixX)
{
    if (threadIdx.x < kRopeTilePixels)
    {
        const int64_t pix = pix0 + threadIdx.x;
        const int y = pix < outPlane ? static_cast<int>(pix / outW) : 0;
        pixY[threadIdx.x] = y;
        pixX[threadIdx.x] = pix < outPlane ? static_cast<int>(pix - int64_t(y) * outW) : 0;
    }
    __syncthreads();
}

// RoPE of a block's kRopeTilePixels output pixels into qTOffset[pixel * dim + c], c < hidden;
// valueAt(c, i) is channel c of the block's pixel i (bias included). Each thread keeps fixed
// channels (lane, lane + lanes, ...) and walks the pixels, so its RoPE pairing, table row and
// output offset are worked out once per channel instead of once per element (the per-element
// index arithmetic made pool + RoPE issue-bound: ~9 cycles per instruction at 2016x2016). A warp
// writes 32 consecutive channels of one pixel: coalesced stores. No barrier inside.
template <typename ValueAt>
__device__ __forceinline__ void ropeRotatePixels(int hidden, int headDim, int64_t pix0, int64_t outPlane,
                                                 const int* pixY, const int* pixX, const float2* rowCS,
                                                 const float2* colCS, float* qTOffset, int dim, ValueAt valueAt)
{
    const int quarter = headDim / 4;
    const int lanes = hidden < static_cast<int>(blockDim.x) ? hidden : static_cast<int>(blockDim.x);
    const int pixelsPerPass = static_cast<int>(blockDim.x) / lanes;
    const int lane = static_cast<int>(threadIdx.x) % lanes, firstPixel = static_cast<int>(threadIdx.x) / lanes;
    if (firstPixel >= pixelsPerPass) return;
    const int tilePixels = static_cast<int>(outPlane - pix0 < kRopeTilePixels ? outPlane - pix0 : kRopeTilePixels);
    for (int c = lane; c < hidden; c += lanes)
    {
        const hwc::RopeChannel r = hwc::ropeChannel(c, headDim);  // the branch starts at a multiple of headDim
        const float2* table = (r.fromRow ? rowCS : colCS) + r.angle;
        const int* coord = r.fromRow ? pixY : pixX;
        float* out = qTOffset + c;
        for (int i = firstPixel; i < tilePixels; i += pixelsPerPass)
        {
            const float2 t = table[static_cast<size_t>(coord[i]) * quarter];
            out[(pix0 + i) * dim] = hwc::ropeValue(valueAt(c, i), valueAt(r.partner, i), t.x, t.y, r.sign);
        }
    }
}

__global__ void __launch_bounds__(kThreads)
    poolRopeToHwcKernel(const float* __restrict__ src, const float* __restrict__ bias, int hidden, int srcH,
                        int srcW, float* __restrict__ qT, int dim, int offset, int outH, int outW, int headDim,
                        const float2* __restrict__ rowCS, const float2* __restrict__ colCS)
{
    extern __shared__ float tile[];  // [hidden][kRopeTilePixels + 1]
    __shared__ int pixY[kRopeTilePixels], pixX[kRopeTilePixels];
    constexpr int ld = kRopeTilePixels + 1;
    const int64_t outPlane = int64_t(outH) * outW;
    const int64_t pix0 = int64_t(blockIdx.x) * kRopeTilePixels;
    const bool identity = srcH == outH && srcW == outW;
    tilePixelCoordinates(pix0, outPlane, outW, pixY, pixX);
    if (identity)
    {
        // kRopeUnroll loads in flight per thread before any store: 3.40 -> 3.26 ms per call at
        // 2016x2016 (H100), still ~1.3 TB/s. ncu (a 128-pixel variant, slower: 3.5 ms) saw DRAM
        // 17 % busy and ~9 cycles per issued instruction: the per-element index arithmetic of the
        // rotation pass, not memory, is what to cut next.
        const int elements = hidden * kRopeTilePixels;
        for (int e0 = threadIdx.x; e0 < elements; e0 += kRopeUnroll * blockDim.x)
        {
            float v[kRopeUnroll];
#pragma unroll
            for (int k = 0; k < kRopeUnroll; ++k)
            {
                const int e = e0 + k * blockDim.x;
                const int c = e / kRopeTilePixels;
                const int64_t pix = pix0 + (e - c * kRopeTilePixels);
                v[k] = e < elements && pix < outPlane ? src[static_cast<size_t>(c) * outPlane + pix] : 0.f;
            }
#pragma unroll
            for (int k = 0; k < kRopeUnroll; ++k)
            {
                const int e = e0 + k * blockDim.x;
                if (e >= elements) break;
                const int c = e / kRopeTilePixels;
                const int i = e - c * kRopeTilePixels;
                tile[c * ld + i] = pix0 + i < outPlane ? v[k] + (bias ? bias[c] : 0.f) : 0.f;
            }
        }
    }
    else
    {
        for (int e = threadIdx.x; e < hidden * kRopeTilePixels; e += blockDim.x)
        {
            const int c = e / kRopeTilePixels;
            const int i = e - c * kRopeTilePixels;
            const int64_t pix = pix0 + i;
            float v = 0.f;
            if (pix < outPlane)
                v = pooledValue(src + static_cast<size_t>(c) * srcH * srcW, srcH, srcW, pixY[i], pixX[i], outH, outW,
                                bias ? bias[c] : 0.f);
            tile[c * ld + i] = v;
        }
    }
    __syncthreads();
    ropeRotatePixels(hidden, headDim, pix0, outPlane, pixY, pixX, rowCS, colCS, qT + offset, dim,
                     [&](int c, int i) { return tile[c * ld + i]; });
}

// ---- channels-last tail (hwc_tail.hpp, Engine::setNhwcTail) -----------------------------------
//
// GroupNorm+SiLU into the padded pixel-major [h+2pad][w+2pad][c] float tensor of the branch's
// last convolution (cuDNN NHWC), and RoPE from that convolution's pixel-major output.

constexpr int kHwcTilePixels = 32;

// grid (tiles of kHwcTilePixels padded columns, padded rows): the tile [c][32] is read along
// columns (coalesced), normalized into shared memory, and written along channels (coalesced).
template <typename Src>
__global__ void __launch_bounds__(kThreads)
    gnApplySiLUPaddedHwcKernel(const Src* __restrict__ src, int c, int h, int w, const float* __restrict__ scaleC,
                               const float* __restrict__ shiftC, float* __restrict__ dst, int pad)
{
    extern __shared__ float tile[];  // [c][kHwcTilePixels + 1]: odd stride, conflict-free both ways
    constexpr int ld = kHwcTilePixels + 1;
    const int paddedW = w + 2 * pad;
    const int yp = static_cast<int>(blockIdx.y);
    const int xp0 = static_cast<int>(blockIdx.x) * kHwcTilePixels;
    const int pixels = paddedW - xp0 < kHwcTilePixels ? paddedW - xp0 : kHwcTilePixels;
    // One load per thread and step: issuing 8 loads before computing any (48 registers, 5 blocks
    // per SM instead of 8) made the x72 FP16 encoder 1.5 ms slower on an H100 (GPU item 31).
    for (int e = threadIdx.x; e < c * kHwcTilePixels; e += blockDim.x)
    {
        const int ch = e / kHwcTilePixels, i = e - ch * kHwcTilePixels;
        float v = 0.f;
        if (i < pixels)
        {
            const float t = toFloat(src[hwc::paddedSourceOffset(ch, yp, xp0 + i, h, w, pad)]) * scaleC[ch] + shiftC[ch];
            v = __fdividef(t, 1.f + __expf(-t));  // as gnApplySiLUPaddedKernel
        }
        tile[ch * ld + i] = v;
    }
    __syncthreads();
    float* out = dst + hwc::paddedHwcOffset(yp, xp0, 0, w, pad, c);
    for (int e = threadIdx.x; e < pixels * c; e += blockDim.x)
    {
        const int i = e / c, ch = e - i * c;
        out[e] = tile[ch * ld + i];
    }
}

// One block per kRopeTilePixels output pixels, rotated as in poolRopeToHwcKernel but reading the
// pixel-major source directly: a channel and its RoPE partner are in the same pixel's row, so no
// tile is needed.
__global__ void __launch_bounds__(kThreads)
    ropeFromHwcKernel(const float* __restrict__ src, const float* __restrict__ bias, int hidden,
                      float* __restrict__ qT, int dim, int offset, int outH, int outW, int headDim,
                      const float2* __restrict__ rowCS, const float2* __restrict__ colCS)
{
    __shared__ int pixY[kRopeTilePixels], pixX[kRopeTilePixels];
    const int64_t outPlane = int64_t(outH) * outW;
    const int64_t pix0 = int64_t(blockIdx.x) * kRopeTilePixels;
    tilePixelCoordinates(pix0, outPlane, outW, pixY, pixX);
    ropeRotatePixels(hidden, headDim, pix0, outPlane, pixY, pixX, rowCS, colCS, qT + offset, dim, [&](int c, int i) {
        return src[static_cast<size_t>(pix0 + i) * hidden + c] + (bias ? bias[c] : 0.f);
    });
}

// ---- transpose -------------------------------------------------------------------------------

constexpr int kTile = 32;

__global__ void __launch_bounds__(kTile * 8)
    transposeKernel(const float* __restrict__ src, int64_t rows, int64_t cols, float* __restrict__ dst)
{
    __shared__ float tile[kTile][kTile + 1];
    const int64_t tilesC = (cols + kTile - 1) / kTile;
    const int64_t tilesR = (rows + kTile - 1) / kTile;
    for (int64_t t = blockIdx.x; t < tilesR * tilesC; t += gridDim.x)
    {
        const int64_t r0 = (t / tilesC) * kTile;
        const int64_t c0 = (t % tilesC) * kTile;
        for (int i = threadIdx.y; i < kTile; i += 8)
        {
            const int64_t r = r0 + i, c = c0 + threadIdx.x;
            if (r < rows && c < cols) tile[i][threadIdx.x] = src[r * cols + c];
        }
        __syncthreads();
        for (int i = threadIdx.y; i < kTile; i += 8)
        {
            const int64_t c = c0 + i, r = r0 + threadIdx.x;
            if (r < rows && c < cols) dst[c * rows + r] = tile[threadIdx.x][i];
        }
        __syncthreads();
    }
}

}  // namespace

// ---- launchers -------------------------------------------------------------------------------------

template <typename Dst>
void launchNormalizeResizePadded(const float* src, int srcH, int srcW, Dst* dst, int dstH, int dstW, int pad,
                                 const float mean[3], const float stdev[3], cudaStream_t stream)
{
    if (pad < 0 || dstH <= pad || dstW <= pad)
        throw std::invalid_argument("naf::kernels::cuda: reflect padding " + std::to_string(pad) +
                                    " needs a guide larger than " + std::to_string(pad) + " on both axes, got " +
                                    std::to_string(dstH) + "x" + std::to_string(dstW));
    Norm3 nrm;
    for (int c = 0; c < 3; ++c)
    {
        nrm.mean[c] = mean[c];
        nrm.invStd[c] = 1.f / stdev[c];
    }
    normalizeResizePaddedKernel<Dst><<<3 * (dstH + 2 * pad), kThreads, 0, stream>>>(src, srcH, srcW, dst, dstH, dstW,
                                                                                   pad, nrm);
    checkLaunch("normalize/resize kernel launch");
}

template void launchNormalizeResizePadded<float>(const float*, int, int, float*, int, int, int, const float[3],
                                                 const float[3], cudaStream_t);
template void launchNormalizeResizePadded<__half>(const float*, int, int, __half*, int, int, int, const float[3],
                                                  const float[3], cudaStream_t);

namespace {

template <typename T>
void launchConv2dPaddedT(const T* src, int h, int w, const DevConv& conv, const T* weight, T* dst, bool tf32,
                         cudaStream_t stream)
{
    if ((conv.cout + kConvBM - 1) / kConvBM > 65535)
        throw std::invalid_argument("naf::kernels::cuda: too many output channels");
    if (int64_t(h) * w + kConvBN > int64_t(0x7fffffff))
        throw std::invalid_argument("naf::kernels::cuda: convolution input too large");
    if (!weight) throw std::invalid_argument("naf::kernels::cuda: convolution without weights of the tensors' type");
    if (tf32)
        launchConvT<true>(src, h, w, conv, weight, dst, stream);
    else
        launchConvT<false>(src, h, w, conv, weight, dst, stream);
    checkLaunch("convolution kernel launch");
}

}  // namespace

void launchConv2dPadded(const float* src, int h, int w, const DevConv& conv, float* dst, bool tf32,
                        cudaStream_t stream)
{
    launchConv2dPaddedT(src, h, w, conv, conv.weight, dst, tf32, stream);
}

void launchConv2dPadded(const __half* src, int h, int w, const DevConv& conv, __half* dst, bool tf32,
                        cudaStream_t stream)
{
    launchConv2dPaddedT(src, h, w, conv, conv.weightHalf, dst, tf32, stream);
}

size_t groupNormStatsBytes(int channels)
{
    return static_cast<size_t>(channels) * 2 * sizeof(float);
}

namespace {

/// Checks, then runs the statistics of launchGroupNormSiLUPadded(Hwc): leaves each channel's
/// affine map (scale, shift; convolution bias folded in) at `stats`.
template <typename Src>
void launchGroupNormStats(const Src* src, const float* bias, int c, int h, int w, int groups, const float* gamma,
                          const float* beta, float eps, int pad, double* partial, void* stats, cudaStream_t stream,
                          int* nonFinite)
{
    if (groups <= 0 || c % groups != 0)
        throw std::invalid_argument("naf::kernels::cuda: " + std::to_string(c) + " channels not divisible into " +
                                    std::to_string(groups) + " groups");
    if (groups > 65535) throw std::invalid_argument("naf::kernels::cuda: too many GroupNorm groups");
    if (pad < 0 || h <= pad || w <= pad)
        throw std::invalid_argument("naf::kernels::cuda: reflect padding " + std::to_string(pad) +
                                    " needs an input larger than " + std::to_string(pad) + " on both axes, got " +
                                    std::to_string(h) + "x" + std::to_string(w));
    const int perGroup = c / groups;
    const int64_t hw = int64_t(h) * w;
    const int64_t groupLen = int64_t(perGroup) * hw;
    const int64_t chunks = gnChunksPerChannel(hw);
    const int64_t rows = int64_t(c) * (h + 2 * pad);
    if (chunks * perGroup > int64_t(0x7fffffff) || rows > int64_t(0x7fffffff) || c > 65535)
        throw std::invalid_argument("naf::kernels::cuda: GroupNorm input too large");
    float* scaleC = static_cast<float*>(stats);
    float* shiftC = scaleC + c;
    const dim3 grid(static_cast<unsigned int>(chunks), static_cast<unsigned int>(c));
    gnPartialKernel<Src><<<grid, kThreads, 0, stream>>>(src, bias, hw, static_cast<int>(chunks), partial);
    checkLaunch("GroupNorm statistics kernel launch");
    gnFinalizeKernel<<<groups, kThreads, 0, stream>>>(partial, static_cast<int>(chunks * perGroup), groupLen, eps,
                                                      perGroup, bias, gamma, beta, scaleC, shiftC, nonFinite);
    checkLaunch("GroupNorm finalize kernel launch");
}

}  // namespace

template <typename Src, typename Dst>
void launchGroupNormSiLUPadded(const Src* src, const float* bias, int c, int h, int w, int groups,
                               const float* gamma, const float* beta, float eps, Dst* dst, int pad, double* partial,
                               void* stats, cudaStream_t stream, int* nonFinite)
{
    launchGroupNormStats(src, bias, c, h, w, groups, gamma, beta, eps, pad, partial, stats, stream, nonFinite);
    const float* scaleC = static_cast<const float*>(stats);
    const float* shiftC = scaleC + c;
    const int64_t rows = int64_t(c) * (h + 2 * pad);
    const int64_t applyWarps = kThreads / 32;
    const unsigned int applyBlocks =
        static_cast<unsigned int>(std::min<int64_t>((rows + applyWarps - 1) / applyWarps, 4096));
    gnApplySiLUPaddedKernel<Src, Dst><<<applyBlocks, kThreads, 0, stream>>>(src, c, h, w, scaleC, shiftC, dst, pad);
    checkLaunch("GroupNorm+SiLU kernel launch");
}

template <typename Src>
void launchGroupNormSiLUPaddedHwc(const Src* src, const float* bias, int c, int h, int w, int groups,
                                  const float* gamma, const float* beta, float eps, float* dst, int pad,
                                  double* partial, void* stats, cudaStream_t stream, int* nonFinite)
{
    if (c > kMaxFusedRopeChannels || h + 2 * pad > 65535)
        throw std::invalid_argument("naf::kernels::cuda: channels-last GroupNorm takes at most " +
                                    std::to_string(kMaxFusedRopeChannels) + " channels and 65535 padded rows, got " +
                                    std::to_string(c) + " and " + std::to_string(h + 2 * pad));
    launchGroupNormStats(src, bias, c, h, w, groups, gamma, beta, eps, pad, partial, stats, stream, nonFinite);
    const float* scaleC = static_cast<const float*>(stats);
    const float* shiftC = scaleC + c;
    const dim3 grid(static_cast<unsigned int>((w + 2 * pad + kHwcTilePixels - 1) / kHwcTilePixels),
                    static_cast<unsigned int>(h + 2 * pad));
    const size_t shared = static_cast<size_t>(c) * (kHwcTilePixels + 1) * sizeof(float);
    gnApplySiLUPaddedHwcKernel<Src><<<grid, kThreads, shared, stream>>>(src, c, h, w, scaleC, shiftC, dst, pad);
    checkLaunch("channels-last GroupNorm+SiLU kernel launch");
}

template void launchGroupNormSiLUPaddedHwc<float>(const float*, const float*, int, int, int, int, const float*,
                                                  const float*, float, float*, int, double*, void*, cudaStream_t,
                                                  int*);
template void launchGroupNormSiLUPaddedHwc<__half>(const __half*, const float*, int, int, int, int, const float*,
                                                   const float*, float, float*, int, double*, void*, cudaStream_t,
                                                   int*);

#define NAF_INSTANTIATE_GROUPNORM(Src, Dst)                                                                       \
    template void launchGroupNormSiLUPadded<Src, Dst>(const Src*, const float*, int, int, int, int, const float*, \
                                                      const float*, float, Dst*, int, double*, void*, cudaStream_t, \
                                                      int*);
NAF_INSTANTIATE_GROUPNORM(float, float)
NAF_INSTANTIATE_GROUPNORM(__half, __half)
NAF_INSTANTIATE_GROUPNORM(__half, float)
#undef NAF_INSTANTIATE_GROUPNORM

void launchAdaptiveAvgPool(const float* src, const float* bias, int c, int srcH, int srcW, float* dst, int dstH,
                           int dstW, cudaStream_t stream)
{
    adaptiveAvgPoolKernel<<<gridFor(int64_t(c) * dstH * dstW), kThreads, 0, stream>>>(src, bias, c, srcH, srcW, dst,
                                                                                        dstH, dstW);
    checkLaunch("adaptive average pool kernel launch");
}

bool poolRopeFusable(int dim, int hidden, int offset, int ropeHeads)
{
    if (ropeHeads <= 0 || dim % ropeHeads != 0) return false;
    const int headDim = dim / ropeHeads;
    return hidden <= kMaxFusedRopeChannels && headDim % 4 == 0 && hidden % headDim == 0 && offset % headDim == 0;
}

size_t ropeTablesBytes(int h, int w, int dim, int ropeHeads)
{
    return static_cast<size_t>(h + w) * (dim / ropeHeads / 4) * sizeof(float2);
}

void launchRopeTables(void* tables, int h, int w, int dim, int ropeHeads, const float* periods, cudaStream_t stream)
{
    const int quarter = dim / ropeHeads / 4;
    float2* rowCS = static_cast<float2*>(tables);
    float2* colCS = rowCS + static_cast<size_t>(h) * quarter;
    ropeTablesKernel<<<gridFor(int64_t(h + w) * quarter), kThreads, 0, stream>>>(rowCS, colCS, h, w, quarter,
                                                                                periods);
    checkLaunch("RoPE table kernel launch");
}

void launchPoolRopeToHwc(const float* src, const float* bias, int hidden, int srcH, int srcW, float* qT, int dim,
                         int offset, int outH, int outW, int ropeHeads, const void* ropeTables, cudaStream_t stream)
{
    if (!poolRopeFusable(dim, hidden, offset, ropeHeads))
        throw std::invalid_argument("naf::kernels::cuda: fused pool+RoPE needs whole RoPE heads inside the branch");
    const int64_t blocks = (int64_t(outH) * outW + kRopeTilePixels - 1) / kRopeTilePixels;
    if (blocks > int64_t(0x7fffffff)) throw std::invalid_argument("naf::kernels::cuda: output too large");
    const size_t shared = static_cast<size_t>(hidden) * (kRopeTilePixels + 1) * sizeof(float);
    const int quarter = dim / ropeHeads / 4;
    const float2* rowCS = static_cast<const float2*>(ropeTables);
    const float2* colCS = rowCS + static_cast<size_t>(outH) * quarter;
    poolRopeToHwcKernel<<<static_cast<unsigned int>(blocks), kThreads, shared, stream>>>(
        src, bias, hidden, srcH, srcW, qT, dim, offset, outH, outW, dim / ropeHeads, rowCS, colCS);
    checkLaunch("pool+RoPE kernel launch");
}

void launchRopeFromHwc(const float* src, const float* bias, int hidden, float* qT, int dim, int offset, int outH,
                       int outW, int ropeHeads, const void* ropeTables, cudaStream_t stream)
{
    if (!poolRopeFusable(dim, hidden, offset, ropeHeads))
        throw std::invalid_argument("naf::kernels::cuda: RoPE from channels-last needs whole RoPE heads inside the "
                                    "branch");
    const int64_t blocks = (int64_t(outH) * outW + kRopeTilePixels - 1) / kRopeTilePixels;
    if (blocks > int64_t(0x7fffffff)) throw std::invalid_argument("naf::kernels::cuda: output too large");
    const int quarter = dim / ropeHeads / 4;
    const float2* rowCS = static_cast<const float2*>(ropeTables);
    const float2* colCS = rowCS + static_cast<size_t>(outH) * quarter;
    ropeFromHwcKernel<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        src, bias, hidden, qT, dim, offset, outH, outW, dim / ropeHeads, rowCS, colCS);
    checkLaunch("channels-last RoPE kernel launch");
}

void launchRopeToHwc(const float* q, float* qT, int dim, int h, int w, int heads, const float* periods,
                     cudaStream_t stream)
{
    if (heads <= 0 || dim % (4 * heads) != 0)
        throw std::invalid_argument("naf::kernels::cuda: RoPE dim " + std::to_string(dim) +
                                    " must be divisible by 4*heads");
    ropeToHwcKernel<<<gridFor(int64_t(h) * w * dim), kThreads, 0, stream>>>(q, qT, dim, h, w, heads, periods);
    checkLaunch("RoPE kernel launch");
}

void launchAdaptiveAvgPoolHwc(const float* src, int c, int srcH, int srcW, float* dst, int dstH, int dstW,
                              cudaStream_t stream)
{
    if (c <= 0 || int64_t(dstH) * dstW > int64_t(0x7fffffff) || int64_t(srcW) * c > int64_t(0x7fffffff))
        throw std::invalid_argument("naf::kernels::cuda: key pooling of " + std::to_string(c) + " channels to " +
                                    std::to_string(dstH) + "x" + std::to_string(dstW) + " is out of range");
    const unsigned int blocks = static_cast<unsigned int>(int64_t(dstH) * dstW);
    const bool vec4 = c % 4 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
    const int lanes = vec4 ? c / 4 : c;
    const int lanesPerPass = std::min(lanes, kThreads);
    const int threads = (kThreads / lanesPerPass) * lanesPerPass;  // whole groups only
    const size_t shared = static_cast<size_t>(threads) * (vec4 ? 4 : 1) * sizeof(double);
    if (vec4)
        cellPoolHwcKernel<4><<<blocks, threads, shared, stream>>>(src, c, srcH, srcW, dst, dstH, dstW);
    else
        cellPoolHwcKernel<1><<<blocks, threads, shared, stream>>>(src, c, srcH, srcW, dst, dstH, dstW);
    checkLaunch("key pooling kernel launch");
}

void launchTranspose(const float* src, int64_t rows, int64_t cols, float* dst, cudaStream_t stream)
{
    const int64_t tiles = ((rows + kTile - 1) / kTile) * ((cols + kTile - 1) / kTile);
    const unsigned int blocks = static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(tiles, 1 << 20)));
    transposeKernel<<<blocks, dim3(kTile, 8), 0, stream>>>(src, rows, cols, dst);
    checkLaunch("transpose kernel launch");
}

}  // namespace detail
}  // namespace cuda
}  // namespace kernels
}  // namespace naf
