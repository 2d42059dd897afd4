// Shared by the app tests: which VFM they run, and whether it is usable here.
#pragma once

#include <cstdlib>
#include <string>

#include <opencv2/core/utils/filesystem.hpp>
#include <opencv2/naf/vfm.hpp>

namespace app_test {

/// The registry model the tests run: $NAF_APP_TEST_VFM, default mobilesam.
inline std::string vfmName()
{
    const char* env = std::getenv("NAF_APP_TEST_VFM");
    return env && *env ? env : "mobilesam";
}

/// Empty when the VFM can run; else why not (for a clean skip).
inline std::string vfmUnavailableReason()
{
    try
    {
        const cv::naf::VfmSpec spec = cv::naf::VfmRegistry::find(vfmName());
        if (!spec.onnxPath.empty() && !cv::utils::fs::exists(spec.onnxPath))
            return "model file " + spec.onnxPath + " is absent (get it with: " + spec.fetchCommand + ")";
        return std::string();
    }
    catch (const cv::Exception& e)
    {
        return "VFM '" + vfmName() + "' is not in the registry: " + e.err;
    }
}

inline std::string sampleImage(const char* name) { return std::string(NAF_SAMPLE_DATA_DIR) + "/" + name; }

}  // namespace app_test
