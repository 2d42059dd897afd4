// Runtime choice between AVX-512 / AVX2+FMA builds of a hot loop and a portable one, so the library
// runs on any x86-64 (and other) CPU without -march flags.
#pragma once

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#define NAF_X86_SIMD 1  // x86 intrinsics usable inside NAF_TARGET_* functions
#define NAF_ALWAYS_INLINE __attribute__((always_inline))
#define NAF_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define NAF_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
namespace naf {
namespace kernels {
// NAF_CPU_ISA=avx2 or =generic caps the choice below the CPU's best, so that an AVX-512 machine
// can test the other builds of every kernel (the kernels' ctest runs them all); unset or any
// other value: the best the CPU has. Read once.
inline int cpuIsaCap()
{
    static const int cap = [] {
        const char* value = std::getenv("NAF_CPU_ISA");
        if (value && std::strcmp(value, "generic") == 0) return 0;
        if (value && std::strcmp(value, "avx2") == 0) return 1;
        return 2;
    }();
    return cap;
}
inline bool cpuHasAvx2Fma()
{
    static const bool has = cpuIsaCap() >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return has;
}
inline bool cpuHasAvx512f()
{
    static const bool has = cpuIsaCap() >= 2 && cpuHasAvx2Fma() && __builtin_cpu_supports("avx512f");
    return has;
}
// Orders this thread's earlier non-temporal stores before its later stores (end of a task).
inline void storeFence() { _mm_sfence(); }
// Asks for the line of p with the intent to write it (prefetchw), so that a later partial store
// to it does not wait for the read for ownership. Volatile asm: GCC 12 dropped
// __builtin_prefetch calls behind alignment tests altogether, and without -mprfchw it emits a
// read prefetch. CPUs without PREFETCHW execute it as a no-op.
inline void prefetchLineForWrite(const float* p) { asm volatile("prefetchw %0" ::"m"(*reinterpret_cast<const char*>(p))); }
// dst[0, n) = src[0, n): the whole 64-byte lines of dst with non-temporal stores (they skip reading
// a line that is only written), a partial line at either end with ordinary stores, so a run that
// shares its end lines with a neighbour's is safe. The caller calls storeFence() before its task
// ends. For outputs that no later step of the same pass reads. StoreLine(d, s) writes the 16
// floats at s to the aligned line d with the ISA's non-temporal stores.
template <class StoreLine>
NAF_ALWAYS_INLINE inline void streamCopyLines(float* dst, const float* src, size_t n, StoreLine storeLine)
{
    const size_t toLine = ((64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63) / sizeof(float);
    const size_t head = toLine < n ? toLine : n;
    const size_t end = head + (n - head) / 16 * 16;
    if (head) std::memcpy(dst, src, sizeof(float) * head);
    for (size_t x = head; x < end; x += 16) storeLine(dst + x, src + x);
    if (end < n) std::memcpy(dst + end, src + end, sizeof(float) * (n - end));
}
// The line stores; not always_inline (their targets differ from streamCopyLines'): inlined into
// the streamCopy function of their ISA once streamCopyLines is.
struct StreamLineAvx512
{
    NAF_TARGET_AVX512 void operator()(float* d, const float* s) const { _mm512_stream_ps(d, _mm512_loadu_ps(s)); }
};
// Two 32-byte stores back to back, so the write-combining buffer sends out a full line.
struct StreamLineAvx2
{
    NAF_TARGET_AVX2 void operator()(float* d, const float* s) const
    {
        _mm256_stream_ps(d, _mm256_loadu_ps(s));
        _mm256_stream_ps(d + 8, _mm256_loadu_ps(s + 8));
    }
};
inline NAF_TARGET_AVX512 void streamCopyAvx512(float* dst, const float* src, size_t n)
{
    streamCopyLines(dst, src, n, StreamLineAvx512());
}
inline NAF_TARGET_AVX2 void streamCopyAvx2(float* dst, const float* src, size_t n)
{
    streamCopyLines(dst, src, n, StreamLineAvx2());
}
}  // namespace kernels
}  // namespace naf
#else
#include <cstring>
#define NAF_ALWAYS_INLINE
#define NAF_TARGET_AVX2
#define NAF_TARGET_AVX512
namespace naf {
namespace kernels {
inline bool cpuHasAvx2Fma() { return false; }
inline bool cpuHasAvx512f() { return false; }
inline void storeFence() {}
inline void prefetchLineForWrite(const float* p) { __builtin_prefetch(p, 1, 3); }
inline void streamCopyAvx512(float* dst, const float* src, size_t n) { std::memcpy(dst, src, sizeof(float) * n); }
inline void streamCopyAvx2(float* dst, const float* src, size_t n) { std::memcpy(dst, src, sizeof(float) * n); }
}  // namespace kernels
}  // namespace naf
#endif
