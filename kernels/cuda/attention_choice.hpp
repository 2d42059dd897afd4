// AttentionKernel::Auto's and AttentionKernel::Measured's choices, free of CUDA so that the CPU
// tests check them (kernels/tests/test_kernels.cpp).
#pragma once

#include <cstddef>
#include <vector>

#include "naf_kernels/naf_cuda.hpp"

namespace naf {
namespace kernels {
namespace cuda {
namespace detail {

/// One timed candidate: the kernel that ran and its time.
struct TimedAttention
{
    AttentionKernel kernel;
    float ms;
};

/// Whether a kernel gives Tiled's bits (TiledChunked does; the cell kernels sum in another order).
inline bool sameBitsAsTiled(AttentionKernel k)
{
    return k == AttentionKernel::Tiled || k == AttentionKernel::TiledChunked;
}

/// The fastest of `timed` (non-empty), except that a kernel whose bits differ from Tiled's must
/// beat the fastest of the Tiled family by more than `margin` (a fraction) to be kept: near-ties
/// then fall the same way in every process, so one input gives the same output across runs
/// unless a cell kernel is clearly faster. The first of equal times wins.
inline AttentionKernel chooseMeasuredAttention(const std::vector<TimedAttention>& timed, float margin = 0.03f)
{
    const TimedAttention* best = nullptr;
    const TimedAttention* bestTiled = nullptr;
    for (const TimedAttention& t : timed)
    {
        if (!best || t.ms < best->ms) best = &t;
        if (sameBitsAsTiled(t.kernel) && (!bestTiled || t.ms < bestTiled->ms)) bestTiled = &t;
    }
    if (!best) return AttentionKernel::Tiled;
    if (bestTiled && !sameBitsAsTiled(best->kernel) && best->ms * (1.f + margin) >= bestTiled->ms)
        return bestTiled->kernel;
    return best->kernel;
}

/// AttentionKernel::Auto's kernel at one size. The tensor-core cell kernel wherever the cell work
/// list is worthwhile and it runs on the device (`tensorCoreCellRuns`: compute capability 8.0 or
/// newer, head dim 32/64, its shared memory within the limit): on an H100 it took the attention
/// 2.2-2.4x faster than Tiled at paper, x32, mobilesam and x72 and 2x faster than the FMA cell
/// kernel at dinov2, with float32 accuracy (GPU log item 31). Where it does not run, the FMA cell
/// kernel where the tiled one fits at most one block per SM (item 19b; `tiledBlocksPerSm` is asked
/// only then), else Tiled (the launchers fall back to Tiled, then General, where a kernel does
/// not fit).
template <typename TiledBlocksPerSm>
inline AttentionKernel chooseAutoAttention(bool cellWorthwhile, bool tensorCoreCellRuns,
                                           TiledBlocksPerSm&& tiledBlocksPerSm)
{
    if (!cellWorthwhile) return AttentionKernel::Tiled;
    if (tensorCoreCellRuns) return AttentionKernel::CellTensorCore;
    return tiledBlocksPerSm() <= 1 ? AttentionKernel::Cell : AttentionKernel::Tiled;
}

}  // namespace detail
}  // namespace cuda
}  // namespace kernels
}  // namespace naf
