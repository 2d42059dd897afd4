// This file is part of cv::naf. See docs/ARCHITECTURE.md for the data flow.
// The vision-foundation-model registry (models/vfm/*.json) and the cv::dnn runner.
#include "opencv2/naf/vfm.hpp"

#include "opencv2/naf/naf.hpp"  // registerLayers()
#include "vfm_progress.hpp"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <opencv2/core/utils/filesystem.hpp>
#include <opencv2/dnn.hpp>
#include <opencv2/imgproc.hpp>

#ifndef NAF_SOURCE_MODELS_DIR
#define NAF_SOURCE_MODELS_DIR "models"
#endif

namespace cv {
namespace naf {

namespace {

using nlohmann::json;

const char* const kSizePolicies[] = {"longest_side_pad", "resize"};
constexpr int kMinInputSize = 16;
constexpr int kMaxInputSize = 8192;

bool isAbsolute(const String& path) { return !path.empty() && path[0] == '/'; }

String fileStem(const String& path)
{
    const size_t slash = path.find_last_of('/');
    String base = slash == String::npos ? path : path.substr(slash + 1);
    const size_t dot = base.find_last_of('.');
    return dot == String::npos ? base : base.substr(0, dot);
}

bool endsWith(const String& s, const String& suffix)
{
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool isRegularFile(const String& path)
{
    struct stat info;
    return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

// A value for an error message: scalars as JSON, arrays and objects as JSON only when flat and
// short. Dumping a deeply nested value recurses once per level (a 200k-level array overflowed the
// stack) and a large one would swamp the message.
std::string shortDump(const json& value)
{
    if (!value.is_structured()) return value.dump(-1, ' ', false, json::error_handler_t::replace).substr(0, 200);
    bool flat = value.size() <= 16;
    for (const json& item : value)
        if (item.is_structured()) flat = false;
    if (flat)
    {
        const std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
        if (text.size() <= 200) return text;
    }
    return std::string(value.is_array() ? "an array of " : "an object of ") + std::to_string(value.size()) +
           (value.is_array() ? " items" : " fields");
}

// Validates the fields of one registry file; every error names the file, the field and the value.
class FieldReader
{
public:
    FieldReader(const String& file, const json& root) : file_(file), root_(root) {}

    [[noreturn]] void fail(const String& field, const json* value, const String& what) const
    {
        std::ostringstream msg;
        msg << "cv::naf: VFM registry file '" << file_ << "': field '" << field << "'";
        if (value) msg << " = " << shortDump(*value);
        msg << ": " << what;
        CV_Error(Error::StsParseError, msg.str());
    }

    const json* find(const String& path, bool required) const
    {
        const json* node = &root_;
        size_t start = 0;
        while (true)
        {
            const size_t dot = path.find('.', start);
            const String key = path.substr(start, dot == String::npos ? String::npos : dot - start);
            if (!node->is_object() || !node->contains(key))
            {
                if (required) fail(path, nullptr, "missing (required)");
                return nullptr;
            }
            node = &(*node)[key];
            if (dot == String::npos) return node;
            start = dot + 1;
        }
    }

    const json& object(const String& path) const
    {
        const json& v = *find(path, true);
        if (!v.is_object()) fail(path, &v, "must be an object");
        return v;
    }

    String string(const String& path, bool required, bool allowEmpty) const
    {
        const json* v = find(path, required);
        if (!v) return String();
        if (!v->is_string()) fail(path, v, "must be a string");
        const String s = v->get<std::string>();
        if (s.empty() && !allowEmpty) fail(path, v, "must not be empty");
        return s;
    }

    int integer(const String& path, int lo, int hi) const
    {
        const json& v = *find(path, true);
        if (!v.is_number_integer()) fail(path, &v, "must be an integer");
        const long long x = v.get<long long>();
        if (x < lo || x > hi)
            fail(path, &v, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
        return static_cast<int>(x);
    }

    Scalar triple(const String& path, bool positive) const
    {
        const json& v = *find(path, true);
        if (!v.is_array() || v.size() != 3) fail(path, &v, "must be an array of 3 numbers (one per channel)");
        Scalar s;
        for (int i = 0; i < 3; ++i)
        {
            if (!v[i].is_number()) fail(path, &v, "must be an array of 3 numbers (one per channel)");
            s[i] = v[i].get<double>();
            // In 0..255 pixel units; the bounds keep (pixel - mean) / std far inside float's range
            // (a mean of 1e308 passed and gave -inf features).
            const bool inRange = positive ? s[i] >= 1e-6 && s[i] <= 1e6 : std::abs(s[i]) <= 1e6;
            if (!std::isfinite(s[i]) || !inRange)
                fail(path, &v, positive ? "every value must be in [1e-6, 1e6]" : "every value must be in [-1e6, 1e6]");
        }
        return s;
    }

    void onlyKeys(const String& path, const json& node, const std::set<String>& allowed) const
    {
        for (auto it = node.begin(); it != node.end(); ++it)
            if (!allowed.count(it.key()))
            {
                String list;
                for (const String& k : allowed) list += (list.empty() ? "" : ", ") + k;
                fail(path.empty() ? it.key() : path + "." + it.key(), &it.value(), "unknown field (known: " + list + ")");
            }
    }

private:
    String file_;
    const json& root_;
};

void checkSpec(const VfmSpec& spec)
{
    const String who = "cv::naf: VFM '" + spec.name + "': ";
    if (spec.inputSize < kMinInputSize || spec.inputSize > kMaxInputSize)
        CV_Error(Error::StsBadArg, who + format("inputSize %d is outside [%d, %d]", spec.inputSize, kMinInputSize, kMaxInputSize));
    if (spec.stride < 1 || spec.inputSize % spec.stride != 0)
        CV_Error(Error::StsBadArg, who + format("stride %d must be >= 1 and divide inputSize %d", spec.stride, spec.inputSize));
    if (spec.channels < 1 || spec.channels > (1 << 20))
        CV_Error(Error::StsBadArg, who + format("channels %d is outside [1, %d]", spec.channels, 1 << 20));
    if (std::find(std::begin(kSizePolicies), std::end(kSizePolicies), spec.sizePolicy) == std::end(kSizePolicies))
        CV_Error(Error::StsBadArg, who + "sizePolicy '" + spec.sizePolicy + "' is not 'longest_side_pad' or 'resize'");
    // The registry loader's bounds: beyond them the features come out inf or NaN.
    for (int i = 0; i < 3; ++i)
        if (!(spec.std[i] >= 1e-6 && spec.std[i] <= 1e6) || !(std::fabs(spec.mean[i]) <= 1e6))
            CV_Error(Error::StsBadArg, who + format("mean/std of channel %d (%g, %g) must be in [-1e6, 1e6] and "
                                                    "[1e-6, 1e6]", i, spec.mean[i], spec.std[i]));
    if (spec.onnxPath.empty()) CV_Error(Error::StsBadArg, who + "onnxPath is empty");
}

// Progress of one extract(): 0 at the start, one report as each cv::naf layer of the graph starts,
// 1 at the end. The first reporting forward spreads the reports evenly; each times the stretches
// between its reports, and since every forward of a model has the same input size, the next one
// reports the fraction of that forward's time. A false return, or the callback's own exception,
// stops the forward.
class ExtractProgress CV_FINAL : public detail::VfmForwardObserver
{
public:
    ExtractProgress(const ProgressCallback& callback, int reportingLayers, const std::vector<double>& stretchTicks)
        : callback_(callback), reportingLayers_(reportingLayers)
    {
        // The previous forward's share of time before each report, when it reported once per layer.
        double total = 0;
        for (double t : stretchTicks) total += t;
        if (stretchTicks.size() != static_cast<size_t>(reportingLayers) + 1 || !(total > 0)) return;
        double elapsed = 0;
        for (int k = 0; k < reportingLayers; ++k) timedFractions_.push_back((elapsed += stretchTicks[k]) / total);
    }

    void start()
    {
        ticks_.assign(1, static_cast<double>(getTickCount()));
        report(0.0);
    }

    void layerStarting() CV_OVERRIDE
    {
        ticks_.push_back(static_cast<double>(getTickCount()));
        const size_t done = ticks_.size() - 1;  // reports since the start
        const double fraction =
            done <= timedFractions_.size()
                ? timedFractions_[done - 1]
                : static_cast<double>(std::min<size_t>(done, reportingLayers_)) / (reportingLayers_ + 1);
        report(std::max(fraction, last_));
    }

    /// The stretches between this forward's reports, with the last layer's to the end, when it
    /// reported once per layer (otherwise empty: nothing to learn from).
    std::vector<double> finish()
    {
        std::vector<double> stretches;
        if (ticks_.size() == static_cast<size_t>(reportingLayers_) + 1)
        {
            ticks_.push_back(static_cast<double>(getTickCount()));
            for (size_t i = 1; i < ticks_.size(); ++i) stretches.push_back(ticks_[i] - ticks_[i - 1]);
        }
        report(1.0);
        return stretches;
    }

    bool cancelled() const { return cancelled_; }
    /// The callback's own exception, when it threw (null otherwise).
    std::exception_ptr callbackError() const { return callbackError_; }
    double lastFraction() const { return last_; }

private:
    void report(double fraction)
    {
        last_ = fraction;
        bool goOn = false;
        try
        {
            // The caller's own cv::dnn forwards inside the callback (a net with cv::naf layers)
            // must not report to this extract(), nor re-enter the callback.
            detail::ScopedVfmForwardObserver none(nullptr);
            goOn = callback_(fraction);
        }
        catch (...)
        {
            // Kept to be rethrown by extract() as it is: cv::dnn's forward (and forwardNet) would
            // otherwise wrap a cv::Exception of the caller's own in a message about the model.
            callbackError_ = std::current_exception();
            throw;
        }
        if (!goOn)
        {
            cancelled_ = true;
            CV_Error(Error::StsError, "cancelled");  // replaced by extract()'s message
        }
    }

    ProgressCallback callback_;
    int reportingLayers_;
    std::vector<double> timedFractions_;  // [k]: before report k + 1; empty: spaced evenly
    std::vector<double> ticks_;
    double last_ = 0;
    bool cancelled_ = false;
    std::exception_ptr callbackError_;
};

class VisionFoundationModelImpl CV_FINAL : public VisionFoundationModel
{
public:
    explicit VisionFoundationModelImpl(const VfmSpec& spec) : spec_(spec)
    {
        checkSpec(spec_);
        if (!utils::fs::exists(spec_.onnxPath))
            CV_Error(Error::StsObjectNotFound,
                     "cv::naf: VFM '" + spec_.name + "': model file '" + spec_.onnxPath + "' is missing" +
                         (spec_.fetchCommand.empty() ? String() : "; get it with: " + spec_.fetchCommand));
        if (!isRegularFile(spec_.onnxPath))  // a FIFO would block cv::dnn's reader
            CV_Error(Error::StsBadArg,
                     "cv::naf: VFM '" + spec_.name + "': model file '" + spec_.onnxPath + "' is not a regular file");
        registerLayers();  // converted graphs use NafGelu and NafSoftmax (tools/vfm/onnx_for_opencv46.py)
        try
        {
            net_ = dnn::readNetFromONNX(spec_.onnxPath);
        }
        catch (const cv::Exception& e)
        {
            CV_Error(Error::StsError, "cv::naf: VFM '" + spec_.name + "': cv::dnn cannot load '" + spec_.onnxPath +
                                          "': " + e.what());
        }
        if (net_.empty())
            CV_Error(Error::StsError, "cv::naf: VFM '" + spec_.name + "': cv::dnn loaded an empty net from '" +
                                          spec_.onnxPath + "'");
        net_.setPreferableBackend(dnn::DNN_BACKEND_OPENCV);
        net_.setPreferableTarget(dnn::DNN_TARGET_CPU);
        reportingLayers_ = detail::countReportingLayers(net_, spec_.outputName);
    }

    const VfmSpec& getSpec() const CV_OVERRIDE { return spec_; }

    void setProgressCallback(const ProgressCallback& callback) CV_OVERRIDE { progress_ = callback; }
    ProgressCallback getProgressCallback() const CV_OVERRIDE { return progress_; }
    int getProgressSteps() const CV_OVERRIDE { return reportingLayers_; }

    void preprocess(InputArray image, OutputArray blob, VfmGeometry* geometry) const CV_OVERRIDE
    {
        Mat src = image.getMat();
        if (src.empty()) CV_Error(Error::StsBadArg, "cv::naf: VFM '" + spec_.name + "': the image is empty");
        if (src.type() != CV_8UC3)
            CV_Error(Error::StsUnsupportedFormat, "cv::naf: VFM '" + spec_.name + "': the image must be CV_8UC3 (BGR), got " +
                                                      typeToString(src.type()));
        if (src.dims != 2)
            CV_Error(Error::StsBadSize, "cv::naf: VFM '" + spec_.name +
                                            format("': the image must be 2-D, got %d dimensions", src.dims));
        if (src.rows < 2 || src.cols < 2)
            CV_Error(Error::StsBadSize, "cv::naf: VFM '" + spec_.name +
                                            format("': the image must be at least 2x2, got %dx%d", src.cols, src.rows));

        VfmGeometry g = geometryFor(src.size());
        Mat resized;
        const bool shrink = g.imageInInput.width < src.cols || g.imageInInput.height < src.rows;
        if (g.imageInInput.size() == src.size())
            resized = src;
        else
            resize(src, resized, g.imageInInput.size(), 0, 0, shrink ? INTER_AREA : INTER_LINEAR);

        const int s = spec_.inputSize;
        const int sizes[4] = {1, 3, s, s};
        Mat out(4, sizes, CV_32F, Scalar(0));  // zero padding (in normalized units, i.e. the mean colour)
        for (int c = 0; c < 3; ++c)
        {
            // network channel c reads image channel 2-c (BGR -> RGB) or c
            const int from = spec_.rgb ? 2 - c : c;
            Mat plane(s, s, CV_32F, out.ptr<float>(0, c));
            Mat roi = plane(g.imageInInput);
            Mat channel;
            extractChannel(resized, channel, from);
            channel.convertTo(roi, CV_32F, 1.0 / spec_.std[c], -spec_.mean[c] / spec_.std[c]);
        }
        blob.assign(out);
        if (geometry) *geometry = g;
    }

    void extract(InputArray image, OutputArray features, VfmGeometry* geometry) CV_OVERRIDE
    {
        // The net holds one input: a second extract() on this object while one runs (from its
        // own progress callback, or another thread) would replace it mid-forward and give the
        // first call wrong features without an error.
        if (busy_.exchange(true))
            CV_Error(Error::StsError, "cv::naf: VFM '" + spec_.name +
                                          "': extract() called while this object's extract() runs (from its progress "
                                          "callback or another thread); use another VisionFoundationModel object");
        struct Release
        {
            std::atomic<bool>& flag;
            ~Release() { flag = false; }
        } release{busy_};
        Mat blob;
        VfmGeometry g;
        preprocess(image, blob, &g);
        net_.setInput(blob);
        Mat out;
        if (progress_)
            out = forwardReporting();
        else
        {
            // No observer of an outer extract() on this thread (one run from a callback) may
            // take this forward's reports.
            detail::ScopedVfmForwardObserver none(nullptr);
            out = forwardNet();
        }
        if (out.dims != 4 || out.size[0] != 1 || out.size[1] != spec_.channels || out.size[2] != g.gridSize.height ||
            out.size[3] != g.gridSize.width || out.type() != CV_32F)
        {
            std::ostringstream shape;
            for (int i = 0; i < out.dims; ++i) shape << (i ? " x " : "") << out.size[i];
            CV_Error(Error::StsUnmatchedSizes,
                     "cv::naf: VFM '" + spec_.name + "': the network output is " + shape.str() + " " +
                         typeToString(out.type()) +
                         format(", the registry expects 1 x %d x %d x %d CV_32F (channels, inputSize / stride)",
                                spec_.channels, g.gridSize.height, g.gridSize.width));
        }
        const Rect cells = g.validCells;
        const int sizes[4] = {1, spec_.channels, cells.height, cells.width};
        Mat cropped(4, sizes, CV_32F);
        for (int c = 0; c < spec_.channels; ++c)
        {
            const Mat plane(g.gridSize, CV_32F, out.ptr<float>(0, c));
            Mat dst(cells.size(), CV_32F, cropped.ptr<float>(0, c));
            plane(cells).copyTo(dst);
        }
        features.assign(cropped);
        if (geometry) *geometry = g;
    }

private:
    // cv::dnn's own failures (an assertion deep in a layer, e.g. a registry input size the graph
    // was not exported for) get the model and its input size in front; ours pass unchanged.
    Mat forwardNet()
    {
        try
        {
            return spec_.outputName.empty() ? net_.forward() : net_.forward(spec_.outputName);
        }
        catch (const cv::Exception& e)
        {
            if (e.err.rfind("cv::naf", 0) == 0) throw;
            CV_Error(e.code, "cv::naf: VFM '" + spec_.name + "': cv::dnn's forward of '" + spec_.onnxPath + "' on a " +
                                 std::to_string(spec_.inputSize) + "x" + std::to_string(spec_.inputSize) +
                                 " input failed (does the registry's input.size match the graph?): " + e.err);
        }
    }

    // The forward with progress reports. The callback runs on this thread only: cv::dnn calls the
    // reporting layers from the thread that called forward().
    Mat forwardReporting()
    {
        ExtractProgress progress(progress_, reportingLayers_, stretchTicks_);
        Mat out;
        try
        {
            progress.start();
            {
                detail::ScopedVfmForwardObserver observe(&progress);
                out = forwardNet();
            }
            std::vector<double> stretches = progress.finish();
            if (!stretches.empty()) stretchTicks_ = std::move(stretches);
        }
        catch (...)
        {
            if (progress.callbackError()) std::rethrow_exception(progress.callbackError());
            if (!progress.cancelled()) throw;
            CV_Error(Error::StsError,
                     "cv::naf: VFM '" + spec_.name + "': extract() cancelled by the progress callback at " +
                         std::to_string(static_cast<int>(progress.lastFraction() * 100)) +
                         " % of the forward; features were not written");
        }
        return out;
    }

    VfmGeometry geometryFor(Size imageSize) const
    {
        VfmGeometry g;
        const int s = spec_.inputSize;
        g.imageSize = imageSize;
        g.inputSize = Size(s, s);
        if (spec_.sizePolicy == "resize")
        {
            g.scale = static_cast<double>(s) / imageSize.width;
            g.imageInInput = Rect(0, 0, s, s);
        }
        else
        {
            g.scale = static_cast<double>(s) / std::max(imageSize.width, imageSize.height);
            const int w = std::min(s, std::max(1, static_cast<int>(std::lround(imageSize.width * g.scale))));
            const int h = std::min(s, std::max(1, static_cast<int>(std::lround(imageSize.height * g.scale))));
            g.imageInInput = Rect(0, 0, w, h);
        }
        const int grid = s / spec_.stride;
        g.gridSize = Size(grid, grid);
        const int cw = (g.imageInInput.width + spec_.stride - 1) / spec_.stride;
        const int ch = (g.imageInInput.height + spec_.stride - 1) / spec_.stride;
        g.validCells = Rect(0, 0, cw, ch);
        return g;
    }

    VfmSpec spec_;
    dnn::Net net_;
    ProgressCallback progress_;
    std::atomic<bool> busy_{false};  // an extract() is running
    int reportingLayers_ = 0;
    std::vector<double> stretchTicks_;  // the last complete reporting forward's, see ExtractProgress
};

}  // namespace

Size coveredOutputSize(const VfmGeometry& g, Size outputSize)
{
    if (outputSize.width <= 0 || outputSize.height <= 0)
        CV_Error(Error::StsBadArg, format("cv::naf::coveredOutputSize: the output size must be positive, got %dx%d",
                                          outputSize.width, outputSize.height));
    if (g.gridSize.width <= 0 || g.gridSize.height <= 0 || g.imageInInput.width <= 0 ||
        g.imageInInput.height <= 0 || g.validCells.width <= 0 || g.validCells.height <= 0 ||
        g.inputSize.width < g.gridSize.width || g.inputSize.height < g.gridSize.height ||
        g.validCells.x < 0 || g.validCells.y < 0 || g.validCells.x + g.validCells.width > g.gridSize.width ||
        g.validCells.y + g.validCells.height > g.gridSize.height)
        CV_Error(Error::StsBadArg,
                 format("cv::naf::coveredOutputSize: empty or inconsistent geometry (grid %dx%d, input %dx%d, image "
                        "in input %dx%d, valid cells %dx%d); pass the one VisionFoundationModel::extract() filled",
                        g.gridSize.width, g.gridSize.height, g.inputSize.width, g.inputSize.height,
                        g.imageInInput.width, g.imageInInput.height, g.validCells.width, g.validCells.height));
    // Network-input pixels under the valid cells, against those under the image.
    const double cellsW = static_cast<double>(g.validCells.width) * g.inputSize.width / g.gridSize.width;
    const double cellsH = static_cast<double>(g.validCells.height) * g.inputSize.height / g.gridSize.height;
    const double w = std::round(outputSize.width * cellsW / g.imageInInput.width);
    const double h = std::round(outputSize.height * cellsH / g.imageInInput.height);
    if (w > std::numeric_limits<int>::max() || h > std::numeric_limits<int>::max())
        CV_Error(Error::StsOutOfRange, format("cv::naf::coveredOutputSize: the covered size of a %dx%d output "
                                              "(%.0fx%.0f) does not fit in int",
                                              outputSize.width, outputSize.height, w, h));
    return Size(std::max(outputSize.width, static_cast<int>(w)), std::max(outputSize.height, static_cast<int>(h)));
}

String VfmRegistry::defaultDirectory()
{
    const char* env = std::getenv("NAF_VFM_REGISTRY");
    if (env && *env) return String(env);
    return utils::fs::join(NAF_SOURCE_MODELS_DIR, "vfm");
}

VfmSpec VfmRegistry::loadFile(const String& jsonPath)
{
    // Regular files only: a FIFO would block the read, /dev/zero never end it.
    if (utils::fs::exists(jsonPath) && !isRegularFile(jsonPath))
        CV_Error(Error::StsBadArg, "cv::naf: VFM registry file '" + jsonPath + "' is not a regular file");
    std::ifstream in(jsonPath, std::ios::binary);
    if (!in) CV_Error(Error::StsObjectNotFound, "cv::naf: VFM registry file '" + jsonPath + "' cannot be opened");
    std::stringstream text;
    text << in.rdbuf();
    json root;
    try
    {
        root = json::parse(text.str());
    }
    catch (const json::exception& e)
    {
        CV_Error(Error::StsParseError, "cv::naf: VFM registry file '" + jsonPath + "' is not valid JSON: " + e.what());
    }
    const FieldReader r(jsonPath, root);
    if (!root.is_object()) r.fail("(top level)", &root, "must be an object");
    r.onlyKeys("", root, {"display_name", "onnx", "fetch", "source", "input", "output", "license", "notes"});
    r.onlyKeys("input", r.object("input"), {"size", "size_policy", "color_order", "mean", "std"});
    r.onlyKeys("output", r.object("output"), {"name", "channels", "stride"});
    if (const json* source = r.find("source", false))
        if (!source->is_object()) r.fail("source", source, "must be an object");
    if (const json* notes = r.find("notes", false))
        if (!notes->is_string()) r.fail("notes", notes, "must be a string");

    VfmSpec spec;
    spec.name = fileStem(jsonPath);
    spec.displayName = r.string("display_name", true, false);
    spec.onnxPath = r.string("onnx", true, false);
    if (!isAbsolute(spec.onnxPath))
    {
        // Relative to the project root, the folder holding models/ (the entry's grandparent
        // folder); taken from the entry's absolute, normalized path, so that a relative registry
        // ("vfm/x.json", "./x.json") works too.
        const std::filesystem::path entry = std::filesystem::absolute(jsonPath).lexically_normal();
        spec.onnxPath = (entry.parent_path().parent_path().parent_path() / spec.onnxPath).lexically_normal().string();
    }
    spec.fetchCommand = r.string("fetch", false, true);
    spec.inputSize = r.integer("input.size", kMinInputSize, kMaxInputSize);
    spec.sizePolicy = r.string("input.size_policy", true, false);
    if (std::find(std::begin(kSizePolicies), std::end(kSizePolicies), spec.sizePolicy) == std::end(kSizePolicies))
        r.fail("input.size_policy", r.find("input.size_policy", true), "must be \"longest_side_pad\" or \"resize\"");
    const String order = r.string("input.color_order", true, false);
    if (order != "RGB" && order != "BGR") r.fail("input.color_order", r.find("input.color_order", true), "must be \"RGB\" or \"BGR\"");
    spec.rgb = order == "RGB";
    spec.mean = r.triple("input.mean", false);
    spec.std = r.triple("input.std", true);
    spec.outputName = r.string("output.name", false, true);
    spec.channels = r.integer("output.channels", 1, 1 << 20);
    spec.stride = r.integer("output.stride", 1, kMaxInputSize);
    if (spec.inputSize % spec.stride != 0)
        r.fail("output.stride", r.find("output.stride", true),
               format("must divide input.size (%d) so that the feature grid is whole", spec.inputSize));
    spec.license = r.string("license", true, false);
    return spec;
}

std::vector<VfmSpec> VfmRegistry::loadDirectory(const String& directory)
{
    const String dir = directory.empty() ? defaultDirectory() : directory;
    if (!utils::fs::isDirectory(dir))
        CV_Error(Error::StsObjectNotFound, "cv::naf: VFM registry folder '" + dir + "' does not exist");
    std::vector<String> files;
    utils::fs::glob(dir, "*.json", files, false, false);
    std::sort(files.begin(), files.end());
    std::vector<VfmSpec> specs;
    for (const String& f : files) specs.push_back(loadFile(f));
    return specs;
}

VfmSpec VfmRegistry::find(const String& name, const String& directory)
{
    const String dir = directory.empty() ? defaultDirectory() : directory;
    const String path = utils::fs::join(dir, name + ".json");
    if (!name.empty() && name.find('/') == String::npos && utils::fs::exists(path)) return loadFile(path);
    String known;
    if (utils::fs::isDirectory(dir))
    {
        std::vector<String> files;
        utils::fs::glob(dir, "*.json", files, false, false);
        std::sort(files.begin(), files.end());
        for (const String& f : files)
            if (endsWith(f, ".json")) known += (known.empty() ? "" : ", ") + fileStem(f);
    }
    CV_Error(Error::StsObjectNotFound, "cv::naf: no VFM named '" + name + "' in registry folder '" + dir +
                                           "' (known: " + (known.empty() ? String("none") : known) + ")");
}

Ptr<VisionFoundationModel> VisionFoundationModel::create(const VfmSpec& spec)
{
    return makePtr<VisionFoundationModelImpl>(spec);
}

Ptr<VisionFoundationModel> VisionFoundationModel::create(const String& name)
{
    return create(VfmRegistry::find(name));
}

}  // namespace naf
}  // namespace cv
