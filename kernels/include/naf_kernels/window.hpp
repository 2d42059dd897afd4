// Neighborhood-window rule of NAF's cross-scale attention, shared by the CPU and CUDA code.
//
// The official NAF forward nearest-exact upsamples keys/values to the output grid and runs
// NATTEN's dilated neighborhood attention there (dilation = out // low per axis). These helpers
// compute, for one output index on one axis, which *low-resolution* index the t-th key of its
// window comes from, so kernels can read keys/values at low resolution and never materialize
// the upsampled copies.
#pragma once

#if defined(__CUDACC__)
#define NAF_HOST_DEVICE __host__ __device__
#else
#define NAF_HOST_DEVICE
#endif

namespace naf {
namespace kernels {

/// PyTorch's `nearest-exact` source index: floor((dst + 0.5) * scale) with scale = in/out in
/// float32 and the product rounded to float32, as ATen computes it (this can differ from the
/// exact rational value at integer boundaries, e.g. dst 12, 50 -> 12 gives 3).
NAF_HOST_DEVICE inline int nearestExactSource(int dst, int dstLen, int srcLen)
{
    const float scale = static_cast<float>(srcLen) / static_cast<float>(dstLen);
    const float pos = (static_cast<float>(dst) + 0.5f) * scale;
    int src = static_cast<int>(pos);  // pos >= 0, so truncation == floor
    return src < srcLen - 1 ? src : srcLen - 1;
}

/// Kernel size actually used along an axis. The official code requires lowLen >= kernel; we
/// extend it: a low-res axis shorter than the kernel is covered whole (window = lowLen keys).
NAF_HOST_DEVICE inline int effectiveKernel(int kernel, int lowLen)
{
    return kernel < lowLen ? kernel : lowLen;
}

/// Dilation between output and low-res grid along an axis (NAF: out // low, at least 1).
NAF_HOST_DEVICE inline int axisDilation(int outLen, int lowLen)
{
    const int d = outLen / lowLen;
    return d > 0 ? d : 1;
}

/// NATTEN's window start for query `i` on an axis of `outLen` positions, window `kernel`
/// (already effective), dilation `d`: the query belongs to dilation group g = i mod d at
/// position c = i div d in a group of ceil((outLen - g) / d) positions; the window is centered
/// on c and shifted inward at the borders (no padding).
NAF_HOST_DEVICE inline int windowStart(int i, int outLen, int kernel, int d)
{
    const int g = i % d;
    const int c = i / d;
    const int groupLen = (outLen - g + d - 1) / d;
    int s = c - kernel / 2;
    if (s > groupLen - kernel) s = groupLen - kernel;
    if (s < 0) s = 0;
    return s;
}

/// Low-res index of the t-th key (t in [0, kernel)) in the window of output index `i`.
/// `kernel` must be the effective kernel for (kernelSize, lowLen).
NAF_HOST_DEVICE inline int neighborLowIndex(int i, int t, int outLen, int lowLen, int kernel)
{
    const int d = axisDilation(outLen, lowLen);
    const int s = windowStart(i, outLen, kernel, d);
    const int upsampledPos = i % d + d * (s + t);
    return nearestExactSource(upsampledPos, outLen, lowLen);
}

}  // namespace kernels
}  // namespace naf
