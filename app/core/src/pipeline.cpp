// The shared pipeline of naf_viewer and naf_batch, see naf_app/pipeline.hpp.
#include "naf_app/pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include <sys/stat.h>
#include <unistd.h>

#include <opencv2/core/utils/filesystem.hpp>
#include <opencv2/imgproc.hpp>

namespace naf_app {

namespace {

using Clock = std::chrono::steady_clock;

double millisecondsSince(Clock::time_point start)
{
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

std::string backendName(int backend)
{
    return backend == cv::naf::BACKEND_CUDA ? "CUDA" : "CPU";
}

// Indexed by the enum values (cv::naf::Backend, cv::naf::GpuPrecision).
const char* const kBackendNames[] = {"auto", "cpu", "cuda"};
const char* const kGpuPrecisionNames[] = {"fp32", "tf32", "fp16"};

template <size_t N>
std::string knownNames(const char* const (&names)[N])
{
    std::string all;
    for (size_t i = 0; i < N; ++i) all += std::string(i ? ", " : "") + names[i];
    return all;
}

template <size_t N>
std::string nameOf(const char* const (&names)[N], int value, const char* what)
{
    if (value < 0 || value >= static_cast<int>(N))
        CV_Error(cv::Error::StsOutOfRange,
                 std::string("unknown ") + what + " " + std::to_string(value) + " (known: " + knownNames(names) + ")");
    return names[value];
}

template <size_t N>
int valueOf(const char* const (&names)[N], const std::string& name, const char* what)
{
    for (size_t i = 0; i < N; ++i)
        if (name == names[i]) return static_cast<int>(i);
    CV_Error(cv::Error::StsBadArg,
             std::string("unknown ") + what + " '" + name + "' (known: " + knownNames(names) + ")");
}

}  // namespace

std::string nafBackendName(int backend) { return nameOf(kBackendNames, backend, "NAF backend"); }
int nafBackendFromName(const std::string& name) { return valueOf(kBackendNames, name, "NAF backend"); }
std::string gpuPrecisionName(int precision) { return nameOf(kGpuPrecisionNames, precision, "GPU precision"); }
int gpuPrecisionFromName(const std::string& name) { return valueOf(kGpuPrecisionNames, name, "GPU precision"); }

void configureNaf(cv::naf::NAF& naf, const PipelineSettings& settings)
{
    naf.setBackend(settings.nafBackend);
    naf.setGpuPrecision(settings.gpuPrecision);
}

double PipelineResult::totalMilliseconds() const
{
    double total = 0;
    for (const StageTiming& t : timings) total += t.milliseconds;
    return total;
}

std::string PipelineResult::timingSummary() const
{
    std::ostringstream out;
    for (size_t i = 0; i < timings.size(); ++i)
        out << (i ? " · " : "") << timings[i].stage << " " << cvRound(timings[i].milliseconds) << " ms";
    return out.str();
}

cv::Size outputSizeFor(cv::Size image, int longSide)
{
    CV_CheckGT(image.width, 0, "empty image");
    CV_CheckGT(image.height, 0, "empty image");
    CV_CheckGT(longSide, 0, "output long side");
    const double scale = static_cast<double>(longSide) / std::max(image.width, image.height);
    return cv::Size(std::max(1, cvRound(image.width * scale)), std::max(1, cvRound(image.height * scale)));
}

namespace {

// One output-sized float map per method plus two, for an output of `out` with these channels.
double runBytes(int channels, cv::Size out, size_t methods)
{
    return 4.0 * std::max(1, channels) * out.area() * (methods + 2);
}

}  // namespace

double estimatedRunBytes(const PipelineSettings& settings, cv::Size image)
{
    return runBytes(cv::naf::VfmRegistry::find(settings.vfmName).channels,
                    outputSizeFor(image, settings.outputLongSide), settings.methods.size());
}

double physicalMemoryBytes()
{
    const long pages = ::sysconf(_SC_PHYS_PAGES), pageSize = ::sysconf(_SC_PAGESIZE);
    return pages > 0 && pageSize > 0 ? static_cast<double>(pages) * pageSize : 0.0;
}

void checkRunFitsInMemory(const PipelineSettings& settings, cv::Size image, int concurrentRuns)
{
    const cv::naf::VfmSpec spec = cv::naf::VfmRegistry::find(settings.vfmName);
    const cv::Size out = outputSizeFor(image, settings.outputLongSide);
    const double bytes = runBytes(spec.channels, out, settings.methods.size()) * std::max(1, concurrentRuns);
    const double physical = physicalMemoryBytes();
    if (physical <= 0 || bytes <= 0.6 * physical) return;
    std::ostringstream msg;
    msg.setf(std::ios::fixed);
    msg.precision(1);
    msg << out.width << "x" << out.height << " output with " << spec.channels << " channels and "
        << settings.methods.size() << " methods";
    if (concurrentRuns > 1) msg << ", " << concurrentRuns << " images at once,";
    // The largest long side that fits: memory grows with the output's area.
    const int fitting = static_cast<int>(std::max(out.width, out.height) * std::sqrt(0.6 * physical / bytes));
    msg << " needs about " << bytes / (1 << 30) << " GiB; this machine has " << physical / (1 << 30)
        << " GiB (60 % of it may be used). Choose an output long side of at most about " << fitting << " px"
        << (concurrentRuns > 1 ? ", fewer jobs" : "") << " (naf_batch: or fewer --methods).";
    CV_Error(cv::Error::StsNoMem, msg.str());
}

std::vector<int> defaultUpsampleMethods()
{
    std::vector<int> methods;
    for (int method : {cv::naf::UPSAMPLE_NEAREST, cv::naf::UPSAMPLE_BILINEAR, cv::naf::UPSAMPLE_BICUBIC,
                       cv::naf::UPSAMPLE_GUIDED_FILTER, cv::naf::UPSAMPLE_NAF})
        if (cv::naf::isUpsampleMethodAvailable(method)) methods.push_back(method);
    return methods;
}

void Pipeline::validate(const PipelineSettings& settings)
{
    if (settings.outputLongSide < 16 || settings.outputLongSide > 4096)
        CV_Error(cv::Error::StsOutOfRange, "output size " + std::to_string(settings.outputLongSide) +
                                               " is outside [16, 4096] pixels (long side)");
    if (settings.methods.empty()) CV_Error(cv::Error::StsBadArg, "no upsampling method chosen");
    for (int m : settings.methods)
        if (!cv::naf::isUpsampleMethodAvailable(m))  // throws for an unknown id
            CV_Error(cv::Error::StsNotImplemented, "method '" + cv::naf::upsampleMethodName(m) +
                                                       "' needs OpenCV's ximgproc (opencv_contrib), which this build lacks");
    const cv::naf::VfmSpec spec = cv::naf::VfmRegistry::find(settings.vfmName);  // throws listing the known names
    // The long side always spans the whole grid, so a smaller output fails every image after its
    // VFM forward (a short side may still be below the grid for some aspect ratios: per image).
    const int gridLongSide = spec.inputSize / spec.stride;  // the registry ensures stride >= 1 divides it
    if (settings.outputLongSide < gridLongSide)
        CV_Error(cv::Error::StsOutOfRange,
                 "output size " + std::to_string(settings.outputLongSide) + " is smaller than VFM '" + spec.name +
                     "''s feature grid (" + std::to_string(gridLongSide) + " cells on the long side: input " +
                     std::to_string(spec.inputSize) + " / stride " + std::to_string(spec.stride) +
                     "); choose at least " + std::to_string(gridLongSide) + " pixels");
    nafBackendName(settings.nafBackend);                             // throws for an unknown value
    gpuPrecisionName(settings.gpuPrecision);
    // CUDA asked for where there is none: the module's own refusal, which says why (no CUDA in
    // this build, or no device), before any work. A random-weights object is the cheapest way to it.
    if (settings.nafBackend == cv::naf::BACKEND_CUDA && !cv::naf::isCudaAvailable())
        cv::naf::NAF::createRandom()->setBackend(cv::naf::BACKEND_CUDA);
}

void Pipeline::checkModelFile(const cv::naf::VfmSpec& spec)
{
    struct stat info;
    if (::stat(spec.onnxPath.c_str(), &info) != 0 || !S_ISREG(info.st_mode))
        CV_Error(cv::Error::StsObjectNotFound,
                 "VFM '" + spec.name + "': model file '" + spec.onnxPath + "' is missing" +
                     (spec.fetchCommand.empty() ? "" : "; get it with: " + spec.fetchCommand));
}

cv::Ptr<cv::naf::VisionFoundationModel> Pipeline::vfm(const std::string& name)
{
    auto it = vfms_.find(name);
    if (it == vfms_.end()) it = vfms_.emplace(name, cv::naf::VisionFoundationModel::create(name)).first;
    return it->second;
}

cv::Ptr<cv::naf::NAF> Pipeline::naf(const std::string& weightsPath)
{
    auto it = nafs_.find(weightsPath);
    if (it == nafs_.end()) it = nafs_.emplace(weightsPath, cv::naf::NAF::create(weightsPath)).first;
    return it->second;
}

namespace {

/// Output pixels the low-res grid spans (see PipelineResult::coveredSize).
cv::Size gridSpan(const PipelineResult& result)
{
    return result.coveredSize.empty() ? result.outputSize : result.coveredSize;
}

const cv::Mat& upsamplingGuide(const PipelineResult& result)
{
    return result.coveredGuide.empty() ? result.guide : result.coveredGuide;
}

/// The top-left rows x cols of a 1 x C x H x W blob, continuous.
cv::Mat cropBlob(const cv::Mat& blob, cv::Size size)
{
    if (blob.size[2] == size.height && blob.size[3] == size.width) return blob;
    const cv::Range ranges[4] = {cv::Range::all(), cv::Range::all(), cv::Range(0, size.height),
                                 cv::Range(0, size.width)};
    return blob(ranges).clone();
}

/// Runs `work` with `object`'s own progress reports (NAF::setProgressCallback,
/// VisionFoundationModel::setProgressCallback) placed in [stageStart, stageEnd] of the pipeline's
/// fraction, so that a stage of seconds moves the bar and stops within one report on a cancel,
/// which becomes Cancelled. The cached object never keeps the callback, however the call ends.
template <class Reporting, class Work>
void runWithinStage(Reporting& object, const ProgressFn& progress, double stageStart, double stageEnd,
                    const std::string& stage, Work work)
{
    if (!progress)
    {
        work();
        return;
    }
    bool cancelled = false;
    object.setProgressCallback([&](double fraction) {
        cancelled = !progress(stageStart + fraction * (stageEnd - stageStart), stage);
        return !cancelled;
    });
    struct ClearCallback
    {
        Reporting& object;
        ~ClearCallback() { object.setProgressCallback(cv::naf::ProgressCallback()); }
    } clearCallback{object};
    try
    {
        work();
    }
    catch (const cv::Exception&)
    {
        if (cancelled) throw Cancelled();
        throw;
    }
}

}  // namespace

PipelineResult Pipeline::run(const cv::Mat& bgr, const PipelineSettings& settings, const ProgressFn& progress)
{
    if (bgr.empty() || bgr.type() != CV_8UC3 || bgr.cols < 2 || bgr.rows < 2)
        CV_Error(cv::Error::StsBadArg, "the image must be CV_8UC3 and at least 2x2, got " +
                                           (bgr.empty() ? std::string("an empty image")
                                                        : cv::typeToString(bgr.type()) + " " + std::to_string(bgr.cols) +
                                                              "x" + std::to_string(bgr.rows)));
    validate(settings);
    const double steps = 2.0 + settings.methods.size();
    double done = 0;
    auto step = [&](const std::string& stage) {
        if (progress && !progress(done / steps, stage)) throw Cancelled();
        done += 1;
    };

    PipelineResult result;
    result.settings = settings;
    result.image = bgr;
    result.outputSize = outputSizeFor(bgr.size(), settings.outputLongSide);
    cv::resize(bgr, result.guide, result.outputSize, 0, 0,
               result.outputSize.area() < bgr.size().area() ? cv::INTER_AREA : cv::INTER_LINEAR);

    step("loading models");
    auto start = Clock::now();
    cv::Ptr<cv::naf::VisionFoundationModel> model = vfm(settings.vfmName);
    cv::Ptr<cv::naf::NAF> upsampler = naf(settings.nafWeightsPath);
    configureNaf(*upsampler, settings);  // the cached object may have run with other settings
    result.vfmName = settings.vfmName;
    result.vfmDisplayName = model->getSpec().displayName;
    result.weightsInfo = upsampler->getWeightsInfo();
    const double loadMs = millisecondsSince(start);
    if (loadMs > 1) result.timings.push_back({"load", loadMs});

    step("VFM features");
    start = Clock::now();
    runWithinStage(*model, progress, (done - 1) / steps, done / steps, "VFM features",
                   [&] { model->extract(bgr, result.lowRes, &result.geometry); });
    result.timings.push_back({"vfm", millisecondsSince(start)});
    if (result.lowRes.size[2] > result.outputSize.height || result.lowRes.size[3] > result.outputSize.width)
        CV_Error(cv::Error::StsBadArg, "output " + std::to_string(result.outputSize.width) + "x" +
                                           std::to_string(result.outputSize.height) +
                                           " is smaller than the feature grid " + std::to_string(result.lowRes.size[3]) +
                                           "x" + std::to_string(result.lowRes.size[2]) + "; choose a larger output size");
    result.pca.fit(result.lowRes);
    result.coveredSize = cv::naf::coveredOutputSize(result.geometry, result.outputSize);
    cv::copyMakeBorder(result.guide, result.coveredGuide, 0, result.coveredSize.height - result.outputSize.height, 0,
                       result.coveredSize.width - result.outputSize.width, cv::BORDER_CONSTANT, cv::Scalar::all(0));

    for (int method : settings.methods)
    {
        const std::string stage = cv::naf::upsampleMethodName(method);
        step(stage);
        start = Clock::now();
        cv::Mat up;
        auto upsample = [&] {
            cv::naf::upsampleWith(method, result.coveredGuide, result.lowRes, up, result.coveredSize, upsampler);
        };
        // NAF reports inside its stage (seconds at large sizes); the other methods take milliseconds.
        if (method == cv::naf::UPSAMPLE_NAF)
            runWithinStage(*upsampler, progress, (done - 1) / steps, done / steps, stage, upsample);
        else
            upsample();
        result.timings.push_back({cv::naf::upsampleMethodName(method), millisecondsSince(start)});
        result.upsampled[method] = cropBlob(up, result.outputSize);
    }
    const bool usedNaf = result.upsampled.count(cv::naf::UPSAMPLE_NAF) != 0;
    std::string nafDevice = "not run";
    if (usedNaf)
    {
        const int active = upsampler->getActiveBackend();
        // The precision only applies on CUDA; the CPU path always computes in float32.
        nafDevice = backendName(active) +
                    (active == cv::naf::BACKEND_CUDA ? " " + gpuPrecisionName(settings.gpuPrecision) : std::string());
    }
    result.device = "NAF: " + nafDevice + ", " + std::to_string(cv::getNumThreads()) + " threads; VFM: cv::dnn CPU";
    if (progress && !progress(1.0, "done")) throw Cancelled();
    return result;
}

PixelInspection inspectPixel(const PipelineResult& result, cv::naf::NAF& naf, cv::Point pixel, int similarityMethod)
{
    CV_Assert(!result.lowRes.empty());
    if (!cv::Rect(cv::Point(), result.outputSize).contains(pixel))
        CV_Error(cv::Error::StsOutOfRange, "pixel (" + std::to_string(pixel.x) + ", " + std::to_string(pixel.y) +
                                               ") is outside the " + std::to_string(result.outputSize.width) + "x" +
                                               std::to_string(result.outputSize.height) + " output");
    auto features = result.upsampled.find(similarityMethod);
    if (features == result.upsampled.end())
        CV_Error(cv::Error::StsBadArg, "method '" + cv::naf::upsampleMethodName(similarityMethod) + "' was not run");

    PixelInspection inspection;
    inspection.pixel = pixel;
    inspection.similarityMethod = similarityMethod;
    // The probe only records; the upsampled output of this extra run is not needed.
    cv::Mat unused, weights, positions;
    naf.setAttentionProbe(pixel);
    try
    {
        naf.upsample(upsamplingGuide(result), result.lowRes, unused, gridSpan(result));
    }
    catch (...)
    {
        naf.setAttentionProbe(cv::Point(-1, -1));
        throw;
    }
    naf.setAttentionProbe(cv::Point(-1, -1));
    naf.getAttentionWeights(weights, positions);

    const int heads = weights.size[1], kh = weights.size[2], kw = weights.size[3];
    inspection.attentionGrid = cv::Mat::zeros(result.lowRes.size[2], result.lowRes.size[3], CV_32F);
    int x0 = INT32_MAX, y0 = INT32_MAX, x1 = -1, y1 = -1;
    for (int i = 0; i < kh; ++i)
        for (int j = 0; j < kw; ++j)
        {
            const cv::Vec2i at = positions.at<cv::Vec2i>(i, j);
            float mean = 0;
            for (int h = 0; h < heads; ++h) mean += weights.at<float>(cv::Vec4i(0, h, i, j));
            // A window may list one cell twice (non-multiple output sizes): its weights add up.
            inspection.attentionGrid.at<float>(at[1], at[0]) += mean / heads;
            x0 = std::min(x0, at[0]);
            y0 = std::min(y0, at[1]);
            x1 = std::max(x1, at[0]);
            y1 = std::max(y1, at[1]);
        }
    inspection.window = cv::Rect(x0, y0, x1 - x0 + 1, y1 - y0 + 1);
    cv::naf::cosineSimilarityMap(features->second, pixel, inspection.similarity);
    return inspection;
}

cv::Mat renderLowResPca(const PipelineResult& result)
{
    cv::Mat small, out;
    result.pca.apply(result.lowRes, small);
    cv::resize(small, out, gridSpan(result), 0, 0, cv::INTER_NEAREST);
    return out(cv::Rect(cv::Point(), result.outputSize)).clone();
}

cv::Mat renderMethodPca(const PipelineResult& result, int method)
{
    auto it = result.upsampled.find(method);
    if (it == result.upsampled.end())
        CV_Error(cv::Error::StsBadArg, "method '" + cv::naf::upsampleMethodName(method) + "' was not run");
    cv::Mat out;
    result.pca.apply(it->second, out);
    return out;
}

namespace {

// Low-res cell rectangle in output pixels (may reach past the output: the padded part of the grid).
cv::Rect cellRect(const PipelineResult& result, cv::Rect cells)
{
    const double sx = static_cast<double>(gridSpan(result).width) / result.lowRes.size[3];
    const double sy = static_cast<double>(gridSpan(result).height) / result.lowRes.size[2];
    const cv::Point a(cvRound(cells.x * sx), cvRound(cells.y * sy));
    const cv::Point b(cvRound((cells.x + cells.width) * sx), cvRound((cells.y + cells.height) * sy));
    return cv::Rect(a, b);
}

}  // namespace

cv::Rect windowInOutput(const PipelineResult& result, const PixelInspection& inspection, int marginCells)
{
    const cv::Rect cells(inspection.window.x - marginCells, inspection.window.y - marginCells,
                         inspection.window.width + 2 * marginCells, inspection.window.height + 2 * marginCells);
    return cellRect(result, cells) & cv::Rect(cv::Point(), result.outputSize);
}

namespace {

// Four ticks around the pixel, leaving a gap of `gap` pixels: the cells under and next to it stay
// visible (a ring covered the attention's peak cells once the window was zoomed).
void markPixel(cv::Mat& image, cv::Point pixel, int gap)
{
    const int length = std::max(4, gap);
    const cv::Point directions[4] = {{1, 0}, {-1, 0}, {0, 1}, {0, -1}};
    for (const cv::Point& d : directions)
    {
        const cv::Point a = pixel + d * gap, b = pixel + d * (gap + length);
        cv::line(image, a, b, cv::Scalar(0, 0, 0), 3, cv::LINE_AA);
        cv::line(image, a, b, cv::Scalar(255, 255, 255), 1, cv::LINE_AA);
    }
}

// One low-res cell's size in output pixels (the larger side), at least 2.
int cellPixels(const PipelineResult& result)
{
    const cv::Size span = gridSpan(result);
    return std::max(2, cvRound(std::max(static_cast<double>(span.width) / result.lowRes.size[3],
                                        static_cast<double>(span.height) / result.lowRes.size[2])));
}

// The attention heat map over the dimmed guide, the window outlined; the pixel not marked.
cv::Mat attentionHeat(const PipelineResult& result, const PixelInspection& inspection)
{
    double hi = 0;
    cv::minMaxLoc(inspection.attentionGrid, nullptr, &hi);
    cv::Mat heat, big, out;
    cv::naf::colorizeScalarMap(inspection.attentionGrid, 0, std::max(hi, 1e-6), heat);
    cv::resize(heat, big, gridSpan(result), 0, 0, cv::INTER_NEAREST);
    big = big(cv::Rect(cv::Point(), result.outputSize));
    // Outside the window the weight is 0 by definition: show the image there, dimmed.
    cv::Mat mask = cv::Mat::zeros(result.outputSize, CV_8U);
    mask(cellRect(result, inspection.window) & cv::Rect(cv::Point(), result.outputSize)).setTo(255);
    cv::naf::overlay(result.guide, cv::Mat(result.guide.size(), CV_8UC3, cv::Scalar::all(0)), 0.5, out);
    cv::Mat blended;
    cv::naf::overlay(result.guide, big, 0.8, blended);
    blended.copyTo(out, mask);
    cv::rectangle(out, cellRect(result, inspection.window), cv::Scalar(255, 255, 255), 1);
    return out;
}

}  // namespace

cv::Mat renderAttention(const PipelineResult& result, const PixelInspection& inspection)
{
    cv::Mat out = attentionHeat(result, inspection);
    // Past the pixel's cell and half of the next one, plus the ticks' own half-width: at small
    // outputs (cells of 2-3 px) a gap of one cell drew the ticks over the pixel itself.
    markPixel(out, inspection.pixel, cellPixels(result) * 3 / 2 + 2);
    return out;
}

cv::Mat renderAttentionInset(const PipelineResult& result, const PixelInspection& inspection, int marginCells, int side)
{
    const cv::Rect crop = windowInOutput(result, inspection, marginCells);
    const int factor = std::max(1, side / std::max(1, std::max(crop.width, crop.height)));
    cv::Mat zoomed;
    cv::resize(attentionHeat(result, inspection)(crop), zoomed, cv::Size(), factor, factor, cv::INTER_NEAREST);
    // Marked after zooming, with lines of screen thickness: marked before, the ticks were zoomed
    // too and covered much of a small output's window.
    const cv::Point centre = (inspection.pixel - crop.tl()) * factor + cv::Point(factor / 2, factor / 2);
    markPixel(zoomed, centre, cellPixels(result) * factor * 3 / 2 + 2);
    return zoomed;
}

std::pair<double, double> similarityRange(const PixelInspection& inspection)
{
    double lo = -1, hi = 1;
    if (!inspection.similarity.empty()) cv::minMaxLoc(inspection.similarity, &lo, &hi);
    return {lo, hi > lo ? hi : lo + 1e-6};
}

cv::Mat renderSimilarity(const PipelineResult& result, const PixelInspection& inspection)
{
    cv::Mat out;
    const std::pair<double, double> range = similarityRange(inspection);
    cv::naf::colorizeScalarMap(inspection.similarity, range.first, range.second, out);
    markPixel(out, inspection.pixel, std::max(4, out.cols / 80));
    CV_Assert(out.size() == result.outputSize);
    return out;
}

cv::Mat renderLabels(const PipelineResult& result, const cv::Mat& labels, double alpha)
{
    CV_Assert(labels.size() == result.outputSize && labels.type() == CV_32S);
    cv::Mat colours, out;
    cv::naf::colorizeLabels(labels, colours);
    cv::naf::overlay(result.guide, colours, std::clamp(alpha, 0.0, 1.0), out);
    return out;
}

}  // namespace naf_app
