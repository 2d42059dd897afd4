// cv::naf compute kernels: plain C++17, no OpenCV, no Qt.
//
// Conventions: float32 tensors, contiguous, channel-major (CHW for one image, NCHW for a batch).
// Errors are reported as std::runtime_error (std::invalid_argument for bad sizes); the
// modules/naf layer validates user input first and turns these into cv::Exception.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "naf_kernels/window.hpp"

namespace naf {
namespace kernels {

/// Runs body(begin, end) over disjoint sub-ranges covering [0, count), possibly concurrently.
/// Kernels split their work into chunks whose boundaries never depend on the thread count, and
/// no reduction crosses a chunk, so results are bit-identical for any number of threads.
using ParallelFor = std::function<void(int64_t count, const std::function<void(int64_t, int64_t)>& body)>;

/// A ParallelFor on a pool of threads - 1 std::threads, started here and kept until the last copy
/// of the returned function is gone; the calling thread takes part in each loop (used by the
/// standalone kernel tests and tools). A loop nested in one of its items runs on that item's
/// thread; loops from several threads take turns. threads <= 0 means
/// std::thread::hardware_concurrency(); 1 is serialParallelFor().
ParallelFor threadParallelFor(int threads = 0);
/// Runs everything on the calling thread.
ParallelFor serialParallelFor();

/// Progress of a forward(): called on the thread that called forward(), between its stages (each
/// encoder convolution, then slices of the attention), with the estimated fraction of the work
/// done: 0 first, then non-decreasing, 1 last. Each stage is weighed by a cost per element
/// measured for the CPU kernels, so the fraction follows the elapsed time roughly, not exactly.
/// Returning false stops the forward: it throws Cancelled.
using ProgressFn = std::function<bool(double fraction)>;

/// Thrown by forward() when its ProgressFn returned false. The output has been partly overwritten
/// (it is the encoder's scratch); the Workspace stays valid for the next call.
class Cancelled : public std::runtime_error
{
public:
    explicit Cancelled(double fraction);
    /// The fraction reported by the call that returned false.
    double fraction() const { return fraction_; }

private:
    double fraction_;
};

/// Architecture hyper-parameters of NAF (the official defaults).
struct NafConfig
{
    int dim = 256;             ///< query/key channels (both encoder branches together)
    int headsAttn = 4;         ///< attention heads; value channels are split evenly across them
    int headsRope = 4;         ///< RoPE heads (dim / headsRope channels rotated per head)
    int kernelSize = 9;        ///< default neighborhood size (odd)
    int imgLayers = 2;         ///< EncBlocks per encoder branch
    int numGroups = 8;         ///< GroupNorm groups
    float gnEps = 1e-5f;       ///< GroupNorm epsilon
    int maxGuideScale = 4;     ///< guide image is resized when larger than this times the output
    float mean[3] = {0.485f, 0.456f, 0.406f};  ///< ImageNet normalization, RGB
    float stdev[3] = {0.229f, 0.224f, 0.225f};
};

/// A 2-D convolution's parameters: weight [cout, cin, k, k], bias [cout] (may be null).
struct ConvWeights
{
    const float* weight = nullptr;
    const float* bias = nullptr;
    int cout = 0, cin = 0, k = 0;
};

/// One official EncBlock: GN -> SiLU -> conv1 -> GN -> SiLU -> conv2 (no residual).
struct EncBlockWeights
{
    const float* norm1Gamma = nullptr;
    const float* norm1Beta = nullptr;
    ConvWeights conv1;
    const float* norm2Gamma = nullptr;
    const float* norm2Beta = nullptr;
    ConvWeights conv2;
};

/// One encoder branch: a stem conv followed by EncBlocks (all reflect padded).
struct EncoderBranchWeights
{
    ConvWeights stem;
    std::vector<EncBlockWeights> blocks;
};

/// Pointers to all NAF weights (host memory for the CPU path, device memory for CUDA).
struct NafWeights
{
    EncoderBranchWeights pointBranch;    ///< official `image_encoder.encoder` (1x1 kernels)
    EncoderBranchWeights contextBranch;  ///< official `image_encoder.sem_encoder` (3x3 kernels)
    const float* ropePeriods = nullptr;  ///< official `image_encoder.rope.periods`, dim/headsRope/4 values
};

/// Shapes of one upsampling (one image of the batch).
struct ForwardShape
{
    int imageH = 0, imageW = 0;  ///< guide image size
    int channels = 0;            ///< value (feature) channels, divisible by headsAttn
    int lowH = 0, lowW = 0;      ///< low-resolution feature grid
    int outH = 0, outW = 0;      ///< output grid (>= low grid on both axes)
    int kernelSize = 9;          ///< odd, >= 1
};

/// Where the attention of one output pixel looked, and with which weights.
struct AttentionProbe
{
    int y = -1, x = -1;            ///< output pixel to record (set by the caller)
    int heads = 0, kh = 0, kw = 0; ///< filled by the kernel
    std::vector<float> weights;    ///< [heads, kh, kw] softmax probabilities
    std::vector<int> lowY, lowX;   ///< [kh], [kw] low-res row/column of each window entry
};

/// Convolution weights in the layout of the CPU GEMM (and, for wide 3x3 convolutions, already
/// Winograd-transformed), kept between calls. An entry is reused only when the weights at
/// `source` still have the same shape and values (`original` is compared on every use), so a
/// workspace may serve any weights.
struct PackedConvWeights
{
    const float* source = nullptr;
    int cout = 0, cin = 0, k = 0;
    std::vector<float> original, packed;
};

/// Allocator on 64-byte (cache line) boundaries: the convolutions write whole lines of a channel
/// plane with non-temporal stores only where the plane's rows start on one (a plain large
/// std::vector starts 16 bytes past a page). Elements are default-initialised: a resize() leaves
/// floats unwritten (every Workspace buffer is written in full before it is read).
template <class T>
struct CacheLineAllocator
{
    using value_type = T;
    static constexpr std::align_val_t kAlignment{64};
    CacheLineAllocator() = default;
    template <class U>
    CacheLineAllocator(const CacheLineAllocator<U>&) noexcept
    {
    }
    T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlignment)); }
    void deallocate(T* p, size_t) noexcept { ::operator delete(p, kAlignment); }
    /// Default-initialises: resize() leaves new floats unwritten instead of zeroing them on one
    /// thread, so a fresh buffer's pages are first touched by the parallel kernels that fill it.
    template <class U>
    void construct(U* p) noexcept(std::is_nothrow_default_constructible<U>::value)
    {
        ::new (static_cast<void*>(p)) U;
    }
    template <class U, class... Args>
    void construct(U* p, Args&&... args)
    {
        ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
    template <class U>
    bool operator==(const CacheLineAllocator<U>&) const noexcept
    {
        return true;
    }
    template <class U>
    bool operator!=(const CacheLineAllocator<U>&) const noexcept
    {
        return false;
    }
};

/// A float buffer on a 64-byte boundary (see CacheLineAllocator).
using AlignedFloatVector = std::vector<float, CacheLineAllocator<float>>;

/// Reusable scratch memory of the CPU forward; keep one per concurrent caller.
struct Workspace
{
    AlignedFloatVector normalized, guide, queries, keys;
    /// The encoder's two activation buffers, only when the guide is not the output size (and
    /// they do not fit in the output, see encoderActivationBuffers(), LentScratch).
    AlignedFloatVector bufA, bufB;
    std::vector<PackedConvWeights> packedConvs;
    size_t bytes() const;
};

/// A hint, where the OS supports it (Linux): back the 2 MiB-aligned interior of [data, data + bytes)
/// with huge pages once it is first written. reserveWorkspace(), forward() and
/// cuda::Engine::forward() give it for their large buffers and the output; a caller's own large
/// buffers (benchmarks) can ask the same. Never fails.
void adviseHugePages(void* data, size_t bytes);

/// forward()'s output is free until the attention writes it, so it holds forward()'s largest
/// scratch meanwhile (6 GB less at 2016x2016 with 384 channels): the queries in its last dim
/// planes when it has at least dim channels (the attention reads each head's queries before it
/// writes over them), and the encoder's activation buffers in the planes before those. These two
/// functions are that rule, for callers that size memory (the module's budget check).
bool queriesInOutput(const NafConfig& cfg, int channels);
/// How many activation buffers (128 channels at guide size each) the encoder needs besides the
/// queries: none when the guide has the output size (the context branch runs first and borrows
/// the point branch's slice of the queries; the point branch's 1x1 layers then run in place in
/// its own slice), 2 when the guide is pooled to the output size.
int encoderActivationBuffers(int guideH, int guideW, int outH, int outW);
/// How many of the encoder's `buffers` activation buffers (encoderActivationBuffers()), of
/// `bufferFloats` each, forward() places in `lendableFloats` of its output: the first ones while
/// they fit; the rest go to the Workspace.
int activationBuffersInOutput(size_t lendableFloats, size_t bufferFloats, int buffers);

/// Grows `ws` so that forward() with `shape` allocates nothing: call it for every item before
/// writing into a caller's output, so a std::bad_alloc cannot come after the first output byte.
/// Leaves out the encoder buffers that forward() places in its output (LentScratch).
void reserveWorkspace(const NafConfig& cfg, const NafWeights& weights, const ForwardShape& shape, Workspace& ws);

/// Size of the guide image the encoder runs on (official rule: resized only when larger than
/// maxGuideScale x output on either side, to min(side, 4*outH, 4*outW) per axis).
void guideSize(int imageH, int imageW, int outH, int outW, int maxGuideScale, int* guideH, int* guideW);

/// Throws std::invalid_argument when the shape cannot be upsampled with this config.
void checkForwardShape(const NafConfig& cfg, const ForwardShape& shape);

// ---- building blocks (CPU) -------------------------------------------------------------------

/// Bilinear resize of `planes` float planes, half-pixel centers, no antialias (PyTorch
/// F.interpolate(mode="bilinear", align_corners=False)).
void resizeBilinear(const float* src, int planes, int srcH, int srcW, float* dst, int dstH, int dstW,
                    const ParallelFor& parallel);

/// Per-channel map silu(x * scale[c] + shift[c]) applied to a convolution's input as it is read
/// (a GroupNorm + SiLU folded into the next 1x1 convolution; groupNormAffine gives the map).
struct InputActivation
{
    const float* scale = nullptr;  ///< [cin]
    const float* shift = nullptr;  ///< [cin]
};

/// Stride-1 convolution with reflect padding k/2 (k odd), plus bias: src [cin,h,w] -> dst [cout,h,w].
/// 3x3 convolutions with >= 32 input channels (both sides >= 4) use Winograd F(6x6, 3x3): the
/// same result up to fp32 rounding (~2.4e-6 of the sum of the terms' magnitudes). With `cache`,
/// the packed weights are kept there and reused by later calls with the same weights. With
/// `activation` (1x1 convolutions only, else std::invalid_argument) the input is read through it:
/// the same bits as groupNormSiLU's in-place result convolved, without writing it back.
/// A 1x1 convolution with cin == cout may run in place (dst == src): each pixel tile's inputs are
/// read in full before its outputs are written. Other convolutions need disjoint src and dst.
void conv2dReflect(const float* src, int h, int w, const ConvWeights& conv, float* dst, const ParallelFor& parallel,
                   std::vector<PackedConvWeights>* cache = nullptr, const InputActivation* activation = nullptr);

/// In-place GroupNorm (affine) followed by SiLU on data [c,h,w].
void groupNormSiLU(float* data, int c, int h, int w, int groups, const float* gamma, const float* beta, float eps,
                   const ParallelFor& parallel);

/// The statistics half of groupNormSiLU: the per-channel map (scale, shift, each [c]) such that
/// groupNormSiLU(data) = silu(data * scale[c] + shift[c]); data is not modified.
void groupNormAffine(const float* data, int c, int h, int w, int groups, const float* gamma, const float* beta,
                     float eps, const ParallelFor& parallel, float* scale, float* shift);

/// PyTorch adaptive_avg_pool2d: src [c,srcH,srcW] -> dst [c,dstH,dstW] (dst may be a channel
/// slice of a larger tensor).
void adaptiveAvgPool(const float* src, int c, int srcH, int srcW, float* dst, int dstH, int dstW,
                     const ParallelFor& parallel);

/// In-place axial RoPE on data [dim,h,w] (DINOv3 style, coordinates per axis in [-1,1] at pixel
/// centers), heads of dim/heads channels, periods[dim/heads/4].
void applyRope(float* data, int dim, int h, int w, int heads, const float* periods, const ParallelFor& parallel);

/// applyRope() followed by adaptiveAvgPool() of the rotated data to pooled [dim,pooledH,pooledW]
/// (pooledH <= h, pooledW <= w), with the same bits as the two calls, in one pass: each channel
/// pair's rows are pooled right after their rotation, while in the cache (the forward's keys).
void applyRopeAndPool(float* data, int dim, int h, int w, int heads, const float* periods, float* pooled,
                      int pooledH, int pooledW, const ParallelFor& parallel);

/// Cross-scale neighborhood attention. queries [dim,outH,outW], keys [dim,lowH,lowW],
/// values [channels,lowH,lowW] -> out [channels,outH,outW]. Keys/values are read at low
/// resolution through the window rule in window.hpp. The queries may be out's last dim planes
/// (queries == out + (channels - dim) * outH * outW, channels >= dim), as forward() places them:
/// every query is read before anything overwrites it; any other overlap is not allowed.
void neighborhoodAttention(const float* queries, const float* keys, const float* values, float* out, int dim,
                           int channels, int heads, int lowH, int lowW, int outH, int outW, int kernelSize,
                           float scale, const ParallelFor& parallel, AttentionProbe* probe = nullptr);

// ---- whole forward (CPU) ---------------------------------------------------------------------

/// Memory a caller lends to encodeQueries for its activation buffers (128 channels at guide
/// size each; two when the guide is pooled to the output size, none otherwise, see
/// encoderActivationBuffers()). Those that fit go there instead of into the Workspace, and its
/// contents are overwritten. Best on a 64-byte boundary.
struct LentScratch
{
    float* data = nullptr;
    size_t floats = 0;
};

/// Guide encoder: image [3,imageH,imageW] RGB in [0,1] -> RoPE'd queries [dim,outH,outW].
void encodeQueries(const NafConfig& cfg, const NafWeights& weights, const float* image, int imageH, int imageW,
                   int outH, int outW, float* queries, Workspace& ws, const ParallelFor& parallel,
                   LentScratch lent = LentScratch());

/// The whole NAF forward for one image: image [3,imageH,imageW] RGB in [0,1] (normalized with
/// cfg.mean/stdev inside), features [channels,lowH,lowW] -> out [channels,outH,outW]. Until the
/// attention writes it, `out` holds the queries (its last dim planes, when channels >= dim; else
/// they are the Workspace's) and the encoder's activation buffers that fit in the rest
/// (LentScratch), so it must not overlap the image or the features (std::invalid_argument); what
/// it held before does not matter.
/// `progress`, when set, reports the fraction done and may cancel (see ProgressFn); without it the
/// forward runs exactly as before, with no extra synchronisation.
void forward(const NafConfig& cfg, const NafWeights& weights, const float* image, const float* features, float* out,
             const ForwardShape& shape, Workspace& ws, const ParallelFor& parallel, AttentionProbe* probe = nullptr,
             const ProgressFn& progress = ProgressFn());

}  // namespace kernels
}  // namespace naf
