// naf_upsample_cached: upsamples cached VFM features with one cv::naf::UpsampleMethod, so that the
// evaluations compare every method on exactly the same inputs.
//  - default (--input lo): "features_lo" to the grid of "features_hi" (tools/eval_naf.py, metric 1);
//  - --input hi --scale K: "features_hi" to K times its grid (tools/probe_naf.py, metric 2);
//  - --input pooled: "features_hi" averaged over 2 x 2 cells, back to the features_hi grid (the
//    coherent low-res input of docs/TRAINING.md's pooled pairs; tools/eval_naf.py --input pooled).
// Writes OUT_DIR/<same file name> with the tensor "upsampled" (F32 [1, C, h, w]). The guide for
// the guided methods and NAF is the cached full-resolution image, or with --guide-size N that
// image resized to N x N (INTER_AREA), e.g. the output size, as the official probe protocol does.
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>
#if defined(__GLIBC__)  // defined by the C++ headers above
#include <malloc.h>
#endif

#include <opencv2/imgproc.hpp>
#include <opencv2/naf.hpp>
#include <opencv2/naf/visualize.hpp>

#include "feature_cache.hpp"

namespace {

// The usage text: on stdout with status 0 when asked for (--help), else on stderr with status 2.
int usage(const char* argv0, bool asked = false)
{
    (asked ? std::cout : std::cerr) << "usage: " << argv0
              << " --method nearest|bilinear|bicubic|guided|bilateral|naf [--weights FILE.safetensors]\n"
                 "       [--input lo|hi|pooled] [--scale K] [--guide-size N] [--threads N] --out DIR CACHE.safetensors...\n"
                 "  --input lo (default): features_lo -> the features_hi grid; --input hi: features_hi -> K x its grid\n"
                 "  --input pooled: features_hi averaged over 2 x 2 cells -> the features_hi grid\n"
                 "  --scale K: output grid = K x the input grid (default: the features_hi grid for lo, 4 for hi)\n"
                 "  --guide-size N: guide = the cached image resized to N x N (default: the cached image)\n";
    return asked ? 0 : 2;
}

std::string baseName(const std::string& path)
{
    const size_t slash = path.find_last_of("/\\");
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

/// features [1, C, h, w] (F32) averaged over 2 x 2 cells: [1, C, h/2, w/2]; h and w must be even.
cv::Mat pool2x2(const cv::Mat& features, const std::string& path)
{
    const int channels = features.size[1], h = features.size[2], w = features.size[3];
    if (h % 2 != 0 || w % 2 != 0)
        CV_Error(cv::Error::StsBadSize, cv::format("'%s': features_hi is %d x %d, --input pooled needs even sides",
                                                   path.c_str(), h, w));
    const int dims[4] = {1, channels, h / 2, w / 2};
    cv::Mat pooled(4, dims, CV_32F);
    const float* src = features.ptr<float>();
    float* dst = pooled.ptr<float>();
    for (int c = 0; c < channels; ++c)
        for (int y = 0; y < h / 2; ++y)
            for (int x = 0; x < w / 2; ++x)
            {
                const float* p = src + (static_cast<size_t>(c) * h + 2 * y) * w + 2 * x;
                dst[(static_cast<size_t>(c) * (h / 2) + y) * (w / 2) + x] = 0.25f * (p[0] + p[1] + p[w] + p[w + 1]);
            }
    return pooled;
}

}  // namespace

int main(int argc, char** argv)
{
    std::string method, weights, out;
    std::string input = "lo";
    int threads = 0, scale = 0, guideSize = 0;  // 0: option not given, -1: not a whole number >= 1
    std::vector<std::string> files;
    for (int i = 1; i < argc; ++i)
    {
        const std::string a = argv[i];
        const bool takesValue = a == "--method" || a == "--weights" || a == "--out" || a == "--threads" ||
                                a == "--input" || a == "--scale" || a == "--guide-size";
        if (naf_tools::isHelpOption(a)) return usage(argv[0], true);
        if (takesValue && i + 1 >= argc) return usage(argv[0]);
        if (a == "--method") method = argv[++i];
        else if (a == "--weights") weights = argv[++i];
        else if (a == "--out") out = argv[++i];
        else if (a == "--threads") threads = naf_tools::parsePositiveInt(argv[++i]);
        else if (a == "--input") input = argv[++i];
        else if (a == "--scale") scale = naf_tools::parsePositiveInt(argv[++i]);
        else if (a == "--guide-size") guideSize = naf_tools::parsePositiveInt(argv[++i]);
        else if (!a.empty() && a[0] == '-') return usage(argv[0]);
        else files.push_back(a);
    }
    if (method.empty() || out.empty() || files.empty()) return usage(argv[0]);
    if ((input != "lo" && input != "hi" && input != "pooled") || scale < 0 || scale > 64 || guideSize < 0 || guideSize > 16384 || threads < 0)
    {
        std::cerr << "naf_upsample_cached: bad option value (--input " << input << ", --scale " << scale
                  << ", --guide-size " << guideSize << ", --threads " << threads
                  << "; -1: not a whole number >= 1): --input is lo, hi or pooled, 1 <= K <= 64, 1 <= N <= 16384, "
                     "threads >= 1\n";
        return usage(argv[0]);
    }
    // Option errors exit 2 like the others: an unknown method, --weights without naf.
    int m = -1;
    try
    {
        m = cv::naf::upsampleMethodFromName(method);
    }
    catch (const cv::Exception& e)
    {
        std::cerr << "naf_upsample_cached: --method " << method << ": " << e.err << "\n";
        return usage(argv[0]);
    }
    if (!weights.empty() && m != cv::naf::UPSAMPLE_NAF)
    {
        std::cerr << "naf_upsample_cached: --weights only applies to --method naf, got --method " << method << "\n";
        return usage(argv[0]);
    }
    // Each output is OUT_DIR/<the input's file name>: an input inside OUT_DIR would be replaced by
    // its own result, and two inputs with one file name would replace each other's.
    std::map<std::string, std::string> inputOfOutput;
    for (const std::string& path : files)
    {
        const std::string dst = (std::filesystem::path(out) / baseName(path)).string();
        const std::string dstAbsolute = naf_tools::absolutePath(dst);
        if (dstAbsolute == naf_tools::absolutePath(path))
        {
            std::cerr << "naf_upsample_cached: the output for '" << path << "' would be '" << dst
                      << "', the input itself; choose another --out\n";
            return 2;
        }
        const auto added = inputOfOutput.emplace(dstAbsolute, path);
        if (!added.second && naf_tools::absolutePath(added.first->second) != naf_tools::absolutePath(path))
        {
            std::cerr << "naf_upsample_cached: '" << added.first->second << "' and '" << path
                      << "' have the same file name, so both would be written to '" << dst
                      << "'; upsample them into separate --out folders\n";
            return 2;
        }
    }
#if defined(__GLIBC__)
    // Every file allocates and frees ~3 blocks of the output's size (64 MB at 256 x 256 x 256):
    // keep them in the heap instead of mmap/munmap, or each file page-faults them afresh.
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
    try
    {
        if (threads > 0) cv::setNumThreads(threads);
        cv::Ptr<cv::naf::NAF> naf;
        if (m == cv::naf::UPSAMPLE_NAF)
        {
            naf = cv::naf::NAF::create(weights);  // "" = the default weights
            std::cerr << "naf_upsample_cached: " << naf->getWeightsInfo() << "\n";
        }
        std::filesystem::create_directories(out);
        // A bad file (unreadable, no features_lo, a failed write) is reported and the others are
        // still computed; the status is 1 when any failed, and the last line names the first.
        int written = 0, failed = 0;
        std::string firstFailure;
        for (const std::string& path : files)
        {
            const std::string dst = (std::filesystem::path(out) / baseName(path)).string();
            try
            {
                const naf_tools::CacheEntry e = naf_tools::readCacheEntry(path);
                const cv::Mat features = input == "hi"       ? e.featuresHi
                                         : input == "pooled" ? pool2x2(e.featuresHi, path)
                                                             : e.featuresLo;
                if (features.empty())
                    CV_Error(cv::Error::StsBadArg, "'" + path + "' has no features_lo (a --hi-only cache): use --input hi");
                cv::Size target(e.featuresHi.size[3], e.featuresHi.size[2]);
                if (input == "hi" || scale > 0)
                {
                    const int k = scale > 0 ? scale : 4;
                    target = cv::Size(k * features.size[3], k * features.size[2]);
                }
                cv::Mat guide = e.image;
                if (guideSize > 0)
                    cv::resize(e.image, guide, cv::Size(guideSize, guideSize), 0, 0,
                               guideSize < e.image.cols ? cv::INTER_AREA : cv::INTER_LINEAR);
                cv::Mat up;
                cv::naf::upsampleWith(m, guide, features, up, target, naf);
                naf_tools::writeSafetensors(dst, {{"upsampled", up}},
                                            {{"method", method}, {"weights", weights}, {"source", path}, {"input", input}});
                ++written;
            }
            catch (const std::exception& e)
            {
                const cv::Exception* cvError = dynamic_cast<const cv::Exception*>(&e);
                std::string message = cvError ? cvError->err : std::string(e.what());
                if (message.find(path) == std::string::npos) message = "'" + path + "': " + message;
                std::cerr << "naf_upsample_cached: " << message << "\n";
                // An output of an earlier run would pass for this input's result.
                std::error_code ignored;
                std::filesystem::remove(dst, ignored);
                if (failed++ == 0) firstFailure = message;
            }
        }
        if (failed)
        {
            std::cerr << "naf_upsample_cached: " << failed << " of " << files.size() << " files failed (" << written
                      << " written); the first: " << firstFailure << "\n";
            return 1;
        }
        return 0;
    }
    catch (const std::exception& e)
    {
        std::cerr << "naf_upsample_cached: " << e.what() << "\n";
        return 1;
    }
}
