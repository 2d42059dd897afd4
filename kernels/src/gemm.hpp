// The register-blocked GEMM of the CPU convolutions (kernels/src/encoder.cpp), shared with the
// matrix products of the VFM layers (kernels/src/dnn_ops.cpp).
#pragma once

#include <cstddef>
#include <vector>

#include "naf_kernels/naf_kernels.hpp"

namespace naf {
namespace kernels {
namespace detail {

enum class GemmIsa
{
    Generic,
    Avx2,
    Avx512
};

/// The best the CPU has (NAF_CPU_ISA caps it).
GemmIsa gemmIsa();
/// Rows of the micro-kernel's register block (the `mr` of packWeights): 8 for AVX-512, else 4.
int gemmRows(GemmIsa isa);

/// conv.weight [cout][K] packed per block of mr rows as [K][mr] (rows past cout are zero), so the
/// micro-kernel broadcasts mr consecutive floats per k.
std::vector<float> packWeights(const ConvWeights& conv, int K, int mr);

/// out[co * ldo + j] = bias[co] + sum_k W[co, k] * base[off[k] + j] for co < conv.cout, j < np, W
/// packed by packWeights with gemmRows(isa) rows (conv.weight itself is not read; conv.bias may be
/// null). Each value is one FMA chain over k in order, then the bias: the same bits for any tiling.
void gemmTile(GemmIsa isa, const float* packed, const ConvWeights& conv, int K, const float* base,
              const ptrdiff_t* off, int np, float* out, size_t ldo);

}  // namespace detail
}  // namespace kernels
}  // namespace naf
