// The Qt-free core shared by the viewer (naf_viewer) and the batch command (naf_batch):
// image -> VFM features -> upsampling with the chosen methods -> visualizations.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/naf.hpp>
#include <opencv2/naf/vfm.hpp>
#include <opencv2/naf/visualize.hpp>

namespace naf_app {

/// The methods the viewer and naf_batch compare by default: nearest, bilinear, bicubic, the
/// guided filter (where this build of cv::naf has ximgproc) and NAF. The joint bilateral filter is
/// left out: at 256 channels it takes tens of seconds per image.
std::vector<int> defaultUpsampleMethods();

/// What to compute for one image.
struct PipelineSettings
{
    std::string vfmName = "mobilesam";  ///< registry name (models/vfm/<name>.json)
    int outputLongSide = 448;           ///< output resolution: the image's long side is scaled to this
    std::vector<int> methods = defaultUpsampleMethods();
    std::string nafWeightsPath;         ///< empty: cv::naf default weights
    int nafBackend = cv::naf::BACKEND_AUTO;           ///< cv::naf::Backend of the NAF method
    int gpuPrecision = cv::naf::GPU_PRECISION_FP32;   ///< cv::naf::GpuPrecision (the CUDA backend's encoder)
};

/// Command-line / settings names of cv::naf::Backend: "auto", "cpu", "cuda".
std::string nafBackendName(int backend);
/// @throws cv::Exception naming `name` and the accepted names when it is none of them.
int nafBackendFromName(const std::string& name);
/// Command-line / settings names of cv::naf::GpuPrecision: "fp32", "tf32", "fp16".
std::string gpuPrecisionName(int precision);
/// @throws cv::Exception naming `name` and the accepted names when it is none of them.
int gpuPrecisionFromName(const std::string& name);

/// Gives `naf` the settings' backend and GPU precision (the module's setters, with their errors:
/// BACKEND_CUDA where CUDA is unavailable throws the module's cv::Exception).
void configureNaf(cv::naf::NAF& naf, const PipelineSettings& settings);

/// Thrown by Pipeline::run() when the progress callback asked to stop.
class Cancelled : public std::runtime_error
{
public:
    Cancelled() : std::runtime_error("cancelled") {}
};

/// Wall time of one stage, milliseconds.
struct StageTiming
{
    std::string stage;
    double milliseconds = 0;
};

/// Everything computed for one image.
struct PipelineResult
{
    cv::Mat image;                       ///< the input, CV_8UC3 BGR
    cv::Mat guide;                       ///< the input resized to outputSize (what the panels show)
    cv::Size outputSize;
    /// The area the feature cells cover, in output pixels (cv::naf::coveredOutputSize): outputSize
    /// plus the part of the last cell row/column that lies in the network's padding. Every method
    /// upsamples onto it, guided by coveredGuide (guide padded with black, as the network saw the
    /// image), and keeps the top-left outputSize, so each cell stays where it lies in the image.
    /// Empty in a result built by hand: then the cells span outputSize and guide is the guide.
    cv::Size coveredSize;
    cv::Mat coveredGuide;
    cv::Mat lowRes;                      ///< 1 x C x h x w CV_32F from the VFM
    cv::naf::VfmGeometry geometry;
    std::map<int, cv::Mat> upsampled;    ///< method -> 1 x C x H x W CV_32F
    cv::naf::FeaturePca pca;             ///< fitted on lowRes, shared by every rendering
    std::vector<StageTiming> timings;
    std::string vfmName, vfmDisplayName, device, weightsInfo;
    PipelineSettings settings;           ///< what it was computed with (device says where NAF ran)

    double totalMilliseconds() const;
    /// "vfm 3300 ms · nearest 2 ms · ... " for status bars and logs.
    std::string timingSummary() const;
};

/// Progress callback: fraction in [0, 1] and the stage starting; return false to cancel.
using ProgressFn = std::function<bool(double fraction, const std::string& stage)>;

/// Output size for an image: long side = longSide, aspect kept, each side >= 1.
cv::Size outputSizeFor(cv::Size image, int longSide);

/// Bytes the feature maps of one run take for an image of this size: one output-sized map per
/// method plus two more (the NAF call's scratch and the PCA/k-means copies), 4 bytes a value.
double estimatedRunBytes(const PipelineSettings& settings, cv::Size image);

/// This machine's physical memory in bytes (0 when unknown).
double physicalMemoryBytes();

/// Throws cv::Exception (StsNoMem) naming the size, channels, methods and both amounts when
/// `concurrentRuns` runs of this image would take more than 60 % of the physical memory.
void checkRunFitsInMemory(const PipelineSettings& settings, cv::Size image, int concurrentRuns = 1);

/// Runs the pipeline, caching the loaded VFM and NAF objects between calls. One Pipeline per
/// thread (cv::dnn nets and NAF objects are not shared across threads).
class Pipeline
{
public:
    /// Validates the settings (known methods, size in [16, 4096], VFM in the registry, known NAF
    /// backend and GPU precision, CUDA usable when asked for) with a cv::Exception naming the bad
    /// value; a CUDA request where there is none gets the module's own refusal.
    static void validate(const PipelineSettings& settings);
    /// Throws cv::Exception (StsObjectNotFound) naming the model's ONNX file and how to fetch it
    /// when that file is missing (or not a regular file): for callers that must know before any
    /// image is computed (naf_batch, naf_viewer --check-model).
    static void checkModelFile(const cv::naf::VfmSpec& spec);

    /// @throws cv::Exception (unreadable model, bad sizes...) or Cancelled.
    PipelineResult run(const cv::Mat& bgr, const PipelineSettings& settings, const ProgressFn& progress = ProgressFn());

    /// The VFM for a registry name (loaded once).
    cv::Ptr<cv::naf::VisionFoundationModel> vfm(const std::string& name);
    /// The NAF upsampler for a weights path (loaded once).
    cv::Ptr<cv::naf::NAF> naf(const std::string& weightsPath);

private:
    std::map<std::string, cv::Ptr<cv::naf::VisionFoundationModel>> vfms_;
    std::map<std::string, cv::Ptr<cv::naf::NAF>> nafs_;
};

/// Attention of one output pixel and the similarity of its feature to every other pixel.
struct PixelInspection
{
    cv::Point pixel;             ///< output pixel (x, y)
    cv::Mat attentionGrid;       ///< h x w CV_32F: NAF weight of each low-res cell (mean over heads), 0 outside the window
    cv::Rect window;             ///< the low-res window's bounding box
    cv::Mat similarity;          ///< H x W CV_32F cosine similarity, of the `similarityMethod` features
    int similarityMethod = cv::naf::UPSAMPLE_NAF;
};

/// Re-runs NAF with an attention probe at `pixel` (output coordinates) and computes the
/// similarity map of `similarityMethod`'s features (that method must be in result.upsampled).
PixelInspection inspectPixel(const PipelineResult& result, cv::naf::NAF& naf, cv::Point pixel, int similarityMethod);

/// The inspected low-res window in output pixels, grown by `marginCells` cells on each side and
/// clipped to the output (for zoomed views of the attention).
cv::Rect windowInOutput(const PipelineResult& result, const PixelInspection& inspection, int marginCells = 0);

/// Renderings, all CV_8UC3 BGR of result.outputSize.
cv::Mat renderLowResPca(const PipelineResult& result);
cv::Mat renderMethodPca(const PipelineResult& result, int method);
/// Attention grid as a heat map on the low-res grid (nearest-scaled), blended over the guide,
/// window outlined and the pixel marked.
cv::Mat renderAttention(const PipelineResult& result, const PixelInspection& inspection);
/// The same around the window only (windowInOutput with marginCells), zoomed by a whole factor
/// to about `side` pixels (nearest: cells stay sharp), the pixel marked after zooming.
cv::Mat renderAttentionInset(const PipelineResult& result, const PixelInspection& inspection, int marginCells,
                             int side);
/// The similarity map's colour-scale ends: its minimum and maximum (1 at the pixel itself), so
/// the palette spans the values (a VFM's features are mostly alike: on -1..1 half of it went unused).
std::pair<double, double> similarityRange(const PixelInspection& inspection);
/// Similarity as a colour map over similarityRange() (blue .. red), the pixel marked.
cv::Mat renderSimilarity(const PipelineResult& result, const PixelInspection& inspection);
/// Labels (H x W CV_32S) coloured over the guide with opacity alpha in [0, 1].
cv::Mat renderLabels(const PipelineResult& result, const cv::Mat& labels, double alpha);

/// A trained linear classifier on the VFM's features ("linear probe"): scores = weight * f + bias.
///
/// File format (safetensors): tensor "weight" F32 [K, C], tensor "bias" F32 [K], metadata
/// "classes": a JSON array of K class names, "vfm": the registry name it was trained for.
/// Looked up as <registry folder>/<vfm>.probe.safetensors.
struct ProbeHead
{
    std::string path, vfmName;
    std::vector<std::string> classes;
    cv::Mat weight;  ///< K x C CV_32F
    cv::Mat bias;    ///< K x 1 CV_32F

    /// @throws cv::Exception on a missing/invalid file, naming the problem.
    static ProbeHead load(const std::string& path);
    /// Where the probe head of a registry entry is expected.
    static std::string expectedPath(const std::string& vfmName, const std::string& registryDir = std::string());
    /// Per-pixel argmax class of a 1 x C x H x W blob: H x W CV_32S. @throws if C differs.
    cv::Mat classify(const cv::Mat& features) const;
};

}  // namespace naf_app
