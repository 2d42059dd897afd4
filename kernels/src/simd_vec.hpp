// 16-lane float vectors (GCC vector extensions) for the hot loops. The same source becomes one
// zmm register in an AVX-512 function, two ymm in an AVX2 function and four xmm otherwise (see
// simd_dispatch.hpp); functions are always inlined into those per-ISA wrappers.
#pragma once

#include <cstring>

#include "simd_dispatch.hpp"

namespace naf {
namespace kernels {

typedef float Vec16 __attribute__((vector_size(64)));
typedef int Vec16i __attribute__((vector_size(64)));

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
#endif

// exp on 16 lanes: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6
// polynomial (Cephes expf coefficients); relative error ~1e-7 (a few float ulps).
NAF_ALWAYS_INLINE inline void expVec16(Vec16& out, Vec16 x)
{
    x = x < 88.3762626647949f ? x : Vec16{} + 88.3762626647949f;
    x = x > -87.3365447504f ? x : Vec16{} - 87.3365447504f;
    const Vec16 t = x * 1.44269504088896341f + 0.5f;
    Vec16i n = __builtin_convertvector(t, Vec16i);                           // truncation
    n -= (__builtin_convertvector(n, Vec16) > t) ? Vec16i{} + 1 : Vec16i{};  // -> floor
    const Vec16 nf = __builtin_convertvector(n, Vec16);
    const Vec16 r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    Vec16 poly = r * 1.9875691500E-4f + 1.3981999507E-3f;
    poly = poly * r + 8.3334519073E-3f;
    poly = poly * r + 4.1665795894E-2f;
    poly = poly * r + 1.6666665459E-1f;
    poly = poly * r + 5.0000001201E-1f;
    poly = poly * (r * r) + r + 1.f;
    Vec16i bits = (n + 127) << 23;
    Vec16 scale;
    std::memcpy(&scale, &bits, sizeof scale);
    out = poly * scale;
}

}  // namespace kernels
}  // namespace naf
