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

int activationBuffersInOutput(size_t lendableFloats, size_t bufferFloats, int buffers)
{
    if (bufferFloats == 0) return buffers;
    return static_cast<int>(std::min<size_t>(static_cast<size_t>(buffers), lendableFloats / bufferFloats));
}

namespace {

// When the guide has the output size, pooling is the identity and each branch's slice of the
// queries serves as its second activation buffer (runBranch): no Workspace::bufB.
bool poolIsIdentity(int gh, int gw, int outH, int outW)
{
    return gh == outH && gw == outW;
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
               const ParallelFor& parallel)
{
    const int hidden = branch.stem.cout;
    // Two activation buffers in turn: the stem and every conv2 write `even`, every conv1 writes
    // `odd`. When the guide already has the output size, pooling is the identity and `even` is the
    // branch's own slice of the queries: the last convolution lands there, and the slice serves as
    // the second buffer until then (no convolution reads the buffer it writes), which saves one
    // 128-channel buffer at guide resolution (2 GB at 2016x2016).
    const bool identity = poolIsIdentity(gh, gw, outH, outW);
    float* even = identity ? pooledOut : secondBuffer;
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
    };
    conv2dReflect(guide, gh, gw, branch.stem, even, parallel, &ws.packedConvs);
    for (const EncBlockWeights& block : branch.blocks)
    {
        normThenConv(even, block.norm1Gamma, block.norm1Beta, block.conv1, odd);
        normThenConv(odd, block.norm2Gamma, block.norm2Beta, block.conv2, even);
    }
    if (!identity) adaptiveAvgPool(even, hidden, gh, gw, pooledOut, outH, outW, parallel);
}

}  // namespace

void encodeQueries(const NafConfig& cfg, const NafWeights& weights, const float* image, int imageH, int imageW,
                   int outH, int outW, float* queries, Workspace& ws, const ParallelFor& parallel, LentScratch lent)
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
    // The activation buffers: the first `inLent` in the lent memory, one after another, the rest
    // in the workspace.
    const size_t bufferFloats = activationFloats(weights, gh, gw);
    const int buffers = poolIsIdentity(gh, gw, outH, outW) ? 1 : 2;
    const int inLent = activationBuffersInOutput(lent.data ? lent.floats : 0, bufferFloats, buffers);
    auto activationBuffer = [&](int index, AlignedFloatVector& own) {
        if (index < inLent) return lent.data + index * bufferFloats;
        own.resize(bufferFloats);
        return own.data();
    };
    float* const odd = activationBuffer(0, ws.bufA);
    float* const second = buffers == 2 ? activationBuffer(1, ws.bufB) : nullptr;
    const int hidden = weights.pointBranch.stem.cout;
    const size_t outPlane = static_cast<size_t>(outH) * outW;
    runBranch(cfg, weights.pointBranch, ws.guide.data(), gh, gw, queries, outH, outW, odd, second, ws, parallel);
    runBranch(cfg, weights.contextBranch, ws.guide.data(), gh, gw, queries + hidden * outPlane, outH, outW, odd,
              second, ws, parallel);
    applyRope(queries, cfg.dim, outH, outW, cfg.headsRope, weights.ropePeriods, parallel);
}

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
    const int buffers = poolIsIdentity(gh, gw, shape.outH, shape.outW) ? 1 : 2;
    const int inOutput = activationBuffersInOutput(lendableOutputFloats(cfg, shape), bufferFloats, buffers);
    if (inOutput < 1) ws.bufA.reserve(bufferFloats);
    if (inOutput < buffers) ws.bufB.reserve(bufferFloats);  // only reached with two buffers
    if (!queriesInOutput(cfg, shape.channels))
        ws.queries.reserve(static_cast<size_t>(cfg.dim) * shape.outH * shape.outW);
    ws.keys.reserve(static_cast<size_t>(cfg.dim) * shape.lowH * shape.lowW);
    // The convolutions read 128 channel planes at once: huge pages keep those reads in the TLB.
    for (AlignedFloatVector* buffer : {&ws.bufA, &ws.bufB, &ws.queries})
        adviseHugePages(buffer->data(), buffer->capacity() * sizeof(float));
}

void forward(const NafConfig& cfg, const NafWeights& weights, const float* image, const float* features, float* out,
             const ForwardShape& shape, Workspace& ws, const ParallelFor& parallel, AttentionProbe* probe)
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
    encodeQueries(cfg, weights, image, shape.imageH, shape.imageW, shape.outH, shape.outW, queries, ws, parallel, lent);
    ws.keys.resize(static_cast<size_t>(cfg.dim) * shape.lowH * shape.lowW);
    adaptiveAvgPool(queries, cfg.dim, shape.outH, shape.outW, ws.keys.data(), shape.lowH, shape.lowW, parallel);
    const float scale = 1.f / std::sqrt(static_cast<float>(cfg.dim / cfg.headsAttn));
    neighborhoodAttention(queries, ws.keys.data(), features, out, cfg.dim, shape.channels, cfg.headsAttn,
                          shape.lowH, shape.lowW, shape.outH, shape.outW, shape.kernelSize, scale, parallel, probe);
}

}  // namespace kernels
}  // namespace naf
