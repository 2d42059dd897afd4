// The kernels' ParallelFor on OpenCV's thread pool (cv::setNumThreads() controls it).
#pragma once

#include <opencv2/core/utility.hpp>

#include "naf_kernels/naf_kernels.hpp"

namespace cv {
namespace naf {
namespace detail {

inline ::naf::kernels::ParallelFor opencvParallelFor()
{
    return [](int64_t count, const std::function<void(int64_t, int64_t)>& body) {
        if (count <= 0) return;
        // Kernels give each unit item a fixed amount of work, so any split is deterministic.
        parallel_for_(Range(0, static_cast<int>(count)), [&](const Range& r) { body(r.start, r.end); });
    };
}

}  // namespace detail
}  // namespace naf
}  // namespace cv
