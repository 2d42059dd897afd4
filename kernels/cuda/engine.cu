// CUDA path of the NAF forward: device queries, weight upload, scratch management and the
// sequence of kernels of one forward (same steps as kernels::forward on the CPU).
#include <cuda_runtime.h>

#include <memory>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "attention_choice.hpp"
#include "naf_cuda_internal.cuh"
#include "naf_kernels/naf_cuda.hpp"
#include "staged_copy.hpp"

namespace naf {
namespace kernels {
namespace cuda {

using detail::check;
using detail::DeviceBuffer;

bool compiled()
{
    return true;
}

bool cudnnCompiled()
{
#if NAF_HAVE_CUDNN
    return true;
#else
    return false;
#endif
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
    ConvolutionPath path = ConvolutionPath::Builtin;
    std::string pathNote;
#if NAF_HAVE_CUDNN
    std::unique_ptr<detail::CudnnConvolver> cudnn;
#endif

    DeviceBuffer weights;      // every parameter, packed
    DeviceBuffer weightsHalf;  // the convolution weights rounded to float16 (MathMode::FP16), packed
    DevBranch point, context;
    const float* ropePeriods = nullptr;

    // Scratch (grow only). guide and padded are reflect-padded for the next convolution.
    DeviceBuffer image, features, out;  // host-pointer forward only
    DeviceBuffer guide, convOut, padded, queries, queriesT, keysT, valuesT;
    DeviceBuffer gnPartial, gnStats, tables, probe, ropeTables;
    DeviceBuffer nonFinite;  // one int: set when MathMode::FP16 statistics were not finite
    // The cell kernels' work list for the last shape and kernel choice it was decided for (empty:
    // Tiled runs, because Auto chose it or the cell kernels are not worthwhile there).
    DeviceBuffer cellChunks;
    std::vector<cell::Chunk> cellChunksHost;
    std::vector<int> cellChunksKey;
    // What AttentionKernel::Auto runs at the size of cellChunksKey (chooseAutoAttention).
    AttentionKernel autoAttentionKernel = AttentionKernel::Tiled;

    AttentionKernel attentionKernel = AttentionKernel::Auto;
    AttentionKernel attentionKernelUsed = AttentionKernel::Tiled;  // by the last forward
    // AttentionKernel::Measured: the kernel kept for each size measured so far.
    std::map<std::vector<int>, AttentionKernel> measuredChoices;
    cudaEvent_t measureEvents[12] = {};  // three per candidate kernel
    bool nhwcTail = true;       // setNhwcTail
    bool nhwcTailUsed = false;  // by the last forward
    bool stageTiming = false;
    // Engine::forward's output copy goes through two pinned host buffers, chunk by chunk: the
    // device copies chunk k into one while the host copies chunk k - 1 out of the other into the
    // caller's (pageable) memory, with hostParallel's threads. The driver's own pageable copy is
    // one host thread (~11-13 GB/s: 24-32 ms of the paper output's round trip on an H100).
    struct PinnedBuffer
    {
        void* ptr = nullptr;
        size_t bytes = 0;
        void release() noexcept
        {
            if (ptr) (void)cudaFreeHost(ptr);
            ptr = nullptr;
            bytes = 0;
        }
    };
    PinnedBuffer staging[2];
    cudaEvent_t stagingEvents[2] = {nullptr, nullptr};
    ParallelFor hostParallel;  // setHostParallelFor; empty: the calling thread
    bool hostOutputWritten = false;  // lastForwardWroteHostOutput
    cudaEvent_t events[3] = {nullptr, nullptr, nullptr};
    std::vector<cudaEvent_t> convEvents;  // start/stop pairs around each convolution (stage timing)
    int convCalls = 0;
    StageTimes lastTimes;

    std::vector<DeviceBuffer*> scratch()
    {
        return {&image,   &features, &out,       &guide,   &convOut, &padded, &queries, &queriesT,
                &keysT,   &valuesT,  &gnPartial, &gnStats, &tables,  &probe,   &ropeTables, &nonFinite,
                &cellChunks};
    }

    ~Impl()
    {
        int previous = -1;
        const bool switched = cudaGetDevice(&previous) == cudaSuccess && previous != device &&
                              cudaSetDevice(device) == cudaSuccess;
        if (stream) (void)cudaStreamSynchronize(stream);
#if NAF_HAVE_CUDNN
        cudnn.reset();
#endif
        weights.release();
        weightsHalf.release();
        for (DeviceBuffer* b : scratch()) b->release();
        for (PinnedBuffer& b : staging) b.release();
        destroyEvents(stagingEvents);
        destroyEvents(events);
        destroyEvents(measureEvents);
        destroyEvents(convEvents);
        if (stream) (void)cudaStreamDestroy(stream);
        if (switched) (void)cudaSetDevice(previous);
    }

    /// Creates the events of `list` that do not exist yet (cudaEventCreateWithFlags).
    template <class Events>
    static void createMissingEvents(Events& list, unsigned int flags, const char* what)
    {
        for (cudaEvent_t& e : list)
            if (!e) check(cudaEventCreateWithFlags(&e, flags), what);
    }
    template <class Events>
    static void destroyEvents(Events& list) noexcept
    {
        for (cudaEvent_t& e : list)
            if (e) (void)cudaEventDestroy(e);
    }

    size_t scratchBytes()
    {
        size_t total = 0;
        for (const DeviceBuffer* b : scratch()) total += b->bytes;
#if NAF_HAVE_CUDNN
        if (cudnn) total += cudnn->workspaceBytes();
#endif
        return total;
    }

    /// True when each encoder branch holds whole RoPE heads: the fused pool+RoPE kernel writes the
    /// pixel-major queries, and no CHW query buffer is needed.
    bool ropeFused() const
    {
        const int hidden = cfg.dim / 2;
        return detail::poolRopeFusable(cfg.dim, hidden, 0, cfg.headsRope) &&
               detail::poolRopeFusable(cfg.dim, hidden, hidden, cfg.headsRope);
    }

    /// One convolution on float (tf32: TF32 tensor cores) or float16 tensors (FP16 tensor cores
    /// through cuDNN; the built-in kernel multiplies them on TF32 tensor cores when tf32, exactly).
    template <typename T>
    void convolve(const T* srcPadded, int h, int w, const detail::DevConv& conv, T* dst, bool tf32)
    {
        detail::DevConv noBias = conv;
        noBias.bias = nullptr;  // added by the consumer of dst
        timedConvolution([&] {
#if NAF_HAVE_CUDNN
            if (cudnn)
                runCudnn(srcPadded, h, w, noBias, dst, tf32);
            else
#endif
                detail::launchConv2dPadded(srcPadded, h, w, noBias, dst, tf32, stream);
        });
    }

    /// The branch's last convolution on pixel-major float tensors (cuDNN NHWC; setNhwcTail).
    /// Returns false when cuDNN has no usable NHWC algorithm for the shape. dstHwc may have been
    /// written by the algorithm search even then; the shape is remembered, convolutionPathNote()
    /// says so, and its later forwards skip the tail.
    bool convolveNhwc(const float* srcPaddedHwc, int h, int w, const detail::DevConv& conv, float* dstHwc, bool tf32)
    {
        bool done = false;
        timedConvolution([&] {
#if NAF_HAVE_CUDNN
            if (!cudnn) throw std::logic_error("naf::kernels::cuda::Engine: NHWC tail without cuDNN");
            try
            {
                cudnn->runNhwc(srcPaddedHwc, h, w, conv, dstHwc, tf32);  // runNhwc never adds the bias
                done = true;
            }
            catch (const std::runtime_error& e)
            {
                nhwcRefused.push_back(std::make_tuple(h, w, conv.cin, conv.cout, conv.k, tf32));
                nhwcRefusedNote += "NHWC " + std::to_string(conv.cout) + "x" + std::to_string(conv.cin) + "x" +
                                   std::to_string(conv.k) + "x" + std::to_string(conv.k) + " on " +
                                   std::to_string(h) + "x" + std::to_string(w) +
                                   " runs the usual tail (cuDNN: " + e.what() + "); ";
            }
#else
            (void)srcPaddedHwc, (void)h, (void)w, (void)conv, (void)dstHwc, (void)tf32;
            throw std::logic_error("naf::kernels::cuda::Engine: NHWC tail without cuDNN");
#endif
        });
        return done;
    }
    bool nhwcRefusedFor(int h, int w, const detail::DevConv& conv, bool tf32) const
    {
        return std::find(nhwcRefused.begin(), nhwcRefused.end(),
                         std::make_tuple(h, w, conv.cin, conv.cout, conv.k, tf32)) != nhwcRefused.end();
    }
    std::vector<std::tuple<int, int, int, int, int, bool>> nhwcRefused;  // (h, w, cin, cout, k, tf32)
    std::string nhwcRefusedNote;

    /// Runs `enqueueConvolution` between the convolution timing events when stage timing is on.
    template <typename Fn>
    void timedConvolution(Fn&& enqueueConvolution)
    {
        const bool timed = stageTiming && 2 * convCalls + 1 < static_cast<int>(convEvents.size());
        if (timed) check(cudaEventRecord(convEvents[2 * convCalls], stream), "recording a timing event");
        enqueueConvolution();
        if (timed) check(cudaEventRecord(convEvents[2 * convCalls + 1], stream), "recording a timing event");
        ++convCalls;
    }

    /// setNhwcTail applies to a forward when cuDNN runs the convolutions with tensor cores (TF32,
    /// and FP16 whose last convolutions are TF32: NHWC is their native layout), the RoPE is fused
    /// per branch and pooling is the identity (the guide has the output size); else the NCHW tail.
    bool nhwcTailApplies(int gh, int gw, const ForwardShape& shape, bool tf32) const
    {
        return nhwcTail && tf32 && path == ConvolutionPath::CuDnn && ropeFused() && cfg.imgLayers > 0 &&
               gh == shape.outH && gw == shape.outW;
    }

#if NAF_HAVE_CUDNN
    void runCudnn(const float* src, int h, int w, const detail::DevConv& conv, float* dst, bool tf32)
    {
        cudnn->run(src, h, w, conv, dst, tf32);
    }
    /// A float16 convolution that cuDNN refuses (no usable algorithm for the shape, or an
    /// unsupported configuration) runs on the built-in kernel instead, for that shape from then
    /// on; convolutionPathNote() says so.
    void runCudnn(const __half* src, int h, int w, const detail::DevConv& conv, __half* dst, bool tf32)
    {
        const auto shape = std::make_tuple(h, w, conv.cin, conv.cout, conv.k);
        if (std::find(halfRefused.begin(), halfRefused.end(), shape) == halfRefused.end())
        {
            try
            {
                cudnn->run(src, h, w, conv, dst);
                return;
            }
            catch (const std::runtime_error& e)
            {
                halfRefused.push_back(shape);
                halfRefusedNote += "float16 " + std::to_string(conv.cout) + "x" + std::to_string(conv.cin) + "x" +
                                   std::to_string(conv.k) + "x" + std::to_string(conv.k) + " on " +
                                   std::to_string(h) + "x" + std::to_string(w) +
                                   " runs on the built-in kernel (cuDNN: " + e.what() + "); ";
            }
        }
        detail::launchConv2dPadded(src, h, w, conv, dst, tf32, stream);
    }
    std::vector<std::tuple<int, int, int, int, int>> halfRefused;  // (h, w, cin, cout, k)
    std::string halfRefusedNote;
#endif

    /// One encoder branch on the guide; leaves its last convolution's output (without bias, float)
    /// in convOut and returns that bias. With `nhwc` (nhwcTailApplies), the last GroupNorm+SiLU
    /// writes `padded` pixel-major and convOut is pixel-major [gh*gw][hidden], unless cuDNN
    /// refused the NHWC convolution: *ranNhwc says which layout convOut has. T is the storage of
    /// the encoder tensors: float, or __half in MathMode::FP16. With __half, the guide, the
    /// convolution outputs and the GroupNorm+SiLU outputs are float16 except around the branch's
    /// last convolution, which reads float (the last GroupNorm+SiLU writes float) and writes float
    /// with `tf32` math: rounding that output, where the queries come from, to float16 would cost
    /// 2-3x the error of TF32
    /// (tools/reduced_precision_study.py, fp16-encoder against fp16-encoder-tf32-last).
    template <typename T>
    const float* runBranch(const DevBranch& branch, const float* imageDev, int imageH, int imageW, int gh, int gw,
                           bool tf32, bool nhwc, bool* ranNhwc)
    {
        *ranNhwc = false;
        if (branch.blocks.empty() && !std::is_same<T, float>::value)
            return runBranch<float>(branch, imageDev, imageH, imageW, gh, gw, tf32, nhwc, ranNhwc);  // the stem is the last
        const int hidden = branch.stem.cout;
        const int convCallsAtStart = convCalls;
        T* conv = convOut.as<T>();
        T* pad = padded.as<T>();
        // float16 tensors past float16's range reach the GroupNorm statistics as inf or NaN.
        int* overflow = std::is_same<T, __half>::value ? nonFinite.as<int>() : nullptr;
        detail::launchNormalizeResizePadded(imageDev, imageH, imageW, guide.as<T>(), gh, gw, branch.stem.k / 2,
                                            cfg.mean, cfg.stdev, stream);
        convolve(guide.as<T>(), gh, gw, branch.stem, conv, tf32);
        const float* bias = branch.stem.bias;
        for (size_t l = 0; l < branch.blocks.size(); ++l)
        {
            const DevBlock& blk = branch.blocks[l];
            detail::launchGroupNormSiLUPadded(conv, bias, hidden, gh, gw, cfg.numGroups, blk.norm1Gamma,
                                              blk.norm1Beta, cfg.gnEps, pad, blk.conv1.k / 2, gnPartial.as<double>(),
                                              gnStats.ptr, stream, overflow);
            convolve(pad, gh, gw, blk.conv1, conv, tf32);
            auto normalize2 = [&](auto* dst) {
                detail::launchGroupNormSiLUPadded(conv, blk.conv1.bias, hidden, gh, gw, cfg.numGroups, blk.norm2Gamma,
                                                  blk.norm2Beta, cfg.gnEps, dst, blk.conv2.k / 2,
                                                  gnPartial.as<double>(), gnStats.ptr, stream, overflow);
            };
            const bool last = l + 1 == branch.blocks.size();
            if (last && nhwc && !nhwcRefusedFor(gh, gw, blk.conv2, tf32))
            {
                // The same in channels-last: GroupNorm+SiLU transposes into `padded`, cuDNN
                // convolves NHWC without staging layout transforms (hwc_tail.hpp).
                detail::launchGroupNormSiLUPaddedHwc(conv, blk.conv1.bias, hidden, gh, gw, cfg.numGroups,
                                                     blk.norm2Gamma, blk.norm2Beta, cfg.gnEps, padded.as<float>(),
                                                     blk.conv2.k / 2, gnPartial.as<double>(), gnStats.ptr, stream,
                                                     overflow);
                *ranNhwc = convolveNhwc(padded.as<float>(), gh, gw, blk.conv2, convOut.as<float>(), tf32);
                if (!*ranNhwc)
                {
                    // cuDNN's algorithm search ran its candidates into convOut, which was this
                    // GroupNorm's input: the branch is recomputed, with the usual tail now that
                    // the shape is refused, and its convolutions timed from the start again.
                    convCalls = convCallsAtStart;
                    return runBranch<T>(branch, imageDev, imageH, imageW, gh, gw, tf32, nhwc, ranNhwc);
                }
            }
            if (last && !*ranNhwc)
            {
                // The last convolution reads and writes float (convOut is read as T and padded
                // written as float: different buffers).
                normalize2(padded.as<float>());
                convolve(padded.as<float>(), gh, gw, blk.conv2, convOut.as<float>(), tf32);
            }
            else if (!last)
            {
                normalize2(pad);
                convolve(pad, gh, gw, blk.conv2, conv, tf32);
            }
            bias = blk.conv2.bias;
        }
        return bias;
    }

    /// AttentionKernel::Measured: at a new size, each kernel that runs there is launched three
    /// times back to back with events between the launches, and the host waits once, at the end:
    /// it enqueues the next launch while the device runs the current one, so no host gap (launch
    /// call, attribute setting, lazy module loading on the first launch) enters a timing, and the
    /// first launch is not timed. The faster of the other two counts; the fastest kernel is kept
    /// for the size. Every candidate writes the whole output, so the last launch's output stands.
    template <typename Attend>
    AttentionKernel measuredAttention(Attend&& attend, const std::vector<int>& key)
    {
        const auto known = measuredChoices.find(key);
        if (known != measuredChoices.end()) return attend(known->second);
        createMissingEvents(measureEvents, cudaEventDefault, "creating an attention timing event");
        constexpr AttentionKernel candidates[] = {AttentionKernel::Tiled, AttentionKernel::TiledChunked,
                                                  AttentionKernel::Cell, AttentionKernel::CellTensorCore};
        static_assert(3 * (sizeof(candidates) / sizeof(candidates[0])) == sizeof(measureEvents) / sizeof(cudaEvent_t),
                      "three timing events per candidate");
        std::vector<AttentionKernel> ran;  // the kernels that really ran, in candidate order
        AttentionKernel last = AttentionKernel::Tiled;
        for (AttentionKernel candidate : candidates)
        {
            last = attend(candidate);
            // A candidate that fell back to a kernel already timed is not timed again.
            if (std::find(ran.begin(), ran.end(), last) != ran.end()) continue;
            cudaEvent_t* const marks = measureEvents + 3 * ran.size();
            check(cudaEventRecord(marks[0], stream), "recording an attention timing event");
            (void)attend(candidate);
            check(cudaEventRecord(marks[1], stream), "recording an attention timing event");
            (void)attend(candidate);
            check(cudaEventRecord(marks[2], stream), "recording an attention timing event");
            ran.push_back(last);
        }
        check(cudaEventSynchronize(measureEvents[3 * ran.size() - 1]), "timing the attention kernels");
        std::vector<detail::TimedAttention> timed;
        for (size_t i = 0; i < ran.size(); ++i)
        {
            float first = 0.f, second = 0.f;
            const cudaEvent_t* const marks = measureEvents + 3 * i;
            check(cudaEventElapsedTime(&first, marks[0], marks[1]), "timing an attention kernel");
            check(cudaEventElapsedTime(&second, marks[1], marks[2]), "timing an attention kernel");
            timed.push_back({ran[i], std::min(first, second)});
        }
        const AttentionKernel bestKernel = detail::chooseMeasuredAttention(timed);
        // Kept only now: a failure above measures again on the next call.
        measuredChoices[key] = bestKernel;
        return last == bestKernel ? bestKernel : attend(bestKernel);
    }

    void record(int i)
    {
        if (stageTiming) check(cudaEventRecord(events[i], stream), "recording a timing event");
    }

    /// The forward on device pointers; everything is enqueued on `stream` (no synchronization).
    void enqueue(const float* imageDev, const float* featuresDev, float* outDev, const ForwardShape& shape, bool tf32,
                 bool fp16, AttentionProbe* probe)
    {
        int gh = 0, gw = 0;
        guideSize(shape.imageH, shape.imageW, shape.outH, shape.outW, cfg.maxGuideScale, &gh, &gw);
        const int hidden = cfg.dim / 2;
        const int C = shape.channels;
        const size_t outPlane = static_cast<size_t>(shape.outH) * shape.outW;
        const size_t lowPlane = static_cast<size_t>(shape.lowH) * shape.lowW;
        const int kh = effectiveKernel(shape.kernelSize, shape.lowH);
        const int kw = effectiveKernel(shape.kernelSize, shape.lowW);
        const bool fused = ropeFused();
        const bool nhwc = nhwcTailApplies(gh, gw, shape, tf32);
        nhwcTailUsed = nhwc;  // and both branches ran it (below)

        convCalls = 0;
        record(0);
        if (fp16) check(cudaMemsetAsync(nonFinite.ptr, 0, sizeof(int), stream), "clearing the float16 range flag");
        // Guide encoder -> RoPE'd queries, pixel-major [outH*outW, dim].
        if (fused)
            detail::launchRopeTables(ropeTables.ptr, shape.outH, shape.outW, cfg.dim, cfg.headsRope, ropePeriods,
                                     stream);
        const DevBranch* branches[2] = {&point, &context};
        for (int bi = 0; bi < 2; ++bi)
        {
            bool ranNhwc = false;
            const float* bias =
                fp16 ? runBranch<__half>(*branches[bi], imageDev, shape.imageH, shape.imageW, gh, gw, tf32, nhwc,
                                         &ranNhwc)
                     : runBranch<float>(*branches[bi], imageDev, shape.imageH, shape.imageW, gh, gw, tf32, nhwc,
                                        &ranNhwc);
            nhwcTailUsed = nhwcTailUsed && ranNhwc;
            if (ranNhwc)
                detail::launchRopeFromHwc(convOut.as<float>(), bias, hidden, queriesT.as<float>(), cfg.dim,
                                          bi * hidden, shape.outH, shape.outW, cfg.headsRope, ropeTables.ptr, stream);
            else if (fused)
                detail::launchPoolRopeToHwc(convOut.as<float>(), bias, hidden, gh, gw, queriesT.as<float>(), cfg.dim,
                                            bi * hidden, shape.outH, shape.outW, cfg.headsRope, ropeTables.ptr,
                                            stream);
            else
                detail::launchAdaptiveAvgPool(convOut.as<float>(), bias, hidden, gh, gw,
                                              queries.as<float>() + bi * hidden * outPlane, shape.outH, shape.outW,
                                              stream);
        }
        if (!fused)
            detail::launchRopeToHwc(queries.as<float>(), queriesT.as<float>(), cfg.dim, shape.outH, shape.outW,
                                    cfg.headsRope, ropePeriods, stream);
        // Keys = pooled RoPE'd queries.
        detail::launchAdaptiveAvgPoolHwc(queriesT.as<float>(), cfg.dim, shape.outH, shape.outW, keysT.as<float>(),
                                         shape.lowH, shape.lowW, stream);
        record(1);
        if (fp16) refuseFloat16Overflow();

        // Attention, written channel-major straight into the output.
        detail::launchTranspose(featuresDev, C, static_cast<int64_t>(lowPlane), valuesT.as<float>(), stream);
        int* rowTable = tables.as<int>();
        int* colTable = rowTable + static_cast<size_t>(shape.outH) * kh;
        detail::launchWindowTable(rowTable, shape.outH, shape.lowH, kh, stream);
        detail::launchWindowTable(colTable, shape.outW, shape.lowW, kw, stream);
        const float scale = 1.f / std::sqrt(static_cast<float>(cfg.dim / cfg.headsAttn));
        auto attend = [&](AttentionKernel kernel) {
            return detail::launchNeighborhoodAttention(
                queriesT.as<float>(), keysT.as<float>(), valuesT.as<float>(), outDev, cfg.dim, C, cfg.headsAttn,
                shape.lowH, shape.lowW, shape.outH, shape.outW, rowTable, colTable, kh, kw, scale, stream, kernel,
                cellChunksHost.empty() ? nullptr : cellChunks.as<cell::Chunk>(),
                static_cast<int64_t>(cellChunksHost.size()));
        };
        if (attentionKernel == AttentionKernel::Measured)
            attentionKernelUsed = measuredAttention(attend, {shape.outH, shape.outW, shape.lowH, shape.lowW, kh, kw, C});
        else
            attentionKernelUsed =
                attend(attentionKernel == AttentionKernel::Auto ? autoAttentionKernel : attentionKernel);
        if (probe)
            detail::launchAttentionProbe(queriesT.as<float>(), keysT.as<float>(), cfg.dim, cfg.headsAttn, shape.lowW,
                                         shape.outW, probe->y, probe->x, rowTable, colTable, kh, kw, scale,
                                         this->probe.as<float>(), stream);
        record(2);
    }

    /// MathMode::FP16: waits for the encoder and throws when a float16 tensor left float16's range,
    /// before the attention writes any output (so the caller's output is left as it was).
    void refuseFloat16Overflow()
    {
        int flag = 0;
        check(cudaMemcpyAsync(&flag, nonFinite.ptr, sizeof(int), cudaMemcpyDeviceToHost, stream),
              "reading the float16 range flag");
        check(cudaStreamSynchronize(stream), "running the encoder on the device");
        if (flag)
            throw std::runtime_error(
                "naf::kernels::cuda::Engine: MathMode::FP16: an encoder tensor went past float16's range "
                "(|x| > 65504) and its GroupNorm statistics are not finite; no output was written. Use "
                "MathMode::TF32 or FP32 for this input");
    }

    /// Grow-only scratch for `shape` (before anything of the call is queued).
    void reserve(const ForwardShape& shape, bool hostIO, bool withProbe)
    {
        int gh = 0, gw = 0;
        guideSize(shape.imageH, shape.imageW, shape.outH, shape.outW, cfg.maxGuideScale, &gh, &gw);
        const int hidden = cfg.dim / 2;
        const size_t f = sizeof(float);
        const size_t imagePlane = static_cast<size_t>(shape.imageH) * shape.imageW;
        const size_t outPlane = static_cast<size_t>(shape.outH) * shape.outW;
        const size_t lowPlane = static_cast<size_t>(shape.lowH) * shape.lowW;
        const int kh = effectiveKernel(shape.kernelSize, shape.lowH);
        const int kw = effectiveKernel(shape.kernelSize, shape.lowW);
        int stemPad = 0, blockPad = 0;
        for (const DevBranch* br : {&point, &context})
        {
            stemPad = std::max(stemPad, br->stem.k / 2);
            for (const DevBlock& blk : br->blocks) blockPad = std::max({blockPad, blk.conv1.k / 2, blk.conv2.k / 2});
        }
        const size_t gnChunks = static_cast<size_t>(detail::gnChunksPerChannel(static_cast<int64_t>(gh) * gw));
        const bool fused = ropeFused();
        if (hostIO)
        {
            image.ensure(3 * imagePlane * f, "allocating the image buffer");
            features.ensure(static_cast<size_t>(shape.channels) * lowPlane * f, "allocating the feature buffer");
            out.ensure(static_cast<size_t>(shape.channels) * outPlane * f, "allocating the output buffer");
        }
        guide.ensure(3 * static_cast<size_t>(gh + 2 * stemPad) * (gw + 2 * stemPad) * f, "allocating the guide buffer");
        convOut.ensure(static_cast<size_t>(hidden) * gh * gw * f, "allocating encoder scratch");
        padded.ensure(static_cast<size_t>(hidden) * (gh + 2 * blockPad) * (gw + 2 * blockPad) * f,
                      "allocating encoder scratch");
        if (!fused) queries.ensure(static_cast<size_t>(cfg.dim) * outPlane * f, "allocating the query buffer");
        queriesT.ensure(static_cast<size_t>(cfg.dim) * outPlane * f, "allocating the query buffer");
        keysT.ensure(static_cast<size_t>(cfg.dim) * lowPlane * f, "allocating the key buffer");
        valuesT.ensure(static_cast<size_t>(shape.channels) * lowPlane * f, "allocating the value buffer");
        if (fused)
            ropeTables.ensure(detail::ropeTablesBytes(shape.outH, shape.outW, cfg.dim, cfg.headsRope),
                              "allocating the RoPE tables");
        gnPartial.ensure(2 * static_cast<size_t>(hidden) * gnChunks * sizeof(double),
                         "allocating GroupNorm scratch");
        gnStats.ensure(detail::groupNormStatsBytes(hidden), "allocating GroupNorm scratch");
        nonFinite.ensure(sizeof(int), "allocating the float16 range flag");
        tables.ensure((static_cast<size_t>(shape.outH) * kh + static_cast<size_t>(shape.outW) * kw) * sizeof(int),
                      "allocating the window tables");
        if (withProbe)
            probe.ensure(static_cast<size_t>(cfg.headsAttn) * kh * kw * f, "allocating the probe buffer");
        // Every kernel choice but these may run the cell work list.
        if (attentionKernel != AttentionKernel::Tiled && attentionKernel != AttentionKernel::TiledChunked &&
            attentionKernel != AttentionKernel::General)
        {
            // Decided and built on the host once per size; uploaded in stream order, after any
            // earlier call's attention has read the previous list.
            const std::vector<int> key = {shape.outH, shape.outW, shape.lowH,  shape.lowW,
                                          kh,         kw,         shape.channels, static_cast<int>(attentionKernel)};
            if (key != cellChunksKey)
            {
                // First: a failure below (a device query, an allocation, the upload) leaves no key
                // that a later call could match against a list it does not describe.
                cellChunksKey.clear();
                const int headDim = cfg.dim / cfg.headsAttn;
                cellChunksHost = cell::buildChunks(shape.outH, shape.outW, shape.lowH, shape.lowW, kh, kw);
                if (!cell::worthwhile(cellChunksHost, shape.outH, shape.outW, headDim, kh, kw)) cellChunksHost.clear();
                if (attentionKernel == AttentionKernel::Auto)
                {
                    autoAttentionKernel = detail::chooseAutoAttention(
                        !cellChunksHost.empty(),
                        detail::cellTensorCoreRuns(headDim, shape.channels / cfg.headsAttn, kh, kw), [&] {
                            return detail::tiledAttentionBlocksPerSm(cfg.dim, shape.channels, cfg.headsAttn,
                                                                     shape.lowH, shape.lowW, shape.outH, shape.outW,
                                                                     kh, kw);
                        });
                    if (autoAttentionKernel == AttentionKernel::Tiled) cellChunksHost.clear();  // not uploaded
                }
                const size_t bytes = cellChunksHost.size() * sizeof(cell::Chunk);
                if (bytes > 0)
                {
                    cellChunks.ensure(bytes, "allocating the cell attention work list");
                    check(cudaMemcpyAsync(cellChunks.ptr, cellChunksHost.data(), bytes, cudaMemcpyHostToDevice,
                                          stream),
                          "uploading the cell attention work list");
                }
                cellChunksKey = key;
            }
        }
        if (stageTiming)
        {
            createMissingEvents(events, cudaEventDefault, "creating a timing event");
            const size_t convs = 2 * (1 + 2 * static_cast<size_t>(cfg.imgLayers));
            while (convEvents.size() < 2 * convs)
            {
                cudaEvent_t e = nullptr;
                check(cudaEventCreate(&e), "creating a timing event");
                convEvents.push_back(e);
            }
        }
    }

    /// Runs `work` (which enqueues a call's steps); on an error, leaves no work of the call in
    /// flight on the scratch buffers before rethrowing.
    template <typename Work>
    void guarded(Work&& work)
    {
        try
        {
            work();
        }
        catch (...)
        {
            (void)cudaStreamSynchronize(stream);
            (void)cudaGetLastError();
            throw;
        }
    }

    static constexpr size_t kStagingChunk = size_t(32) << 20;  // bytes per pinned buffer
    static constexpr size_t kHostStripe = size_t(4) << 20;     // bytes per host thread's memcpy

    /// Both pinned staging buffers hold `chunk` bytes (grow-only) and their events exist; false
    /// when pinned memory is not available (the caller then copies pageable, as before).
    bool ensureStaging(size_t chunk)
    {
        createMissingEvents(stagingEvents, cudaEventDisableTiming, "creating a copy event");
        for (PinnedBuffer& b : staging)
        {
            if (b.bytes >= chunk) continue;
            b.release();
            if (cudaMallocHost(&b.ptr, chunk) != cudaSuccess)
            {
                (void)cudaGetLastError();
                b.ptr = nullptr;
                return false;
            }
            b.bytes = chunk;
        }
        return true;
    }

    /// n bytes on the host, in stripes over hostParallel's threads when set.
    void hostCopy(char* dst, const char* src, size_t n)
    {
        const int64_t stripes = static_cast<int64_t>((n + kHostStripe - 1) / kHostStripe);
        if (!hostParallel || stripes < 2)
        {
            std::memcpy(dst, src, n);
            return;
        }
        hostParallel(stripes, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i)
            {
                const size_t offset = static_cast<size_t>(i) * kHostStripe;
                std::memcpy(dst + offset, src + offset, std::min(kHostStripe, n - offset));
            }
        });
    }

    /// Enqueues the copy of `bytes` of deviceOut (after everything enqueued so far) to hostOut and
    /// returns when hostOut is written: straight into page-locked memory (`pinned`, from
    /// hostOutputIsPageLocked), else through the pinned staging buffers (the pageable copy when
    /// those cannot be allocated).
    /// An error here may come after part of hostOut was written, so an out-of-memory one leaves as
    /// a plain std::runtime_error: OutOfDeviceMemory promises an untouched output.
    void copyToHost(void* hostOut, bool pinned, const void* deviceOut, size_t bytes)
    {
        try
        {
            copyToHostChunks(hostOut, pinned, deviceOut, bytes);
        }
        catch (const OutOfDeviceMemory& e)
        {
            throw std::runtime_error(std::string(e.what()) + " (while copying the output to the host: it may be "
                                                             "partly written)");
        }
    }

    void copyToHostChunks(void* hostOut, bool pinned, const void* deviceOut, size_t bytes)
    {
        // Full-size buffers from 4 MiB up: sized to the first output, a small call followed by a
        // large one would free and re-pin both (milliseconds, and cudaFreeHost synchronizes).
        const size_t chunk = bytes >= kStagingChunk / 8 ? kStagingChunk : bytes;
        if (pinned || bytes == 0 || !ensureStaging(chunk))
        {
            hostOutputWritten = bytes > 0;  // from here on a failure may leave part of it written
            check(cudaMemcpyAsync(hostOut, deviceOut, bytes, cudaMemcpyDeviceToHost, stream),
                  "copying the output to the host");
            return;
        }
        char* const dst = static_cast<char*>(hostOut);
        const char* const src = static_cast<const char*>(deviceOut);
        staged::copyInChunks(
            bytes, chunk,
            [&](size_t, int buffer, size_t offset, size_t size) {
                check(cudaMemcpyAsync(staging[buffer].ptr, src + offset, size, cudaMemcpyDeviceToHost, stream),
                      "copying the output to the host");
                check(cudaEventRecord(stagingEvents[buffer], stream), "recording a copy event");
            },
            [&](size_t, int buffer, size_t offset, size_t size) {
                check(cudaEventSynchronize(stagingEvents[buffer]), "copying the output to the host");
                hostOutputWritten = true;
                hostCopy(dst + offset, static_cast<const char*>(staging[buffer].ptr), size);
            });
    }

    /// Ends a call whose steps are enqueued: copies the probe's weights back, waits for the
    /// stream, then fills the stage times and the probe.
    void complete(const ForwardShape& shape, AttentionProbe* probe)
    {
        std::vector<float> probeWeights;
        if (probe)
        {
            probeWeights.resize(static_cast<size_t>(cfg.headsAttn) * effectiveKernel(shape.kernelSize, shape.lowH) *
                                effectiveKernel(shape.kernelSize, shape.lowW));
            check(cudaMemcpyAsync(probeWeights.data(), this->probe.ptr, probeWeights.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream),
                  "copying the attention probe to the host");
        }
        check(cudaStreamSynchronize(stream), "running the NAF forward on the device");
        finish(shape, probe, probeWeights);
    }

    /// After the stream has finished: stage times and the probe's host side.
    void finish(const ForwardShape& shape, AttentionProbe* probe, std::vector<float>& probeWeights)
    {
        lastTimes = StageTimes();
        if (stageTiming)
        {
            check(cudaEventElapsedTime(&lastTimes.encoderMs, events[0], events[1]), "reading a timing event");
            check(cudaEventElapsedTime(&lastTimes.attentionMs, events[1], events[2]), "reading a timing event");
            lastTimes.totalMs = lastTimes.encoderMs + lastTimes.attentionMs;
            // Each convolution between its own start/stop events (all inside the encoder stage).
            for (int i = 0; i < convCalls && 2 * i + 1 < static_cast<int>(convEvents.size()); ++i)
            {
                float ms = 0.f;
                check(cudaEventElapsedTime(&ms, convEvents[2 * i], convEvents[2 * i + 1]), "reading a timing event");
                lastTimes.convolutionMs += ms;
                lastTimes.convolutionCallMs.push_back(ms);
            }
        }
        if (probe)
        {
            const int kh = effectiveKernel(shape.kernelSize, shape.lowH);
            const int kw = effectiveKernel(shape.kernelSize, shape.lowW);
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
};

Engine::Engine(const NafConfig& cfg, const NafWeights& w, ConvolutionPath path)
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
#if NAF_HAVE_CUDNN
    if (path != ConvolutionPath::Builtin)
    {
        try
        {
            s.cudnn.reset(new detail::CudnnConvolver(s.stream));
        }
        catch (const std::exception& e)
        {
            if (path == ConvolutionPath::CuDnn) throw;
            s.pathNote = std::string("cuDNN unavailable, using the built-in convolution: ") + e.what();
        }
    }
    s.path = s.cudnn ? ConvolutionPath::CuDnn : ConvolutionPath::Builtin;
#else
    if (path == ConvolutionPath::CuDnn)
        throw std::runtime_error("naf::kernels::cuda::Engine: this build of naf_kernels has no cuDNN support");
    s.path = ConvolutionPath::Builtin;
#endif

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
    // The convolution weights again, rounded to float16 (each tensor 64 halves aligned).
    std::vector<__half> packedHalf;
    std::vector<std::pair<const __half**, size_t>> fixupsHalf;
    auto addConv = [&](const ConvWeights& c, detail::DevConv& d) {
        d.cout = c.cout;
        d.cin = c.cin;
        d.k = c.k;
        const size_t n = static_cast<size_t>(c.cout) * c.cin * c.k * c.k;
        add(c.weight, n, &d.weight);
        add(c.bias, static_cast<size_t>(c.cout), &d.bias);
        const size_t offset = (packedHalf.size() + 63) / 64 * 64;
        packedHalf.resize(offset + n, __float2half_rn(0.f));
        for (size_t i = 0; i < n; ++i) packedHalf[offset + i] = __float2half_rn(c.weight[i]);
        fixupsHalf.emplace_back(&d.weightHalf, offset);
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
        if (!br.blocks.empty())
        {
            // The branch's last convolution also as [cout][k][k][cin], cuDNN's NHWC filter (setNhwcTail).
            const ConvWeights& c = br.blocks.back().conv2;
            std::vector<float> krsc(static_cast<size_t>(c.cout) * c.k * c.k * c.cin);
            for (int co = 0; co < c.cout; ++co)
                for (int ci = 0; ci < c.cin; ++ci)
                    for (int t = 0; t < c.k * c.k; ++t)
                        krsc[(static_cast<size_t>(co) * c.k * c.k + t) * c.cin + ci] =
                            c.weight[(static_cast<size_t>(co) * c.cin + ci) * c.k * c.k + t];
            add(krsc.data(), krsc.size(), &d.blocks.back().conv2.weightKrsc);
        }
    }
    add(w.ropePeriods, static_cast<size_t>(cfg.dim / cfg.headsRope / 4), &s.ropePeriods);
    s.weights.ensure(std::max<size_t>(packed.size(), 1) * sizeof(float), "allocating device memory for the weights");
    check(cudaMemcpy(s.weights.ptr, packed.data(), packed.size() * sizeof(float), cudaMemcpyHostToDevice),
          "uploading the weights");
    for (const auto& f : fixups) *f.first = s.weights.as<float>() + f.second;
    s.weightsHalf.ensure(std::max<size_t>(packedHalf.size(), 1) * sizeof(__half),
                         "allocating device memory for the float16 weights");
    check(cudaMemcpy(s.weightsHalf.ptr, packedHalf.data(), packedHalf.size() * sizeof(__half),
                     cudaMemcpyHostToDevice),
          "uploading the float16 weights");
    for (const auto& f : fixupsHalf) *f.first = s.weightsHalf.as<__half>() + f.second;
}

Engine::~Engine() = default;

size_t Engine::deviceBytes() const
{
    return impl_->weights.bytes + impl_->weightsHalf.bytes + impl_->scratchBytes();
}

void Engine::releaseScratch()
{
    Impl& s = *impl_;
    DeviceScope scope(s.device);
    (void)cudaStreamSynchronize(s.stream);  // no call of this engine is in flight (not thread-safe), but be sure
    for (DeviceBuffer* b : s.scratch()) b->release();
#if NAF_HAVE_CUDNN
    if (s.cudnn) s.cudnn->releaseWorkspace();
#endif
    // The cell work list went with its buffer: the next forward builds and uploads it again.
    s.cellChunksKey.clear();
}

ConvolutionPath Engine::convolutionPath() const
{
    return impl_->path;
}

std::string Engine::convolutionPathNote() const
{
#if NAF_HAVE_CUDNN
    if (impl_->cudnn) return impl_->cudnn->plans() + impl_->halfRefusedNote + impl_->nhwcRefusedNote;
#endif
    return impl_->pathNote;
}

void Engine::setStageTiming(bool enable)
{
    impl_->stageTiming = enable;
}

void Engine::setAttentionKernel(AttentionKernel kernel)
{
    // The enumerators run from Tiled to Measured (naf_cuda.hpp: new ones go last).
    if (static_cast<int>(kernel) < static_cast<int>(AttentionKernel::Tiled) ||
        static_cast<int>(kernel) > static_cast<int>(AttentionKernel::Measured))
        throw std::invalid_argument("naf::kernels::cuda::Engine: unknown attention kernel " +
                                    std::to_string(static_cast<int>(kernel)));
    impl_->attentionKernel = kernel;
}

void Engine::setNhwcTail(bool enable)
{
    impl_->nhwcTail = enable;
}

void Engine::setHostParallelFor(ParallelFor parallel)
{
    impl_->hostParallel = std::move(parallel);
}

bool Engine::nhwcTail() const
{
    return impl_->nhwcTail;
}

bool Engine::lastUsedNhwcTail() const
{
    return impl_->nhwcTailUsed;
}

AttentionKernel Engine::attentionKernel() const
{
    return impl_->attentionKernel;
}

AttentionKernel Engine::lastAttentionKernel() const
{
    return impl_->attentionKernelUsed;
}

StageTimes Engine::lastStageTimes() const
{
    return impl_->lastTimes;
}

namespace {

/// TF32 convolutions: MathMode::TF32, and the last convolution of each branch in MathMode::FP16.
bool usesTf32(MathMode mode)
{
    return mode == MathMode::TF32 || mode == MathMode::FP16;
}

void checkCall(const char* where, const ForwardShape& shape, const void* image, const void* features, const void* out,
               const AttentionProbe* probe, MathMode mode)
{
    if (!image || !features || !out)
        throw std::invalid_argument(std::string("naf::kernels::cuda::Engine::") + where + ": null tensor pointer");
    if (mode != MathMode::FP32 && mode != MathMode::TF32 && mode != MathMode::FP16)
        throw std::invalid_argument(std::string("naf::kernels::cuda::Engine::") + where + ": unknown math mode " +
                                    std::to_string(static_cast<int>(mode)));
    if (probe && (probe->y < 0 || probe->y >= shape.outH || probe->x < 0 || probe->x >= shape.outW))
        throw std::invalid_argument(std::string("naf::kernels::cuda::Engine::") + where + ": probe pixel (x=" +
                                    std::to_string(probe->x) + ", y=" + std::to_string(probe->y) +
                                    ") is outside the " + std::to_string(shape.outW) + "x" +
                                    std::to_string(shape.outH) + " output");
}

/// Whether Engine::forward's host output is page-locked (then the device writes it directly);
/// refuses device memory, which the staged copy would hand to a host memcpy.
bool hostOutputIsPageLocked(const void* hostOut)
{
    cudaPointerAttributes attributes{};
    const cudaError_t queried = cudaPointerGetAttributes(&attributes, hostOut);
    if (queried != cudaSuccess)
    {
        (void)cudaGetLastError();  // older drivers: unregistered memory
        return false;
    }
    if (attributes.type == cudaMemoryTypeDevice)
        throw std::invalid_argument("naf::kernels::cuda::Engine::forward: the output pointer is device memory (device " +
                                    std::to_string(attributes.device) + "); use forwardDevice");
    return attributes.type == cudaMemoryTypeHost;
}

}  // namespace

void Engine::forward(const float* hostImage, const float* hostFeatures, float* hostOut, const ForwardShape& shape,
                     MathMode mode, AttentionProbe* probe)
{
    Impl& s = *impl_;
    s.hostOutputWritten = false;
    checkForwardShape(s.cfg, shape);
    checkCall("forward", shape, hostImage, hostFeatures, hostOut, probe, mode);
    DeviceScope scope(s.device);
    const bool outPinned = hostOutputIsPageLocked(hostOut);
    const bool tf32 = usesTf32(mode) && s.tensorCoresTf32;
    const size_t f = sizeof(float);
    const size_t imageBytes = 3 * static_cast<size_t>(shape.imageH) * shape.imageW * f;
    const size_t featureBytes = static_cast<size_t>(shape.channels) * shape.lowH * shape.lowW * f;
    const size_t outBytes = static_cast<size_t>(shape.channels) * shape.outH * shape.outW * f;
    s.reserve(shape, true, probe != nullptr);
    s.guarded([&] {
        check(cudaMemcpyAsync(s.image.ptr, hostImage, imageBytes, cudaMemcpyHostToDevice, s.stream),
              "copying the image to the device");
        check(cudaMemcpyAsync(s.features.ptr, hostFeatures, featureBytes, cudaMemcpyHostToDevice, s.stream),
              "copying the features to the device");
        s.enqueue(s.image.as<float>(), s.features.as<float>(), s.out.as<float>(), shape, tf32, mode == MathMode::FP16,
                  probe);
        if (!outPinned) adviseHugePages(hostOut, outBytes);  // as kernels::forward: a fresh output faults 512x less
        s.copyToHost(hostOut, outPinned, s.out.ptr, outBytes);
        s.complete(shape, probe);
    });
}

bool Engine::lastForwardWroteHostOutput() const
{
    return impl_->hostOutputWritten;
}

void Engine::forwardDevice(const float* deviceImage, const float* deviceFeatures, float* deviceOut,
                           const ForwardShape& shape, MathMode mode, AttentionProbe* probe)
{
    Impl& s = *impl_;
    checkForwardShape(s.cfg, shape);
    checkCall("forwardDevice", shape, deviceImage, deviceFeatures, deviceOut, probe, mode);
    DeviceScope scope(s.device);
    const bool tf32 = usesTf32(mode) && s.tensorCoresTf32;
    s.reserve(shape, false, probe != nullptr);
    s.guarded([&] {
        s.enqueue(deviceImage, deviceFeatures, deviceOut, shape, tf32, mode == MathMode::FP16, probe);
        s.complete(shape, probe);
    });
}

}  // namespace cuda
}  // namespace kernels
}  // namespace naf
