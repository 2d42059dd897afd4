// Runtime choice between AVX-512 / AVX2+FMA builds of a hot loop and a portable one, so the library
// runs on any x86-64 (and other) CPU without -march flags.
#pragma once

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define NAF_X86_SIMD 1  // x86 intrinsics usable inside NAF_TARGET_* functions
#define NAF_ALWAYS_INLINE __attribute__((always_inline))
#define NAF_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define NAF_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
namespace naf {
namespace kernels {
inline bool cpuHasAvx2Fma()
{
    static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return has;
}
inline bool cpuHasAvx512f()
{
    static const bool has = cpuHasAvx2Fma() && __builtin_cpu_supports("avx512f");
    return has;
}
// Orders this thread's earlier non-temporal stores before its later stores (end of a task).
inline void storeFence() { _mm_sfence(); }
}  // namespace kernels
}  // namespace naf
#else
#define NAF_ALWAYS_INLINE
#define NAF_TARGET_AVX2
#define NAF_TARGET_AVX512
namespace naf {
namespace kernels {
inline bool cpuHasAvx2Fma() { return false; }
inline bool cpuHasAvx512f() { return false; }
inline void storeFence() {}
}  // namespace kernels
}  // namespace naf
#endif
