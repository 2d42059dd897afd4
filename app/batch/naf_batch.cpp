// naf_batch: visualization export for many images (the viewer's pipeline, no window).
#include <climits>
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include <unistd.h>

#include "naf_app/batch.hpp"
#include "naf_app/io.hpp"

namespace {

const char* kUsage = R"(usage: naf_batch [options] INPUT... --out DIR

INPUT: image files, folders (their images, not recursive) or list files (.txt/.lst, one path a line).
For each image writes DIR/<stem>.panel.png (image | low-res PCA | one PCA tile per method),
DIR/<stem>.kmeans.png (k-means clusters per method), DIR/<stem>.json, and DIR/manifest.json.
Images already done with the same settings are skipped (resumable); bad images are reported and skipped.

options:
  --out DIR          output folder (required)
  --vfm NAME         registry model (models/vfm/NAME.json), default mobilesam
  --methods LIST     comma-separated: nearest,bilinear,bicubic,guided,bilateral,naf (default all but
                     bilateral; guided and bilateral need cv::naf built with OpenCV's ximgproc)
  --size N           output long side in pixels, default 448
  --kmeans K         clusters of the k-means panel, 0 = none, default 6
  --weights FILE     NAF weights (default: cv::naf default weights)
  --backend NAME     where NAF runs: auto (CUDA when available, else CPU), cpu, cuda; default auto
                     (the VFM always runs on cv::dnn's CPU backend)
  --gpu-precision P  NAF's image encoder on CUDA: fp32, tf32, fp16; default fp32
                     (the CPU backend ignores it and computes in float32)
  --jobs N           images processed at once, default 1
  --shard I/N        process only shard I of N (items I, I+N, ...), e.g. one per array-job task
  --force            recompute images that are already done
)";

std::vector<int> parseMethods(const std::string& list)
{
    std::vector<int> methods;
    size_t start = 0;
    while (start <= list.size())
    {
        const size_t comma = list.find(',', start);
        const std::string name = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!name.empty()) methods.push_back(cv::naf::upsampleMethodFromName(name));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return methods;
}

// A whole decimal int for an option, or a cv::Exception naming the option and its text
// (std::stoi took "64abc" as 64 and said only "stoi" for "abc").
int parseInt(const std::string& option, const std::string& text)
{
    size_t used = 0;
    long long value = 0;
    try
    {
        value = std::stoll(text, &used);
    }
    catch (const std::exception&)
    {
        used = 0;
    }
    if (used == 0 || used != text.size() || value < INT_MIN || value > INT_MAX)
        CV_Error(cv::Error::StsBadArg, option + " '" + text + "': expected a whole number");
    return static_cast<int>(value);
}

void drawProgress(int finished, int total, const naf_app::BatchItem& last, bool tty)
{
    const std::string name = last.input.substr(last.input.find_last_of('/') + 1);
    const std::string note = last.status == "skipped" ? "skipped: " + last.reason
                             : last.warning.empty()    ? last.status
                                                       : last.status + " (warning: " + last.warning + ")";
    if (!tty)
    {
        std::cerr << "[" << finished << "/" << total << "] " << name << ": " << note << "\n";
        return;
    }
    const int width = 30, filled = total ? width * finished / total : width;
    // A skipped image (or a warning) gets its own line so that the reason stays on screen.
    if (last.status == "skipped" || !last.warning.empty()) std::cerr << "\r\033[K" << name << ": " << note << "\n";
    std::cerr << "\r\033[K[" << std::string(filled, '#') << std::string(width - filled, '.') << "] " << finished << "/"
              << total << " " << name << (finished == total ? "\n" : "") << std::flush;
}

}  // namespace

int main(int argc, char** argv)
{
    naf_app::BatchOptions options;
    options.settings.methods = naf_app::defaultUpsampleMethods();
    try
    {
        for (int i = 1; i < argc; ++i)
        {
            const std::string arg = argv[i];
            auto value = [&]() -> std::string {
                const size_t eq = arg.find('=');
                if (eq != std::string::npos) return arg.substr(eq + 1);
                if (i + 1 >= argc) CV_Error(cv::Error::StsBadArg, arg + " needs a value");
                return argv[++i];
            };
            const std::string key = arg.substr(0, arg.find('='));
            if (key == "-h" || key == "--help")
            {
                std::cout << kUsage;
                return 0;
            }
            else if (key == "--out") options.outDir = value();
            else if (key == "--vfm") options.settings.vfmName = value();
            else if (key == "--methods") options.settings.methods = parseMethods(value());
            else if (key == "--size") options.settings.outputLongSide = parseInt(key, value());
            else if (key == "--kmeans") options.kmeansClusters = parseInt(key, value());
            else if (key == "--weights") options.settings.nafWeightsPath = value();
            else if (key == "--backend") options.settings.nafBackend = naf_app::nafBackendFromName(value());
            else if (key == "--gpu-precision") options.settings.gpuPrecision = naf_app::gpuPrecisionFromName(value());
            else if (key == "--jobs") options.jobs = parseInt(key, value());
            else if (key == "--shard") naf_app::parseShard(value(), options.shardIndex, options.shardCount);
            else if (key == "--force")
            {
                if (arg != key) CV_Error(cv::Error::StsBadArg, "--force takes no value (got '" + arg + "')");
                options.force = true;
            }
            else if (!arg.empty() && arg[0] == '-') CV_Error(cv::Error::StsBadArg, "unknown option " + arg);
            else options.inputs.push_back(arg);
        }
        if (options.inputs.empty() || options.outDir.empty())
        {
            std::cerr << kUsage;
            return 2;
        }
        const bool tty = ::isatty(STDERR_FILENO);
        std::mutex output;  // the stage reports come from the worker threads
        int finishedSoFar = 0, totalImages = 0;
        // Within an image: on a terminal the bar's line shows the image and stage being computed
        // (a run takes seconds to minutes); in a log, one line when an image starts.
        auto stage = [&](const std::string& input, double fraction, const std::string& name) {
            std::lock_guard<std::mutex> lock(output);
            const std::string file = input.substr(input.find_last_of('/') + 1);
            if (!tty)
            {
                if (fraction == 0) std::cerr << "started " << file << "\n";
                return;
            }
            std::cerr << "\r\033[K[" << finishedSoFar << "/" << (totalImages ? std::to_string(totalImages) : "?")
                      << "] " << file << ": " << name << " " << static_cast<int>(fraction * 100) << " %" << std::flush;
        };
        const naf_app::BatchSummary summary = naf_app::runBatch(
            options,
            [&](int finished, int total, const naf_app::BatchItem& last) {
                std::lock_guard<std::mutex> lock(output);
                finishedSoFar = finished;
                totalImages = total;
                drawProgress(finished, total, last, tty);
            },
            stage);
        std::cout << "naf_batch: " << summary.computed << " computed, " << summary.alreadyDone << " already done, "
                  << summary.skipped << " skipped in " << summary.seconds << " s; manifest " << summary.manifestPath << "\n";
        return summary.skipped ? 1 : 0;
    }
    catch (const cv::Exception& e)
    {
        std::cerr << "naf_batch: " << e.err << "\n";
        return 2;
    }
    catch (const std::exception& e)
    {
        std::cerr << "naf_batch: " << e.what() << "\n";
        return 2;
    }
}
