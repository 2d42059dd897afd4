// CUDA path of the NAF forward: device queries, weight upload, scratch management and the
// sequence of kernels of one forward (same steps as kernels::forward on the CPU).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "naf_cuda_internal.cuh"
#include "naf_kernels/naf_cuda.hpp"

namespace naf {
namespace kernels {
namespace cuda {

using detail::check;

bool compiled()
{
    return true;
}

bool available()
{
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess)
    {
        (void)cudaGetLastError();
        return false;
    }
    return count > 0;
}

std::string deviceDescription()
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess)
    {
        (void)cudaGetLastError();
        return std::string("no usable CUDA device: ") + cudaGetErrorString(err);
    }
    if (count <= 0) return "no CUDA device found";
    int dev = 0;
    err = cudaGetDevice(&dev);
    cudaDeviceProp prop;
    if (err == cudaSuccess) err = cudaGetDeviceProperties(&prop, dev);
    if (err != cudaSuccess)
    {
        (void)cudaGetLastError();
        return std::string("CUDA device query failed: ") + cudaGetErrorString(err);
    }
    return std::string(prop.name) + ", cc " + std::to_string(prop.major) + "." + std::to_string(prop.minor);
}

namespace {

/// Grow-only device allocation.
struct DeviceBuffer
{
    void* ptr = nullptr;
    size_t bytes = 0;

    void ensure(size_t need, const char* what)
    {
        if (need <= bytes) return;
        release();
        need = (need + 255) / 256 * 256;
        check(cudaMalloc(&ptr, need), what);
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

/// Makes `device` current for a scope and restores the caller's device afterwards.
class DeviceScope
{
public:
    explicit DeviceScope(int device)
    {
        check(cudaGetDevice(&previous_), "querying the current CUDA device");
        if (previous_ != device) check(cudaSetDevice(device), "selecting the engine's CUDA device");
    }
    ~DeviceScope()
    {
        int current = -1;
        if (cudaGetDevice(&current) == cudaSuccess && current != previous_) (void)cudaSetDevice(previous_);
    }
    DeviceScope(const DeviceScope&) = delete;
    DeviceScope& operator=(const DeviceScope&) = delete;

private:
    int previous_ = 0;
};

struct DevBlock
{
    const float* norm1Gamma = nullptr;
    const float* norm1Beta = nullptr;
    detail::DevConv conv1;
    const float* norm2Gamma = nullptr;
    const float* norm2Beta = nullptr;
    detail::DevConv conv2;
};

struct DevBranch
{
    detail::DevConv stem;
    std::vector<DevBlock> blocks;
};

std::string convName(const char* branch, const std::string& what)
{
    return std::string(branch) + " " + what;
}

void checkConv(const ConvWeights& c, int cout, int cin, int k, const std::string& name)
{
    if (!c.weight || c.cout != cout || c.cin != cin || c.k != k)
        throw std::invalid_argument("naf::kernels::cuda::Engine: " + name + " convolution must be " +
                                    std::to_string(cout) + "x" + std::to_string(cin) + "x" + std::to_string(k) + "x" +
                                    std::to_string(k) + " with weights, got " + std::to_string(c.cout) + "x" +
                                    std::to_string(c.cin) + "x" + std::to_string(c.k) + "x" + std::to_string(c.k) +
                                    (c.weight ? "" : " (null weight)"));
}

}  // namespace

struct Engine::Impl
{
    NafConfig cfg;
    int device = 0;
    bool tensorCoresTf32 = false;
    cudaStream_t stream = nullptr;

    DeviceBuffer weights;  // every parameter, packed
    DevBranch point, context;
    const float* ropePeriods = nullptr;

    // Scratch (grow only).
    DeviceBuffer image, guide, bufA, bufB, queries, queriesT, keysT, features, valuesT, outT, out;
    DeviceBuffer gnPartial, gnStats, tables, probe;

    ~Impl()
    {
        DeviceBuffer* all[] = {&weights, &image,    &guide, &bufA,      &bufB,      &queries, &queriesT, &keysT,
                               &features, &valuesT, &outT,  &out,       &gnPartial, &gnStats, &tables,   &probe};
        int previous = -1;
        const bool switched = cudaGetDevice(&previous) == cudaSuccess && previous != device &&
                              cudaSetDevice(device) == cudaSuccess;
        if (stream) (void)cudaStreamSynchronize(stream);
        for (DeviceBuffer* b : all) b->release();
        if (stream) (void)cudaStreamDestroy(stream);
        if (switched) (void)cudaSetDevice(previous);
    }

    size_t scratchBytes() const
    {
        const DeviceBuffer* all[] = {&image,   &guide, &bufA, &bufB,      &queries, &queriesT, &keysT, &features,
                                     &valuesT, &outT,  &out,  &gnPartial, &gnStats, &tables,   &probe};
        size_t total = 0;
        for (const DeviceBuffer* b : all) total += b->bytes;
        return total;
    }

    void runBranch(const DevBranch& branch, int gh, int gw, float* pooled, int outH, int outW, bool tf32)
    {
        const int hidden = branch.stem.cout;
        float* a = bufA.as<float>();
        float* b = bufB.as<float>();
        detail::launchConv2dReflect(guide.as<float>(), gh, gw, branch.stem, a, tf32, stream);
        for (const DevBlock& blk : branch.blocks)
        {
            detail::launchGroupNormSiLU(a, hidden, gh, gw, cfg.numGroups, blk.norm1Gamma, blk.norm1Beta, cfg.gnEps,
                                        gnPartial.as<double>(), gnStats.ptr, stream);
            detail::launchConv2dReflect(a, gh, gw, blk.conv1, b, tf32, stream);
            detail::launchGroupNormSiLU(b, hidden, gh, gw, cfg.numGroups, blk.norm2Gamma, blk.norm2Beta, cfg.gnEps,
                                        gnPartial.as<double>(), gnStats.ptr, stream);
            detail::launchConv2dReflect(b, gh, gw, blk.conv2, a, tf32, stream);
        }
        detail::launchAdaptiveAvgPool(a, hidden, gh, gw, pooled, outH, outW, stream);
    }
};

Engine::Engine(const NafConfig& cfg, const NafWeights& w)
    : impl_(new Impl)
{
    Impl& s = *impl_;
    s.cfg = cfg;

    // Validate the configuration and the weights against it before touching the device.
    if (cfg.dim <= 0 || cfg.dim % 2 != 0 || cfg.headsAttn <= 0 || cfg.dim % cfg.headsAttn != 0 ||
        cfg.headsRope <= 0 || cfg.dim % (4 * cfg.headsRope) != 0 || cfg.numGroups <= 0 ||
        (cfg.dim / 2) % cfg.numGroups != 0 || cfg.imgLayers < 0 || cfg.maxGuideScale <= 0)
        throw std::invalid_argument("naf::kernels::cuda::Engine: invalid configuration");
    if (cfg.dim / cfg.headsAttn > detail::kMaxHeadDim)
        throw std::invalid_argument("naf::kernels::cuda::Engine: attention head dimension " +
                                    std::to_string(cfg.dim / cfg.headsAttn) + " exceeds " +
                                    std::to_string(detail::kMaxHeadDim));
    const int hidden = cfg.dim / 2;
    const EncoderBranchWeights* hostBranches[2] = {&w.pointBranch, &w.contextBranch};
    const char* names[2] = {"point branch", "context branch"};
    for (int bi = 0; bi < 2; ++bi)
    {
        const EncoderBranchWeights& br = *hostBranches[bi];
        const int k = br.stem.k;
        if (k <= 0 || k % 2 == 0)
            throw std::invalid_argument(std::string("naf::kernels::cuda::Engine: ") + names[bi] +
                                        " kernel size must be odd");
        checkConv(br.stem, hidden, 3, k, convName(names[bi], "stem"));
        if (static_cast<int>(br.blocks.size()) != cfg.imgLayers)
            throw std::invalid_argument(std::string("naf::kernels::cuda::Engine: ") + names[bi] + " has " +
                                        std::to_string(br.blocks.size()) + " blocks, config says " +
                                        std::to_string(cfg.imgLayers));
        for (size_t l = 0; l < br.blocks.size(); ++l)
        {
            checkConv(br.blocks[l].conv1, hidden, hidden, br.blocks[l].conv1.k,
                      convName(names[bi], "block " + std::to_string(l) + " conv1"));
            checkConv(br.blocks[l].conv2, hidden, hidden, br.blocks[l].conv2.k,
                      convName(names[bi], "block " + std::to_string(l) + " conv2"));
            if (br.blocks[l].conv1.k % 2 == 0 || br.blocks[l].conv2.k % 2 == 0 || br.blocks[l].conv1.k <= 0 ||
                br.blocks[l].conv2.k <= 0)
                throw std::invalid_argument(std::string("naf::kernels::cuda::Engine: ") + names[bi] +
                                            " kernel sizes must be odd");
        }
    }
    if (!w.ropePeriods) throw std::invalid_argument("naf::kernels::cuda::Engine: null RoPE periods");

    if (!available())
        throw std::runtime_error("naf::kernels::cuda::Engine: cannot run on the GPU: " + deviceDescription());
    check(cudaGetDevice(&s.device), "querying the current CUDA device");
    cudaDeviceProp prop;
    check(cudaGetDeviceProperties(&prop, s.device), "querying device properties");
    s.tensorCoresTf32 = prop.major >= 8;
    check(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), "creating the CUDA stream");

    // Pack every parameter into one host vector (each tensor 64-float aligned), upload once.
    std::vector<float> packed;
    std::vector<std::pair<const float**, size_t>> fixups;  // device pointer slot, offset into packed
    auto add = [&](const float* src, size_t n, const float** slot) {
        if (!src)
        {
            *slot = nullptr;
            return;
        }
        const size_t offset = (packed.size() + 63) / 64 * 64;
        packed.resize(offset + n);
        std::memcpy(packed.data() + offset, src, n * sizeof(float));
        fixups.emplace_back(slot, offset);
    };
    auto addConv = [&](const ConvWeights& c, detail::DevConv& d) {
        d.cout = c.cout;
        d.cin = c.cin;
        d.k = c.k;
        add(c.weight, static_cast<size_t>(c.cout) * c.cin * c.k * c.k, &d.weight);
        add(c.bias, static_cast<size_t>(c.cout), &d.bias);
    };
    DevBranch* devBranches[2] = {&s.point, &s.context};
    for (int bi = 0; bi < 2; ++bi)
    {
        const EncoderBranchWeights& br = *hostBranches[bi];
        DevBranch& d = *devBranches[bi];
        addConv(br.stem, d.stem);
        d.blocks.resize(br.blocks.size());
        for (size_t l = 0; l < br.blocks.size(); ++l)
        {
            const EncBlockWeights& hb = br.blocks[l];
            DevBlock& db = d.blocks[l];
            add(hb.norm1Gamma, hidden, &db.norm1Gamma);
            add(hb.norm1Beta, hidden, &db.norm1Beta);
            addConv(hb.conv1, db.conv1);
            add(hb.norm2Gamma, hidden, &db.norm2Gamma);
            add(hb.norm2Beta, hidden, &db.norm2Beta);
            addConv(hb.conv2, db.conv2);
        }
    }
    add(w.ropePeriods, static_cast<size_t>(cfg.dim / cfg.headsRope / 4), &s.ropePeriods);
    s.weights.ensure(std::max<size_t>(packed.size(), 1) * sizeof(float), "allocating device memory for the weights");
    check(cudaMemcpy(s.weights.ptr, packed.data(), packed.size() * sizeof(float), cudaMemcpyHostToDevice),
          "uploading the weights");
    for (const auto& f : fixups) *f.first = s.weights.as<float>() + f.second;
}

Engine::~Engine() = default;

size_t Engine::deviceBytes() const
{
    return impl_->weights.bytes + impl_->scratchBytes();
}

void Engine::forward(const float* hostImage, const float* hostFeatures, float* hostOut, const ForwardShape& shape,
                     MathMode mode, AttentionProbe* probe)
{
    Impl& s = *impl_;
    const NafConfig& cfg = s.cfg;
    checkForwardShape(cfg, shape);
    if (!hostImage || !hostFeatures || !hostOut)
        throw std::invalid_argument("naf::kernels::cuda::Engine::forward: null tensor pointer");
    if (probe && (probe->y < 0 || probe->y >= shape.outH || probe->x < 0 || probe->x >= shape.outW))
        throw std::invalid_argument("naf::kernels::cuda::Engine::forward: probe pixel (x=" + std::to_string(probe->x) +
                                    ", y=" + std::to_string(probe->y) + ") is outside the " +
                                    std::to_string(shape.outW) + "x" + std::to_string(shape.outH) + " output");
    DeviceScope scope(s.device);
    const bool tf32 = mode == MathMode::TF32 && s.tensorCoresTf32;

    int gh = 0, gw = 0;
    guideSize(shape.imageH, shape.imageW, shape.outH, shape.outW, cfg.maxGuideScale, &gh, &gw);
    const int hidden = cfg.dim / 2;
    const int C = shape.channels;
    const size_t imagePlane = static_cast<size_t>(shape.imageH) * shape.imageW;
    const size_t guidePlane = static_cast<size_t>(gh) * gw;
    const size_t outPlane = static_cast<size_t>(shape.outH) * shape.outW;
    const size_t lowPlane = static_cast<size_t>(shape.lowH) * shape.lowW;
    const int kh = effectiveKernel(shape.kernelSize, shape.lowH);
    const int kw = effectiveKernel(shape.kernelSize, shape.lowW);
    const int64_t gnChunks = detail::gnChunks(static_cast<int64_t>(hidden / cfg.numGroups) * gh * gw);

    // Scratch: grow only (allocation happens before any kernel of this call is queued).
    const size_t f = sizeof(float);
    s.image.ensure(3 * imagePlane * f, "allocating the image buffer");
    s.guide.ensure(3 * guidePlane * f, "allocating the guide buffer");
    s.bufA.ensure(hidden * guidePlane * f, "allocating encoder scratch");
    s.bufB.ensure(hidden * guidePlane * f, "allocating encoder scratch");
    s.queries.ensure(cfg.dim * outPlane * f, "allocating the query buffer");
    s.queriesT.ensure(cfg.dim * outPlane * f, "allocating the query buffer");
    s.keysT.ensure(cfg.dim * lowPlane * f, "allocating the key buffer");
    s.features.ensure(C * lowPlane * f, "allocating the feature buffer");
    s.valuesT.ensure(C * lowPlane * f, "allocating the value buffer");
    s.outT.ensure(C * outPlane * f, "allocating the output buffer");
    s.out.ensure(C * outPlane * f, "allocating the output buffer");
    s.gnPartial.ensure(static_cast<size_t>(cfg.numGroups) * gnChunks * sizeof(double),
                       "allocating GroupNorm scratch");
    s.gnStats.ensure(detail::groupNormStatsBytes(cfg.numGroups), "allocating GroupNorm scratch");
    s.tables.ensure((static_cast<size_t>(shape.outH) * kh + static_cast<size_t>(shape.outW) * kw) * sizeof(int),
                    "allocating the window tables");
    if (probe) s.probe.ensure(static_cast<size_t>(cfg.headsAttn) * kh * kw * f, "allocating the probe buffer");

    try
    {
        check(cudaMemcpyAsync(s.image.ptr, hostImage, 3 * imagePlane * f, cudaMemcpyHostToDevice, s.stream),
              "copying the image to the device");
        check(cudaMemcpyAsync(s.features.ptr, hostFeatures, C * lowPlane * f, cudaMemcpyHostToDevice, s.stream),
              "copying the features to the device");

        // Guide encoder -> queries [dim, outH, outW] (CHW, like the CPU path).
        detail::launchNormalizeResize(s.image.as<float>(), shape.imageH, shape.imageW, s.guide.as<float>(), gh, gw,
                                      cfg.mean, cfg.stdev, s.stream);
        s.runBranch(s.point, gh, gw, s.queries.as<float>(), shape.outH, shape.outW, tf32);
        s.runBranch(s.context, gh, gw, s.queries.as<float>() + hidden * outPlane, shape.outH, shape.outW, tf32);
        // RoPE, written pixel-major for the attention; keys = pooled RoPE'd queries.
        detail::launchRopeToHwc(s.queries.as<float>(), s.queriesT.as<float>(), cfg.dim, shape.outH, shape.outW,
                                cfg.headsRope, s.ropePeriods, s.stream);
        detail::launchAdaptiveAvgPoolHwc(s.queriesT.as<float>(), cfg.dim, shape.outH, shape.outW, s.keysT.as<float>(),
                                         shape.lowH, shape.lowW, s.stream);
        detail::launchTranspose(s.features.as<float>(), C, static_cast<int64_t>(lowPlane), s.valuesT.as<float>(),
                                s.stream);

        // Attention.
        int* rowTable = s.tables.as<int>();
        int* colTable = rowTable + static_cast<size_t>(shape.outH) * kh;
        detail::launchWindowTable(rowTable, shape.outH, shape.lowH, kh, s.stream);
        detail::launchWindowTable(colTable, shape.outW, shape.lowW, kw, s.stream);
        const float scale = 1.f / std::sqrt(static_cast<float>(cfg.dim / cfg.headsAttn));
        detail::launchNeighborhoodAttention(s.queriesT.as<float>(), s.keysT.as<float>(), s.valuesT.as<float>(),
                                            s.outT.as<float>(), cfg.dim, C, cfg.headsAttn, shape.lowW, shape.outH,
                                            shape.outW, rowTable, colTable, kh, kw, scale, s.stream);
        detail::launchTranspose(s.outT.as<float>(), static_cast<int64_t>(outPlane), C, s.out.as<float>(), s.stream);
        if (probe)
            detail::launchAttentionProbe(s.queriesT.as<float>(), s.keysT.as<float>(), cfg.dim, cfg.headsAttn,
                                         shape.lowW, shape.outW, probe->y, probe->x, rowTable, colTable, kh, kw, scale,
                                         s.probe.as<float>(), s.stream);

        check(cudaMemcpyAsync(hostOut, s.out.ptr, C * outPlane * f, cudaMemcpyDeviceToHost, s.stream),
              "copying the output to the host");
        std::vector<float> probeWeights;
        if (probe)
        {
            probeWeights.resize(static_cast<size_t>(cfg.headsAttn) * kh * kw);
            check(cudaMemcpyAsync(probeWeights.data(), s.probe.ptr, probeWeights.size() * f, cudaMemcpyDeviceToHost,
                                  s.stream),
                  "copying the attention probe to the host");
        }
        check(cudaStreamSynchronize(s.stream), "running the NAF forward on the device");

        if (probe)
        {
            probe->heads = cfg.headsAttn;
            probe->kh = kh;
            probe->kw = kw;
            probe->weights = std::move(probeWeights);
            probe->lowY.resize(kh);
            probe->lowX.resize(kw);
            for (int t = 0; t < kh; ++t) probe->lowY[t] = neighborLowIndex(probe->y, t, shape.outH, shape.lowH, kh);
            for (int t = 0; t < kw; ++t) probe->lowX[t] = neighborLowIndex(probe->x, t, shape.outW, shape.lowW, kw);
        }
    }
    catch (...)
    {
        // Leave no work of this call in flight on the scratch buffers.
        (void)cudaStreamSynchronize(s.stream);
        (void)cudaGetLastError();
        throw;
    }
}

}  // namespace cuda
}  // namespace kernels
}  // namespace naf
