// Shared set-up of the fuzz targets.
#pragma once

#include <opencv2/core.hpp>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/naf.hpp>

namespace naf_fuzz {

/// Once per process: quiet logs, one thread (libFuzzer measures per-input time), and a small
/// memory budget so that oversized requests are refused quickly instead of computed.
inline void setUpOnce()
{
    static const bool done = [] {
        cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT);
        cv::setNumThreads(1);
        cv::naf::NAF::setMemoryBudget(size_t(16) << 20);
        return true;
    }();
    (void)done;
}

}  // namespace naf_fuzz
