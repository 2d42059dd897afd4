// Google Benchmark targets of cv::naf: the whole NAF forward (public API, CPU), the guide encoder
// and the neighborhood attention alone (kernels), and two classical peers on the same features:
// cv::resize bilinear and a ximgproc guided filter (bilinear upsample, then guided by the image).
//
// Steady state: each benchmark makes one untimed call first, so scratch memory (the NAF object's
// workspace) is allocated before timing, as in a video loop. Times are wall clock; the CPU column
// is the CPU time of the whole process (all threads).
// Counters (read by benchmarks/run_benchmarks.py): MPix/s = output megapixels per second,
// FLOPS = analytic FLOPs (docs/PERFORMANCE.md, "FLOP count") per second, maxrss_MB = the
// process's peak resident memory so far (run one configuration per process to attribute it).
#include <sys/resource.h>

#include <cmath>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/ximgproc/edge_filter.hpp>

#include "naf_kernels/naf_kernels.hpp"
#include "opencv2/naf.hpp"
#include "weights.hpp"

namespace {

namespace K = ::naf::kernels;

struct BenchConfig
{
    const char* name;
    int imageH, imageW;  // guide image
    int channels, lowH, lowW;
    int outH, outW;
};

// The configurations (+ a tiny one for the ctest smoke run, and dinov2: sizes that are not
// multiples of 4, 16 or 128 pixels, where the kernels' tails run; PERFORMANCE item 31).
const BenchConfig kConfigs[] = {
    {"tiny", 64, 64, 16, 8, 8, 64, 64},
    {"paper", 448, 448, 384, 28, 28, 448, 448},       // NAF paper: 28x28x384 -> 448x448 (x16)
    {"x32", 896, 896, 384, 28, 28, 896, 896},         // same features -> 896x896
    {"x72", 2016, 2016, 384, 28, 28, 2016, 2016},     // same features -> 2016x2016
    {"mobilesam", 1024, 1024, 256, 64, 64, 1024, 1024},  // MobileSAM 64x64x256 -> 1024x1024
    {"dinov2", 518, 518, 384, 37, 37, 518, 518},      // DINOv2 ViT-S/14 at 518: 37x37x384 -> 518x518 (x14)
};

const cv::naf::detail::LoadedWeights& benchWeights()
{
    static const auto weights = cv::naf::detail::loadWeightsFile(NAF_BENCH_WEIGHTS);
    return *weights;
}

K::ParallelFor opencvParallelFor()
{
    return [](int64_t count, const std::function<void(int64_t, int64_t)>& body) {
        if (count <= 0) return;
        cv::parallel_for_(cv::Range(0, static_cast<int>(count)), [&](const cv::Range& r) { body(r.start, r.end); });
    };
}

cv::Mat randomImage(const BenchConfig& c)
{
    cv::Mat image(c.imageH, c.imageW, CV_8UC3);
    cv::RNG rng(1);
    rng.fill(image, cv::RNG::UNIFORM, 0, 256);
    return image;
}

cv::Mat randomFeatures(const BenchConfig& c)
{
    const int sizes[4] = {1, c.channels, c.lowH, c.lowW};
    cv::Mat features(4, sizes, CV_32F);
    cv::RNG rng(2);
    rng.fill(features, cv::RNG::UNIFORM, -1.f, 1.f);
    return features;
}

template <class Vector>
void fillRandom(Vector& v, int seed)
{
    cv::RNG rng(static_cast<uint64>(seed));
    for (float& x : v) x = rng.uniform(-1.f, 1.f);
}

std::vector<float> randomVector(size_t n, int seed)
{
    std::vector<float> v(n);
    fillRandom(v, seed);
    return v;
}

// n zeros on cache lines and huge pages, as the forward's large buffers are (its workspace and its
// cv::Mat output): the hint is given before the first write (PERFORMANCE item 35).
K::AlignedFloatVector forwardLikeBuffer(size_t n)
{
    K::AlignedFloatVector buffer;
    buffer.reserve(n);
    K::adviseHugePages(buffer.data(), n * sizeof(float));
    buffer.assign(n, 0.f);  // touched now, as a workspace reused across calls is
    return buffer;
}

double maxRssMB()
{
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// Analytic FLOPs (a multiply-add = 2) of the guide encoder: every convolution of both branches at
// the guide resolution. GroupNorm/SiLU/pooling/RoPE (a few FLOPs per element) are not counted.
double encoderFlops(const K::NafConfig& cfg, const K::NafWeights& w, const BenchConfig& c)
{
    int gh = 0, gw = 0;
    K::guideSize(c.imageH, c.imageW, c.outH, c.outW, cfg.maxGuideScale, &gh, &gw);
    double perPixel = 0;
    for (const K::EncoderBranchWeights* branch : {&w.pointBranch, &w.contextBranch})
    {
        auto conv = [&](const K::ConvWeights& cw) { perPixel += 2.0 * cw.cout * cw.cin * cw.k * cw.k; };
        conv(branch->stem);
        for (const K::EncBlockWeights& b : branch->blocks)
        {
            conv(b.conv1);
            conv(b.conv2);
        }
    }
    return perPixel * gh * gw;
}

// Analytic FLOPs of the attention: per output pixel and window entry, a dot product over the
// query channels and a weighted sum over the value channels (softmax exp not counted).
double attentionFlops(const K::NafConfig& cfg, const BenchConfig& c)
{
    const int kh = K::effectiveKernel(cfg.kernelSize, c.lowH), kw = K::effectiveKernel(cfg.kernelSize, c.lowW);
    return static_cast<double>(c.outH) * c.outW * kh * kw * (2.0 * cfg.dim + 2.0 * c.channels);
}

void setCounters(benchmark::State& state, const BenchConfig& c, double flops)
{
    state.counters["MPix/s"] =
        benchmark::Counter(1e-6 * c.outH * c.outW, benchmark::Counter::kIsIterationInvariantRate);
    if (flops > 0)
    {
        state.counters["FLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
        state.counters["flop"] = flops;
    }
    state.counters["maxrss_MB"] = maxRssMB();
}

void BM_NafForward(benchmark::State& state, const BenchConfig& c)
{
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create(NAF_BENCH_WEIGHTS);
    naf->setBackend(cv::naf::BACKEND_CPU);
    const cv::Mat image = randomImage(c), features = randomFeatures(c);
    cv::Mat out;
    try
    {
        naf->upsample(image, features, out, cv::Size(c.outW, c.outH));  // warm-up: scratch allocated once
    }
    catch (const cv::Exception& e)  // e.g. over the memory budget (NAF_MEMORY_BUDGET raises it)
    {
        state.SkipWithError(e.what());
        return;
    }
    for (auto _ : state)
    {
        naf->upsample(image, features, out, cv::Size(c.outW, c.outH));
        benchmark::DoNotOptimize(out.data);
    }
    const auto& w = benchWeights();
    setCounters(state, c, encoderFlops(w.cfg, w.view, c) + attentionFlops(w.cfg, c));
}

void BM_Encoder(benchmark::State& state, const BenchConfig& c)
{
    const auto& w = benchWeights();
    std::vector<float> image = randomVector(3 * static_cast<size_t>(c.imageH) * c.imageW, 3);
    for (float& v : image) v = 0.5f + 0.5f * v;
    K::Workspace ws;  // reused across iterations, as a NAF object does
    // Reserved as the forward reserves it, so its buffers get the same huge-page advice (without
    // it this benchmark ran on 4 KB pages while the forward did not; PERFORMANCE item 35). The
    // queries are the workspace's own buffer, as in the forward.
    K::ForwardShape shape;
    shape.imageH = c.imageH;
    shape.imageW = c.imageW;
    shape.channels = c.channels;
    shape.lowH = c.lowH;
    shape.lowW = c.lowW;
    shape.outH = c.outH;
    shape.outW = c.outW;
    shape.kernelSize = w.cfg.kernelSize;
    K::reserveWorkspace(w.cfg, w.view, shape, ws);
    ws.queries.resize(static_cast<size_t>(w.cfg.dim) * c.outH * c.outW);
    float* const queries = ws.queries.data();
    const K::ParallelFor parallel = opencvParallelFor();
    K::encodeQueries(w.cfg, w.view, image.data(), c.imageH, c.imageW, c.outH, c.outW, queries, ws,
                     parallel);  // warm-up: the workspace is allocated once
    for (auto _ : state)
    {
        K::encodeQueries(w.cfg, w.view, image.data(), c.imageH, c.imageW, c.outH, c.outW, queries, ws, parallel);
        benchmark::DoNotOptimize(queries);
    }
    setCounters(state, c, encoderFlops(w.cfg, w.view, c));
}

void BM_Attention(benchmark::State& state, const BenchConfig& c)
{
    const auto& w = benchWeights();
    const int dim = w.cfg.dim;
    K::AlignedFloatVector queries = forwardLikeBuffer(static_cast<size_t>(dim) * c.outH * c.outW);
    fillRandom(queries, 4);
    const std::vector<float> keys = randomVector(static_cast<size_t>(dim) * c.lowH * c.lowW, 5);
    const std::vector<float> values = randomVector(static_cast<size_t>(c.channels) * c.lowH * c.lowW, 6);
    K::AlignedFloatVector out = forwardLikeBuffer(static_cast<size_t>(c.channels) * c.outH * c.outW);
    const K::ParallelFor parallel = opencvParallelFor();
    const float scale = 1.f / std::sqrt(static_cast<float>(dim / w.cfg.headsAttn));
    for (auto _ : state)
    {
        K::neighborhoodAttention(queries.data(), keys.data(), values.data(), out.data(), dim, c.channels,
                                 w.cfg.headsAttn, c.lowH, c.lowW, c.outH, c.outW, w.cfg.kernelSize, scale, parallel);
        benchmark::DoNotOptimize(out.data());
    }
    setCounters(state, c, attentionFlops(w.cfg, c));
}

// Peer: bilinear upsampling of every feature plane with cv::resize.
void resizePlanes(const cv::Mat& features, const BenchConfig& c, cv::Mat& out)
{
    const int sizes[4] = {1, c.channels, c.outH, c.outW};
    out.create(4, sizes, CV_32F);
    for (int ch = 0; ch < c.channels; ++ch)
    {
        const cv::Mat src(c.lowH, c.lowW, CV_32F, const_cast<float*>(features.ptr<float>(0, ch)));
        cv::Mat dst(c.outH, c.outW, CV_32F, out.ptr<float>(0, ch));
        cv::resize(src, dst, dst.size(), 0, 0, cv::INTER_LINEAR);
    }
}

void BM_ResizeBilinear(benchmark::State& state, const BenchConfig& c)
{
    const cv::Mat features = randomFeatures(c);
    cv::Mat out;
    for (auto _ : state)
    {
        resizePlanes(features, c, out);
        benchmark::DoNotOptimize(out.data);
    }
    setCounters(state, c, 0);
}

// Peer: joint-filtering baseline: bilinear upsample, then ximgproc guided filter (radius 8,
// eps = (0.1 * 255)^2) of every plane, guided by the image at output size.
void BM_GuidedFilter(benchmark::State& state, const BenchConfig& c)
{
    const cv::Mat features = randomFeatures(c);
    cv::Mat guide = randomImage(c);
    if (guide.rows != c.outH || guide.cols != c.outW) cv::resize(guide, guide, cv::Size(c.outW, c.outH));
    cv::Mat up, out;
    for (auto _ : state)
    {
        resizePlanes(features, c, up);
        cv::Ptr<cv::ximgproc::GuidedFilter> filter = cv::ximgproc::createGuidedFilter(guide, 8, 0.01 * 255 * 255);
        const int sizes[4] = {1, c.channels, c.outH, c.outW};
        out.create(4, sizes, CV_32F);
        for (int ch = 0; ch < c.channels; ++ch)
        {
            const cv::Mat src(c.outH, c.outW, CV_32F, up.ptr<float>(0, ch));
            cv::Mat dst(c.outH, c.outW, CV_32F, out.ptr<float>(0, ch));
            filter->filter(src, dst);
        }
        benchmark::DoNotOptimize(out.data);
    }
    setCounters(state, c, 0);
}

}  // namespace

int main(int argc, char** argv)
{
    for (const BenchConfig& c : kConfigs)
    {
        const std::string suffix = std::string("/") + c.name;
        for (auto& [name, fn] : std::vector<std::pair<std::string, void (*)(benchmark::State&, const BenchConfig&)>>{
                 {"BM_NafForward", BM_NafForward},
                 {"BM_Encoder", BM_Encoder},
                 {"BM_Attention", BM_Attention},
                 {"BM_ResizeBilinear", BM_ResizeBilinear},
                 {"BM_GuidedFilter", BM_GuidedFilter}})
            benchmark::RegisterBenchmark((name + suffix).c_str(), fn, c)
                ->Unit(benchmark::kMillisecond)
                ->UseRealTime()
                ->MeasureProcessCPUTime();  // CPU time of all threads: less sensitive to other load
    }
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
