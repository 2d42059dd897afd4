// This file is part of cv::naf. See docs/ARCHITECTURE.md for the data flow.
#ifndef OPENCV_NAF_VFM_HPP
#define OPENCV_NAF_VFM_HPP

#include <opencv2/core.hpp>

#include "opencv2/naf/naf.hpp"  // ProgressCallback

namespace cv {
namespace naf {

//! @addtogroup naf
//! @{

/** @brief One registered vision foundation model: the parsed `models/vfm/<name>.json`.

Every field is validated when the registry entry is loaded (VfmRegistry), with a cv::Exception
naming the file, the field and the offending value. */
struct CV_EXPORTS VfmSpec
{
    String name;            //!< registry key, e.g. "mobilesam" (the JSON file's stem)
    String displayName;     //!< human-readable name, e.g. "MobileSAM image encoder (TinyViT-5M)"
    String onnxPath;        //!< absolute path of the ONNX file cv::dnn loads (may not exist yet)
    String fetchCommand;    //!< how to obtain onnxPath when it is missing (a project script)
    String sizePolicy;      //!< "longest_side_pad": longest side scaled to inputSize, zero-padded
                            //!< bottom/right; "resize": stretched to inputSize x inputSize
    int inputSize = 0;      //!< network input side in pixels (square input)
    bool rgb = true;        //!< the network expects RGB (else BGR)
    Scalar mean;            //!< per-channel mean subtracted, in 0..255 units, network channel order, in [-1e6, 1e6]
    Scalar std;             //!< per-channel std divided by, in 0..255 units, network channel order, in [1e-6, 1e6]
    int stride = 0;         //!< input pixels per feature cell (patch size), e.g. 16
    String outputName;      //!< ONNX output holding the features ("" = the graph's first output)
    int channels = 0;       //!< feature channels C, in [1, 2^20]
    String license;         //!< licence of the weights, e.g. "Apache-2.0"
};

/** @brief Loads and validates the model registry, one JSON file per model.

File format (`models/vfm/mobilesam.json` is the example; unknown fields are rejected):
@code{.json}
{
  "display_name": "MobileSAM image encoder (TinyViT-5M + SAM neck)",
  "onnx": "models/cache/mobilesam_encoder_1024_cv46.onnx",   // relative: to the project root
  "fetch": "bash scripts/fetch_models.sh",                    // optional
  "source": { ... },                                          // optional, free-form provenance
  "input": {"size": 1024, "size_policy": "longest_side_pad", "color_order": "RGB",
            "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
  "output": {"name": "output", "channels": 256, "stride": 16},
  "license": "Apache-2.0",
  "notes": "..."                                              // optional
}
@endcode
input.size in [16, 8192]; output.stride divides input.size; output.channels in [1, 2^20]; every
std value in [1e-6, 1e6] and mean value in [-1e6, 1e6]; colour order "RGB" or "BGR";
size policy "longest_side_pad" or "resize"; output.name may be "" (the graph's first output). */
class CV_EXPORTS VfmRegistry
{
public:
    /** @brief The registry folder: $NAF_VFM_REGISTRY when set, else models/vfm of the source tree. */
    static String defaultDirectory();
    /** @brief Parses one registry file. Relative ONNX paths resolve against the project root
    (the parent of the registry folder's parent). @throws cv::Exception on any invalid field. */
    static VfmSpec loadFile(const String& jsonPath);
    /** @brief Every `*.json` of a folder, sorted by name. @throws cv::Exception on the first bad file. */
    static std::vector<VfmSpec> loadDirectory(const String& directory = String());
    /** @brief The entry called `name` in the folder. @throws cv::Exception listing the known names. */
    static VfmSpec find(const String& name, const String& directory = String());
};

/** @brief Where a feature map lies in the image it was computed from. */
struct CV_EXPORTS VfmGeometry
{
    Size imageSize;     //!< the original image
    double scale = 1;   //!< network-input pixels per image pixel (x and y; for sizePolicy "resize":
                        //!< x only, y is inputSize.height / imageSize.height)
    Size inputSize;     //!< network input (inputSize x inputSize)
    Rect imageInInput;  //!< where the scaled image lies in the network input (the rest is padding)
    Size gridSize;      //!< full feature grid of the network (w x h)
    Rect validCells;    //!< grid cells that overlap the image; extract() returns only these
};

/** @brief The size, in pixels of an output of `outputSize` (the whole image scaled to it), of the
area that the valid feature cells cover.

The last cell row and column usually reach past the image into the network's padding, so the cells
cover more than the image. The result is outputSize where they end at the image border, and larger
by that extra part where they do not. Upsampling the features straight to outputSize stretches
the grid by up to one cell. To keep every cell where it lies in the image:
- pad the guide at the right and bottom to this size (black, as the network saw it);
- upsample onto this size;
- keep the top-left outputSize.

@code
    cv::Size covered = cv::naf::coveredOutputSize(geometry, image.size());
    cv::Mat guide, full;
    cv::copyMakeBorder(image, guide, 0, covered.height - image.rows, 0, covered.width - image.cols,
                       cv::BORDER_CONSTANT, cv::Scalar::all(0));
    cv::naf::upsample(guide, lowRes, full, covered);  // then crop rows/cols to image.size()
@endcode
@param geometry as filled by VisionFoundationModel::extract().
@param outputSize positive size of the output the image is scaled to.
@throws cv::Exception when the geometry is empty or inconsistent, or outputSize is not positive. */
CV_EXPORTS Size coveredOutputSize(const VfmGeometry& geometry, Size outputSize);

/** @brief Runs a registered vision foundation model with cv::dnn and returns its low-resolution
feature map, ready for cv::naf::upsample().

cv::dnn runs on the CPU (DNN_BACKEND_OPENCV) with cv::setNumThreads() threads. An object holds a
cv::dnn::Net: use one object per thread.

Example:
@code
    cv::Ptr<cv::naf::VisionFoundationModel> vfm = cv::naf::VisionFoundationModel::create("mobilesam");
    cv::Mat image = cv::imread("photo.jpg"), lowRes, features;
    cv::naf::VfmGeometry geometry;
    vfm->extract(image, lowRes, &geometry);          // 1 x 256 x h x w, cells covering the image
    cv::naf::upsample(image, lowRes, features, image.size());  // stretches the grid by < 1 cell:
                                                     // coveredOutputSize() says how to avoid it
@endcode
*/
class CV_EXPORTS VisionFoundationModel : public Algorithm
{
public:
    /** @brief Loads the model of a registry entry. @throws cv::Exception when the ONNX file is
    missing (the message gives spec.fetchCommand) or cv::dnn cannot load it. */
    static Ptr<VisionFoundationModel> create(const VfmSpec& spec);
    /** @brief Same, by registry name in VfmRegistry::defaultDirectory(). */
    static Ptr<VisionFoundationModel> create(const String& name);

    /** @brief The registry entry this model was created from. */
    virtual const VfmSpec& getSpec() const = 0;

    /** @brief Features of one image.
    @param image CV_8UC3 BGR (as cv::imread gives), at least 2x2.
    @param features 4-D CV_32F 1 x C x h x w: the grid cells that overlap the image
    (geometry.validCells), NCHW, continuous.
    @param geometry optional: how the grid maps back to the image. */
    virtual void extract(InputArray image, OutputArray features, VfmGeometry* geometry = nullptr) = 0;

    /** @brief Calls `callback` during each extract(), on the thread that called it, with the
    fraction of the call done: 0 at the start, once as each cv::naf layer of the graph starts
    (getProgressSteps() of them), and 1 at the end. The first extract() with a callback spaces
    the fractions evenly over those layers; each later one uses the times between the reports
    of the previous one, so that the fraction tracks the elapsed time (every call feeds the
    network the same input size). The net's first forward also sets it up, so the call after it
    is off by a few percent more than the ones after that (MobileSAM: up to 6 %, then 1-3 %).

    A false return cancels the call: extract() throws cv::Exception (Error::StsError, "cancelled
    by the progress callback") and leaves `features` and `geometry` as they were. An exception
    thrown by the callback leaves the same way, as itself. Either way the object stays usable,
    and its next call gives the usual features.

    Graphs converted without cv::naf's layers (`export_vfm.py --no-naf-layers`, or any plain
    ONNX graph) report only 0 and 1, so a cancel there waits for the whole forward.
    @param callback called with a fraction in [0, 1], non-decreasing within a call; an empty
    function (the default) turns reporting off. */
    virtual void setProgressCallback(const ProgressCallback& callback) = 0;
    /** @brief The callback set by setProgressCallback() (empty by default). */
    virtual ProgressCallback getProgressCallback() const = 0;
    /** @brief How many reports an extract() makes between 0 and 1: the number of cv::naf layers
    (NafGelu, NafSoftmax, NafMatMul, NafLayerNorm, NafConv1x1) that cv::dnn runs up to the
    registry's output layer (all of them when it is the last); 0 for a plain graph. */
    virtual int getProgressSteps() const = 0;

    /** @brief The network input blob extract() would feed (1 x 3 x inputSize x inputSize, CV_32F,
    normalized), for checks against other implementations. */
    virtual void preprocess(InputArray image, OutputArray blob, VfmGeometry* geometry = nullptr) const = 0;
};

//! @}

}  // namespace naf
}  // namespace cv

#endif
