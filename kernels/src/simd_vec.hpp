// Float vectors (GCC vector extensions) for the hot loops; functions are always inlined into the
// per-ISA wrappers (simd_dispatch.hpp). A loop that keeps vectors in registers must use the ISA's
// native width: Vec16 (one zmm) in AVX-512 functions, Vec8 (ymm) in AVX2 ones, Vec4 (xmm)
// otherwise. GCC lowers a wider vector to memory, not to register pairs: with Vec16 everywhere the
// AVX2 forward took 13x the AVX-512 one (PERFORMANCE item 47).
#pragma once

#include <cstring>

#include "simd_dispatch.hpp"

namespace naf {
namespace kernels {

typedef float Vec16 __attribute__((vector_size(64)));
typedef int Vec16i __attribute__((vector_size(64)));
// The native widths of AVX2 and of the x86-64 baseline, for loops that keep many vectors in
// registers: GCC keeps a Vec16 in memory in functions without AVX-512.
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec4 __attribute__((vector_size(16)));

// Unaligned load/store (memcpy compiles to one vmovups).
NAF_ALWAYS_INLINE inline void loadVec16(Vec16& v, const float* p) { std::memcpy(&v, p, sizeof v); }
NAF_ALWAYS_INLINE inline void storeVec16(float* p, const Vec16& v) { std::memcpy(p, &v, sizeof v); }

#if NAF_X86_SIMD
// Lanes 0..n-1 (n < 16) from or to memory with one masked instruction; loaded lanes n..15 are
// zero. Not always_inline: GCC refuses to inline an AVX-512 function into a template body without
// the target; a caller marked flatten (attentionRowsAvx512) inlines them once the body is its own.
NAF_TARGET_AVX512 inline void loadPartialAvx512(Vec16& v, const float* p, int n)
{
    v = reinterpret_cast<Vec16>(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p));
}
NAF_TARGET_AVX512 inline void storePartialAvx512(float* p, const Vec16& v, int n)
{
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), reinterpret_cast<__m512>(v));
}
// One whole 64-byte line at p (aligned) with a non-temporal store; the caller fences.
NAF_TARGET_AVX512 inline void streamLineAvx512(float* p, const Vec16& v)
{
    _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
}
// The same from the two 8-lane halves of a line (AVX2), stored back to back so that the
// write-combining buffer sends out a full line.
NAF_TARGET_AVX2 inline void streamLineAvx2(float* p, const Vec8& low, const Vec8& high)
{
    _mm256_stream_ps(p, reinterpret_cast<__m256>(low));
    _mm256_stream_ps(p + 8, reinterpret_cast<__m256>(high));
}
#endif

// The integer vector of the same lane count, for expVec.
template <class V>
struct IntVecOf;
template <>
struct IntVecOf<Vec16>
{
    typedef Vec16i type;
};
template <>
struct IntVecOf<Vec8>
{
    typedef int type __attribute__((vector_size(32)));
};
template <>
struct IntVecOf<Vec4>
{
    typedef int type __attribute__((vector_size(16)));
};

// exp on the lanes of V: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, then a
// degree-6 polynomial (Cephes expf coefficients); relative error ~1e-7 (a few float ulps). The
// same operations per lane for every width.
template <class V>
NAF_ALWAYS_INLINE inline void expVec(V& out, V x)
{
    typedef typename IntVecOf<V>::type Vi;
    x = x < 88.3762626647949f ? x : V{} + 88.3762626647949f;
    x = x > -87.3365447504f ? x : V{} - 87.3365447504f;
    const V t = x * 1.44269504088896341f + 0.5f;
    Vi n = __builtin_convertvector(t, Vi);                       // truncation
    n -= (__builtin_convertvector(n, V) > t) ? Vi{} + 1 : Vi{};  // -> floor
    const V nf = __builtin_convertvector(n, V);
    const V r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    V poly = r * 1.9875691500E-4f + 1.3981999507E-3f;
    poly = poly * r + 8.3334519073E-3f;
    poly = poly * r + 4.1665795894E-2f;
    poly = poly * r + 1.6666665459E-1f;
    poly = poly * r + 5.0000001201E-1f;
    poly = poly * (r * r) + r + 1.f;
    Vi bits = (n + 127) << 23;
    V scale;
    std::memcpy(&scale, &bits, sizeof scale);
    out = poly * scale;
}

}  // namespace kernels
}  // namespace naf
