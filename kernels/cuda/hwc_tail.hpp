// The channels-last (NHWC) tail of an encoder branch on the CUDA path (Engine::setNhwcTail):
// the last GroupNorm+SiLU writes its activation reflect-padded and pixel-major, cuDNN runs the
// branch's last convolution on NHWC tensors (so it stages no layout transforms around it), and
// RoPE reads that convolution's pixel-major output straight into the queries.
//
// The per-element index arithmetic lives here as host/device functions: the CUDA kernels
// (encoder_kernels.cu) use them, and the CPU test (kernels/tests/test_kernels.cpp) checks them
// against the CPU path's reflect padding and RoPE on every build, GPU or not.
#pragma once

#include <cstddef>

#if defined(__CUDACC__)
#define NAF_HWC_HD __host__ __device__
#else
#define NAF_HWC_HD
#endif

namespace naf {
namespace kernels {
namespace hwc {

/// Reflect padding of index i into [0, n), for i in [-(n - 1), 2n - 2].
NAF_HWC_HD inline int reflect(int i, int n)
{
    return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i);
}

/// Offset, in the channel-major [c][h][w] source, of channel ch at padded pixel (yp, xp) of a
/// padding of `pad` on every side.
NAF_HWC_HD inline size_t paddedSourceOffset(int ch, int yp, int xp, int h, int w, int pad)
{
    return (static_cast<size_t>(ch) * h + reflect(yp - pad, h)) * w + reflect(xp - pad, w);
}

/// Offset of channel ch at padded pixel (yp, xp) in the pixel-major padded destination
/// [h + 2 pad][w + 2 pad][c] (cuDNN's NHWC, batch 1).
NAF_HWC_HD inline size_t paddedHwcOffset(int yp, int xp, int ch, int w, int pad, int c)
{
    return (static_cast<size_t>(yp) * (w + 2 * pad) + xp) * c + ch;
}

/// How RoPE rotates channel c of a branch (the branch's channels start at a multiple of
/// headDim): c pairs with `partner` (c +- headDim/2 within its head); the pair's angle index
/// `angle` counts into the row table (fromRow: angle < headDim/4, the row coordinate) or into
/// the column table (the column coordinate, angle - headDim/4).
struct RopeChannel
{
    int partner;
    int angle;      ///< index into its table's row of headDim/4 (cos, sin) pairs
    bool fromRow;
    float sign;     ///< -1 for the low half (lo cos - hi sin), +1 for the high half (hi cos + lo sin)
};

NAF_HWC_HD inline RopeChannel ropeChannel(int c, int headDim)
{
    const int half = headDim / 2, quarter = headDim / 4;
    const int j = c % headDim;
    const bool low = j < half;
    const int a = low ? j : j - half;
    RopeChannel r;
    r.partner = low ? c + half : c - half;
    r.fromRow = a < quarter;
    r.angle = r.fromRow ? a : a - quarter;
    r.sign = low ? -1.f : 1.f;
    return r;
}

/// The rotated value of a channel from its own value and its partner's (both with the bias).
NAF_HWC_HD inline float ropeValue(float mine, float partner, float cosine, float sine, float sign)
{
    return mine * cosine + sign * partner * sine;
}

}  // namespace hwc
}  // namespace kernels
}  // namespace naf
