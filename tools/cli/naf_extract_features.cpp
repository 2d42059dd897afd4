// naf_extract_features: the VFM feature cache for training/evaluating NAF (docs/TRAINING.md).
//
// For every image: the largest centred square, resized to S x S (default 1024, the VFM's input
// size), goes through the VFM (target features, S/16 grid). The NAF input is the VFM's features
// of the same square at S/2 x S/2: as SAM does for a small image, it sits in the top-left of an
// S x S canvas padded with the normalization mean (zero after normalization), and the grid cells
// covering it are kept (S/32 grid). MobileSAM's converted graph only runs at its fixed input size,
// so this is also the only way to get its features of a smaller image.
// One safetensors file per image in --out (see feature_cache.hpp); existing files are skipped,
// so an interrupted run resumes where it stopped. Without --hi-only, an existing --hi-only entry
// is completed instead: its image and features_hi are kept and only features_lo is computed
// (half the cost), so that the probe's hi-only caches can also serve as training pairs.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/naf/vfm.hpp>

#include "feature_cache.hpp"

namespace {

// The usage text: on stdout with status 0 when asked for (--help), else on stderr with status 2.
int usage(const char* argv0, bool asked = false)
{
    (asked ? std::cout : std::cerr) << "usage: " << argv0
              << " --out DIR [--vfm mobilesam] [--size 1024] [--hi-only] [--threads N] [--list FILE] [IMAGE...]\n"
                 "  FILE: one image path per line. Writes DIR/<last 4 path parts joined by __>.safetensors per image.\n"
                 "  --hi-only: only the features of the full-size image (no features_lo; half the cost),\n"
                 "             e.g. for the linear-probe evaluation (tools/probe_naf.py).\n"
                 "  Existing entries are skipped; without --hi-only, a --hi-only entry gets its features_lo added.\n";
    return asked ? 0 : 2;
}

/// The top-left rows x cols cells of a 1 x C x H x W blob, as a continuous 1 x C x rows x cols blob.
cv::Mat topLeftCells(const cv::Mat& blob, int rows, int cols)
{
    const int c = blob.size[1];
    const int sizes[4] = {1, c, rows, cols};
    cv::Mat out(4, sizes, CV_32F);
    for (int ch = 0; ch < c; ++ch)
    {
        const cv::Mat plane(blob.size[2], blob.size[3], CV_32F, const_cast<float*>(blob.ptr<float>(0, ch)));
        plane(cv::Rect(0, 0, cols, rows)).copyTo(cv::Mat(rows, cols, CV_32F, out.ptr<float>(0, ch)));
    }
    return out;
}

// Why an existing cache entry is not this image's at this VFM and size; empty when it is.
std::string entryMismatch(naf_tools::CacheEntry& entry, const std::string& source, const std::string& vfm, int size)
{
    // Entries written before "source_absolute" was recorded: their "source" as spelled then.
    const std::string recorded = entry.metadata.count("source_absolute") ? entry.metadata["source_absolute"]
                                                                          : naf_tools::absolutePath(entry.metadata["source"]);
    if (entry.metadata["source"] != source && recorded != naf_tools::absolutePath(source))
        return "it holds the features of '" + entry.metadata["source"] + "', not of '" + source + "'";
    if (entry.image.rows != size || entry.image.cols != size || entry.metadata["vfm"] != vfm)
        return cv::format("it is a %dx%d px entry from VFM '%s', not --size %d --vfm %s", entry.image.cols,
                          entry.image.rows, entry.metadata["vfm"].c_str(), size, vfm.c_str());
    return std::string();
}

}  // namespace

int main(int argc, char** argv)
{
    std::string out, vfmName = "mobilesam";
    int size = 1024, threads = 0;  // threads 0: OpenCV's default; -1 (either): not a whole number >= 1
    bool hiOnly = false;
    std::vector<std::string> images;
    for (int i = 1; i < argc; ++i)
    {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) throw std::runtime_error("missing value after " + a);
            return argv[++i];
        };
        try
        {
            if (naf_tools::isHelpOption(a)) return usage(argv[0], true);
            if (a == "--out") out = next();
            else if (a == "--vfm") vfmName = next();
            else if (a == "--size") size = naf_tools::parsePositiveInt(next());
            else if (a == "--threads") threads = naf_tools::parsePositiveInt(next());
            else if (a == "--hi-only") hiOnly = true;
            else if (a == "--list")
            {
                std::ifstream list(next());
                if (!list) throw std::runtime_error("cannot read list file " + std::string(argv[i]));
                for (std::string line; std::getline(list, line);)
                    if (!line.empty() && line[0] != '#') images.push_back(line);
            }
            else if (!a.empty() && a[0] == '-') return usage(argv[0]);
            else images.push_back(a);
        }
        catch (const std::exception& e)
        {
            std::cerr << "naf_extract_features: " << e.what() << "\n";
            return usage(argv[0]);
        }
    }
    if (out.empty() || images.empty() || size < 64 || size % 32 != 0 || threads < 0)
    {
        if (size < 64 || size % 32 != 0)
            std::cerr << "naf_extract_features: --size must be a whole number >= 64 and a multiple of 32\n";
        if (threads < 0) std::cerr << "naf_extract_features: --threads must be a whole number >= 1\n";
        return usage(argv[0]);
    }
    // Two images with one cache name (x.png and x.jpg, or paths alike in their last 4 parts) would
    // take each other's entry: refused before any work.
    std::map<std::string, std::string> imageOfName;
    for (const std::string& path : images)
    {
        const auto named = imageOfName.emplace(naf_tools::cacheNameFor(path), path);
        if (!named.second && naf_tools::absolutePath(named.first->second) != naf_tools::absolutePath(path))
        {
            std::cerr << "naf_extract_features: '" << named.first->second << "' and '" << path
                      << "' would share the cache entry '" << named.first->first
                      << "' (the last 4 path parts without the extension); rename one or extract them into separate --out folders\n";
            return 2;
        }
    }
    try
    {
        if (threads > 0) cv::setNumThreads(threads);
        std::filesystem::create_directories(out);
        cv::naf::VfmSpec specHi = cv::naf::VfmRegistry::find(vfmName);
        specHi.inputSize = size;
        cv::Ptr<cv::naf::VisionFoundationModel> vfm;  // created on first use (a full cache loads nothing)
        // padding colour: the normalization mean in BGR image units
        const cv::Scalar meanBgr = specHi.rgb ? cv::Scalar(specHi.mean[2], specHi.mean[1], specHi.mean[0]) : specHi.mean;
        int done = 0, skipped = 0, failed = 0;
        for (const std::string& path : images)
        {
            const std::string dst = (std::filesystem::path(out) / naf_tools::cacheNameFor(path)).string();
            // One image's failure (unreadable file, full disk...) is reported and counted; the
            // others go on.
            try
            {
                naf_tools::CacheEntry existing;
                if (std::filesystem::exists(dst))
                {
                    // An entry is only taken as this image's when it records this source, VFM and
                    // size (it may be another image's: x.png and x.jpg share a cache name); one that
                    // is not is reported and left alone, never overwritten.
                    std::string problem;
                    try
                    {
                        existing = naf_tools::readCacheEntry(dst);
                        problem = entryMismatch(existing, path, specHi.name, size);
                    }
                    catch (const cv::Exception& e)
                    {
                        problem = e.err;
                    }
                    if (!problem.empty())
                    {
                        std::cerr << "naf_extract_features: existing entry '" << dst << "': " << problem
                                  << "; skipped (remove it, or use another --out)\n";
                        ++failed;
                        continue;
                    }
                    if (hiOnly || !existing.featuresLo.empty())
                    {
                        ++skipped;
                        continue;
                    }
                }
                const bool completing = !existing.featuresHi.empty();
                cv::Mat src;
                if (!completing)
                {
                    src = cv::imread(path, cv::IMREAD_COLOR);
                    if (src.empty())
                    {
                        std::cerr << "naf_extract_features: cannot read image '" << path << "', skipped\n";
                        ++failed;
                        continue;
                    }
                }
                if (!vfm) vfm = cv::naf::VisionFoundationModel::create(specHi);
                const auto t0 = std::chrono::steady_clock::now();
                cv::Rect crop;
                cv::Mat square, hi, lo;
                if (completing)
                {
                    square = existing.image;
                    hi = existing.featuresHi;
                }
                else
                {
                    square = naf_tools::centredSquare(src, size, &crop);
                    vfm->extract(square, hi);
                }
                if (!hiOnly)
                {
                    cv::Mat canvas(size, size, CV_8UC3, meanBgr), half, canvasFeatures;
                    cv::resize(square, half, cv::Size(size / 2, size / 2), 0, 0, cv::INTER_AREA);
                    half.copyTo(canvas(cv::Rect(0, 0, size / 2, size / 2)));
                    vfm->extract(canvas, canvasFeatures);
                    lo = topLeftCells(canvasFeatures, hi.size[2] / 2, hi.size[3] / 2);
                }
                const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                std::map<std::string, std::string> meta = {
                    {"format", "cv-naf-feature-cache"},
                    {"format_version", "1"},
                    {"source", path},
                    {"source_absolute", naf_tools::absolutePath(path)},
                    {"crop_xywh", cv::format("%d,%d,%d,%d", crop.x, crop.y, crop.width, crop.height)},
                    {"vfm", specHi.name},
                    {"vfm_onnx", specHi.onnxPath},
                    {"input_hi", std::to_string(size)},
                    {"input_lo", hiOnly ? std::string("none") : std::to_string(size / 2)},
                    {"lo_mode", hiOnly ? "none (--hi-only)"
                                       : "S/2 image (INTER_AREA) top-left in an S canvas of the mean colour; its cells"},
                    {"seconds", cv::format("%.2f", seconds)},
                };
                if (completing)
                {
                    // the entry's own source and crop describe its image; record that features_lo came later
                    for (const char* key : {"source", "source_absolute", "crop_xywh", "vfm_onnx", "seconds"})
                        if (existing.metadata.count(key)) meta[key] = existing.metadata[key];
                    meta["seconds_lo_added"] = cv::format("%.2f", seconds);
                }
                std::map<std::string, cv::Mat> tensors = {{"image", square}, {"features_hi", hi}};
                if (!hiOnly) tensors["features_lo"] = lo;
                naf_tools::writeSafetensors(dst, tensors, meta);
                ++done;
                std::cout << "[" << done + skipped + failed << "/" << images.size() << "] " << dst << " "
                          << cv::format("%.1f s", seconds) << (completing ? " (features_lo added)" : "") << std::endl;
            }
            catch (const cv::Exception& e)
            {
                if (!vfm) throw;  // the VFM cannot be loaded: every image would fail
                std::cerr << "naf_extract_features: '" << path << "': " << e.err << ", skipped\n";
                ++failed;
            }
            catch (const std::exception& e)
            {
                if (!vfm) throw;
                std::cerr << "naf_extract_features: '" << path << "': " << e.what() << ", skipped\n";
                ++failed;
            }
        }
        std::cout << "naf_extract_features: " << done << " written, " << skipped << " already there, " << failed
                  << " failed (unreadable image, write error, or an existing entry that is not this image's)\n";
        return failed ? 1 : 0;
    }
    catch (const std::exception& e)
    {
        std::cerr << "naf_extract_features: " << e.what() << "\n";
        return 1;
    }
}
