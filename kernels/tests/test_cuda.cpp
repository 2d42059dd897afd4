// CUDA path against the CPU forward: FP32, TF32 and FP16 modes on odd sizes with fixed seeds, the
// attention probe, reuse of one Engine across differently sized calls, and the behaviour of the
// API on a machine without a GPU (these tests are compiled only when the CUDA library is built).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "../cuda/cell_attention.hpp"      // cell::sharedBytes: whether the cell kernel fits this device
#include "../cuda/cell_mma_attention.hpp"  // cellmma::sharedBytes: whether the tensor-core one does
#include "naf_kernels/naf_cuda.hpp"
#include "naf_kernels/naf_kernels.hpp"
#include "test_support.hpp"

using namespace naf::kernels;
using naf::kernels::testing::randomUniform;
using naf::kernels::testing::RandomNafWeights;
using naf::kernels::testing::relativeL2;
using naf::kernels::testing::makeShape;

namespace {

const ParallelFor& cpuPool()
{
    static const ParallelFor p = threadParallelFor();
    return p;
}

struct Inputs
{
    std::vector<float> image, features;
};

Inputs makeInputs(const ForwardShape& s, uint32_t seed)
{
    Inputs in;
    in.image = randomUniform(3 * static_cast<size_t>(s.imageH) * s.imageW, seed, 0.f, 1.f);
    in.features = randomUniform(static_cast<size_t>(s.channels) * s.lowH * s.lowW, seed + 1000, -1.f, 1.f);
    return in;
}

std::vector<float> cpuForward(const RandomNafWeights& w, const Inputs& in, const ForwardShape& s,
                              AttentionProbe* probe = nullptr)
{
    std::vector<float> out(static_cast<size_t>(s.channels) * s.outH * s.outW);
    Workspace ws;
    forward(w.cfg, w.view, in.image.data(), in.features.data(), out.data(), s, ws, cpuPool(), probe);
    return out;
}

std::vector<float> gpuForward(cuda::Engine& engine, const Inputs& in, const ForwardShape& s, cuda::MathMode mode,
                              AttentionProbe* probe = nullptr)
{
    // Poison the output so that an element the GPU forgot to write cannot pass.
    std::vector<float> out(static_cast<size_t>(s.channels) * s.outH * s.outW, std::nanf(""));
    engine.forward(in.image.data(), in.features.data(), out.data(), s, mode, probe);
    return out;
}

// Engine::forwardDevice on device copies of the inputs; out gets the device output (poisoned NaN
// before the call, so an element the GPU forgot to write cannot pass). Call with
// ASSERT_NO_FATAL_FAILURE.
void deviceForward(cuda::Engine& engine, const Inputs& in, const ForwardShape& s, cuda::MathMode mode,
                   std::vector<float>& out)
{
    const size_t outCount = static_cast<size_t>(s.channels) * s.outH * s.outW;
    float *dImage = nullptr, *dFeatures = nullptr, *dOut = nullptr;
    ASSERT_EQ(cudaMalloc(&dImage, in.image.size() * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dFeatures, in.features.size() * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dOut, outCount * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dImage, in.image.data(), in.image.size() * sizeof(float), cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(dFeatures, in.features.data(), in.features.size() * sizeof(float), cudaMemcpyHostToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaMemset(dOut, 0xff, outCount * sizeof(float)), cudaSuccess);  // NaN pattern
    engine.forwardDevice(dImage, dFeatures, dOut, s, mode);
    out.resize(outCount);
    ASSERT_EQ(cudaMemcpy(out.data(), dOut, outCount * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    cudaFree(dImage);
    cudaFree(dFeatures);
    cudaFree(dOut);
}

bool allFinite(const std::vector<float>& v)
{
    for (float x : v)
        if (!std::isfinite(x)) return false;
    return true;
}

std::string describe(const ForwardShape& s)
{
    return "image " + std::to_string(s.imageH) + "x" + std::to_string(s.imageW) + ", features " +
           std::to_string(s.channels) + "x" + std::to_string(s.lowH) + "x" + std::to_string(s.lowW) + ", out " +
           std::to_string(s.outH) + "x" + std::to_string(s.outW) + ", kernel " + std::to_string(s.kernelSize);
}

// Where two outputs [C][outH][outW] of `heads` heads differ, for a kernel whose test failed: the
// worst element, then the relative L2 per head and per value channel modulo 8 (a fragment layout
// bug of the tensor-core kernel shows as some residues only) and per row modulo 8 (its pixels
// g and g + 8 of a warp tile). Printed, not asserted.
void printMismatch(const std::vector<float>& got, const std::vector<float>& want, const ForwardShape& s, int heads)
{
    const size_t plane = static_cast<size_t>(s.outH) * s.outW;
    const int perHead = s.channels / heads;
    size_t worst = 0;
    std::vector<double> headErr(heads, 0.0), headRef(heads, 0.0), modErr(8, 0.0), modRef(8, 0.0),
        rowErr(8, 0.0), rowRef(8, 0.0);
    for (size_t i = 0; i < want.size(); ++i)
    {
        const double d = static_cast<double>(got[i]) - want[i], r = static_cast<double>(want[i]) * want[i];
        if (std::fabs(d) > std::fabs(static_cast<double>(got[worst]) - want[worst])) worst = i;
        const int c = static_cast<int>(i / plane), y = static_cast<int>(i % plane / s.outW);
        headErr[c / perHead] += d * d;
        headRef[c / perHead] += r;
        modErr[c % perHead % 8] += d * d;
        modRef[c % perHead % 8] += r;
        rowErr[y % 8] += d * d;
        rowRef[y % 8] += r;
    }
    const size_t c = worst / plane, y = worst % plane / s.outW, x = worst % s.outW;
    std::printf("[ mismatch ] worst: channel %zu (head %zu, channel %zu of it), y %zu, x %zu: %.7g against %.7g\n", c,
                c / perHead, c % perHead, y, x, got[worst], want[worst]);
    auto line = [](const char* what, const std::vector<double>& err, const std::vector<double>& ref) {
        std::printf("[ mismatch ] rel L2 per %s:", what);
        for (size_t k = 0; k < err.size(); ++k) std::printf(" %.2g", ref[k] > 0 ? std::sqrt(err[k] / ref[k]) : 0.0);
        std::printf("\n");
    };
    line("head", headErr, headRef);
    line("channel of the head mod 8", modErr, modRef);
    line("row mod 8", rowErr, rowRef);
}

// The shapes the CPU/GPU comparisons run on.
std::vector<ForwardShape> comparisonShapes()
{
    return {
        makeShape(37, 45, 8, 7, 6, 30, 27, 9),        // low grid smaller than the kernel (7x6 window)
        makeShape(100, 130, 64, 20, 24, 100, 130, 9), // typical: dilation 5, full kernel
        makeShape(300, 260, 12, 13, 11, 61, 50, 5),   // guide resized to 200x200 (> 4x output)
        makeShape(40, 600, 8, 5, 30, 40, 600, 9),     // long rows: GroupNorm apply over 5 warp steps per row
    };
}

void expectMatchesCpu(cuda::Engine& engine, const RandomNafWeights& w, const ForwardShape& s, uint32_t seed)
{
    SCOPED_TRACE(describe(s));
    const Inputs in = makeInputs(s, seed);
    const std::vector<float> ref = cpuForward(w, in, s);
    ASSERT_TRUE(allFinite(ref));

    const std::vector<float> fp32 = gpuForward(engine, in, s, cuda::MathMode::FP32);
    ASSERT_TRUE(allFinite(fp32)) << "FP32 output has non-finite or unwritten elements";
    const double errFp32 = relativeL2(fp32.data(), ref.data(), ref.size());
    EXPECT_LE(errFp32, 1e-4) << "FP32 relative L2 " << errFp32;

    const std::vector<float> tf32 = gpuForward(engine, in, s, cuda::MathMode::TF32);
    ASSERT_TRUE(allFinite(tf32)) << "TF32 output has non-finite or unwritten elements";
    const double errTf32 = relativeL2(tf32.data(), ref.data(), ref.size());
    EXPECT_LE(errTf32, 1e-3) << "TF32 relative L2 " << errTf32;

    // FP16: the CPU emulation (tools/reduced_precision_study.py) puts it at about TF32's error.
    const std::vector<float> fp16 = gpuForward(engine, in, s, cuda::MathMode::FP16);
    ASSERT_TRUE(allFinite(fp16)) << "FP16 output has non-finite or unwritten elements";
    const double errFp16 = relativeL2(fp16.data(), ref.data(), ref.size());
    EXPECT_LE(errFp16, 1e-3) << "FP16 relative L2 " << errFp16;
    // The float16 storage must really be in effect: its rounding moves the output well beyond
    // the FP32 mode's 1e-7 to 5e-7.
    const double fp16VsFp32 = relativeL2(fp16.data(), fp32.data(), fp32.size());
    EXPECT_GT(fp16VsFp32, 2e-6) << "FP16 output is as close to FP32 as FP32 runs are to each other";
    std::printf("[ cuda     ] %s: FP32 rel L2 %.3g, TF32 rel L2 %.3g, FP16 rel L2 %.3g (%.3g from FP32)\n",
                describe(s).c_str(), errFp32, errTf32, errFp16, fp16VsFp32);
}

const char* modeName(cuda::MathMode mode)
{
    return mode == cuda::MathMode::TF32 ? "tf32" : (mode == cuda::MathMode::FP16 ? "fp16" : "fp32");
}

const cuda::MathMode kAllModes[] = {cuda::MathMode::FP32, cuda::MathMode::TF32, cuda::MathMode::FP16};

#define NAF_SKIP_WITHOUT_GPU()                                                                  \
    do                                                                                          \
    {                                                                                           \
        if (!cuda::available()) GTEST_SKIP() << "no CUDA device: " << cuda::deviceDescription(); \
    } while (0)

}  // namespace

TEST(Cuda, CompiledAndEngineConstructionMatchesAvailability)
{
    EXPECT_TRUE(cuda::compiled());
    const std::string description = cuda::deviceDescription();
    EXPECT_FALSE(description.empty());
    const RandomNafWeights w(11);
    if (!cuda::available())
    {
        try
        {
            cuda::Engine engine(w.cfg, w.view);
            FAIL() << "Engine construction succeeded without a CUDA device";
        }
        catch (const std::runtime_error& e)
        {
            const std::string msg = e.what();
            EXPECT_NE(msg.find("CUDA"), std::string::npos) << msg;
        }
    }
    else
    {
        cuda::Engine engine(w.cfg, w.view);
        EXPECT_GT(engine.deviceBytes(), 0u);
        std::printf("[ cuda     ] device: %s\n", description.c_str());
    }
}

static const char* pathName(cuda::ConvolutionPath p)
{
    return p == cuda::ConvolutionPath::CuDnn ? "cuDNN" : (p == cuda::ConvolutionPath::Builtin ? "builtin" : "auto");
}

// Both convolution paths: cuDNN (when built in and it initializes) and the library's own kernel.
static std::vector<cuda::ConvolutionPath> convolutionPaths()
{
    std::vector<cuda::ConvolutionPath> paths = {cuda::ConvolutionPath::Builtin};
    if (cuda::cudnnCompiled()) paths.insert(paths.begin(), cuda::ConvolutionPath::CuDnn);
    return paths;
}

TEST(Cuda, ForwardMatchesCpuOnOddSizes)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(21);
    for (cuda::ConvolutionPath path : convolutionPaths())
    {
        SCOPED_TRACE(pathName(path));
        cuda::Engine engine(w.cfg, w.view, path);
        EXPECT_EQ(engine.convolutionPath(), path);
        std::printf("[ cuda     ] convolution path %s\n", pathName(engine.convolutionPath()));
        uint32_t seed = 100;
        for (const ForwardShape& s : comparisonShapes()) expectMatchesCpu(engine, w, s, seed++);
    }
}

TEST(Cuda, AutoPathPrefersCudnnWhenBuiltIn)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(22);
    cuda::Engine engine(w.cfg, w.view);
    if (cuda::cudnnCompiled())
        EXPECT_EQ(engine.convolutionPath(), cuda::ConvolutionPath::CuDnn) << engine.convolutionPathNote();
    else
        EXPECT_EQ(engine.convolutionPath(), cuda::ConvolutionPath::Builtin);
}

// RoPE heads of 256 channels span both encoder branches: the unfused pool -> RoPE path.
TEST(Cuda, ForwardMatchesCpuWhenRopeHeadsSpanBothBranches)
{
    NAF_SKIP_WITHOUT_GPU();
    NafConfig cfg;
    cfg.headsRope = 1;
    const RandomNafWeights w(23, cfg);
    for (cuda::ConvolutionPath path : convolutionPaths())
    {
        SCOPED_TRACE(pathName(path));
        cuda::Engine engine(w.cfg, w.view, path);
        expectMatchesCpu(engine, w, makeShape(100, 130, 64, 20, 24, 100, 130, 9), 120);
        expectMatchesCpu(engine, w, makeShape(300, 260, 12, 13, 11, 61, 50, 5), 121);
    }
}

// The general warp-per-pixel attention kernel (the tiled one's fallback) on its own.
TEST(Cuda, GeneralAttentionKernelMatchesCpu)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(25);
    cuda::Engine engine(w.cfg, w.view, cuda::ConvolutionPath::Builtin);
    engine.setAttentionKernel(cuda::AttentionKernel::General);
    uint32_t seed = 130;
    for (const ForwardShape& s : comparisonShapes()) expectMatchesCpu(engine, w, s, seed++);
    expectMatchesCpu(engine, w, makeShape(40, 44, 8, 40, 44, 40, 44, 9), seed++);
    expectMatchesCpu(engine, w, makeShape(129, 97, 24, 9, 7, 129, 97, 9), seed++);
    EXPECT_EQ(engine.attentionKernel(), cuda::AttentionKernel::General);
    EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::General);
}

// fn(engine, weights, heads) on an engine with the built-in convolutions, for 4 and 8 attention
// heads (head dims 64 and 32, the tiled and cell kernels' two instances).
template <typename Fn>
void forAttentionHeadDims(uint32_t weightSeed, Fn fn)
{
    for (int heads : {4, 8})
    {
        SCOPED_TRACE("attention heads " + std::to_string(heads));
        NafConfig cfg;
        cfg.headsAttn = heads;
        const RandomNafWeights w(weightSeed, cfg);
        cuda::Engine engine(w.cfg, w.view, cuda::ConvolutionPath::Builtin);
        fn(engine, w, heads);
    }
}

// AttentionKernel::TiledChunked (values staged 32 channels at a time into the keys' space) does
// the tiled kernel's operations in the same order, so its output must equal the tiled kernel's
// bit for bit: on the comparison shapes, value channels per head that are not a multiple of 32
// (10, 50) or of 4 (3, 25, 50: 4-byte copies), one to six value chunks (both buffers reused),
// head dims 64 and 32, a non-integer ratio and unit scale (the largest unions). One shape also
// against the CPU.
TEST(Cuda, TiledChunkedAttentionEqualsTiledBitForBit)
{
    NAF_SKIP_WITHOUT_GPU();
    uint32_t seed = 180;
    forAttentionHeadDims(32, [&](cuda::Engine& engine, const RandomNafWeights& w, int heads) {
        std::vector<ForwardShape> shapes = comparisonShapes();
        for (const ForwardShape& s :
             {makeShape(96, 80, 40, 6, 5, 96, 80, 9), makeShape(100, 90, 200, 6, 5, 100, 90, 9),
              makeShape(70, 66, 12, 6, 5, 70, 66, 9), makeShape(176, 144, 384, 11, 9, 176, 144, 7),
              makeShape(120, 100, 24, 3, 2, 216, 144, 9), makeShape(40, 44, 8, 40, 44, 40, 44, 9),
              makeShape(64, 48, 768, 4, 3, 64, 48, 9), makeShape(64, 48, 400, 4, 3, 64, 48, 9)})
            shapes.push_back(s);
        for (const ForwardShape& s : shapes)
        {
            if (s.channels % heads != 0) continue;
            SCOPED_TRACE(describe(s));
            const Inputs in = makeInputs(s, seed++);
            engine.setAttentionKernel(cuda::AttentionKernel::Tiled);
            const std::vector<float> tiled = gpuForward(engine, in, s, cuda::MathMode::FP32);
            const cuda::AttentionKernel tiledRan = engine.lastAttentionKernel();
            engine.setAttentionKernel(cuda::AttentionKernel::TiledChunked);
            const std::vector<float> chunked = gpuForward(engine, in, s, cuda::MathMode::FP32);
            // Where the tiled kernel fell back to the general one, so does this one (or it fits).
            if (tiledRan == cuda::AttentionKernel::Tiled)
                EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::TiledChunked);
            if (engine.lastAttentionKernel() == cuda::AttentionKernel::TiledChunked &&
                tiledRan == cuda::AttentionKernel::Tiled)
            {
                ASSERT_EQ(tiled.size(), chunked.size());
                EXPECT_EQ(0, std::memcmp(tiled.data(), chunked.data(), tiled.size() * sizeof(float)))
                    << "the chunked values changed the result";
            }
        }
        engine.setAttentionKernel(cuda::AttentionKernel::TiledChunked);
        expectMatchesCpu(engine, w, makeShape(176, 144, 384, 11, 9, 176, 144, 7), seed++);
        EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::TiledChunked);
    });
}

// The cell kernel (pixels sharing a window as two matrix products; its phases are also emulated
// on the CPU in test_kernels.cpp) on shapes where it runs, one engine across sizes (its work list
// rebuilt per size), and its fallback to the tiled kernel where rectangles are small.
TEST(Cuda, CellAttentionKernelMatchesCpu)
{
    NAF_SKIP_WITHOUT_GPU();
    uint32_t seed = 160;
    forAttentionHeadDims(29, [&](cuda::Engine& engine, const RandomNafWeights& w, int) {
        engine.setAttentionKernel(cuda::AttentionKernel::Cell);
        for (const ForwardShape& s : {makeShape(96, 80, 40, 6, 5, 96, 80, 9), makeShape(100, 90, 200, 6, 5, 100, 90, 9),
                                      makeShape(176, 144, 384, 11, 9, 176, 144, 7),
                                      makeShape(120, 100, 24, 3, 2, 216, 144, 9)})
        {
            expectMatchesCpu(engine, w, s, seed++);
            EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::Cell) << describe(s);
        }
        expectMatchesCpu(engine, w, makeShape(100, 130, 64, 20, 24, 100, 130, 9), seed++);
        EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::Tiled);
        EXPECT_EQ(engine.attentionKernel(), cuda::AttentionKernel::Cell);
    });
}

// The tensor-core cell kernel (3xTF32 mma.sync; its warps are also emulated lane by lane on the
// CPU in test_kernels.cpp) against the tiled kernel on the same engine and inputs, in FP32: both
// keep float32 accuracy, so they must agree far below the TF32 mode's 1e-3 (a fragment in the
// wrong place moves the output by 1e-3 and more, one TF32 product instead of three by ~1e-4).
// The bound, 5e-6, leaves room for the tensor core's own accumulation, which the CPU emulation
// (rounded once, 1.8-3.3e-7) does not model: a review's model of a truncating accumulator gave up
// to 0.8e-6 with this kernel's rounded splits. A failure between 5e-6 and ~1e-5 with finite
// outputs is that rounding, not a layout error. Value channels per head 10, 50, 75, 96 and
// 100 (partial 32-channel passes), head dims 64 and 32, a non-integer ratio, a window cut by
// the low grid's size; then one shape against the CPU in every mode, and the fallback to the
// tiled kernel where rectangles are small. Devices below compute capability 8.0 run Tiled.
TEST(Cuda, CellTensorCoreAttentionMatchesTiledAndCpu)
{
    NAF_SKIP_WITHOUT_GPU();
    int device = 0, major = 0, sharedOptin = 0;
    ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
    ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
    ASSERT_EQ(cudaDeviceGetAttribute(&sharedOptin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), cudaSuccess);
    // The tensor-core kernel where the device has it and its shared memory (growing with the value
    // channels per head) fits; else the tiled kernel.
    auto expectedFor = [&](int channels, int heads) {
        const int headDim = NafConfig().dim / heads, perHead = channels / heads;
        const size_t shared = headDim == 64 ? cellmma::sharedBytes<64>(perHead) : cellmma::sharedBytes<32>(perHead);
        return major >= 8 && shared + 64 <= static_cast<size_t>(sharedOptin) ? cuda::AttentionKernel::CellTensorCore
                                                                             : cuda::AttentionKernel::Tiled;
    };
    uint32_t seed = 190;
    forAttentionHeadDims(33, [&](cuda::Engine& engine, const RandomNafWeights& w, int heads) {
        for (const ForwardShape& s :
             {makeShape(96, 80, 40, 6, 5, 96, 80, 9), makeShape(100, 90, 200, 6, 5, 100, 90, 9),
              makeShape(176, 144, 384, 11, 9, 176, 144, 7), makeShape(120, 100, 24, 3, 2, 216, 144, 9),
              makeShape(128, 112, 400, 8, 7, 128, 112, 9), makeShape(160, 160, 600, 10, 10, 160, 160, 9)})
        {
            if (s.channels % heads != 0) continue;
            SCOPED_TRACE(describe(s));
            const Inputs in = makeInputs(s, seed++);
            engine.setAttentionKernel(cuda::AttentionKernel::Tiled);
            const std::vector<float> tiled = gpuForward(engine, in, s, cuda::MathMode::FP32);
            engine.setAttentionKernel(cuda::AttentionKernel::CellTensorCore);
            const std::vector<float> mma = gpuForward(engine, in, s, cuda::MathMode::FP32);
            EXPECT_EQ(engine.lastAttentionKernel(), expectedFor(s.channels, heads));
            ASSERT_TRUE(allFinite(mma)) << "non-finite or unwritten output elements";
            const double err = relativeL2(mma.data(), tiled.data(), tiled.size());
            EXPECT_LE(err, 5e-6) << "tensor-core cell kernel against the tiled kernel, rel L2 " << err;
            if (!(err <= 5e-6)) printMismatch(mma, tiled, s, heads);
            std::printf("[ cuda     ] %s, %d heads: cell-mma against tiled rel L2 %.3g\n", describe(s).c_str(), heads,
                        err);
        }
        engine.setAttentionKernel(cuda::AttentionKernel::CellTensorCore);
        expectMatchesCpu(engine, w, makeShape(176, 144, 384, 11, 9, 176, 144, 7), seed++);
        EXPECT_EQ(engine.lastAttentionKernel(), expectedFor(384, heads));
        expectMatchesCpu(engine, w, makeShape(100, 130, 64, 20, 24, 100, 130, 9), seed++);
        EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::Tiled);
        EXPECT_EQ(engine.attentionKernel(), cuda::AttentionKernel::CellTensorCore);
    });
}

// AttentionKernel::Measured: on the first forward at a size it times the kernels that run there
// and keeps the fastest, so its result is one of theirs (against the CPU in every mode), the same
// kernel runs on the next call at that size (also after another size was measured), and where
// the cell work list does not pay only the tiled kernels (or the general one) can be chosen.
TEST(Cuda, MeasuredAttentionKeepsOneKernelPerSize)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(34);
    cuda::Engine engine(w.cfg, w.view, cuda::ConvolutionPath::Builtin);
    engine.setAttentionKernel(cuda::AttentionKernel::Measured);
    uint32_t seed = 200;
    const auto cellOrTiled = {cuda::AttentionKernel::Tiled, cuda::AttentionKernel::TiledChunked,
                              cuda::AttentionKernel::Cell, cuda::AttentionKernel::CellTensorCore};
    auto among = [](cuda::AttentionKernel k, std::initializer_list<cuda::AttentionKernel> set) {
        return std::find(set.begin(), set.end(), k) != set.end();
    };
    const ForwardShape sixteen = makeShape(176, 144, 384, 11, 9, 176, 144, 9);
    expectMatchesCpu(engine, w, sixteen, seed++);
    const cuda::AttentionKernel chosen = engine.lastAttentionKernel();
    EXPECT_TRUE(among(chosen, cellOrTiled)) << static_cast<int>(chosen);
    const Inputs in = makeInputs(sixteen, seed++);
    (void)gpuForward(engine, in, sixteen, cuda::MathMode::TF32);
    EXPECT_EQ(engine.lastAttentionKernel(), chosen) << "the choice is kept for the size";

    const ForwardShape small = makeShape(100, 130, 64, 20, 24, 100, 130, 9);  // 5x: no cell work list
    expectMatchesCpu(engine, w, small, seed++);
    const cuda::AttentionKernel smallChosen = engine.lastAttentionKernel();
    EXPECT_TRUE(among(smallChosen, {cuda::AttentionKernel::Tiled, cuda::AttentionKernel::TiledChunked,
                                    cuda::AttentionKernel::General}))
        << static_cast<int>(smallChosen);
    (void)gpuForward(engine, makeInputs(sixteen, seed++), sixteen, cuda::MathMode::FP32);
    EXPECT_EQ(engine.lastAttentionKernel(), chosen) << "back at the first size: its kept kernel, not measured again";
    EXPECT_EQ(engine.attentionKernel(), cuda::AttentionKernel::Measured);
    std::printf("[ cuda     ] Measured kept kernel %d at %s and %d at %s\n", static_cast<int>(chosen),
                describe(sixteen).c_str(), static_cast<int>(smallChosen), describe(small).c_str());
}

// AttentionKernel::Auto per size: on a device with tensor cores for the cell kernel (compute
// capability 8.0+) the tensor-core cell kernel wherever the cell work list pays (14- and 16-pixel
// cells here); on older devices the FMA cell kernel only where the tiled kernel fits one block
// per SM (14-pixel cells: unions up to 12 x 10 entries, 118,272 bytes of shared memory with 96
// value channels per head), else Tiled (16-pixel cells: 10 x 9, 99,072 bytes). Each against the
// CPU, the choice following the size and the requested kernel back and forth on one engine. The
// kernel expectations hold where the device decides as an H100 or H200 would; elsewhere only the
// results are checked.
TEST(Cuda, AutoAttentionFollowsTheSizeAndTheDevice)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(31);
    cuda::Engine engine(w.cfg, w.view, cuda::ConvolutionPath::Builtin);
    EXPECT_EQ(engine.attentionKernel(), cuda::AttentionKernel::Auto);
    int device = 0;
    ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
    cudaDeviceProp prop;
    ASSERT_EQ(cudaGetDeviceProperties(&prop, device), cudaSuccess);
    const size_t perSm = prop.sharedMemPerMultiprocessor, reserved = prop.reservedSharedMemPerBlock;
    const size_t optin = prop.sharedMemPerBlockOptin;
    // 384 channels in 4 heads: 96 value channels per head, 99 KB for the tensor-core kernel.
    const bool mmaRuns = prop.major >= 8 && optin >= cellmma::sharedBytes<64>(96) + 64;
    const bool cellFits = optin >= cell::sharedBytes<64>() + 64;
    const size_t fourteenShared = (12 * 10 * (64 + 96) + 128 * 81) * sizeof(float);
    const size_t sixteenShared = (10 * 9 * (64 + 96) + 128 * 81) * sizeof(float);
    // Where the tensor-core kernel does not run: whether the FMA cell kernel (expectCell) or
    // Tiled (expectTiled) is certain from the device's shared memory; in between, either may run.
    const bool expectCell = cellFits && optin >= fourteenShared + 64 && perSm < 2 * (fourteenShared + reserved);
    const bool expectTiled = perSm >= 2 * (sixteenShared + reserved);
    uint32_t seed = 170;
    const ForwardShape fourteen = makeShape(196, 196, 384, 14, 14, 196, 196, 9);
    const ForwardShape sixteen = makeShape(224, 224, 384, 14, 14, 224, 224, 9);
    auto runAndExpect = [&](const ForwardShape& s, bool expected, cuda::AttentionKernel kernel) {
        expectMatchesCpu(engine, w, s, seed++);
        if (mmaRuns && engine.attentionKernel() == cuda::AttentionKernel::Auto)
            EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::CellTensorCore) << describe(s);
        else if (expected)
            EXPECT_EQ(engine.lastAttentionKernel(), kernel) << describe(s);
    };
    runAndExpect(fourteen, expectCell, cuda::AttentionKernel::Cell);
    std::printf("[ cuda     ] %s: Auto ran kernel %d (compute capability %d.%d, %zu KB of shared memory per SM)\n",
                describe(fourteen).c_str(), static_cast<int>(engine.lastAttentionKernel()), prop.major, prop.minor,
                perSm >> 10);
    runAndExpect(sixteen, expectTiled, cuda::AttentionKernel::Tiled);
    runAndExpect(fourteen, expectCell, cuda::AttentionKernel::Cell);  // per size, not sticky
    // An explicit kernel, then Auto again on the same size: each decided anew.
    engine.setAttentionKernel(cuda::AttentionKernel::Tiled);
    runAndExpect(fourteen, optin >= fourteenShared + 64, cuda::AttentionKernel::Tiled);
    engine.setAttentionKernel(cuda::AttentionKernel::Auto);
    runAndExpect(fourteen, expectCell, cuda::AttentionKernel::Cell);
    engine.setAttentionKernel(cuda::AttentionKernel::Cell);
    runAndExpect(sixteen, cellFits, cuda::AttentionKernel::Cell);
    engine.setAttentionKernel(cuda::AttentionKernel::Auto);
    runAndExpect(sixteen, expectTiled, cuda::AttentionKernel::Tiled);
    EXPECT_EQ(engine.attentionKernel(), cuda::AttentionKernel::Auto);

    // Wide features: 1152 channels in 4 heads, 288 value channels per head. The tensor-core
    // kernel's shared memory (234 KB) exceeds an H100's 227 KB per block; the tiled kernel's
    // union at 14-pixel cells (206 KB) fits one block per SM, so Auto takes the FMA cell kernel
    // (a first version of Auto checked only the compute capability and fell to Tiled here).
    const ForwardShape wide = makeShape(196, 196, 1152, 14, 14, 196, 196, 9);
    const bool wideMmaRuns = prop.major >= 8 && optin >= cellmma::sharedBytes<64>(288) + 64;
    const size_t wideTiledShared = (12 * 10 * (64 + 288) + 128 * 81) * sizeof(float);
    expectMatchesCpu(engine, w, wide, seed++);
    if (wideMmaRuns)
        EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::CellTensorCore);
    else if (cellFits && perSm < 2 * (wideTiledShared + reserved))
        EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::Cell);
    std::printf("[ cuda     ] %s: Auto ran kernel %d\n", describe(wide).c_str(),
                static_cast<int>(engine.lastAttentionKernel()));
}

// The channels-last tail (Engine::setNhwcTail; its index arithmetic is also checked on the CPU in
// test_kernels.cpp): every mode against the CPU where it applies (cuDNN, TF32 and FP16, guide of
// the output size), and the usual tail where it does not (FP32, a pooled guide, RoPE heads
// spanning both branches, the built-in convolution).
TEST(Cuda, NhwcTailMatchesCpuWhereItApplies)
{
    NAF_SKIP_WITHOUT_GPU();
    if (!cuda::cudnnCompiled()) GTEST_SKIP() << "built without cuDNN: the channels-last tail needs it";
    const RandomNafWeights w(26);
    cuda::Engine engine(w.cfg, w.view, cuda::ConvolutionPath::CuDnn);
    EXPECT_TRUE(engine.nhwcTail()) << "on by default";
    engine.setNhwcTail(false);
    EXPECT_FALSE(engine.nhwcTail());
    engine.setNhwcTail(true);
    EXPECT_TRUE(engine.nhwcTail());
    uint32_t seed = 140;
    const bool tensorCores = [] {
        cudaDeviceProp prop;
        return cudaGetDeviceProperties(&prop, 0) == cudaSuccess && prop.major >= 8;
    }();
    for (const ForwardShape& s : {makeShape(100, 130, 64, 20, 24, 100, 130, 9), makeShape(40, 600, 8, 5, 30, 40, 600, 9),
                                  makeShape(97, 83, 16, 9, 8, 97, 83, 7)})
    {
        expectMatchesCpu(engine, w, s, seed++);  // FP32, TF32, then FP16
        EXPECT_EQ(engine.lastUsedNhwcTail(), tensorCores) << describe(s) << "; " << engine.convolutionPathNote();
        const Inputs in = makeInputs(s, seed);
        (void)gpuForward(engine, in, s, cuda::MathMode::FP32);
        EXPECT_FALSE(engine.lastUsedNhwcTail()) << "FP32 keeps the usual tail";
        // The tail against the usual one in the same mode, on scratch that holds another input's
        // tensors: a pixel or channel the tail leaves unwritten keeps a wrong value, not the
        // FP32 run's nearly right one. A wrong border row of one branch moves the output by
        // ~2.5e-3 (CPU emulation); TF32 runs are 2-3e-5 from FP32, so two differ by about 5e-5 at most.
        const Inputs other = makeInputs(s, seed + 1000);
        for (cuda::MathMode mode : {cuda::MathMode::TF32, cuda::MathMode::FP16})
        {
            engine.setNhwcTail(false);
            const std::vector<float> usual = gpuForward(engine, in, s, mode);
            engine.setNhwcTail(true);
            (void)gpuForward(engine, other, s, cuda::MathMode::FP32);
            const std::vector<float> tail = gpuForward(engine, in, s, mode);
            EXPECT_EQ(engine.lastUsedNhwcTail(), tensorCores) << modeName(mode);
            ASSERT_TRUE(allFinite(tail)) << modeName(mode);
            const double err = relativeL2(tail.data(), usual.data(), usual.size());
            EXPECT_LE(err, 2e-4) << modeName(mode) << ": channels-last tail against the usual tail";
            std::printf("[ cuda     ] %s, %s: channels-last tail vs usual tail rel L2 %.3g\n", describe(s).c_str(),
                        modeName(mode), err);
        }
        ++seed;
    }
    expectMatchesCpu(engine, w, makeShape(300, 260, 12, 13, 11, 61, 50, 5), seed++);  // guide pooled to the output
    EXPECT_FALSE(engine.lastUsedNhwcTail());
    std::printf("[ cuda     ] %s\n", engine.convolutionPathNote().c_str());

    // 256 channels per branch (the most the channels-last kernels take): a GroupNorm tile of
    // 34 KB of shared memory and four RoPE heads per branch.
    NafConfig wide;
    wide.dim = 512;
    wide.headsAttn = 8;
    wide.headsRope = 8;
    const RandomNafWeights ww(28, wide);
    cuda::Engine wideEngine(ww.cfg, ww.view, cuda::ConvolutionPath::CuDnn);
    expectMatchesCpu(wideEngine, ww, makeShape(100, 130, 64, 20, 24, 100, 130, 9), seed++);
    EXPECT_EQ(wideEngine.lastUsedNhwcTail(), tensorCores) << wideEngine.convolutionPathNote();

    NafConfig spanning;
    spanning.headsRope = 1;  // RoPE heads of 256 channels: no per-branch RoPE, so no channels-last tail
    const RandomNafWeights ws(27, spanning);
    cuda::Engine spanningEngine(ws.cfg, ws.view, cuda::ConvolutionPath::CuDnn);
    spanningEngine.setNhwcTail(true);
    expectMatchesCpu(spanningEngine, ws, makeShape(100, 130, 64, 20, 24, 100, 130, 9), seed++);
    EXPECT_FALSE(spanningEngine.lastUsedNhwcTail());

    cuda::Engine builtin(w.cfg, w.view, cuda::ConvolutionPath::Builtin);
    builtin.setNhwcTail(true);
    expectMatchesCpu(builtin, w, makeShape(100, 130, 64, 20, 24, 100, 130, 9), seed++);
    EXPECT_FALSE(builtin.lastUsedNhwcTail());
}

// Head dims 32 (tiled kernel) and 128 (general kernel only), and an output as fine as the low
// grid: the largest window unions per tile (12 x 40 cells, 225 KB of shared memory at head dim 64).
TEST(Cuda, ForwardMatchesCpuForOtherHeadDimsAndUnitScale)
{
    NAF_SKIP_WITHOUT_GPU();
    for (int heads : {8, 2})
    {
        SCOPED_TRACE("attention heads " + std::to_string(heads));
        NafConfig cfg;
        cfg.headsAttn = heads;
        const RandomNafWeights w(26, cfg);
        cuda::Engine engine(w.cfg, w.view);
        expectMatchesCpu(engine, w, makeShape(100, 130, 64, 20, 24, 100, 130, 9), 140);
        expectMatchesCpu(engine, w, makeShape(37, 45, 16, 7, 6, 30, 27, 9), 141);
        // Head dim 32 runs the tiled kernel; 128 falls back to the general one.
        EXPECT_EQ(engine.lastAttentionKernel(),
                  heads == 8 ? cuda::AttentionKernel::Tiled : cuda::AttentionKernel::General);
    }
    const RandomNafWeights w(27);
    cuda::Engine engine(w.cfg, w.view);
    expectMatchesCpu(engine, w, makeShape(40, 44, 8, 40, 44, 40, 44, 9), 142);
}

TEST(Cuda, DeviceForwardEqualsHostForwardAndReportsStageTimes)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(24);
    const ForwardShape s = makeShape(100, 130, 64, 20, 24, 100, 130, 9);
    const Inputs in = makeInputs(s, 9);
    for (cuda::ConvolutionPath path : convolutionPaths())
    {
        SCOPED_TRACE(pathName(path));
        cuda::Engine engine(w.cfg, w.view, path);
        for (cuda::MathMode mode : kAllModes)
        {
            SCOPED_TRACE(modeName(mode));
            const std::vector<float> viaHost = gpuForward(engine, in, s, mode);
            const size_t outCount = viaHost.size();
            std::vector<float> viaDevice;
            engine.setStageTiming(true);
            ASSERT_NO_FATAL_FAILURE(deviceForward(engine, in, s, mode, viaDevice));
            const cuda::StageTimes t = engine.lastStageTimes();
            engine.setStageTiming(false);
            EXPECT_EQ(0, std::memcmp(viaHost.data(), viaDevice.data(), outCount * sizeof(float)));
            EXPECT_GT(t.encoderMs, 0.f);
            EXPECT_GT(t.attentionMs, 0.f);
            EXPECT_FLOAT_EQ(t.totalMs, t.encoderMs + t.attentionMs);
            EXPECT_GT(t.convolutionMs, 0.f);
            EXPECT_LT(t.convolutionMs, t.encoderMs);
            // Each branch: its stem and two convolutions per block.
            EXPECT_EQ(t.convolutionCallMs.size(), static_cast<size_t>(2 * (1 + 2 * w.cfg.imgLayers)));
            for (float ms : t.convolutionCallMs) EXPECT_GT(ms, 0.f);
            std::printf("[ cuda     ] %s %s: encoder %.3f ms (convolutions %.3f), attention %.3f ms; %s\n",
                        pathName(path), modeName(mode), t.encoderMs,
                        t.convolutionMs, t.attentionMs, engine.convolutionPathNote().c_str());
        }
    }
}

// Engine::forward's output copy through the pinned staging buffers: an output of 3 full 32 MiB
// chunks and a partial one of several 4 MiB host stripes, the last of them partial too, with the
// host copy on the calling thread and on 3 threads, and into page-locked memory (written
// directly), all equal to forwardDevice's output bit for bit. Device memory as the host output
// is refused before anything runs.
TEST(Cuda, HostForwardCopiesLargeOutputsThroughPinnedChunks)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(25);
    const ForwardShape s = makeShape(279, 279, 384, 19, 21, 279, 279, 9);
    const Inputs in = makeInputs(s, 10);
    const size_t outCount = static_cast<size_t>(s.channels) * s.outH * s.outW;
    const size_t chunk = size_t(32) << 20, stripe = size_t(4) << 20;
    const size_t lastChunk = outCount * sizeof(float) % chunk;
    ASSERT_EQ(outCount * sizeof(float) / chunk, 3u);
    ASSERT_GT(lastChunk, stripe) << "the partial chunk is copied in stripes";
    ASSERT_NE(lastChunk % stripe, 0u) << "and ends on a partial stripe";
    cuda::Engine engine(w.cfg, w.view);
    std::vector<float> viaDevice;
    ASSERT_NO_FATAL_FAILURE(deviceForward(engine, in, s, cuda::MathMode::TF32, viaDevice));
    ASSERT_TRUE(allFinite(viaDevice));

    for (int threads : {0, 3})
    {
        SCOPED_TRACE(threads);
        engine.setHostParallelFor(threads ? threadParallelFor(threads) : ParallelFor());
        const std::vector<float> viaHost = gpuForward(engine, in, s, cuda::MathMode::TF32);
        EXPECT_EQ(0, std::memcmp(viaHost.data(), viaDevice.data(), outCount * sizeof(float)));
    }
    float* pinned = nullptr;
    ASSERT_EQ(cudaMallocHost(&pinned, outCount * sizeof(float)), cudaSuccess);
    std::fill(pinned, pinned + outCount, std::nanf(""));
    engine.forward(in.image.data(), in.features.data(), pinned, s, cuda::MathMode::TF32);
    EXPECT_EQ(0, std::memcmp(pinned, viaDevice.data(), outCount * sizeof(float)));
    cudaFreeHost(pinned);

    float* onDevice = nullptr;
    ASSERT_EQ(cudaMalloc(&onDevice, outCount * sizeof(float)), cudaSuccess);
    EXPECT_THROW(engine.forward(in.image.data(), in.features.data(), onDevice, s, cuda::MathMode::TF32),
                 std::invalid_argument);
    cudaFree(onDevice);
    const std::vector<float> after = gpuForward(engine, in, s, cuda::MathMode::TF32);
    EXPECT_EQ(0, std::memcmp(after.data(), viaDevice.data(), outCount * sizeof(float))) << "usable after the refusal";
}

TEST(Cuda, OneEngineServesDifferentlySizedCalls)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(31);
    // Builtin path: cuDNN may pick an algorithm with a larger workspace for a smaller shape.
    cuda::Engine engine(w.cfg, w.view, cuda::ConvolutionPath::Builtin);
    // Large, small, large again, then a new mid size: scratch grows and is reused.
    const std::vector<ForwardShape> shapes = {
        makeShape(100, 130, 64, 20, 24, 100, 130, 9), makeShape(37, 45, 8, 7, 6, 30, 27, 9),
        makeShape(100, 130, 64, 20, 24, 100, 130, 9), makeShape(300, 260, 12, 13, 11, 61, 50, 5),
        makeShape(23, 19, 4, 5, 3, 23, 19, 3),
    };
    size_t bytesAfterFirst = 0;
    for (size_t i = 0; i < shapes.size(); ++i)
    {
        expectMatchesCpu(engine, w, shapes[i], static_cast<uint32_t>(200 + i));
        if (i == 0) bytesAfterFirst = engine.deviceBytes();
        if (i == 1)
        {
            EXPECT_EQ(engine.deviceBytes(), bytesAfterFirst) << "scratch must not shrink or regrow";
        }
    }
}

// A call whose scratch cannot fit on the device is refused with the out-of-memory message (which
// buffer, how much, how much is free) before any kernel runs, and the engine serves the next call.
TEST(Cuda, OutOfDeviceMemoryIsAClearErrorAndTheEngineStaysUsable)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(51);
    cuda::Engine engine(w.cfg, w.view);
    // A 20000 x 20000 output from a 64 x 64 image: the guide stays small, and the query buffer
    // alone is larger than the whole device.
    const ForwardShape huge = makeShape(64, 64, 8, 8, 8, 20000, 20000, 3);
    size_t freeBytes = 0, totalBytes = 0;
    ASSERT_EQ(cudaMemGetInfo(&freeBytes, &totalBytes), cudaSuccess);
    ASSERT_GT(static_cast<size_t>(w.cfg.dim) * huge.outH * huge.outW * sizeof(float), totalBytes);
    // Never read: the refusal comes before anything is enqueued.
    float *dImage = nullptr, *dFeatures = nullptr, *dOut = nullptr;
    ASSERT_EQ(cudaMalloc(&dImage, 3 * 64 * 64 * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dFeatures, 8 * 8 * 8 * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dOut, sizeof(float)), cudaSuccess);
    try
    {
        engine.forwardDevice(dImage, dFeatures, dOut, huge, cuda::MathMode::FP32);
        ADD_FAILURE() << "no exception for a call that cannot fit";
    }
    catch (const cuda::OutOfDeviceMemory& e)  // its own type: the module falls back to the CPU on it
    {
        const std::string message = e.what();
        EXPECT_NE(message.find("allocating the query buffer failed: it needs "), std::string::npos) << message;
        EXPECT_NE(message.find(" MiB are free (out of memory"), std::string::npos) << message;
    }
    cudaFree(dImage);
    cudaFree(dFeatures);
    cudaFree(dOut);
    expectMatchesCpu(engine, w, makeShape(37, 45, 8, 7, 6, 30, 27, 9), 300);
}

// releaseScratch() gives back all but the weights, and the next forwards allocate again and give
// the same bits as before, the cell kernel's work list included (uploaded again).
TEST(Cuda, ReleasedScratchIsAllocatedAgainWithTheSameResults)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(52);
    cuda::Engine engine(w.cfg, w.view);
    engine.setAttentionKernel(cuda::AttentionKernel::Cell);
    const size_t weightsOnly = engine.deviceBytes();
    const ForwardShape s = makeShape(96, 80, 40, 6, 5, 96, 80, 9);  // the cell kernel's shape in its test
    const Inputs in = makeInputs(s, 301);
    const std::vector<float> before = gpuForward(engine, in, s, cuda::MathMode::FP32);
    EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::Cell);
    EXPECT_GT(engine.deviceBytes(), weightsOnly);
    engine.releaseScratch();
    EXPECT_EQ(engine.deviceBytes(), weightsOnly);
    engine.releaseScratch();  // twice is harmless
    for (int call = 0; call < 2; ++call)
    {
        const std::vector<float> after = gpuForward(engine, in, s, cuda::MathMode::FP32);
        EXPECT_EQ(engine.lastAttentionKernel(), cuda::AttentionKernel::Cell);
        ASSERT_EQ(after.size(), before.size());
        EXPECT_EQ(0, std::memcmp(after.data(), before.data(), before.size() * sizeof(float))) << "call " << call;
    }
    expectMatchesCpu(engine, w, s, 301);
}

TEST(Cuda, RepeatedCallsAreBitIdentical)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(41);
    const ForwardShape s = makeShape(300, 260, 12, 13, 11, 61, 50, 5);
    const Inputs in = makeInputs(s, 7);
    for (cuda::ConvolutionPath path : convolutionPaths())
    for (cuda::MathMode mode : kAllModes)
    {
        SCOPED_TRACE(std::string(pathName(path)) + " " + modeName(mode));
        cuda::Engine engine(w.cfg, w.view, path);
        const std::vector<float> a = gpuForward(engine, in, s, mode);
        const std::vector<float> b = gpuForward(engine, in, s, mode);
        ASSERT_EQ(a.size(), b.size());
        EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
    }
}

TEST(Cuda, ProbeMatchesCpu)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(51);
    cuda::Engine engine(w.cfg, w.view);
    uint32_t seed = 300;
    for (const ForwardShape& s : comparisonShapes())
    {
        SCOPED_TRACE(describe(s));
        const Inputs in = makeInputs(s, seed++);
        const int pixels[3][2] = {{0, 0}, {s.outH / 2, s.outW / 3}, {s.outH - 1, s.outW - 1}};
        for (const auto& px : pixels)
        {
            AttentionProbe cpuProbe, gpuProbe;
            cpuProbe.y = gpuProbe.y = px[0];
            cpuProbe.x = gpuProbe.x = px[1];
            const std::vector<float> ref = cpuForward(w, in, s, &cpuProbe);
            const std::vector<float> out = gpuForward(engine, in, s, cuda::MathMode::FP32, &gpuProbe);
            EXPECT_LE(relativeL2(out.data(), ref.data(), ref.size()), 1e-4);
            EXPECT_EQ(gpuProbe.heads, cpuProbe.heads);
            EXPECT_EQ(gpuProbe.kh, cpuProbe.kh);
            EXPECT_EQ(gpuProbe.kw, cpuProbe.kw);
            EXPECT_EQ(gpuProbe.lowY, cpuProbe.lowY);
            EXPECT_EQ(gpuProbe.lowX, cpuProbe.lowX);
            ASSERT_EQ(gpuProbe.weights.size(), cpuProbe.weights.size());
            ASSERT_EQ(gpuProbe.weights.size(), static_cast<size_t>(gpuProbe.heads) * gpuProbe.kh * gpuProbe.kw);
            for (size_t i = 0; i < cpuProbe.weights.size(); ++i)
                EXPECT_NEAR(gpuProbe.weights[i], cpuProbe.weights[i], 1e-4) << "weight " << i;
            // Probabilities of each head sum to one.
            for (int h = 0; h < gpuProbe.heads; ++h)
            {
                double sum = 0;
                for (int i = 0; i < gpuProbe.kh * gpuProbe.kw; ++i)
                    sum += gpuProbe.weights[static_cast<size_t>(h) * gpuProbe.kh * gpuProbe.kw + i];
                EXPECT_NEAR(sum, 1.0, 1e-5);
            }
        }
    }
}

TEST(Cuda, RejectsBadShapesAndProbes)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(61);
    cuda::Engine engine(w.cfg, w.view);
    const ForwardShape good = makeShape(37, 45, 8, 7, 6, 30, 27, 9);
    const Inputs in = makeInputs(good, 1);
    std::vector<float> out(static_cast<size_t>(good.channels) * good.outH * good.outW);

    ForwardShape evenKernel = good;
    evenKernel.kernelSize = 4;
    EXPECT_THROW(engine.forward(in.image.data(), in.features.data(), out.data(), evenKernel, cuda::MathMode::FP32),
                 std::invalid_argument);
    ForwardShape badChannels = good;
    badChannels.channels = 6;  // not a multiple of 4 heads
    EXPECT_THROW(engine.forward(in.image.data(), in.features.data(), out.data(), badChannels, cuda::MathMode::FP32),
                 std::invalid_argument);
    ForwardShape outSmaller = good;
    outSmaller.outH = 5;  // smaller than lowH
    EXPECT_THROW(engine.forward(in.image.data(), in.features.data(), out.data(), outSmaller, cuda::MathMode::FP32),
                 std::invalid_argument);
    AttentionProbe probe;
    probe.y = good.outH;
    probe.x = 0;
    EXPECT_THROW(engine.forward(in.image.data(), in.features.data(), out.data(), good, cuda::MathMode::FP32, &probe),
                 std::invalid_argument);
    try
    {
        engine.forward(in.image.data(), in.features.data(), out.data(), good, static_cast<cuda::MathMode>(7));
        ADD_FAILURE() << "an unknown math mode was accepted";
    }
    catch (const std::invalid_argument& e)
    {
        EXPECT_NE(std::string(e.what()).find("unknown math mode 7"), std::string::npos) << e.what();
    }
    EXPECT_THROW(engine.setAttentionKernel(static_cast<cuda::AttentionKernel>(9)), std::invalid_argument);
    EXPECT_EQ(engine.attentionKernel(), cuda::AttentionKernel::Auto);
    // The engine still works after rejected calls.
    const std::vector<float> ref = cpuForward(w, in, good);
    const std::vector<float> gpu = gpuForward(engine, in, good, cuda::MathMode::FP32);
    EXPECT_LE(relativeL2(gpu.data(), ref.data(), ref.size()), 1e-4);
}

// MathMode::FP16 stores the guide in float16: an image whose normalized values pass 65504 must be
// refused with a clear error before any output is written, in both convolution paths, and the
// engine must work afterwards (FP32 takes the same input).
TEST(Cuda, Fp16RefusesInputsBeyondFloat16Range)
{
    NAF_SKIP_WITHOUT_GPU();
    const RandomNafWeights w(71);
    const ForwardShape s = makeShape(37, 45, 8, 7, 6, 30, 27, 9);
    Inputs in = makeInputs(s, 3);
    for (float& v : in.image) v *= 1e5f;  // normalized: ~4e5 > 65504
    for (cuda::ConvolutionPath path : convolutionPaths())
    {
        SCOPED_TRACE(pathName(path));
        cuda::Engine engine(w.cfg, w.view, path);
        std::vector<float> out(static_cast<size_t>(s.channels) * s.outH * s.outW, 7.f);
        try
        {
            engine.forward(in.image.data(), in.features.data(), out.data(), s, cuda::MathMode::FP16);
            ADD_FAILURE() << "FP16 accepted an image beyond float16's range";
        }
        catch (const std::runtime_error& e)
        {
            EXPECT_NE(std::string(e.what()).find("float16"), std::string::npos) << e.what();
        }
        for (float v : out) ASSERT_EQ(v, 7.f) << "the output was written by a refused call";
        // ... and says so (the module keeps a reused dst on this, releases it otherwise).
        EXPECT_FALSE(engine.lastForwardWroteHostOutput());
        const std::vector<float> fp32 = gpuForward(engine, in, s, cuda::MathMode::FP32);
        EXPECT_TRUE(engine.lastForwardWroteHostOutput());
        EXPECT_TRUE(allFinite(fp32));
        const std::vector<float> ref = cpuForward(w, in, s);
        EXPECT_LE(relativeL2(fp32.data(), ref.data(), ref.size()), 1e-4);
    }
}
