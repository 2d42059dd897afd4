// naf_upsample_cached: upsamples the cached low-resolution features ("features_lo") of feature
// cache files to the grid of their "features_hi" with one cv::naf::UpsampleMethod, so that the
// evaluation (tools/eval_naf.py) compares every method on exactly the same inputs.
// Writes OUT_DIR/<same file name> with the tensor "upsampled" (F32 [1, C, h, w]); the guide for
// the guided methods and NAF is the cached full-resolution image.
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <opencv2/naf.hpp>
#include <opencv2/naf/visualize.hpp>

#include "feature_cache.hpp"

namespace {

int usage(const char* argv0)
{
    std::cerr << "usage: " << argv0
              << " --method nearest|bilinear|bicubic|guided|bilateral|naf [--weights FILE.safetensors]\n"
                 "       [--threads N] --out DIR CACHE.safetensors...\n";
    return 2;
}

std::string baseName(const std::string& path)
{
    const size_t slash = path.find_last_of("/\\");
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

int main(int argc, char** argv)
{
    std::string method, weights, out;
    int threads = -1;
    std::vector<std::string> files;
    for (int i = 1; i < argc; ++i)
    {
        const std::string a = argv[i];
        if ((a == "--method" || a == "--weights" || a == "--out" || a == "--threads") && i + 1 >= argc) return usage(argv[0]);
        if (a == "--method") method = argv[++i];
        else if (a == "--weights") weights = argv[++i];
        else if (a == "--out") out = argv[++i];
        else if (a == "--threads") threads = std::atoi(argv[++i]);
        else if (!a.empty() && a[0] == '-') return usage(argv[0]);
        else files.push_back(a);
    }
    if (method.empty() || out.empty() || files.empty()) return usage(argv[0]);
    try
    {
        if (threads > 0) cv::setNumThreads(threads);
        const int m = cv::naf::upsampleMethodFromName(method);
        if (!weights.empty() && m != cv::naf::UPSAMPLE_NAF)
            CV_Error(cv::Error::StsBadArg, "--weights only applies to --method naf, got --method " + method);
        cv::Ptr<cv::naf::NAF> naf;
        if (m == cv::naf::UPSAMPLE_NAF)
        {
            naf = cv::naf::NAF::create(weights);  // "" = the default weights
            std::cerr << "naf_upsample_cached: " << naf->getWeightsInfo() << "\n";
        }
        std::filesystem::create_directories(out);
        for (const std::string& path : files)
        {
            const naf_tools::CacheEntry e = naf_tools::readCacheEntry(path);
            const cv::Size target(e.featuresHi.size[3], e.featuresHi.size[2]);
            cv::Mat up;
            cv::naf::upsampleWith(m, e.image, e.featuresLo, up, target, naf);
            naf_tools::writeSafetensors((std::filesystem::path(out) / baseName(path)).string(), {{"upsampled", up}},
                                        {{"method", method}, {"weights", weights}, {"source", path}});
        }
        return 0;
    }
    catch (const std::exception& e)
    {
        std::cerr << "naf_upsample_cached: " << e.what() << "\n";
        return 1;
    }
}
