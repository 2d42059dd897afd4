// Cross-scale neighborhood attention on the GPU: window tables (the rule of window.hpp, run in
// device code), the fused QK -> online softmax -> AV kernel, and the probe of one pixel.
//
// Layouts (internal to the CUDA path): queries qT [outH*outW, dim], keys kT [lowH*lowW, dim],
// values vT [lowH*lowW, channels], output outT [outH*outW, channels], i.e. channels contiguous,
// so a warp reads one window entry's key (or value) slice with one coalesced access.
#include <algorithm>
#include <cmath>
#include <string>

#include "naf_cuda_internal.cuh"
#include "naf_kernels/window.hpp"

namespace naf {
namespace kernels {
namespace cuda {
namespace detail {

namespace {

constexpr int kAttnThreads = 256;  // 8 warps
constexpr int kAttnWarps = kAttnThreads / 32;
constexpr int kAttnTileX = 8;      // output pixels per block: 8 x 4 tile
constexpr int kAttnTileY = 4;
constexpr int kQPerLane = kMaxHeadDim / 32;  // query/key channels per lane (head dim <= 128)
constexpr int kVPerLane = 4;                 // value channels per lane and pass (128 per pass)

__global__ void __launch_bounds__(kThreads) windowTableKernel(int* __restrict__ table, int outLen, int lowLen, int kernel)
{
    const int64_t total = int64_t(outLen) * kernel;
    for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x)
    {
        const int i = static_cast<int>(idx / kernel);
        const int t = static_cast<int>(idx - int64_t(i) * kernel);
        table[idx] = neighborLowIndex(i, t, outLen, lowLen, kernel);
    }
}

__device__ __forceinline__ float warpSum(float v)
{
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// One block per 8x4 tile of output pixels (grid-stride over tiles); one warp per output pixel at
// a time, looping over heads. For a (pixel, head) the warp keeps the query slice in registers
// (lane holds channels lane, lane+32, ...), walks the kh x kw window in row-major order, reduces
// q.k across the warp, and folds each entry into an online softmax together with the value
// slice (lane holds value channels lane + 32*i of the current 128-channel pass). Keys/values are
// read at low resolution through rowTable/colTable, never upsampled; neighbouring pixels of a
// block share most of their windows, which the L1/L2 caches serve.
__global__ void __launch_bounds__(kAttnThreads)
    neighborhoodAttentionKernel(const float* __restrict__ qT, const float* __restrict__ kT,
                                const float* __restrict__ vT, float* __restrict__ outT, int dim, int channels,
                                int heads, int lowW, int outH, int outW, const int* __restrict__ rowTable,
                                const int* __restrict__ colTable, int kh, int kw, float scale)
{
    const int headDim = dim / heads;
    const int vPerHead = channels / heads;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int tilesX = (outW + kAttnTileX - 1) / kAttnTileX;
    const int64_t tiles = int64_t(tilesX) * ((outH + kAttnTileY - 1) / kAttnTileY);
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x)
    {
        const int y0 = static_cast<int>(tile / tilesX) * kAttnTileY;
        const int x0 = static_cast<int>(tile % tilesX) * kAttnTileX;
        for (int i = warp; i < kAttnTileX * kAttnTileY; i += kAttnWarps)
        {
            const int y = y0 + i / kAttnTileX;
            const int x = x0 + i % kAttnTileX;
            if (y >= outH || x >= outW) continue;  // warp-uniform
            const int64_t pix = int64_t(y) * outW + x;
            const int* rows = rowTable + static_cast<size_t>(y) * kh;
            const int* cols = colTable + static_cast<size_t>(x) * kw;
            for (int h = 0; h < heads; ++h)
            {
                const float* qp = qT + pix * dim + h * headDim;
                float q[kQPerLane];
#pragma unroll
                for (int j = 0; j < kQPerLane; ++j)
                {
                    const int c = lane + 32 * j;
                    q[j] = c < headDim ? qp[c] : 0.f;
                }
                for (int v0 = 0; v0 < vPerHead; v0 += 32 * kVPerLane)
                {
                    float m = -INFINITY, l = 0.f;
                    float acc[kVPerLane];
#pragma unroll
                    for (int j = 0; j < kVPerLane; ++j) acc[j] = 0.f;
                    for (int a = 0; a < kh; ++a)
                    {
                        const int64_t rowBase = int64_t(rows[a]) * lowW;
                        for (int b = 0; b < kw; ++b)
                        {
                            const int64_t pos = rowBase + cols[b];
                            const float* kp = kT + pos * dim + h * headDim;
                            float s = 0.f;
#pragma unroll
                            for (int j = 0; j < kQPerLane; ++j)
                            {
                                const int c = lane + 32 * j;
                                if (c < headDim) s = fmaf(q[j], kp[c], s);
                            }
                            s = warpSum(s) * scale;
                            const float mNew = fmaxf(m, s);
                            const float corr = expf(m - mNew);  // 0 on the first entry (m = -inf)
                            const float pw = expf(s - mNew);
                            l = l * corr + pw;
                            const float* vp = vT + pos * channels + h * vPerHead + v0;
#pragma unroll
                            for (int j = 0; j < kVPerLane; ++j)
                            {
                                const int c = lane + 32 * j;
                                const float v = v0 + c < vPerHead ? vp[c] : 0.f;
                                acc[j] = fmaf(pw, v, acc[j] * corr);
                            }
                            m = mNew;
                        }
                    }
                    const float inv = 1.f / l;
                    float* op = outT + pix * channels + h * vPerHead + v0;
#pragma unroll
                    for (int j = 0; j < kVPerLane; ++j)
                    {
                        const int c = lane + 32 * j;
                        if (v0 + c < vPerHead) op[c] = acc[j] * inv;
                    }
                }
            }
        }
    }
}

// One warp per head: logits of the window of pixel (y,x), then a plain softmax by lane 0.
__global__ void __launch_bounds__(32)
    attentionProbeKernel(const float* __restrict__ qT, const float* __restrict__ kT, int dim, int heads, int lowW,
                         int outW, int y, int x, const int* __restrict__ rowTable, const int* __restrict__ colTable,
                         int kh, int kw, float scale, float* __restrict__ probs)
{
    const int h = blockIdx.x;
    const int lane = threadIdx.x;
    const int headDim = dim / heads;
    const int64_t pix = int64_t(y) * outW + x;
    const float* qp = qT + pix * dim + h * headDim;
    float* out = probs + static_cast<size_t>(h) * kh * kw;
    for (int a = 0; a < kh; ++a)
        for (int b = 0; b < kw; ++b)
        {
            const int64_t pos = int64_t(rowTable[static_cast<size_t>(y) * kh + a]) * lowW +
                                colTable[static_cast<size_t>(x) * kw + b];
            const float* kp = kT + pos * dim + h * headDim;
            float s = 0.f;
            for (int c = lane; c < headDim; c += 32) s = fmaf(qp[c], kp[c], s);
            s = warpSum(s) * scale;
            if (lane == 0) out[a * kw + b] = s;
        }
    __syncwarp();
    if (lane == 0)
    {
        const int n = kh * kw;
        float mx = -INFINITY;
        for (int e = 0; e < n; ++e) mx = fmaxf(mx, out[e]);
        float sum = 0.f;
        for (int e = 0; e < n; ++e)
        {
            const float p = expf(out[e] - mx);
            out[e] = p;
            sum += p;
        }
        const float inv = 1.f / sum;
        for (int e = 0; e < n; ++e) out[e] *= inv;
    }
}

}  // namespace

void launchWindowTable(int* table, int outLen, int lowLen, int kernel, cudaStream_t stream)
{
    const int64_t total = int64_t(outLen) * kernel;
    const unsigned int blocks =
        static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20)));
    windowTableKernel<<<blocks, kThreads, 0, stream>>>(table, outLen, lowLen, kernel);
    checkLaunch("window table kernel launch");
}

void launchNeighborhoodAttention(const float* qT, const float* kT, const float* vT, float* outT, int dim,
                                 int channels, int heads, int lowW, int outH, int outW, const int* rowTable,
                                 const int* colTable, int kh, int kw, float scale, cudaStream_t stream)
{
    if (heads <= 0 || dim % heads != 0 || channels % heads != 0 || dim / heads > kMaxHeadDim)
        throw std::invalid_argument("naf::kernels::cuda: attention needs dim and channels divisible by heads and a "
                                    "head dimension <= " + std::to_string(kMaxHeadDim));
    const int64_t tiles = int64_t((outW + kAttnTileX - 1) / kAttnTileX) * ((outH + kAttnTileY - 1) / kAttnTileY);
    const unsigned int blocks = static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(tiles, 1 << 20)));
    neighborhoodAttentionKernel<<<blocks, kAttnThreads, 0, stream>>>(qT, kT, vT, outT, dim, channels, heads, lowW,
                                                                     outH, outW, rowTable, colTable, kh, kw, scale);
    checkLaunch("neighborhood attention kernel launch");
}

void launchAttentionProbe(const float* qT, const float* kT, int dim, int heads, int lowW, int outW, int y, int x,
                          const int* rowTable, const int* colTable, int kh, int kw, float scale, float* probs,
                          cudaStream_t stream)
{
    attentionProbeKernel<<<heads, 32, 0, stream>>>(qT, kT, dim, heads, lowW, outW, y, x, rowTable, colTable, kh, kw,
                                                    scale, probs);
    checkLaunch("attention probe kernel launch");
}

}  // namespace detail
}  // namespace cuda
}  // namespace kernels
}  // namespace naf
