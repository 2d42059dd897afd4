// Elementwise and row-wise operations of vision-foundation-model graphs, for the cv::dnn custom
// layers that the VFM conversion puts in place of slow cv::dnn 4.6 layer chains
// (modules/naf/src/dnn_ops_layers.cpp, tools/vfm/onnx_for_opencv46.py --naf-layers).
#pragma once

#include <cstddef>

#include "naf_kernels/naf_kernels.hpp"

namespace naf {
namespace kernels {

/// GELU's tanh form written as a sigmoid: dst[i] = x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)),
/// x = src[i], which equals 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Relative error of a
/// few float ulps against the same formula in double (the exponential's polynomial); a NaN input
/// gives NaN. src == dst is allowed. Every element gets the same bits whatever the split of the
/// work.
void geluTanh(const float* src, float* dst, size_t count, const ParallelFor& parallel);

/// Softmax over each of `rows` contiguous rows of `cols` values: dst = exp(x - max) / sum, the
/// max and the sum over the row; a row holding a NaN gives NaN everywhere. src == dst is allowed.
/// Throws std::invalid_argument for cols == 0.
void softmaxRows(const float* src, float* dst, size_t rows, size_t cols, const ParallelFor& parallel);

/// LayerNorm over each of `rows` contiguous rows of `cols` values: (x - mean) / sqrt(var + eps),
/// mean and (biased) variance of the row accumulated in double, then times gamma[c] plus beta[c]
/// when they are given (both or neither). src == dst is allowed. Throws std::invalid_argument for
/// cols == 0, eps < 0 or only one of gamma and beta.
void layerNormRows(const float* src, float* dst, size_t rows, size_t cols, const float* gamma, const float* beta,
                   float eps, const ParallelFor& parallel);

/// Sizes of matmul(): `batch` independent products C = A B, A [M][K], B [K][N], C [M][N], each
/// row-major, the items one after another (A and C always; B too unless sharedB).
struct MatMulShape
{
    size_t batch = 1;
    int M = 0, K = 0, N = 0;
    bool sharedB = false;  ///< one B for every item (a layer's weights)
    /// B has K + 1 rows, the last a bias added to every row of C (as if A had a column of ones)
    bool biasRow = false;
};

/// C = A B (+ bias) on the convolutions' register-blocked GEMM: A's rows are packed per task, B
/// is read in place. Each C value is one FMA chain over k in order (the bias last), so the split
/// of the work never changes a bit. Throws std::invalid_argument for non-positive sizes or null
/// pointers.
void matmul(const float* a, const float* b, float* c, const MatMulShape& shape, const ParallelFor& parallel);

}  // namespace kernels
}  // namespace naf
