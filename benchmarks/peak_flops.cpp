// The floor: this machine's peak fp32 FMA throughput, measured with independent FMA chains
// (enough accumulators to hide the FMA latency), for AVX2 (8 lanes) and AVX-512 (16 lanes).
#include <benchmark/benchmark.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))

namespace {

constexpr int kInnerLoops = 1 << 14;
constexpr int kChains = 12;  // independent accumulators: more than FMA latency x FMA pipes

// One always-inline body, compiled once per instruction set by the wrappers below; V is a GCC
// vector of 8 (ymm) or 16 (zmm) floats.
template <typename V>
__attribute__((always_inline)) inline float fmaChains(int loops, float seed)
{
    V acc[kChains];
    for (int i = 0; i < kChains; ++i)
        for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(float)); ++l) acc[i][l] = seed * static_cast<float>(i);
    const float a = 1.f - seed * 1e-4f, b = seed * 1e-5f;
    for (int l = 0; l < loops; ++l)
        for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * a + b;  // contracted to one FMA
    float s = 0;
    for (int i = 0; i < kChains; ++i) s += acc[i][0];
    return s;
}

typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec16 __attribute__((vector_size(64)));

__attribute__((target("avx2,fma"))) float fmaChainsAvx2(int loops, float seed) { return fmaChains<Vec8>(loops, seed); }

__attribute__((target("avx512f"))) float fmaChainsAvx512(int loops, float seed)
{
    return fmaChains<Vec16>(loops, seed);
}

template <int Lanes>
void BM_PeakFma(benchmark::State& state)
{
    if ((Lanes == 8 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) ||
        (Lanes == 16 && !__builtin_cpu_supports("avx512f")))
    {
        state.SkipWithError("instruction set not supported by this CPU");
        return;
    }
    // The seed is opaque to the compiler, so the chains cannot be folded at compile time.
    float seed = 0.01f;
    for (auto _ : state)
    {
        benchmark::DoNotOptimize(seed);  // inside the loop: the call cannot be hoisted either
        benchmark::DoNotOptimize(Lanes == 8 ? fmaChainsAvx2(kInnerLoops, seed) : fmaChainsAvx512(kInnerLoops, seed));
    }
    // Each FMA is 2 FLOPs per lane; counters are summed over threads.
    state.counters["FLOPS"] = benchmark::Counter(2.0 * Lanes * kChains * kInnerLoops * state.iterations(),
                                                 benchmark::Counter::kIsRate);
}

}  // namespace

// One thread, rate per CPU second (robust when other jobs share the cores: the per-core peak);
// two threads, rate per wall second (what both cores give together right now).
BENCHMARK_TEMPLATE(BM_PeakFma, 8)->Name("BM_PeakFma/avx2")->Threads(1);
BENCHMARK_TEMPLATE(BM_PeakFma, 8)->Name("BM_PeakFma/avx2")->Threads(2)->UseRealTime();
BENCHMARK_TEMPLATE(BM_PeakFma, 16)->Name("BM_PeakFma/avx512")->Threads(1);
BENCHMARK_TEMPLATE(BM_PeakFma, 16)->Name("BM_PeakFma/avx512")->Threads(2)->UseRealTime();
#endif
