// cv::naf::NAF: validates inputs, converts cv::Mat <-> kernel tensors, dispatches CPU / CUDA.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <opencv2/core/utils/logger.hpp>
#include <opencv2/core/utility.hpp>
#include <opencv2/core/utils/trace.hpp>

#include "naf_kernels/naf_cuda.hpp"
#include "naf_kernels/naf_kernels.hpp"
#include "opencv2/naf.hpp"
#include "opencv_parallel.hpp"
#include "size_limits.hpp"
#include "weights.hpp"

namespace cv {
namespace naf {

namespace {

namespace K = ::naf::kernels;

// 3 x H x W RGB in [0, 1]; default-initialised when sized (written whole right after, in parallel).
using PlanarImage = K::AlignedFloatVector;

using detail::opencvParallelFor;

// Leaves a BACKEND_AUTO call's CUDA attempt when the device lacked the memory for an item, so that
// NAFImpl::runItems() runs the call again on the CPU. Not a std::exception: callKernel() lets it pass.
struct DeviceMemoryShortage
{
    std::string message;    // the engine's: what it was allocating, MiB needed and free
    double reachedFraction; // of the whole call, as last reported to the progress callback
};

// Runs a kernel call, turning kernel exceptions into cv::Exception.
template <typename F>
void callKernel(const char* what, F&& f)
{
    try
    {
        f();
    }
    catch (const std::invalid_argument& e)
    {
        CV_Error(Error::StsBadArg, std::string("cv::naf: ") + what + ": " + e.what());
    }
    catch (const cv::Exception&)
    {
        throw;
    }
    catch (const K::Cancelled&)
    {
        throw;  // NAFImpl::run() reports it with the whole call's fraction
    }
    catch (const std::bad_alloc&)
    {
        CV_Error(Error::StsNoMem, std::string("cv::naf: ") + what + ": out of memory");
    }
    catch (const std::exception& e)
    {
        CV_Error(Error::StsError, std::string("cv::naf: ") + what + ": " + e.what());
    }
}

std::string sizeString(int w, int h) { return std::to_string(w) + "x" + std::to_string(h); }

// "N x C x H x W" for a blob, "rows x cols" for a 2-D Mat (whose size[1] is not a channel count).
std::string shapeString(const Mat& m)
{
    std::string s;
    for (int i = 0; i < m.dims; ++i) s += (i ? " x " : "") + std::to_string(m.size[i]);
    return s + (m.channels() > 1 ? " (" + std::to_string(m.channels()) + " interleaved channels)" : "");
}

// The CUDA engine's mode for a GpuPrecision (validated by setGpuPrecision()).
K::cuda::MathMode mathMode(int gpuPrecision)
{
    switch (gpuPrecision)
    {
    case GPU_PRECISION_TF32: return K::cuda::MathMode::TF32;
    case GPU_PRECISION_FP16: return K::cuda::MathMode::FP16;
    default: return K::cuda::MathMode::FP32;
    }
}

// The settings one call runs with, copied under the object's lock when the call starts.
struct Settings
{
    int kernelSize = 9;
    int backend = BACKEND_AUTO;
    int colorOrder = IMAGE_BGR;
    int gpuPrecision = GPU_PRECISION_FP32;
    Point probe{-1, -1};
    ProgressCallback progress;
};

// Bytes one call needs at its peak: the output blob and the planar guide copies of the whole
// batch, plus the scratch of one item (items run one after another). Mirrors the allocations of
// kernels::forward (workspace buffers, the normalized image, the pixel-major copies of keys and
// values in the attention, per-thread rows). Every product is overflow-checked.
size_t estimateCallBytes(const K::NafConfig& cfg, const std::vector<Size>& imageSizes, int c, int h, int w,
                         Size dstSize, const std::string& request)
{
    using detail::checkedProduct;
    using detail::checkedSum;
    const int64_t n = static_cast<int64_t>(imageSizes.size());
    const int64_t f = sizeof(float);
    const std::string what = "memory estimate of " + request;
    size_t total = checkedProduct({n, c, dstSize.height, dstSize.width, f}, what);
    size_t peakItem = 0;
    for (const Size& img : imageSizes)
    {
        total = checkedSum(total, checkedProduct({3, img.height, img.width, f}, what), what);
        int gh = 0, gw = 0;
        K::guideSize(img.height, img.width, dstSize.height, dstSize.width, cfg.maxGuideScale, &gh, &gw);
        size_t item = checkedProduct({3, img.height, img.width, f}, what);                 // normalized image
        item = checkedSum(item, checkedProduct({3, gh, gw, f}, what), what);                // guide
        // Until the attention writes it, the item's output holds the queries and the encoder's
        // activation buffers that fit (kernels::queriesInOutput, activationBuffersInOutput): 2
        // buffers of dim/2 channels at guide size, none when the guide has the output size
        // (kernels::encoderActivationBuffers). The rest is workspace.
        const bool queriesInOutput = K::queriesInOutput(cfg, c);
        const int buffers = K::encoderActivationBuffers(gh, gw, dstSize.height, dstSize.width);
        const int inOutput = K::activationBuffersInOutput(
            checkedProduct({c - (queriesInOutput ? cfg.dim : 0), dstSize.height, dstSize.width}, what),
            checkedProduct({cfg.dim / 2, gh, gw}, what), buffers);
        item = checkedSum(item, checkedProduct({buffers - inOutput, cfg.dim / 2, gh, gw, f}, what), what);
        if (!queriesInOutput)
            item = checkedSum(item, checkedProduct({cfg.dim, dstSize.height, dstSize.width, f}, what), what);
        item = checkedSum(item, checkedProduct({2 * static_cast<int64_t>(cfg.dim) + c, h, w, f}, what), what);
        item = checkedSum(item, checkedProduct({getNumThreads() + 1, cfg.dim + static_cast<int64_t>(c), dstSize.width, f}, what), what);
        peakItem = std::max(peakItem, item);
    }
    return checkedSum(total, peakItem, what);
}

class NAFImpl CV_FINAL : public NAF
{
public:
    explicit NAFImpl(std::shared_ptr<const detail::LoadedWeights> weights) : weights_(std::move(weights))
    {
        settings_.kernelSize = weights_->cfg.kernelSize;
    }

    void upsample(InputArrayOfArrays image, InputArray lowResFeatures, OutputArray dst, Size dstSize) CV_OVERRIDE
    {
        CV_TRACE_FUNCTION();
        std::vector<Mat> images;
        if (image.kind() == _InputArray::STD_VECTOR_MAT || image.kind() == _InputArray::STD_ARRAY_MAT ||
            image.kind() == _InputArray::STD_VECTOR_VECTOR)
            image.getMatVector(images);
        else if (image.kind() == _InputArray::STD_VECTOR_UMAT)  // getMat() of a UMat list failed deep in OpenCV
        {
            std::vector<UMat> umats;
            image.getUMatVector(umats);
            for (const UMat& u : umats) images.push_back(u.getMat(ACCESS_READ).clone());
        }
        else if (!image.empty())
            images.push_back(image.getMat());
        if (images.empty()) CV_Error(Error::StsBadArg, "cv::naf::NAF::upsample: the guide image is empty");
        checkDst(dst, "upsample");
        const Settings settings = snapshot();
        for (size_t i = 0; i < images.size(); ++i)
        {
            const Mat& m = images[i];
            const std::string which = images.size() > 1 ? " #" + std::to_string(i) : std::string();
            if (m.empty()) CV_Error(Error::StsBadArg, "cv::naf::NAF::upsample: guide image" + which + " is empty");
            if (m.dims != 2 || m.type() != CV_8UC3)
                CV_Error(Error::StsBadArg, "cv::naf::NAF::upsample: guide image" + which + " must be 2-D CV_8UC3 (" +
                                               (settings.colorOrder == IMAGE_RGB ? "RGB" : "BGR") + "), got " +
                                               typeToString(m.type()) + " with " + std::to_string(m.dims) +
                                               " dims (convert grayscale with cv::cvtColor(..., COLOR_GRAY2BGR))");
        }
        const Mat features = checkedFeatures(lowResFeatures, static_cast<int>(images.size()), dstSize, "upsample");
        std::vector<Size> sizes;
        for (const Mat& m : images) sizes.push_back(m.size());
        const std::vector<K::ForwardShape> shapes = checkedShapes(sizes, features, dstSize, settings, "upsample");
        std::vector<PlanarImage> planar;
        for (const Mat& m : images) planar.push_back(toPlanarRgb(m, settings.colorOrder));
        run(shapes, planar, features, dst, dstSize, settings, "upsample");
    }

    void upsampleBlob(InputArray imageBlob, InputArray lowResFeatures, OutputArray dst, Size dstSize) CV_OVERRIDE
    {
        CV_TRACE_FUNCTION();
        if (imageBlob.empty()) CV_Error(Error::StsBadArg, "cv::naf::NAF::upsampleBlob: the image blob is empty");
        checkDst(dst, "upsampleBlob");
        Mat blob = imageBlob.getMat();
        if (blob.dims != 4 || blob.type() != CV_32F || blob.size[1] != 3)
            CV_Error(Error::StsBadArg, "cv::naf::NAF::upsampleBlob: image blob must be 4-D CV_32F N x 3 x H x W (RGB in "
                                       "[0, 1]), got " + typeToString(blob.type()) + " of shape " + shapeString(blob));
        if (!blob.isContinuous()) blob = blob.clone();
        checkFinite(blob, "image blob");
        const int n = blob.size[0], h = blob.size[2], w = blob.size[3];
        const Settings settings = snapshot();
        const Mat features = checkedFeatures(lowResFeatures, n, dstSize, "upsampleBlob");
        std::vector<Size> sizes(n, Size(w, h));
        const std::vector<K::ForwardShape> shapes = checkedShapes(sizes, features, dstSize, settings, "upsampleBlob");
        std::vector<PlanarImage> planar(n);
        const size_t per = static_cast<size_t>(3) * h * w;
        for (int i = 0; i < n; ++i)
        {
            const float* p = blob.ptr<float>() + per * i;
            planar[i].assign(p, p + per);
        }
        run(shapes, planar, features, dst, dstSize, settings, "upsampleBlob");
    }

    void setAttentionProbe(Point pixel) CV_OVERRIDE
    {
        if (pixel != Point(-1, -1) && (pixel.x < 0 || pixel.y < 0))
            CV_Error(Error::StsOutOfRange, "cv::naf::NAF::setAttentionProbe: pixel (" + std::to_string(pixel.x) + ", " +
                                               std::to_string(pixel.y) + ") is negative; use (-1, -1) to switch off");
        std::lock_guard<std::mutex> lock(stateMutex_);
        settings_.probe = pixel;
    }
    Point getAttentionProbe() const CV_OVERRIDE { return snapshot().probe; }

    void getAttentionWeights(OutputArray weights, OutputArray lowResPositions) const CV_OVERRIDE
    {
        std::lock_guard<std::mutex> lock(stateMutex_);
        if (probeWeights_.empty())
            CV_Error(Error::StsError, "cv::naf::NAF::getAttentionWeights: no attention recorded; call "
                                      "setAttentionProbe() before upsample()");
        probeWeights_.copyTo(weights);
        probePositions_.copyTo(lowResPositions);
    }

    void setKernelSize(int kernelSize) CV_OVERRIDE
    {
        if (kernelSize < 1 || kernelSize % 2 == 0 || kernelSize > 63)
            CV_Error(Error::StsOutOfRange, "cv::naf::NAF::setKernelSize: kernel size must be odd in [1, 63], got " +
                                               std::to_string(kernelSize));
        std::lock_guard<std::mutex> lock(stateMutex_);
        settings_.kernelSize = kernelSize;
    }
    int getKernelSize() const CV_OVERRIDE { return snapshot().kernelSize; }

    void setBackend(int backend) CV_OVERRIDE
    {
        if (backend != BACKEND_AUTO && backend != BACKEND_CPU && backend != BACKEND_CUDA)
            CV_Error(Error::StsOutOfRange, "cv::naf::NAF::setBackend: unknown backend " + std::to_string(backend));
        if (backend == BACKEND_CUDA && !K::cuda::available())
            CV_Error(Error::StsNotImplemented, "cv::naf::NAF::setBackend: CUDA requested but not available (" +
                                                   K::cuda::deviceDescription() + ")");
        std::lock_guard<std::mutex> lock(stateMutex_);
        settings_.backend = backend;
    }
    int getBackend() const CV_OVERRIDE { return snapshot().backend; }
    int getActiveBackend() const CV_OVERRIDE
    {
        std::lock_guard<std::mutex> lock(stateMutex_);
        return activeBackend_;
    }
    void setGpuPrecision(int precision) CV_OVERRIDE
    {
        if (precision != GPU_PRECISION_FP32 && precision != GPU_PRECISION_TF32 && precision != GPU_PRECISION_FP16)
            CV_Error(Error::StsOutOfRange, "cv::naf::NAF::setGpuPrecision: expected GPU_PRECISION_FP32 (0), "
                                           "GPU_PRECISION_TF32 (1) or GPU_PRECISION_FP16 (2), got " +
                                               std::to_string(precision));
        std::lock_guard<std::mutex> lock(stateMutex_);
        settings_.gpuPrecision = precision;
    }
    int getGpuPrecision() const CV_OVERRIDE { return snapshot().gpuPrecision; }
    void setUseTF32(bool enable) CV_OVERRIDE { setGpuPrecision(enable ? GPU_PRECISION_TF32 : GPU_PRECISION_FP32); }
    bool getUseTF32() const CV_OVERRIDE { return getGpuPrecision() == GPU_PRECISION_TF32; }

    void setImageColorOrder(int order) CV_OVERRIDE
    {
        if (order != IMAGE_BGR && order != IMAGE_RGB)
            CV_Error(Error::StsOutOfRange, "cv::naf::NAF::setImageColorOrder: expected IMAGE_BGR (0) or IMAGE_RGB (1), got " +
                                               std::to_string(order));
        std::lock_guard<std::mutex> lock(stateMutex_);
        settings_.colorOrder = order;
    }
    int getImageColorOrder() const CV_OVERRIDE { return snapshot().colorOrder; }

    void setProgressCallback(const ProgressCallback& callback) CV_OVERRIDE
    {
        std::lock_guard<std::mutex> lock(stateMutex_);
        settings_.progress = callback;
    }
    ProgressCallback getProgressCallback() const CV_OVERRIDE { return snapshot().progress; }

    String getWeightsInfo() const CV_OVERRIDE { return weights_->info; }
    bool isTrained() const CV_OVERRIDE { return weights_->trained; }
    String getWeightsMetadata() const CV_OVERRIDE
    {
        return "{\"naf_config\": " + weights_->configJson + ", \"naf_provenance\": " + weights_->provenanceJson + "}";
    }
    String getDefaultName() const CV_OVERRIDE { return "NAF"; }

private:
    Settings snapshot() const
    {
        std::lock_guard<std::mutex> lock(stateMutex_);
        return settings_;
    }

    // Scratch memory for one call: taken from the pool (or new), given back when the call ends,
    // so concurrent calls on one object never share a workspace.
    class WorkspaceLease
    {
    public:
        explicit WorkspaceLease(NAFImpl& owner) : owner_(owner)
        {
            std::lock_guard<std::mutex> lock(owner_.poolMutex_);
            if (owner_.idleWorkspaces_.empty())
                ws_.reset(new K::Workspace);
            else
            {
                ws_ = std::move(owner_.idleWorkspaces_.back());
                owner_.idleWorkspaces_.pop_back();
            }
        }
        ~WorkspaceLease()
        {
            std::lock_guard<std::mutex> lock(owner_.poolMutex_);
            owner_.idleWorkspaces_.push_back(std::move(ws_));
        }
        WorkspaceLease(const WorkspaceLease&) = delete;
        WorkspaceLease& operator=(const WorkspaceLease&) = delete;
        K::Workspace& get() { return *ws_; }

    private:
        NAFImpl& owner_;
        std::unique_ptr<K::Workspace> ws_;
    };

    static void checkFinite(const Mat& m, const char* what)
    {
        const float* p = m.ptr<float>();
        const size_t n = m.total() * m.channels();
        for (size_t i = 0; i < n; ++i)
            if (!std::isfinite(p[i]))
                CV_Error(Error::StsBadArg, std::string("cv::naf::NAF: ") + what + " contains NaN or Inf (value " +
                                               std::to_string(p[i]) + " at flat index " + std::to_string(i) + ")");
    }

    // The output is a 4-D CV_32F blob: refused before any work when dst cannot hold one (a typed
    // Mat_<uchar> would otherwise end up with float data under its old type, a vector<Mat> only
    // failed after the whole computation).
    static void checkDst(OutputArray dst, const char* fn)
    {
        const int kind = dst.kind();
        if (kind != _InputArray::MAT && kind != _InputArray::UMAT)
            CV_Error(Error::StsBadArg, std::string("cv::naf::NAF::") + fn +
                                           ": dst must be a cv::Mat or cv::UMat (the output is one 4-D blob), got "
                                           "OutputArray kind " + std::to_string(kind >> _InputArray::KIND_SHIFT));
        if (dst.fixedType() && dst.type() != CV_32F)
            CV_Error(Error::StsBadArg, std::string("cv::naf::NAF::") + fn + ": dst has the fixed type " +
                                           typeToString(dst.type()) + "; the output is CV_32F (use a cv::Mat)");
    }

    Mat checkedFeatures(InputArray lowResFeatures, int batch, Size dstSize, const char* fn) const
    {
        const std::string where = std::string("cv::naf::NAF::") + fn + ": ";
        if (lowResFeatures.empty()) CV_Error(Error::StsBadArg, where + "low-resolution features are empty");
        Mat f = lowResFeatures.getMat();
        if (f.dims != 4)
            CV_Error(Error::StsBadArg, where + "features must be a 4-D N x C x h x w blob, got " + std::to_string(f.dims) +
                                           " dims");
        if (f.type() != CV_32F)
            CV_Error(Error::StsBadArg, where + "features must be CV_32F, got " + typeToString(f.type()));
        if (!f.isContinuous()) f = f.clone();
        const int n = f.size[0], c = f.size[1], h = f.size[2], w = f.size[3];
        if (n != batch)
            CV_Error(Error::StsBadArg, where + "batch mismatch: " + std::to_string(batch) + " guide image(s) but features "
                                           "have batch " + std::to_string(n));
        const int heads = weights_->cfg.headsAttn;
        if (c % heads != 0)
            CV_Error(Error::StsBadArg, where + "feature channels " + std::to_string(c) + " are not divisible by the " +
                                           std::to_string(heads) + " attention heads");
        if (dstSize.width < w || dstSize.height < h)
            CV_Error(Error::StsBadArg, where + "dstSize " + sizeString(dstSize.width, dstSize.height) +
                                           " is smaller than the features' " + sizeString(w, h));
        checkFinite(f, "features");
        return f;
    }

    // The guide as planar RGB floats, rows in parallel. Not zero-filled first: the threads that
    // fill it touch its pages first (2016x2016: 27 -> 10.5 ms on 2 cores, most of it page faults).
    static PlanarImage toPlanarRgb(const Mat& img, int colorOrder)
    {
        // Same values as torchvision's to_tensor, float(v) / 255, looked up.
        static const std::array<float, 256> scaled = [] {
            std::array<float, 256> t{};
            for (int v = 0; v < 256; ++v) t[v] = static_cast<float>(v) / 255.f;
            return t;
        }();
        const int h = img.rows, w = img.cols;
        PlanarImage out(static_cast<size_t>(3) * h * w);
        const size_t plane = static_cast<size_t>(h) * w;
        const int r = colorOrder == IMAGE_RGB ? 0 : 2, b = 2 - r;
        parallel_for_(Range(0, h), [&](const Range& rows) {
            for (int y = rows.start; y < rows.end; ++y)
            {
                const uchar* row = img.ptr<uchar>(y);
                float* o = out.data() + static_cast<size_t>(y) * w;
                for (int x = 0; x < w; ++x)
                {
                    o[x] = scaled[row[3 * x + r]];
                    o[plane + x] = scaled[row[3 * x + 1]];
                    o[2 * plane + x] = scaled[row[3 * x + b]];
                }
            }
        });
        return out;
    }

    static bool useCuda(int backend)
    {
        if (backend == BACKEND_CPU) return false;
        if (backend == BACKEND_CUDA) return true;
        return K::cuda::available();
    }

    // When a refused request's guides are larger than the output (the encoder runs at the image's
    // size, up to 4x the output per side, as in the official code): the largest guide and what
    // images of the output's size would need, so the caller sees the cheaper option.
    std::string largeGuideHint(const std::vector<Size>& imageSizes, int c, int h, int w, Size dstSize,
                               const std::string& request) const
    {
        int largestH = 0, largestW = 0;
        for (const Size& img : imageSizes)
        {
            int gh = 0, gw = 0;
            K::guideSize(img.height, img.width, dstSize.height, dstSize.width, weights_->cfg.maxGuideScale, &gh, &gw);
            if (static_cast<int64_t>(gh) * gw > static_cast<int64_t>(largestH) * largestW)
            {
                largestH = gh;
                largestW = gw;
            }
        }
        if (static_cast<int64_t>(largestH) * largestW <= static_cast<int64_t>(dstSize.height) * dstSize.width)
            return std::string();
        const std::vector<Size> outputSized(imageSizes.size(), dstSize);
        return "The guide encoder runs on " + sizeString(largestW, largestH) +
               " pixels (the image, up to " + std::to_string(weights_->cfg.maxGuideScale) +
               "x the output per side); with images resized to the output's " +
               sizeString(dstSize.width, dstSize.height) + " it would need " +
               std::to_string(estimateCallBytes(weights_->cfg, outputSized, c, h, w, dstSize, request)) + " bytes";
    }

    // Validates every item's shape and refuses requests over the memory budget, before any
    // input copy, scratch or output is allocated.
    std::vector<K::ForwardShape> checkedShapes(const std::vector<Size>& imageSizes, const Mat& features, Size dstSize,
                                               const Settings& settings, const char* fn) const
    {
        const int n = features.size[0], c = features.size[1], h = features.size[2], w = features.size[3];
        const Point probe = settings.probe;
        if (probe != Point(-1, -1) && (probe.x >= dstSize.width || probe.y >= dstSize.height))
            CV_Error(Error::StsOutOfRange, "cv::naf::NAF: attention probe (" + std::to_string(probe.x) + ", " +
                                               std::to_string(probe.y) + ") is outside the output " +
                                               sizeString(dstSize.width, dstSize.height));
        const std::string request = std::string("cv::naf::NAF::") + fn + " of " + std::to_string(n) + " x " +
                                    std::to_string(c) + " x " + sizeString(dstSize.width, dstSize.height) + " output";
        detail::checkMemoryBudget(estimateCallBytes(weights_->cfg, imageSizes, c, h, w, dstSize, request), request,
                                  [&] { return largeGuideHint(imageSizes, c, h, w, dstSize, request); });
        std::vector<K::ForwardShape> shapes(n);
        for (int i = 0; i < n; ++i)
        {
            K::ForwardShape& s = shapes[i];
            s.imageH = imageSizes[i].height;
            s.imageW = imageSizes[i].width;
            s.channels = c;
            s.lowH = h;
            s.lowW = w;
            s.outH = dstSize.height;
            s.outW = dstSize.width;
            s.kernelSize = settings.kernelSize;
            callKernel("invalid input", [&] { K::checkForwardShape(weights_->cfg, s); });
        }
        return shapes;
    }

    // Runs the items, reporting progress when a callback is set. A cancel, or an exception from the
    // callback itself, releases dst: it may have been written in place (the CPU forward uses its
    // output as scratch), and an empty dst cannot be mistaken for a result. The callback's own
    // exception leaves unchanged (the kernels' layer and callKernel() would otherwise translate
    // it), so a caller can catch its own type.
    void run(const std::vector<K::ForwardShape>& shapes, const std::vector<PlanarImage>& planar,
             const Mat& features, OutputArray dst, Size dstSize, const Settings& settings, const char* fn)
    {
        if (!settings.progress)
        {
            runItems(shapes, planar, features, dst, dstSize, settings, nullptr);
            return;
        }
        double lastFraction = 0;
        std::exception_ptr callbackError;
        const ProgressCallback report = [&](double fraction) {
            lastFraction = fraction;
            try
            {
                return settings.progress(fraction);
            }
            catch (...)
            {
                callbackError = std::current_exception();
                throw;
            }
        };
        try
        {
            runItems(shapes, planar, features, dst, dstSize, settings, &report);
        }
        catch (const K::Cancelled&)
        {
            dst.release();
            CV_Error(Error::StsError, std::string("cv::naf::NAF::") + fn + ": cancelled by the progress callback at " +
                                          std::to_string(static_cast<int>(lastFraction * 100)) + " % of the call (" +
                                          std::to_string(shapes.size()) + " image(s)); dst was released");
        }
        catch (...)
        {
            if (!callbackError) throw;
            dst.release();
            std::rethrow_exception(callbackError);
        }
    }

    // BACKEND_AUTO on a device without the memory for the call runs it on the CPU (with a warning
    // in OpenCV's log): the device's free memory depends on other processes, so the decision is
    // made per call, from the engine's own out-of-memory error, which comes before any output is
    // written. The whole call reruns on the CPU, so a batch never mixes the two backends' roundings.
    void runItems(const std::vector<K::ForwardShape>& shapes, const std::vector<PlanarImage>& planar,
                  const Mat& features, OutputArray dst, Size dstSize, const Settings& settings,
                  const ProgressCallback* report)
    {
        const bool cuda = useCuda(settings.backend);
        if (!cuda || settings.backend != BACKEND_AUTO)
        {
            runItemsOn(cuda, false, shapes, planar, features, dst, dstSize, settings, report);
            return;
        }
        double start = 0;
        try
        {
            runItemsOn(true, true, shapes, planar, features, dst, dstSize, settings, report);
            return;
        }
        catch (const DeviceMemoryShortage& shortage)
        {
            CV_LOG_WARNING(NULL, "cv::naf::NAF: BACKEND_AUTO runs this call on the CPU: " << shortage.message);
            start = shortage.reachedFraction;
        }
        if (!report)
        {
            runItemsOn(false, false, shapes, planar, features, dst, dstSize, settings, nullptr);
            return;
        }
        // Progress goes on from where the CUDA attempt stopped (never backwards).
        const ProgressCallback rest = [&](double f) { return (*report)(start + (1.0 - start) * f); };
        runItemsOn(false, false, shapes, planar, features, dst, dstSize, settings, &rest);
    }

    // A device engine that ran out of memory gives its scratch back (the failed call may have grown
    // some of it). One made without cuDNN, which may be why, is dropped, so that the next call
    // makes a new one that tries cuDNN again.
    // Called from a catch handler: never throws (an engine that cannot even release is dropped).
    void recoverFromDeviceShortage() noexcept
    {
        if (!cudaEngine_) return;
        try
        {
            if (K::cuda::cudnnCompiled() && cudaEngine_->convolutionPath() != K::cuda::ConvolutionPath::CuDnn)
                cudaEngine_.reset();
            else
                cudaEngine_->releaseScratch();
        }
        catch (...)
        {
            cudaEngine_.reset();
        }
    }

    // Runs every item on one backend. fallbackAllowed (CUDA only): a device memory shortage throws
    // DeviceMemoryShortage instead of a cv::Exception.
    void runItemsOn(bool cuda, bool fallbackAllowed, const std::vector<K::ForwardShape>& shapes,
                    const std::vector<PlanarImage>& planar, const Mat& features, OutputArray dst, Size dstSize,
                    const Settings& settings, const ProgressCallback* report)
    {
        const int n = features.size[0], c = features.size[1], h = features.size[2], w = features.size[3];
        const int outSizes[4] = {n, c, dstSize.height, dstSize.width};
        Mat probeWeights, probePositions;
        const size_t featPer = static_cast<size_t>(c) * h * w;
        const size_t outPer = static_cast<size_t>(c) * dstSize.height * dstSize.width;
        WorkspaceLease workspace(*this);
        // The result goes straight into a dst that already has the output's shape (the usual loop
        // that reuses one Mat): a fresh 4-D output costs a page fault per 4 KiB on first touch, a
        // large part of a call (copying 308 MB into fresh memory took 120 ms here against 15 ms
        // into reused memory; the CUDA path's copy to the host pays it too). On the CPU the
        // workspace is reserved before that (reserveWorkspace), so on valid input only a progress
        // callback (run() releases dst then) or a small allocation failing (a few KB of the
        // kernels' own, or OpenCV's thread pool) can stop the call after the first output byte:
        // the encoder's activations use the output as scratch before the attention writes it,
        // so dst is released then too (below). The CUDA engine copies
        // the output to the host after its last refusal (FP16's range), so one item is safe too
        // (a device error during that copy releases dst, as lastForwardWroteHostOutput() tells);
        // a CUDA batch could be refused at item 2 with item 1 written. Otherwise (a CUDA batch,
        // another shape, dst aliasing the features) the result goes to a fresh blob that is
        // handed over only when every item succeeded.
        Mat reused = cuda && n > 1 ? Mat() : reusableDst(dst, outSizes, features);
        if (!cuda)
            callKernel("CPU forward", [&] {
                for (const K::ForwardShape& shape : shapes)
                    K::reserveWorkspace(weights_->cfg, weights_->view, shape, workspace.get());
            });
        Mat result = reused.empty() ? Mat(4, outSizes, CV_32F) : reused;  // huge-page advised by both paths
        bool reusedDstWritten = false;  // the forward (CPU) or the output copy (CUDA) has started writing dst
        try
        {
            for (int i = 0; i < n; ++i)
            {
                K::AttentionProbe probe;
                probe.y = settings.probe.y;
                probe.x = settings.probe.x;
                K::AttentionProbe* probePtr = settings.probe == Point(-1, -1) ? nullptr : &probe;
                const float* feat = features.ptr<float>() + featPer * i;
                float* out = result.ptr<float>() + outPer * i;
                // Item i's fraction f is (i + f) / n of the call; the CUDA path reports its ends only.
                K::ProgressFn itemProgress;
                if (report)
                    itemProgress = [report, i, n](double f) { return (*report)((i + f) / n); };
                auto reportCudaItem = [&](double f) {
                    if (!itemProgress) return;
                    bool goOn = true;
                    callKernel("progress callback", [&] { goOn = itemProgress(f); });  // its exceptions as on the CPU
                    if (!goOn) throw K::Cancelled(f);
                };
                if (cuda)
                {
                    reportCudaItem(0.0);
                    std::string deviceShortage;
                    callKernel("CUDA forward", [&] {
                        // One device engine per object (device weights + scratch); calls take turns on it.
                        // Its std::runtime_error (e.g. FP16's float16 range refusal) becomes a
                        // cv::Exception with its message; a refusal, or a lack of device memory, comes
                        // before the engine writes `out`, which is dst itself only for a single item
                        // (above).
                        std::lock_guard<std::mutex> lock(cudaMutex_);
                        try
                        {
                            if (!cudaEngine_)
                            {
                                cudaEngine_.reset(new K::cuda::Engine(weights_->cfg, weights_->view));
                                // The output's host copy on OpenCV's threads (GPU log item 30).
                                cudaEngine_->setHostParallelFor(opencvParallelFor());
                            }
                            cudaEngine_->forward(planar[i].data(), feat, out, shapes[i],
                                                 mathMode(settings.gpuPrecision), probePtr);
                        }
                        catch (const K::cuda::OutOfDeviceMemory& e)
                        {
                            recoverFromDeviceShortage();
                            deviceShortage = e.what();
                        }
                        catch (...)
                        {
                            // A device error while the output was being copied leaves dst
                            // partly written: released below, like a failed CPU call's.
                            reusedDstWritten = !reused.empty() && cudaEngine_ &&
                                               cudaEngine_->lastForwardWroteHostOutput();
                            throw;
                        }
                    });
                    if (!deviceShortage.empty())
                    {
                        if (fallbackAllowed) throw DeviceMemoryShortage{deviceShortage, static_cast<double>(i) / n};
                        CV_Error(Error::StsNoMem, "cv::naf: CUDA forward of image " + std::to_string(i) + ": " +
                                                      deviceShortage + "; BACKEND_AUTO runs such a call on the CPU");
                    }
                    reportCudaItem(1.0);
                }
                else
                {
                    reusedDstWritten = !reused.empty();
                    callKernel("CPU forward", [&] {
                        K::forward(weights_->cfg, weights_->view, planar[i].data(), feat, out, shapes[i], workspace.get(),
                                   opencvParallelFor(), probePtr, itemProgress);
                    });
                }
                if (probePtr)
                {
                    if (probeWeights.empty())
                    {
                        const int sz[4] = {n, probe.heads, probe.kh, probe.kw};
                        probeWeights.create(4, sz, CV_32F);
                        probePositions.create(probe.kh, probe.kw, CV_32SC2);
                        for (int a = 0; a < probe.kh; ++a)
                            for (int b = 0; b < probe.kw; ++b)
                                probePositions.at<Vec2i>(a, b) = Vec2i(probe.lowX[b], probe.lowY[a]);
                    }
                    std::copy(probe.weights.begin(), probe.weights.end(),
                              probeWeights.ptr<float>() + static_cast<size_t>(i) * probe.weights.size());
                }
            }
        }
        catch (...)
        {
            // dst holds scratch now, not its old values nor a result: an empty dst cannot be
            // mistaken for either.
            if (reusedDstWritten) dst.release();
            throw;
        }
        {
            std::lock_guard<std::mutex> lock(stateMutex_);
            activeBackend_ = cuda ? BACKEND_CUDA : BACKEND_CPU;
            probeWeights_ = probeWeights;
            probePositions_ = probePositions;
        }
        if (reused.empty()) dst.assign(result);
    }

    // dst's own Mat when it is a continuous CV_32F blob of exactly `outSizes` that does not share
    // memory with the features (the same Mat passed as input and output); empty otherwise.
    static Mat reusableDst(OutputArray dst, const int outSizes[4], const Mat& features)
    {
        if (dst.kind() != _InputArray::MAT) return Mat();
        Mat& m = dst.getMatRef();
        if (m.empty() || m.dims != 4 || m.type() != CV_32F || !m.isContinuous()) return Mat();
        for (int d = 0; d < 4; ++d)
            if (m.size[d] != outSizes[d]) return Mat();
        const uchar* fBegin = features.datastart;
        const uchar* fEnd = features.dataend;
        if (m.datastart < fEnd && fBegin < m.dataend) return Mat();
        return m;
    }

    const std::shared_ptr<const detail::LoadedWeights> weights_;  // immutable, shared freely

    mutable std::mutex stateMutex_;  // guards settings_ and the results of the last call below
    Settings settings_;
    int activeBackend_ = BACKEND_CPU;
    Mat probeWeights_, probePositions_;

    std::mutex poolMutex_;  // guards idleWorkspaces_
    std::vector<std::unique_ptr<K::Workspace>> idleWorkspaces_;

    std::mutex cudaMutex_;  // guards cudaEngine_ (not thread-safe itself)
    std::unique_ptr<K::cuda::Engine> cudaEngine_;
};

bool fileExists(const std::string& path)
{
    std::ifstream f(path);
    return static_cast<bool>(f);
}

}  // namespace

Ptr<NAF> NAF::create(const String& weightsPath)
{
    String path = weightsPath.empty() ? getDefaultWeightsPath() : weightsPath;
    if (path.empty())
    {
        CV_LOG_WARNING(NULL, "cv::naf: no default NAF weights found (set NAF_WEIGHTS or pass a file); using RANDOM, "
                             "untrained weights: results are not meaningful upsamplings");
        return makePtr<NAFImpl>(detail::randomWeights(0));
    }
    return makePtr<NAFImpl>(detail::loadWeightsFile(path));
}

Ptr<NAF> NAF::createRandom(int seed) { return makePtr<NAFImpl>(detail::randomWeights(seed)); }

String getDefaultWeightsPath()
{
    if (const char* env = std::getenv("NAF_WEIGHTS"))
        if (*env) return env;
#ifdef NAF_SOURCE_MODELS_DIR
    const std::string builtIn = std::string(NAF_SOURCE_MODELS_DIR) + "/naf/naf_default.safetensors";
    if (fileExists(builtIn)) return builtIn;
#endif
    return String();
}

bool isCudaAvailable() { return ::naf::kernels::cuda::available(); }

void upsample(InputArrayOfArrays image, InputArray lowResFeatures, OutputArray dst, Size dstSize, int imageColorOrder)
{
    // One upsampler per thread, rebuilt if the default changes: the colour order is a setting of
    // the object, so sharing one object would let concurrent calls change each other's order.
    thread_local std::string cachedPath;
    thread_local Ptr<NAF> cached;
    const String path = getDefaultWeightsPath();
    if (!cached || path != cachedPath)
    {
        cached = NAF::create(path);
        cachedPath = path;
    }
    cached->setImageColorOrder(imageColorOrder);
    cached->upsample(image, lowResFeatures, dst, dstSize);
}

}  // namespace naf
}  // namespace cv

namespace cv {
namespace naf {
namespace detail {

Ptr<NAF> createWithWeights(std::shared_ptr<const LoadedWeights> weights) { return makePtr<NAFImpl>(std::move(weights)); }

}  // namespace detail
}  // namespace naf
}  // namespace cv
