// The schedule of Engine::forward's output copy through two pinned staging buffers, free of CUDA
// so that the CPU tests run it against a simulated device (kernels/tests/test_kernels.cpp).
#pragma once

#include <algorithm>
#include <cstddef>

namespace naf {
namespace kernels {
namespace staged {

/// Copies `bytes` in chunks of `chunk` bytes (the last one may be shorter) through two staging
/// buffers. enqueue(k, buffer, offset, size) starts chunk k's device-to-staging copy into buffer
/// k % 2 and returns at once; drain(k, buffer, offset, size) waits for that copy, then copies the
/// staging buffer out. Chunk k is drained while chunk k + 1 is in flight, and chunk k + 2, which
/// reuses chunk k's buffer, is enqueued only after chunk k was drained.
template <class Enqueue, class Drain>
void copyInChunks(size_t bytes, size_t chunk, Enqueue&& enqueue, Drain&& drain)
{
    if (bytes == 0 || chunk == 0) return;
    const size_t chunks = (bytes + chunk - 1) / chunk;
    auto size = [&](size_t k) { return std::min(chunk, bytes - k * chunk); };
    for (size_t k = 0; k < chunks; ++k)
    {
        enqueue(k, static_cast<int>(k % 2), k * chunk, size(k));
        if (k > 0) drain(k - 1, static_cast<int>((k - 1) % 2), (k - 1) * chunk, size(k - 1));
    }
    drain(chunks - 1, static_cast<int>((chunks - 1) % 2), (chunks - 1) * chunk, size(chunks - 1));
}

}  // namespace staged
}  // namespace kernels
}  // namespace naf
