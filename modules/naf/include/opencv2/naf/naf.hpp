// This file is part of cv::naf. See docs/ARCHITECTURE.md for the data flow.
#ifndef OPENCV_NAF_NAF_HPP
#define OPENCV_NAF_NAF_HPP

#include <functional>

#include <opencv2/core.hpp>

namespace cv {
namespace naf {

//! @addtogroup naf
//! @{

/** @brief Where the computation runs. */
enum Backend
{
    /** CUDA when this build has it and a device is present, else CPU; also the CPU for a call whose
    scratch does not fit in the device's free memory (decided per call, with a warning in
    OpenCV's log; the same result as BACKEND_CPU) */
    BACKEND_AUTO = 0,
    BACKEND_CPU = 1,   //!< multi-threaded CPU path (cv::setNumThreads() controls the threads)
    /** CUDA path; cv::Exception when unavailable, and Error::StsNoMem (before dst is written) for a
    call whose scratch does not fit in the device's free memory */
    BACKEND_CUDA = 2
};

/** @brief Numeric precision of the image encoder on the CUDA backend (NAF::setGpuPrecision()).

Only the encoder (the two convolution branches that turn the guide image into queries) is
reduced; queries, keys, values and the attention are float32 in every mode. The CPU backend
ignores this setting and always computes in float32.

Measured on one H100 (docs/PERFORMANCE.md): "vs FP32" is the relative L2 of the output against
the FP32 output of the same GPU, random weights; "shipped weights" is the relative L2 of the
mode's rounding emulated on the CPU with the default (trained) weights
(tools/reduced_precision_study.py). */
enum GpuPrecision
{
    /** float32 everywhere (default). Matches the CPU path to float32 rounding (relative L2 1e-7
    to 5e-7). */
    GPU_PRECISION_FP32 = 0,
    /** The encoder's convolutions on TF32 tensor cores: their operands rounded to a 10-bit
    mantissa, float32 accumulation and storage. vs FP32 1.8e-5 to 2.5e-5, shipped weights 1.4e-4
    to 4.9e-4 (at most 7e-4 over every configuration measured on H100/H200). The encoder runs
    2-2.5x faster than in FP32; paper configuration (448x448 output) 4.45 ms instead of 9.63 ms.
    Takes any finite input. */
    GPU_PRECISION_TF32 = 1,
    /** The encoder in float16: the guide, the convolution outputs and the GroupNorm+SiLU
    activations stored in float16, the convolutions on FP16 tensor cores with float32
    accumulation, GroupNorm statistics in double. The last convolution of each branch, where the
    queries come from, runs as in TF32. vs FP32 2.2e-5 to 3.1e-5, shipped weights 1.5e-4 to
    4.8e-4, i.e. about TF32's error. Time against TF32 (H100, one run): 448x448 3.67 ms (TF32
    4.45), 896x896 13.5 ms (16.7), 1024x1024 16.8 ms (21.0), 2016x2016 66.8 ms (82.9).
    An encoder value beyond float16's range (65504; e.g. a guide blob far outside [0, 1]) makes
    the call fail with cv::Exception (Error::StsError, carrying the engine's message) before any
    output is written, so dst is left untouched; FP32 and TF32 take such input. */
    GPU_PRECISION_FP16 = 2
};

/** @brief Channel order of 8-bit guide images. */
enum ImageColorOrder
{
    IMAGE_BGR = 0,  //!< OpenCV's usual order (cv::imread)
    IMAGE_RGB = 1   //!< RGB, e.g. frames from other libraries
};

/** @brief Progress callback of NAF::upsample() and NAF::upsampleBlob(), see
NAF::setProgressCallback().
@param fraction the estimated fraction of the call's work done, in [0, 1].
@return true to go on, false to cancel the call. */
typedef std::function<bool(double fraction)> ProgressCallback;

/** @brief Neighborhood Attention Filtering (NAF): upsamples the low-resolution feature map of any
vision foundation model to an arbitrary output size, guided by the full-resolution image
(arXiv 2511.18452, official PyTorch code: github valeoai/NAF).

The forward equals the official one: the guide image is normalized with ImageNet mean/std, resized
(bilinear, half-pixel) when larger than 4x the output on either side, encoded by two convolution
branches (1x1 and 3x3, 128 channels each), average-pooled to the output grid and rotated with RoPE
(the queries); the keys are the queries pooled to the low-resolution grid; each output pixel
attends, with 4 heads, over a kernelSize x kernelSize neighborhood of the low-resolution features
(the values). Keys and values are read at low resolution: no upsampled copy is ever made.

Window rule: NATTEN's dilated window on the output grid with dilation out/low (integer division)
per axis, keys mapped back with PyTorch's nearest-exact rule. When the low-resolution grid is
smaller than the kernel on an axis (the official code fails there), the kernel along that axis
becomes the axis length and the window is placed by the same rule: for an output size that is a
multiple of the grid it is the whole low-resolution axis; for other sizes a key may repeat and
another be left out, as elsewhere (3 rows to 10 output rows: rows 0, 1, 1 at the top).

An object holds its weights and a pool of scratch memory and is reused across calls. On the CPU
the output itself serves as scratch until it is written (the queries when the features have at
least 256 channels, and, when the guide is pooled to the output size, the encoder's 128-channel
activation buffers where room is left; a guide of the output size needs none), so a call's peak
memory is little more than its output: 2016x2016 from 384 channels peaks at 6.0 GiB, of which
the output is 5.8; 1024x1024 from MobileSAM's 256 channels at 1.1 GiB, of which the output is 1.0.

Thread safety: every method may be called from any thread. upsample() and upsampleBlob() calls on
one shared object run concurrently, each with its own scratch memory taken from the object's pool,
and give bit-identical results to the same calls made one after another (the CUDA backend runs
the calls of one object one at a time on its device engine). Settings (setKernelSize(),
setBackend(), setImageColorOrder(), setAttentionProbe(), setGpuPrecision() and its shorthand
setUseTF32()) are read once when a call starts: a call never sees half of a change, but a setter
racing with a call may or may not apply to it, so configure first, then share. The same holds
for setProgressCallback(): a shared object's callback is called by every call, each from its own
thread.
getAttentionWeights() and getActiveBackend() report the last call that finished.

Limits: a call whose memory (output, scratch, guide copies) would exceed getMemoryBudget() is
refused with cv::Exception (Error::StsNoMem) stating the bytes needed and the budget, before
anything is allocated; all size arithmetic is checked for overflow.

Example:
@code
    cv::Mat image = cv::imread("photo.jpg");                     // 8-bit BGR
    cv::Mat lowRes = net.forward();                               // 1 x C x h x w, CV_32F, from cv::dnn
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create();          // the shipped weights (getDefaultWeightsPath())
    cv::Mat upsampled;                                            // 1 x C x H x W, CV_32F
    naf->upsample(image, lowRes, upsampled, image.size());
    std::cout << naf->getWeightsInfo() << std::endl;             // which weights were used
@endcode
*/
class CV_EXPORTS_W NAF : public Algorithm
{
public:
    /** @brief Creates an upsampler.
    @param weightsPath NAF weights in the cv::naf safetensors format (docs/FORMATS.md; the
    official `naf_release.pth` converts with tools/convert_official_checkpoint.py). Empty: the
    default weights (getDefaultWeightsPath()), or, when there are none, randomly initialized
    weights with a warning in the log. getWeightsInfo() always says which.
    @throws cv::Exception when the file is missing, not a regular file, larger than
    getMemoryBudget(), truncated, not valid NAF weights, or its tensor data does not match the
    `data_sha256` in its metadata (verified when present; getWeightsInfo() says whether it was).
    */
    CV_WRAP static Ptr<NAF> create(const String& weightsPath = String());

    /** @brief Creates an upsampler with reproducible random (untrained) weights, PyTorch's
    default initialization drawn from `seed`. For tests and experiments. */
    CV_WRAP static Ptr<NAF> createRandom(int seed = 0);

    /** @brief Upsamples low-resolution features to dstSize.
    @param image guide image(s): one CV_8UC3 Mat (batch 1) or a vector of N CV_8UC3 Mats (one per
    batch item; sizes may differ), at least 2x2, channel order as setImageColorOrder() (BGR by default).
    @param lowResFeatures 4-D CV_32F blob N x C x h x w (NCHW, as cv::dnn produces), finite (a
    non-continuous one is copied first); C a multiple of the 4 attention heads (each head takes C/4 consecutive channels).
    @param dst output, 4-D CV_32F N x C x dstSize.height x dstSize.width. As with
    Mat::create(), a continuous dst that already has this shape and type is written in place
    (reuse one Mat across calls to avoid a fresh allocation per call, which costs page faults;
    on BACKEND_CUDA this holds for one image, and a batch always gets a new buffer); otherwise dst
    gets a new buffer. Input that is refused leaves dst untouched.
    @param dstSize output size, at least w x h.
    */
    CV_WRAP virtual void upsample(InputArrayOfArrays image, InputArray lowResFeatures, OutputArray dst,
                                  Size dstSize) = 0;

    /** @brief Same as upsample(), with the guide images as a 4-D CV_32F blob N x 3 x H x W, RGB,
    values in [0, 1] (`cv::dnn::blobFromImage(img, 1/255., Size(), Scalar(), true)`). Used by the
    cv::dnn layer. */
    CV_WRAP virtual void upsampleBlob(InputArray imageBlob, InputArray lowResFeatures, OutputArray dst,
                                      Size dstSize) = 0;

    /** @brief Records the attention of one output pixel during the next upsample() calls.
    @param pixel output pixel (x, y); Point(-1, -1) switches recording off; any other negative
    coordinate is refused (StsOutOfRange), as is a pixel outside the output when a call runs. */
    CV_WRAP virtual void setAttentionProbe(Point pixel) = 0;
    CV_WRAP virtual Point getAttentionProbe() const = 0;

    /** @brief Attention recorded by the last upsample() call that finished; a call made without a
    probe records nothing, so this then throws.
    @param weights 4-D CV_32F N x heads x kh x kw softmax weights (each head sums to 1).
    @param lowResPositions kh x kw CV_32SC2: the (x, y) low-resolution position of each window entry.
    @throws cv::Exception when nothing was recorded. */
    CV_WRAP virtual void getAttentionWeights(OutputArray weights, OutputArray lowResPositions) const = 0;

    /** @brief Neighborhood size (odd, in [1, 63]; default from the weights' metadata, 9). */
    CV_WRAP virtual void setKernelSize(int kernelSize) = 0;
    CV_WRAP virtual int getKernelSize() const = 0;

    /** @brief Backend, see cv::naf::Backend (default BACKEND_AUTO). */
    CV_WRAP virtual void setBackend(int backend) = 0;
    CV_WRAP virtual int getBackend() const = 0;
    /** @brief The backend the last call ran on (BACKEND_CPU or BACKEND_CUDA). */
    CV_WRAP virtual int getActiveBackend() const = 0;
    /** @brief Precision of the encoder on the CUDA backend, see cv::naf::GpuPrecision (default
    GPU_PRECISION_FP32). The CPU backend, also when BACKEND_AUTO falls back to it, ignores it and
    computes in float32.
    @param precision GPU_PRECISION_FP32, GPU_PRECISION_TF32 or GPU_PRECISION_FP16.
    @throws cv::Exception (Error::StsOutOfRange) naming the value for any other; the setting is
    then unchanged. */
    CV_WRAP virtual void setGpuPrecision(int precision) = 0;
    CV_WRAP virtual int getGpuPrecision() const = 0;
    /** @brief Shorthand of setGpuPrecision(): true selects GPU_PRECISION_TF32, false
    GPU_PRECISION_FP32. */
    CV_WRAP virtual void setUseTF32(bool enable) = 0;
    /** @brief True when getGpuPrecision() is GPU_PRECISION_TF32 (false for FP32 and FP16). */
    CV_WRAP virtual bool getUseTF32() const = 0;

    /** @brief Reports the progress of each upsample() and upsampleBlob() call, and lets the caller
    cancel it.

    The callback runs on the thread that called upsample(), never on a worker thread, so it may
    update a progress bar's model or check a cancel flag; keep it short (the computation waits
    for it).
    - CPU backend: about 30 calls per image: 0 at the start, after each convolution of the guide
      encoder, 16 times during the attention, and 1 at the end. The fraction follows the elapsed
      time within a few percent (a per-stage cost model measured on the CPU kernels); at
      2016x2016 two reports are at most ~1 s apart on 2 cores.
    - CUDA backend: at the start and the end of each image (the work is asynchronous on the
      device).
    - A batch of N images reports (i + f) / N for image i.

    Returning false cancels the call: upsample() throws cv::Exception (Error::StsError, its
    message says "cancelled by the progress callback" and at which fraction) and dst is released
    (left empty), because dst may have served as the computation's scratch. An exception thrown
    by the callback itself also releases dst and leaves upsample() unchanged (the same type and
    message, not wrapped in a cv::Exception), so a caller can catch its own type. The object
    stays usable, and later calls give the usual results.
    @param callback the callback; an empty one (the default) switches progress reporting off.
    Read when a call starts, like the other settings.

    @code
        std::atomic<bool> stop{false};                      // set from a UI thread
        naf->setProgressCallback([&](double fraction) {
            std::printf("\rNAF %3d %%", static_cast<int>(100 * fraction));
            return !stop.load();
        });
    @endcode
    */
    virtual void setProgressCallback(const ProgressCallback& callback) = 0;
    /** @brief The callback set by setProgressCallback() (empty by default). */
    virtual ProgressCallback getProgressCallback() const = 0;

    /** @brief Channel order of 8-bit guide images, see cv::naf::ImageColorOrder (default IMAGE_BGR). */
    CV_WRAP virtual void setImageColorOrder(int order) = 0;
    CV_WRAP virtual int getImageColorOrder() const = 0;

    /** @brief One line saying which weights are loaded: the file (or "random-init, seed S"),
    its source, and whether they are trained. */
    CV_WRAP virtual String getWeightsInfo() const = 0;
    /** @brief True unless the weights are a random initialization. */
    CV_WRAP virtual bool isTrained() const = 0;
    /** @brief The weights' metadata as JSON text (`naf_config` and `naf_provenance`). */
    CV_WRAP virtual String getWeightsMetadata() const = 0;

    /** @brief Sets the process-wide memory budget of one call (bytes, for all NAF objects, the
    one-shot cv::naf::upsample() and the cv::dnn layer). A request whose estimated memory (output
    blob + scratch + guide copies; weight files: their size) exceeds it is refused with
    cv::Exception (Error::StsNoMem) naming the bytes requested and the budget, instead of the process
    being killed by the out-of-memory killer. Concurrent calls each get the whole budget.
    @param bytes the budget; 0 restores the default: the environment variable NAF_MEMORY_BUDGET
    (bytes, or with a K, M, G or T suffix, e.g. `512M`) when set, else min(8 GiB, half the physical
    memory). */
    CV_WRAP static void setMemoryBudget(size_t bytes);
    /** @brief The current memory budget in bytes, see setMemoryBudget(). */
    CV_WRAP static size_t getMemoryBudget();
};

/** @brief Upsamples with the default weights, see NAF::upsample(). The upsampler is cached per
thread, so repeated calls do not reload the weights; safe to call from many threads at once.
@param imageColorOrder see cv::naf::ImageColorOrder. */
CV_EXPORTS_W void upsample(InputArrayOfArrays image, InputArray lowResFeatures, OutputArray dst, Size dstSize,
                           int imageColorOrder = IMAGE_BGR);

/** @brief Path of the default weights: the environment variable NAF_WEIGHTS when set, else
models/naf/naf_default.safetensors in the source tree this library was built from, when it
exists; else empty (random weights are used). */
CV_EXPORTS_W String getDefaultWeightsPath();

/** @brief True when this build has the CUDA path and a CUDA device is usable. */
CV_EXPORTS_W bool isCudaAvailable();

/** @brief Registers the cv::dnn layer types of this module (idempotent, thread-safe), so ONNX
graphs with their nodes load with cv::dnn::readNetFromONNX():
- `NAF` in domain `naf` (layer type "naf.NAF"), below;
- `NafGelu` (default domain): x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)) (GELU's tanh form),
  one input, any shape;
- `NafSoftmax` (default domain): softmax over the last axis (attribute `axis`: -1 or the last
  axis' index; others are refused), one input.
- `NafLayerNorm` (default domain): LayerNorm over the last axis, (x - mean) / sqrt(var + eps)
  (attribute `eps`), times gamma plus beta when the node has them (two initializers, one value
  per channel).
- `NafConv1x1` (default domain): a 1x1 convolution, stride 1, one group, on NCHW input; the
  weight [cout, cin, 1, 1] and an optional bias [cout] as initializers.
- `NafMatMul` (default domain): A B. B constant [K, N] (an initializer; an optional third input,
  an initializer of N values, is added to every row) and A of any rank with K values on its last
  axis; or B a second input of A's rank with the same leading axes, one [M, K] x [K, N] product
  per leading index.

The last five are written by the VFM conversion (tools/vfm/onnx_for_opencv46.py) in place of
layer chains that OpenCV 4.6 runs slowly; VisionFoundationModel registers them itself. CV_32F
blobs on cv::dnn's CPU target only.

The `NAF` node:

Node inputs: image N x 3 x H x W float RGB in [0, 1]; features N x C x h x w; optionally the
weights as initializers (official state-dict names), in the order given by the string attribute
`weight_names`, a comma-separated list (OpenCV 4.6's ONNX importer cannot read string lists). Attributes:
`output_height`, `output_width` (required), `kernel_size` (default 9), `weights_path` (used when
no weights are embedded; empty: the default weights). Output: N x C x output_height x output_width.
*/
CV_EXPORTS_W void registerLayers();

//! @}

}  // namespace naf
}  // namespace cv

#endif
