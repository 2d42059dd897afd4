// naf_cuda_bench: timing of the CUDA engine (kernels::cuda::Engine::forwardDevice) on the
// configurations of benchmarks/bench_naf.cpp, without Google Benchmark (plain C++17 + the CUDA
// runtime), for GPU machines that have neither OpenCV nor libbenchmark.
//
// Usage: naf_cuda_bench [--configs paper,x32,mobilesam,x72] [--modes fp32,tf32,fp16]
//                       [--paths auto,builtin] [--reps 20] [--warmup 3] [--max-seconds 15]
//                       [--roundtrip-reps 3] [--no-reference]
//
// Prints one JSON line per (config, path, mode) on stdout; a failure prints a JSON line with an
// "error" key for that config, (config, path) or (config, path, mode) and the run goes on.
// Per (config, path): inputs (image uniform [0,1) seed 1, features uniform [-1,1) seed 2, random
// weights seed 0) are uploaded once per config; one Engine is built per path and serves every mode.
// Per mode: `warmup` untimed forwards, then up to `reps` timed forwards (steady_clock around
// each forwardDevice, which returns when the output is written; the timed loop stops early,
// after at least 3 reps, once it has taken more than --max-seconds), one forward with stage
// timing on (encoder/attention/total device times), the output copied back and compared with
// the FP32 output of the same engine (for fp32 itself: the stage-timed forward against the last
// timed one, i.e. run-to-run determinism). --no-reference skips the untimed FP32 forward that
// makes that reference (so that a profiler's first kernels are those of the first mode listed).
// Memory (engine_MB, device_used_delta_MB) is read right after the timed calls. After all modes of an engine, `roundtrip-reps` host round trips
// per mode (Engine::forward with host pointers: copies included; it adds device staging buffers,
// engine_MB_after_roundtrip), median reported, with the output's host copy on 8 threads
// (host_roundtrip_ms) and on the calling thread (host_roundtrip_1thread_ms); then that engine's
// lines are printed.
// Exit status: 0 when every line was a result, 1 when any line carried an error (or no GPU).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../tests/test_support.hpp"
#include "naf_kernels/naf_cuda.hpp"
#include "naf_kernels/naf_kernels.hpp"

namespace K = naf::kernels;
namespace KC = naf::kernels::cuda;

namespace {

struct BenchConfig
{
    const char* name;
    int imageH, imageW, channels, lowH, lowW, outH, outW;
};

// Same as kConfigs in benchmarks/bench_naf.cpp and CONFIGS in benchmarks/bench_reference.py.
const BenchConfig kConfigs[] = {
    {"tiny", 64, 64, 16, 8, 8, 64, 64},
    {"paper", 448, 448, 384, 28, 28, 448, 448},
    {"x32", 896, 896, 384, 28, 28, 896, 896},
    {"x72", 2016, 2016, 384, 28, 28, 2016, 2016},
    {"mobilesam", 1024, 1024, 256, 64, 64, 1024, 1024},
    {"dinov2", 518, 518, 384, 37, 37, 518, 518},  // 14-pixel cells; not in the default list
};

// ---- minimal JSON line writer ----------------------------------------------------------------

std::string jsonEscape(const std::string& s)
{
    std::string out;
    out.reserve(s.size() + 2);
    for (char ch : s)
    {
        const unsigned char c = static_cast<unsigned char>(ch);
        switch (c)
        {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20)
            {
                char buf[8];
                std::snprintf(buf, sizeof(buf), "\\u%04x", c);
                out += buf;
            }
            else
                out += ch;
        }
    }
    return out;
}

class JsonLine
{
public:
    JsonLine& str(const std::string& key, const std::string& value)
    {
        add(key, "\"" + jsonEscape(value) + "\"");
        return *this;
    }
    JsonLine& num(const std::string& key, double value)
    {
        if (!std::isfinite(value)) return raw(key, "null");
        char buf[64];
        std::snprintf(buf, sizeof(buf), "%.6g", value);
        return raw(key, buf);
    }
    JsonLine& integer(const std::string& key, long long value) { return raw(key, std::to_string(value)); }
    JsonLine& boolean(const std::string& key, bool value) { return raw(key, value ? "true" : "false"); }
    JsonLine& nums(const std::string& key, const std::vector<double>& values)
    {
        std::string s = "[";
        for (size_t i = 0; i < values.size(); ++i)
        {
            char buf[64];
            if (std::isfinite(values[i]))
                std::snprintf(buf, sizeof(buf), "%.6g", values[i]);
            else
                std::snprintf(buf, sizeof(buf), "null");
            s += (i ? "," : "");
            s += buf;
        }
        return raw(key, s + "]");
    }
    JsonLine& raw(const std::string& key, const std::string& json)
    {
        add(key, json);
        return *this;
    }
    void print() const
    {
        std::printf("{%s}\n", body_.c_str());
        std::fflush(stdout);
    }

private:
    void add(const std::string& key, const std::string& json)
    {
        if (!body_.empty()) body_ += ", ";
        body_ += "\"" + jsonEscape(key) + "\": " + json;
    }
    std::string body_;
};

// ---- CUDA helpers ----------------------------------------------------------------------------

void check(cudaError_t err, const char* what)
{
    if (err != cudaSuccess)
    {
        (void)cudaGetLastError();  // clear a non-sticky error so that later configs may still run
        throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                                 ")");
    }
}

/// cudaMalloc'd float buffer, freed in the destructor (errors there are ignored).
class DeviceBuffer
{
public:
    explicit DeviceBuffer(size_t count, const char* what) : count_(count)
    {
        void* p = nullptr;
        check(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(float)), what);
        ptr_ = static_cast<float*>(p);
    }
    ~DeviceBuffer()
    {
        if (ptr_) (void)cudaFree(ptr_);
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    float* get() const { return ptr_; }
    size_t count() const { return count_; }
    size_t bytes() const { return count_ * sizeof(float); }

private:
    float* ptr_ = nullptr;
    size_t count_ = 0;
};

/// Device-wide used memory (total - free) in bytes, as cudaMemGetInfo sees it.
double deviceUsedBytes()
{
    size_t freeB = 0, totalB = 0;
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize before cudaMemGetInfo");
    check(cudaMemGetInfo(&freeB, &totalB), "cudaMemGetInfo");
    return static_cast<double>(totalB) - static_cast<double>(freeB);
}

constexpr double kMB = 1024.0 * 1024.0;

double median(std::vector<double> v)
{
    if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double minimum(const std::vector<double>& v)
{
    return v.empty() ? std::numeric_limits<double>::quiet_NaN() : *std::min_element(v.begin(), v.end());
}

double nowMs()
{
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

struct Comparison
{
    double relL2 = std::numeric_limits<double>::quiet_NaN();
    double maxAbs = std::numeric_limits<double>::quiet_NaN();
    long long nonFinite = 0;  ///< non-finite values in `a`
};

/// ||a - ref|| / ||ref|| (as testing::relativeL2), max |a - ref| and non-finite count of a, one pass.
Comparison compare(const std::vector<float>& a, const std::vector<float>& ref)
{
    Comparison c;
    if (a.size() != ref.size() || a.empty()) return c;
    double num = 0, den = 0, maxAbs = 0;
    long long bad = 0;
    for (size_t i = 0; i < a.size(); ++i)
    {
        const double x = a[i], r = ref[i];
        if (!std::isfinite(x))
        {
            ++bad;
            continue;
        }
        const double d = x - r;
        num += d * d;
        den += r * r;
        maxAbs = std::max(maxAbs, std::fabs(d));
    }
    c.nonFinite = bad;
    if (bad == 0)
    {
        c.relL2 = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
        c.maxAbs = maxAbs;
    }
    return c;
}

long long countNonFinite(const std::vector<float>& a)
{
    long long bad = 0;
    for (float x : a)
        if (!std::isfinite(x)) ++bad;
    return bad;
}

std::vector<std::string> splitList(const std::string& s)
{
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) out.push_back(item);
    return out;
}

const char* attentionName(KC::AttentionKernel k)
{
    switch (k)
    {
    case KC::AttentionKernel::Tiled: return "tiled";
    case KC::AttentionKernel::General: return "general";
    case KC::AttentionKernel::Cell: return "cell";
    case KC::AttentionKernel::Auto: return "auto";
    case KC::AttentionKernel::TiledChunked: return "tiled-chunked";
    case KC::AttentionKernel::CellTensorCore: return "cell-mma";
    case KC::AttentionKernel::Measured: return "measured";
    }
    return "?";
}

KC::AttentionKernel parseAttention(const std::string& name)
{
    for (KC::AttentionKernel k : {KC::AttentionKernel::Tiled, KC::AttentionKernel::General, KC::AttentionKernel::Cell,
                                  KC::AttentionKernel::Auto, KC::AttentionKernel::TiledChunked,
                                  KC::AttentionKernel::CellTensorCore, KC::AttentionKernel::Measured})
        if (name == attentionName(k)) return k;
    throw std::invalid_argument("--attention takes default, auto, tiled, tiled-chunked, cell, cell-mma, measured or general, got " + name);
}

const char* pathName(KC::ConvolutionPath p)
{
    switch (p)
    {
    case KC::ConvolutionPath::Auto: return "auto";
    case KC::ConvolutionPath::CuDnn: return "cudnn";
    case KC::ConvolutionPath::Builtin: return "builtin";
    }
    return "?";
}

struct Options
{
    std::vector<std::string> configs{"paper", "x32", "mobilesam", "x72"};
    std::vector<std::string> modes{"fp32", "tf32"};
    std::vector<std::string> paths{"auto", "builtin"};
    std::string attention = "default";  // --attention (Engine::setAttentionKernel; default: the engine's)
    int reps = 20;
    int warmup = 3;
    double maxSeconds = 15.0;
    int roundtripReps = 3;
    bool reference = true;  // --no-reference: no FP32 reference forward, no rel_l2_vs_fp32
    std::string nhwcTail = "default";  // --nhwc-tail / --no-nhwc-tail: Engine::setNhwcTail for the timed modes
};

const char* kUsage =
    "usage: naf_cuda_bench [--configs paper,x32,mobilesam,x72] [--modes fp32,tf32,fp16] [--paths auto,builtin]\n"
    "                      [--reps 20] [--warmup 3] [--max-seconds 15] [--roundtrip-reps 3]\n"
    "                      [--attention default|auto|tiled|tiled-chunked|cell|cell-mma|measured|general]\n"
    "                      [--nhwc-tail|--no-nhwc-tail]\n"
    "                      [--no-reference]\n"
    "configs: tiny, paper, x32, x72, mobilesam, dinov2; modes: fp32, tf32, fp16; paths: auto, builtin, cudnn.\n"
    "--no-reference: no untimed FP32 forward before the modes (their lines have no error vs FP32).\n"
    "--nhwc-tail / --no-nhwc-tail: the channels-last tail (Engine::setNhwcTail; on by default) in\n"
    "the timed modes or not; the FP32 reference keeps the usual tail in any case.\n"
    "--max-seconds: the timed loop of one mode stops (after at least 3 reps) once it took longer.\n"
    "--roundtrip-reps 0 skips the host round trip (Engine::forward with host pointers).\n";

Options parseArgs(int argc, char** argv)
{
    Options o;
    for (int i = 1; i < argc; ++i)
    {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw std::invalid_argument("missing value after " + a);
            return argv[++i];
        };
        auto intValue = [&](int lo) {
            const std::string v = value();
            size_t pos = 0;
            int n = 0;
            try
            {
                n = std::stoi(v, &pos);
            }
            catch (const std::exception&)
            {
                throw std::invalid_argument("not an integer after " + a + ": " + v);
            }
            if (pos != v.size() || n < lo) throw std::invalid_argument("bad value after " + a + ": " + v);
            return n;
        };
        if (a == "--configs")
            o.configs = splitList(value());
        else if (a == "--modes")
            o.modes = splitList(value());
        else if (a == "--attention")
        {
            o.attention = value();
            if (o.attention != "default") parseAttention(o.attention);  // throws on an unknown name
        }
        else if (a == "--nhwc-tail")
            o.nhwcTail = "on";
        else if (a == "--no-nhwc-tail")
            o.nhwcTail = "off";
        else if (a == "--paths")
            o.paths = splitList(value());
        else if (a == "--reps")
            o.reps = intValue(1);
        else if (a == "--warmup")
            o.warmup = intValue(0);
        else if (a == "--roundtrip-reps")
            o.roundtripReps = intValue(0);
        else if (a == "--max-seconds")
        {
            const std::string v = value();
            try
            {
                o.maxSeconds = std::stod(v);
            }
            catch (const std::exception&)
            {
                throw std::invalid_argument("not a number after --max-seconds: " + v);
            }
        }
        else if (a == "--no-reference")
            o.reference = false;
        else if (a == "--help" || a == "-h")
        {
            std::fputs(kUsage, stderr);
            std::exit(0);
        }
        else
            throw std::invalid_argument("unknown argument: " + a);
    }
    for (const auto& c : o.configs)
    {
        bool known = false;
        for (const auto& k : kConfigs) known = known || c == k.name;
        if (!known) throw std::invalid_argument("unknown config: " + c);
    }
    for (const auto& m : o.modes)
        if (m != "fp32" && m != "tf32" && m != "fp16") throw std::invalid_argument("unknown mode: " + m);
    for (const auto& p : o.paths)
        if (p != "auto" && p != "builtin" && p != "cudnn") throw std::invalid_argument("unknown path: " + p);
    if (o.configs.empty() || o.modes.empty() || o.paths.empty())
        throw std::invalid_argument("--configs, --modes and --paths need at least one entry");
    // FP32 first: its output is the reference of the other modes (kept in the order given when
    // there is no reference, e.g. to profile one mode's first forward).
    if (o.reference)
        std::stable_partition(o.modes.begin(), o.modes.end(), [](const std::string& m) { return m == "fp32"; });
    o.modes.erase(std::unique(o.modes.begin(), o.modes.end()), o.modes.end());
    return o;
}

KC::ConvolutionPath parsePath(const std::string& p)
{
    if (p == "builtin") return KC::ConvolutionPath::Builtin;
    if (p == "cudnn") return KC::ConvolutionPath::CuDnn;
    return KC::ConvolutionPath::Auto;
}

KC::MathMode parseMode(const std::string& m)
{
    if (m == "tf32") return KC::MathMode::TF32;
    if (m == "fp16") return KC::MathMode::FP16;
    return KC::MathMode::FP32;
}

/// Turns stage timing back off however the scope is left.
struct StageTimingOn
{
    explicit StageTimingOn(KC::Engine& e) : engine(e) { engine.setStageTiming(true); }
    ~StageTimingOn()
    {
        try
        {
            engine.setStageTiming(false);
        }
        catch (...)
        {
        }
    }
    KC::Engine& engine;
};

/// Host inputs and device tensors of one configuration.
struct ConfigData
{
    const BenchConfig& c;
    K::ForwardShape shape;
    std::vector<float> image, features;
    DeviceBuffer dImage, dFeatures, dOut;
    std::vector<float> ref, out;  // host: FP32 reference of the current engine, a mode's output
    double ioMB;

    explicit ConfigData(const BenchConfig& cfg)
        : c(cfg),
          shape(K::testing::makeShape(cfg.imageH, cfg.imageW, cfg.channels, cfg.lowH, cfg.lowW, cfg.outH, cfg.outW, 9)),
          image(K::testing::randomUniform(3 * static_cast<size_t>(cfg.imageH) * cfg.imageW, 1, 0.f, 1.f)),
          features(K::testing::randomUniform(static_cast<size_t>(cfg.channels) * cfg.lowH * cfg.lowW, 2, -1.f, 1.f)),
          dImage(image.size(), "cudaMalloc image"),
          dFeatures(features.size(), "cudaMalloc features"),
          dOut(static_cast<size_t>(cfg.channels) * cfg.outH * cfg.outW, "cudaMalloc output")
    {
        check(cudaMemcpy(dImage.get(), image.data(), dImage.bytes(), cudaMemcpyHostToDevice), "upload image");
        check(cudaMemcpy(dFeatures.get(), features.data(), dFeatures.bytes(), cudaMemcpyHostToDevice),
              "upload features");
        ioMB = static_cast<double>(dImage.bytes() + dFeatures.bytes() + dOut.bytes()) / kMB;
    }

    void poisonOutput()
    {
        // 0xFF bytes are a NaN float: an element the engine does not write shows up as non-finite.
        check(cudaMemset(dOut.get(), 0xFF, dOut.bytes()), "cudaMemset output");
        check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after cudaMemset");
    }

    void download(std::vector<float>& host)
    {
        host.resize(dOut.count());
        check(cudaMemcpy(host.data(), dOut.get(), dOut.bytes(), cudaMemcpyDeviceToHost), "download output");
    }
};

JsonLine baseLine(const BenchConfig& c, const std::string& device)
{
    JsonLine j;
    j.str("config", c.name).str("device", device);
    return j;
}

/// A mode's finished line, printed after the host round trips of every mode of its engine.
struct ModeResult
{
    JsonLine line;
    KC::MathMode mode;
};

/// Runs one mode on an engine and appends its line to `results`, or prints an error line and
/// returns false.
bool runMode(KC::Engine& engine, ConfigData& d, const std::string& pathReq, const std::string& modeName,
             const Options& opt, const std::string& device, double usedBeforeEngine, const std::string& convPath,
             std::vector<ModeResult>& results)
{
    JsonLine j = baseLine(d.c, device);
    j.str("path", pathReq).str("conv_path", convPath).str("mode", modeName);
    try
    {
        const KC::MathMode mode = parseMode(modeName);
        d.poisonOutput();
        double spent = 0;
        int warm = 0;
        for (; warm < opt.warmup; ++warm)
        {
            const double t0 = nowMs();
            engine.forwardDevice(d.dImage.get(), d.dFeatures.get(), d.dOut.get(), d.shape, mode);
            spent += nowMs() - t0;
            if (spent > 1e3 * opt.maxSeconds) break;
        }
        std::vector<double> times;
        spent = 0;
        for (int r = 0; r < opt.reps; ++r)
        {
            const double t0 = nowMs();
            engine.forwardDevice(d.dImage.get(), d.dFeatures.get(), d.dOut.get(), d.shape, mode);
            const double t = nowMs() - t0;
            times.push_back(t);
            spent += t;
            if (r + 1 >= 3 && spent > 1e3 * opt.maxSeconds) break;
        }
        check(cudaDeviceSynchronize(), "cudaDeviceSynchronize after the timed forwards");
        check(cudaGetLastError(), "CUDA error after the timed forwards");
        const double usedAfter = deviceUsedBytes();
        const double engineBytes = static_cast<double>(engine.deviceBytes());

        KC::StageTimes st;
        {
            StageTimingOn on(engine);
            engine.forwardDevice(d.dImage.get(), d.dFeatures.get(), d.dOut.get(), d.shape, mode);
            st = engine.lastStageTimes();
        }
        d.download(d.out);
        Comparison cmp;
        if (!d.ref.empty())
            cmp = compare(d.out, d.ref);
        else
            cmp.nonFinite = countNonFinite(d.out);

        const double med = median(times);
        j.num("median_ms", med)
            .num("min_ms", minimum(times))
            .num("fps", 1000.0 / med)
            .num("mpix_s", static_cast<double>(d.c.outH) * d.c.outW / 1e6 / (med / 1e3))
            .num("encoder_ms", st.encoderMs)
            .num("convolution_ms", st.convolutionMs)
            .nums("convolution_call_ms", std::vector<double>(st.convolutionCallMs.begin(), st.convolutionCallMs.end()))
            .num("attention_ms", st.attentionMs)
            .num("stage_total_ms", st.totalMs)
            .num("engine_MB", engineBytes / kMB)
            .num("device_used_delta_MB", (usedAfter - usedBeforeEngine) / kMB)
            .num("io_MB", d.ioMB)
            .num("rel_l2_vs_fp32", cmp.relL2)
            .num("max_abs_vs_fp32", cmp.maxAbs)
            .integer("nonfinite", cmp.nonFinite)
            .integer("reps", static_cast<long long>(times.size()))
            .integer("warmup", warm < opt.warmup ? warm + 1 : warm)
            .nums("times_ms", times)
            .str("conv_path_note", engine.convolutionPathNote())
            .str("attention", opt.attention)
            .str("attention_used", attentionName(engine.lastAttentionKernel()))
            .str("nhwc_tail", opt.nhwcTail)
            .integer("nhwc_tail_used", engine.lastUsedNhwcTail() ? 1 : 0)
            .str("shape", std::to_string(d.c.channels) + "x" + std::to_string(d.c.lowH) + "x" +
                              std::to_string(d.c.lowW) + " -> " + std::to_string(d.c.outH) + "x" +
                              std::to_string(d.c.outW) + " (image " + std::to_string(d.c.imageH) + "x" +
                              std::to_string(d.c.imageW) + ")");
        results.push_back({j, mode});
        return cmp.nonFinite == 0;
    }
    catch (const std::exception& e)
    {
        j.str("error", e.what()).print();
        return false;
    }
}

/// One engine (path) of one config, all modes. Returns false when any line was an error.
bool runPath(ConfigData& d, const std::string& pathReq, const Options& opt, const K::testing::RandomNafWeights& w,
             const std::string& device)
{
    bool ok = true;
    try
    {
        d.ref.clear();
        const double usedBefore = deviceUsedBytes();
        KC::Engine engine(w.cfg, w.view, parsePath(pathReq));
        const std::string convPath = pathName(engine.convolutionPath());
        const KC::AttentionKernel requested =
            opt.attention == "default" ? engine.attentionKernel() : parseAttention(opt.attention);
        const bool nhwcTail = opt.nhwcTail == "default" ? engine.nhwcTail() : opt.nhwcTail == "on";
        // The reference of every line: one untimed FP32 forward with the fp32 tiled attention.
        if (opt.reference)
        {
            engine.setAttentionKernel(KC::AttentionKernel::Tiled);
            engine.setNhwcTail(false);
            d.poisonOutput();
            engine.forwardDevice(d.dImage.get(), d.dFeatures.get(), d.dOut.get(), d.shape, KC::MathMode::FP32);
            d.download(d.ref);
        }
        engine.setAttentionKernel(requested);
        engine.setNhwcTail(nhwcTail);
        std::vector<ModeResult> results;
        for (const auto& m : opt.modes)
            ok = runMode(engine, d, pathReq, m, opt, device, usedBefore, convPath, results) && ok;
        // Host round trips last: Engine::forward allocates device staging buffers for the host
        // tensors (an output's worth), which must not count in the memory of the modes above.
        for (auto& r : results)
        {
            try
            {
                // The output's host copy (pinned staging, GPU item 30) on 8 threads, as the module
                // runs it on OpenCV's, then on the calling thread alone.
                std::vector<double> rt, rtOneThread;
                for (int i = 0; i < opt.roundtripReps; ++i)
                {
                    engine.setHostParallelFor(K::threadParallelFor(8));
                    double t0 = nowMs();
                    engine.forward(d.image.data(), d.features.data(), d.out.data(), d.shape, r.mode);
                    rt.push_back(nowMs() - t0);
                    engine.setHostParallelFor(K::ParallelFor());
                    t0 = nowMs();
                    engine.forward(d.image.data(), d.features.data(), d.out.data(), d.shape, r.mode);
                    rtOneThread.push_back(nowMs() - t0);
                }
                r.line.num("host_roundtrip_ms", median(rt)).num("host_roundtrip_1thread_ms", median(rtOneThread));
                if (!rt.empty())
                    r.line.num("engine_MB_after_roundtrip", static_cast<double>(engine.deviceBytes()) / kMB);
            }
            catch (const std::exception& e)
            {
                r.line.num("host_roundtrip_ms", std::numeric_limits<double>::quiet_NaN())
                    .str("host_roundtrip_error", e.what());
                ok = false;
            }
            r.line.print();
        }
    }
    catch (const std::exception& e)
    {
        baseLine(d.c, device).str("path", pathReq).str("error", e.what()).print();
        ok = false;
    }
    d.ref.clear();
    d.ref.shrink_to_fit();
    return ok;
}

}  // namespace

int main(int argc, char** argv)
{
    Options opt;
    try
    {
        opt = parseArgs(argc, argv);
    }
    catch (const std::exception& e)
    {
        JsonLine().str("error", e.what()).str("usage", kUsage).print();
        return 1;
    }

    std::string device;
    try
    {
        device = KC::deviceDescription();
    }
    catch (const std::exception& e)
    {
        device = std::string("deviceDescription failed: ") + e.what();
    }
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count <= 0)
    {
        (void)cudaGetLastError();
        JsonLine()
            .str("error", err != cudaSuccess ? std::string("no usable CUDA device: ") + cudaGetErrorString(err)
                                             : std::string("no CUDA device found"))
            .str("device", device)
            .boolean("compiled", KC::compiled())
            .print();
        return 1;
    }

    bool ok = true;
    try
    {
        const K::testing::RandomNafWeights w(0);
        for (const auto& name : opt.configs)
        {
            const BenchConfig* c = nullptr;
            for (const auto& k : kConfigs)
                if (name == k.name) c = &k;
            try
            {
                ConfigData d(*c);
                for (const auto& p : opt.paths) ok = runPath(d, p, opt, w, device) && ok;
            }
            catch (const std::exception& e)
            {
                baseLine(*c, device).str("error", e.what()).print();
                ok = false;
            }
        }
    }
    catch (const std::exception& e)
    {
        JsonLine().str("error", e.what()).str("device", device).print();
        ok = false;
    }
    return ok ? 0 : 1;
}
