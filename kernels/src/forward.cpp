// The whole NAF forward on the CPU: guide encoder -> queries/keys -> neighborhood attention.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "naf_kernels/naf_kernels.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace naf {
namespace kernels {

size_t Workspace::bytes() const
{
    size_t floats = normalized.capacity() + guide.capacity() + bufA.capacity() + bufB.capacity() + queries.capacity() +
                    keys.capacity();
    for (const PackedConvWeights& p : packedConvs) floats += p.original.capacity() + p.packed.capacity();
    return floats * sizeof(float);
}

void guideSize(int imageH, int imageW, int outH, int outW, int maxGuideScale, int* guideH, int* guideW)
{
    const int64_t limitH = static_cast<int64_t>(maxGuideScale) * outH;
    const int64_t limitW = static_cast<int64_t>(maxGuideScale) * outW;
    int64_t gh = imageH, gw = imageW;
    if (imageH > limitH || imageW > limitW)
    {
        // The official rule caps each side by *both* limits.
        gh = std::min<int64_t>({imageH, limitH, limitW});
        gw = std::min<int64_t>({imageW, limitW, limitH});
    }
    *guideH = static_cast<int>(gh);
    *guideW = static_cast<int>(gw);
}

void checkForwardShape(const NafConfig& cfg, const ForwardShape& s)
{
    auto fail = [](const std::string& msg) { throw std::invalid_argument("NAF forward: " + msg); };
    auto dims = [](int a, int b) { return std::to_string(a) + "x" + std::to_string(b); };
    if (cfg.dim <= 0 || cfg.headsAttn <= 0 || cfg.headsRope <= 0 || cfg.dim % cfg.headsAttn != 0 ||
        cfg.dim % (4 * cfg.headsRope) != 0 || (cfg.dim / 2) % cfg.numGroups != 0 || cfg.maxGuideScale <= 0)
        fail("invalid configuration (dim " + std::to_string(cfg.dim) + ", heads " + std::to_string(cfg.headsAttn) +
             ", rope heads " + std::to_string(cfg.headsRope) + ", groups " + std::to_string(cfg.numGroups) + ")");
    if (s.imageH < 2 || s.imageW < 2) fail("guide image " + dims(s.imageH, s.imageW) + " is smaller than 2x2");
    if (s.lowH <= 0 || s.lowW <= 0) fail("empty low-resolution grid " + dims(s.lowH, s.lowW));
    if (s.channels <= 0 || s.channels % cfg.headsAttn != 0)
        fail(std::to_string(s.channels) + " feature channels are not a positive multiple of the " +
             std::to_string(cfg.headsAttn) + " attention heads");
    if (s.outH < s.lowH || s.outW < s.lowW)
        fail("output " + dims(s.outH, s.outW) + " is smaller than the low-resolution grid " + dims(s.lowH, s.lowW));
    if (s.kernelSize < 1 || s.kernelSize % 2 == 0) fail("kernel size " + std::to_string(s.kernelSize) + " must be odd");
    const int64_t maxPlane = std::numeric_limits<int32_t>::max() / 4;
    int gh = 0, gw = 0;
    guideSize(s.imageH, s.imageW, s.outH, s.outW, cfg.maxGuideScale, &gh, &gw);
    if (static_cast<int64_t>(s.outH) * s.outW > maxPlane || static_cast<int64_t>(gh) * gw > maxPlane ||
        static_cast<int64_t>(s.imageH) * s.imageW > maxPlane)
        fail("output " + dims(s.outH, s.outW) + " or guide " + dims(gh, gw) + " has more than " +
             std::to_string(maxPlane) + " pixels");
}

// Linux: transparent huge pages on the 2 MiB-aligned interior of a large buffer that is about to
// be written for the first time (e.g. a freshly allocated output): a 448x448x384 output
// then costs ~150 page faults instead of ~75,000, which measurably slowed the strided stores of
// the attention. Only a hint: ignored where THP is off or the pages already exist.
void adviseHugePages(void* data, size_t bytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr uintptr_t huge = uintptr_t(1) << 21;
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + huge - 1) & ~(huge - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(huge - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
    (void)data;
    (void)bytes;
#endif
}

bool queriesInOutput(const NafConfig& cfg, int channels)
{
    return channels >= cfg.dim;
}

namespace {

// When the guide has the output size, pooling is the identity and the branches' slices of the
// queries serve as their activation buffers (runBranch, encoderActivationBuffers).
bool poolIsIdentity(int gh, int gw, int outH, int outW)
{
    return gh == outH && gw == outW;
}

}  // namespace

int encoderActivationBuffers(int guideH, int guideW, int outH, int outW)
{
    return poolIsIdentity(guideH, guideW, outH, outW) ? 0 : 2;
}

int activationBuffersInOutput(size_t lendableFloats, size_t bufferFloats, int buffers)
{
    if (bufferFloats == 0) return buffers;
    return static_cast<int>(std::min<size_t>(static_cast<size_t>(buffers), lendableFloats / bufferFloats));
}

Cancelled::Cancelled(double fraction)
    : std::runtime_error("cancelled by the progress callback at " + std::to_string(static_cast<int>(fraction * 100)) +
                         " %"),
      fraction_(fraction)
{
}

namespace {

// Cost per element of the CPU forward's stages, in ns on the 2-core AVX-512 machine of
// docs/PERFORMANCE.md (item 43: measured per stage at paper, mobilesam and a 1792 -> 448 guide).
// Only the ratios matter: they set how far each stage moves the reported fraction.
struct WorkModel
{
    static constexpr double kPerImageValue = 0.3;        // normalize (+ resize)
    static constexpr double kPerGroupNormValue = 0.15;   // statistics + apply, per activation value
    static constexpr double kPerStem1x1Mac = 0.05;       // 3 -> 128, 1x1
    static constexpr double kPerStem3x3Mac = 0.013;      // 3 -> 128, 3x3
    static constexpr double kPerPointwiseMac = 0.0054;   // 1x1 128 -> 128
    static constexpr double kPerWinogradMac = 0.00137;   // 3x3 128 -> 128, per direct multiply-add (F(6x6), item 46)
    static constexpr double kPerPoolValue = 0.23;        // guide -> output pooling, per input value
    static constexpr double kPerRopeAndKeysValue = 0.16;  // RoPE with the keys' pooling folded in (item 45)
    static constexpr double kPerAttentionMac = 0.0078;   // per window entry x (dim + channels)
};

// Reports a forward's progress on the calling thread (ProgressFn). Disabled (no callback), every
// call returns at once.
class ProgressTracker
{
public:
    ProgressTracker(const ProgressFn& callback, double totalWork) : callback_(callback), total_(totalWork) {}
    bool enabled() const { return static_cast<bool>(callback_); }
    void advance(double work)
    {
        done_ += work;
        report(total_ > 0 ? done_ / total_ : 1.0);
    }
    void report(double fraction)
    {
        if (!callback_) return;
        fraction_ = std::max(fraction_, std::min(1.0, fraction));
        if (!callback_(fraction_)) throw Cancelled(fraction_);
    }
    double done() const { return done_; }

private:
    const ProgressFn& callback_;
    double total_ = 0, done_ = 0, fraction_ = 0;
};

double convWork(const ConvWeights& conv, double pixels)
{
    const double macs = pixels * conv.cout * conv.cin * conv.k * conv.k;
    const bool stem = conv.cin < 16;  // the stems read the 3-channel guide directly
    if (conv.k == 1) return macs * (stem ? WorkModel::kPerStem1x1Mac : WorkModel::kPerPointwiseMac);
    return macs * (stem ? WorkModel::kPerStem3x3Mac : WorkModel::kPerWinogradMac);
}

// The work of each reported stage; the forward's total (encoderWork) is their sum, so the last
// report before the end reaches ~1.
double guideWork(int imageH, int imageW, int gh, int gw)
{
    const bool resize = gh != imageH || gw != imageW;
    return (3.0 * imageH * imageW + (resize ? 3.0 * gh * gw : 0.0)) * WorkModel::kPerImageValue;
}

double normThenConvWork(const ConvWeights& conv, double guidePixels)
{
    return convWork(conv, guidePixels) + guidePixels * conv.cin * WorkModel::kPerGroupNormValue;
}

double poolWork(int channels, double guidePixels)
{
    return guidePixels * channels * WorkModel::kPerPoolValue;
}

double ropeAndKeysWork(int dim, double outPixels)
{
    return outPixels * dim * WorkModel::kPerRopeAndKeysValue;
}

double branchWork(const EncoderBranchWeights& branch, double guidePixels, bool identity)
{
    double work = convWork(branch.stem, guidePixels);
    for (const EncBlockWeights& block : branch.blocks)
        work += normThenConvWork(block.conv1, guidePixels) + normThenConvWork(block.conv2, guidePixels);
    if (!identity) work += poolWork(branch.stem.cout, guidePixels);
    return work;
}

size_t lendableOutputFloats(const NafConfig& cfg, const ForwardShape& shape)
{
    const int used = queriesInOutput(cfg, shape.channels) ? cfg.dim : 0;
    return static_cast<size_t>(shape.channels - used) * shape.outH * shape.outW;
}

size_t activationFloats(const NafWeights& weights, int gh, int gw)
{
    const size_t hidden = static_cast<size_t>(std::max(weights.pointBranch.stem.cout, weights.contextBranch.stem.cout));
    return hidden * gh * gw;
}

void runBranch(const NafConfig& cfg, const EncoderBranchWeights& branch, const float* guide, int gh, int gw,
               float* pooledOut, int outH, int outW, float* odd, float* secondBuffer, Workspace& ws,
               const ParallelFor& parallel, ProgressTracker& progress)
{
    const double guidePixels = static_cast<double>(gh) * gw;
    const int hidden = branch.stem.cout;
    // Two activation buffers in turn: the stem and every conv2 write `even`, every conv1 writes
    // `odd`. When the guide already has the output size, pooling is the identity and `even` is the
    // branch's own slice of the queries: the last convolution lands there, and the slice serves as
    // one of the two buffers until then, which saves one 128-channel buffer at guide resolution
    // (2 GB at 2016x2016). A branch of 1x1 convolutions needs no `odd` at all: each of its
    // convolutions reads all channels of a pixel tile before it writes them (conv2dReflect), so
    // it runs in place.
    const bool identity = poolIsIdentity(gh, gw, outH, outW);
    float* even = identity ? pooledOut : secondBuffer;
    bool pointwise = true;
    for (const EncBlockWeights& block : branch.blocks) pointwise = pointwise && block.conv1.k == 1 && block.conv2.k == 1;
    if (pointwise) odd = even;
    // GroupNorm + SiLU of `in`, then conv into `out`. A 1x1 convolution reads its input through the
    // activation (the same bits), which saves the in-place pass over the tensor: 2-9 % of the
    // encoder (PERFORMANCE item 21).
    std::vector<float> scale(hidden), shift(hidden);
    auto normThenConv = [&](float* in, const float* gamma, const float* beta, const ConvWeights& conv, float* out) {
        if (conv.k == 1)
        {
            groupNormAffine(in, hidden, gh, gw, cfg.numGroups, gamma, beta, cfg.gnEps, parallel, scale.data(),
                            shift.data());
            InputActivation activation;
            activation.scale = scale.data();
            activation.shift = shift.data();
            conv2dReflect(in, gh, gw, conv, out, parallel, &ws.packedConvs, &activation);
        }
        else
        {
            groupNormSiLU(in, hidden, gh, gw, cfg.numGroups, gamma, beta, cfg.gnEps, parallel);
            conv2dReflect(in, gh, gw, conv, out, parallel, &ws.packedConvs);
        }
        progress.advance(normThenConvWork(conv, guidePixels));
    };
    conv2dReflect(guide, gh, gw, branch.stem, even, parallel, &ws.packedConvs);
    progress.advance(convWork(branch.stem, guidePixels));
    for (const EncBlockWeights& block : branch.blocks)
    {
        normThenConv(even, block.norm1Gamma, block.norm1Beta, block.conv1, odd);
        normThenConv(odd, block.norm2Gamma, block.norm2Beta, block.conv2, even);
    }
    if (!identity)
    {
        adaptiveAvgPool(even, hidden, gh, gw, pooledOut, outH, outW, parallel);
        progress.advance(poolWork(hidden, guidePixels));
    }
}

double encoderWork(const NafConfig& cfg, const NafWeights& weights, int imageH, int imageW, int gh, int gw, int outH,
                   int outW)
{
    const bool identity = poolIsIdentity(gh, gw, outH, outW);
    return guideWork(imageH, imageW, gh, gw) + branchWork(weights.pointBranch, static_cast<double>(gh) * gw, identity) +
           branchWork(weights.contextBranch, static_cast<double>(gh) * gw, identity) +
           ropeAndKeysWork(cfg.dim, static_cast<double>(outH) * outW);
}

// encodeQueries, reporting progress; with `keys`, also the keys [dim, keysH, keysW] (the queries
// pooled), folded into the RoPE pass.
struct KeysOutput
{
    float* data = nullptr;
    int h = 0, w = 0;
};
void encodeQueriesTracked(const NafConfig& cfg, const NafWeights& weights, const float* image, int imageH,
                          int imageW, int outH, int outW, float* queries, Workspace& ws, const ParallelFor& parallel,
                          LentScratch lent, ProgressTracker& progress, KeysOutput keys);

}  // namespace

void encodeQueries(const NafConfig& cfg, const NafWeights& weights, const float* image, int imageH, int imageW,
                   int outH, int outW, float* queries, Workspace& ws, const ParallelFor& parallel, LentScratch lent)
{
    const ProgressFn none;
    ProgressTracker disabled(none, 0);
    encodeQueriesTracked(cfg, weights, image, imageH, imageW, outH, outW, queries, ws, parallel, lent, disabled,
                         KeysOutput());
}

namespace {

void encodeQueriesTracked(const NafConfig& cfg, const NafWeights& weights, const float* image, int imageH,
                          int imageW, int outH, int outW, float* queries, Workspace& ws, const ParallelFor& parallel,
                          LentScratch lent, ProgressTracker& progress, KeysOutput keys)
{
    const size_t imagePlane = static_cast<size_t>(imageH) * imageW;
    int gh = 0, gw = 0;
    guideSize(imageH, imageW, outH, outW, cfg.maxGuideScale, &gh, &gw);
    const bool resize = gh != imageH || gw != imageW;
    // Normalize first, then resize, in the order of the official pipeline. Without a resize the
    // normalized image is the guide, kept in the workspace (no allocation on later calls).
    AlignedFloatVector& normalized = resize ? ws.normalized : ws.guide;
    normalized.resize(3 * imagePlane);
    for (int c = 0; c < 3; ++c)
    {
        const float mean = cfg.mean[c], inv = 1.f / cfg.stdev[c];
        const float* src = image + c * imagePlane;
        float* dst = normalized.data() + c * imagePlane;
        for (size_t i = 0; i < imagePlane; ++i) dst[i] = (src[i] - mean) * inv;
    }
    if (resize)
    {
        ws.guide.resize(3 * static_cast<size_t>(gh) * gw);
        resizeBilinear(normalized.data(), 3, imageH, imageW, ws.guide.data(), gh, gw, parallel);
    }
    progress.advance(guideWork(imageH, imageW, gh, gw));
    // The activation buffers (none when the guide has the output size): the first `inLent` in the
    // lent memory, one after another, the rest in the workspace.
    const size_t bufferFloats = activationFloats(weights, gh, gw);
    const int buffers = encoderActivationBuffers(gh, gw, outH, outW);
    const int inLent = activationBuffersInOutput(lent.data ? lent.floats : 0, bufferFloats, buffers);
    auto activationBuffer = [&](int index, AlignedFloatVector& own) {
        if (index < inLent) return lent.data + index * bufferFloats;
        own.resize(bufferFloats);
        return own.data();
    };
    const int hidden = weights.pointBranch.stem.cout;
    const size_t outPlane = static_cast<size_t>(outH) * outW;
    float* const pointQueries = queries;
    float* const contextQueries = queries + hidden * outPlane;
    // The context branch first: without pooling, the point branch's slice of the queries, not
    // written yet, is its second buffer; the point branch then runs in place in that slice.
    float* const odd = buffers == 0 ? pointQueries : activationBuffer(0, ws.bufA);
    float* const second = buffers == 2 ? activationBuffer(1, ws.bufB) : nullptr;
    runBranch(cfg, weights.contextBranch, ws.guide.data(), gh, gw, contextQueries, outH, outW, odd, second, ws,
              parallel, progress);
    runBranch(cfg, weights.pointBranch, ws.guide.data(), gh, gw, pointQueries, outH, outW, nullptr, second, ws,
              parallel, progress);
    // With keys, one pass instead of two over the queries: each plane pair is pooled right after
    // its rotation, while in the cache (PERFORMANCE item 45: 19 -> 8 ms at paper).
    if (keys.data)
        applyRopeAndPool(queries, cfg.dim, outH, outW, cfg.headsRope, weights.ropePeriods, keys.data, keys.h, keys.w,
                         parallel);
    else
        applyRope(queries, cfg.dim, outH, outW, cfg.headsRope, weights.ropePeriods, parallel);
    progress.advance(ropeAndKeysWork(cfg.dim, static_cast<double>(outPlane)));
}

}  // namespace

void reserveWorkspace(const NafConfig& cfg, const NafWeights& weights, const ForwardShape& shape, Workspace& ws)
{
    checkForwardShape(cfg, shape);
    int gh = 0, gw = 0;
    guideSize(shape.imageH, shape.imageW, shape.outH, shape.outW, cfg.maxGuideScale, &gh, &gw);
    const size_t imagePlane = static_cast<size_t>(shape.imageH) * shape.imageW;
    const size_t guidePlane = static_cast<size_t>(gh) * gw;
    const bool resize = gh != shape.imageH || gw != shape.imageW;
    if (resize) ws.normalized.reserve(3 * imagePlane);
    ws.guide.reserve(3 * (resize ? guidePlane : imagePlane));
    // forward() lends its output to the encoder: only the activation buffers that do not fit there.
    const size_t bufferFloats = activationFloats(weights, gh, gw);
    const int buffers = encoderActivationBuffers(gh, gw, shape.outH, shape.outW);
    const int inOutput = activationBuffersInOutput(lendableOutputFloats(cfg, shape), bufferFloats, buffers);
    if (inOutput < 1 && buffers >= 1) ws.bufA.reserve(bufferFloats);
    if (inOutput < 2 && buffers >= 2) ws.bufB.reserve(bufferFloats);
    if (!queriesInOutput(cfg, shape.channels))
        ws.queries.reserve(static_cast<size_t>(cfg.dim) * shape.outH * shape.outW);
    ws.keys.reserve(static_cast<size_t>(cfg.dim) * shape.lowH * shape.lowW);
    // The convolutions read 128 channel planes at once: huge pages keep those reads in the TLB.
    for (AlignedFloatVector* buffer : {&ws.bufA, &ws.bufB, &ws.queries})
        adviseHugePages(buffer->data(), buffer->capacity() * sizeof(float));
}

void forward(const NafConfig& cfg, const NafWeights& weights, const float* image, const float* features, float* out,
             const ForwardShape& shape, Workspace& ws, const ParallelFor& parallel, AttentionProbe* probe,
             const ProgressFn& progressFn)
{
    checkForwardShape(cfg, shape);
    if (!image || !features || !out) throw std::invalid_argument("NAF forward: null tensor pointer");
    if (probe && (probe->y < 0 || probe->y >= shape.outH || probe->x < 0 || probe->x >= shape.outW))
        throw std::invalid_argument("NAF forward: probe pixel (x=" + std::to_string(probe->x) + ", y=" +
                                    std::to_string(probe->y) + ") is outside the " + std::to_string(shape.outW) +
                                    "x" + std::to_string(shape.outH) + " output");
    const size_t outFloats = static_cast<size_t>(shape.channels) * shape.outH * shape.outW;
    auto overlapsOut = [&](const float* p, size_t floats) {
        const uintptr_t a = reinterpret_cast<uintptr_t>(p), o = reinterpret_cast<uintptr_t>(out);
        return a < o + outFloats * sizeof(float) && o < a + floats * sizeof(float);
    };
    auto refuseOverlap = [&](const char* what, const float* p, size_t floats) {
        if (!overlapsOut(p, floats)) return;
        const ptrdiff_t offset = reinterpret_cast<const char*>(p) - reinterpret_cast<const char*>(out);
        throw std::invalid_argument(std::string("NAF forward: the output (") + std::to_string(outFloats) +
                                    " floats) overlaps the " + what + " (" + std::to_string(floats) +
                                    " floats, starting " + std::to_string(offset) +
                                    " bytes from the output); the output is also the encoder's scratch");
    };
    refuseOverlap("image", image, 3 * static_cast<size_t>(shape.imageH) * shape.imageW);
    refuseOverlap("features", features, static_cast<size_t>(shape.channels) * shape.lowH * shape.lowW);
    adviseHugePages(out, sizeof(float) * outFloats);
    // The output is free until the attention writes it: the queries and the encoder's activations
    // live there when they fit (6 GB less at 2016x2016; PERFORMANCE items 41-42).
    float* queries = nullptr;
    if (queriesInOutput(cfg, shape.channels))
    {
        queries = out + (outFloats - static_cast<size_t>(cfg.dim) * shape.outH * shape.outW);
    }
    else
    {
        ws.queries.resize(static_cast<size_t>(cfg.dim) * shape.outH * shape.outW);
        queries = ws.queries.data();
    }
    LentScratch lent;
    lent.data = out;
    lent.floats = lendableOutputFloats(cfg, shape);

    int gh = 0, gw = 0;
    guideSize(shape.imageH, shape.imageW, shape.outH, shape.outW, cfg.maxGuideScale, &gh, &gw);
    const double outPixels = static_cast<double>(shape.outH) * shape.outW;
    const double windowEntries = static_cast<double>(effectiveKernel(shape.kernelSize, shape.lowH)) *
                                 effectiveKernel(shape.kernelSize, shape.lowW);

    const double attentionWork = outPixels * windowEntries * (cfg.dim + shape.channels) * WorkModel::kPerAttentionMac;
    ProgressTracker progress(progressFn, encoderWork(cfg, weights, shape.imageH, shape.imageW, gh, gw, shape.outH,
                                                     shape.outW) + attentionWork);
    progress.report(0.0);

    ws.keys.resize(static_cast<size_t>(cfg.dim) * shape.lowH * shape.lowW);
    KeysOutput keys;
    keys.data = ws.keys.data();
    keys.h = shape.lowH;
    keys.w = shape.lowW;
    encodeQueriesTracked(cfg, weights, image, shape.imageH, shape.imageW, shape.outH, shape.outW, queries, ws, parallel,
                         lent, progress, keys);
    const float scale = 1.f / std::sqrt(static_cast<float>(cfg.dim / cfg.headsAttn));
    if (!progress.enabled())
    {
        neighborhoodAttention(queries, ws.keys.data(), features, out, cfg.dim, shape.channels, cfg.headsAttn,
                              shape.lowH, shape.lowW, shape.outH, shape.outW, shape.kernelSize, scale, parallel, probe);
        return;
    }
    // With a progress callback the attention's work items (output rows) run in slices, one parallel
    // call each, with a report between slices: the attention is a fifth of the CPU forward, one
    // parallel call otherwise. Same items, same bits: only the grouping changes.
    constexpr int kSlices = 16;
    const double attentionStart = progress.done();
    const ParallelFor sliced = [&](int64_t count, const std::function<void(int64_t, int64_t)>& body) {
        if (count <= 0) return;
        for (int s = 0; s < kSlices; ++s)
        {
            const int64_t begin = count * s / kSlices, end = count * (s + 1) / kSlices;
            if (end == begin) continue;  // fewer items than slices
            parallel(end - begin, [&](int64_t b, int64_t e) { body(begin + b, begin + e); });
            // Never past the attention's share, should it ever make more than one parallel call.
            progress.advance(std::min(attentionWork * (end - begin) / count,
                                      attentionStart + attentionWork - progress.done()));
        }
    };
    neighborhoodAttention(queries, ws.keys.data(), features, out, cfg.dim, shape.channels, cfg.headsAttn, shape.lowH,
                          shape.lowW, shape.outH, shape.outW, shape.kernelSize, scale, sliced, probe);
    progress.report(1.0);
}

}  // namespace kernels
}  // namespace naf
