// The message of a failed device allocation, free of CUDA so that the CPU tests check it
// (kernels/tests/test_kernels.cpp).
#pragma once

#include <cstddef>
#include <string>

namespace naf {
namespace kernels {
namespace cuda {
namespace detail {

/// "naf::kernels::cuda: <what> failed: it needs N MiB of device memory and M of T MiB are free
/// ...": what a caller needs to choose a smaller request or the CPU path. totalBytes == 0: the
/// free memory is unknown and left out.
inline std::string outOfDeviceMemoryMessage(const char* what, size_t requestedBytes, size_t freeBytes,
                                            size_t totalBytes)
{
    constexpr size_t kMiB = size_t(1) << 20;
    std::string message = std::string("naf::kernels::cuda: ") + what + " failed: it needs " +
                          std::to_string((requestedBytes + kMiB - 1) / kMiB) + " MiB of device memory";
    if (totalBytes > 0)
        message += " and " + std::to_string(freeBytes / kMiB) + " of " + std::to_string(totalBytes / kMiB) +
                   " MiB are free";
    return message + " (out of memory; a smaller output or the CPU path needs less)";
}

}  // namespace detail
}  // namespace cuda
}  // namespace kernels
}  // namespace naf
