// cv::dnn custom layers: "naf.NAF" runs NAF inside an ONNX graph loaded by cv::dnn; "NafGelu",
// "NafSoftmax", "NafLayerNorm", "NafMatMul" and "NafConv1x1" replace slow cv::dnn 4.6 layers and
// layer chains in converted VFM graphs
// (tools/vfm/onnx_for_opencv46.py, naf_layers=True).
#include <mutex>

#include <opencv2/dnn.hpp>
#include <opencv2/dnn/layer.details.hpp>
#include <opencv2/dnn/shape_utils.hpp>

#include "naf_kernels/dnn_ops.hpp"
#include "opencv2/naf.hpp"
#include "opencv_parallel.hpp"
#include "size_limits.hpp"
#include "vfm_progress.hpp"
#include "weights.hpp"

namespace cv {
namespace naf {

namespace detail {
// Defined in naf_impl.cpp: an upsampler on already-loaded weights.
Ptr<NAF> createWithWeights(std::shared_ptr<const LoadedWeights> weights);
}  // namespace detail

namespace {

std::vector<std::string> stringList(const dnn::DictValue& v)
{
    std::vector<std::string> out;
    for (int i = 0; i < v.size(); ++i)
    {
        // A single string may hold a comma-separated list.
        const std::string s = v.get<String>(i);
        size_t start = 0;
        while (start <= s.size())
        {
            const size_t comma = s.find(',', start);
            const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
            if (!item.empty()) out.push_back(item);
            if (comma == std::string::npos) break;
            start = comma + 1;
        }
    }
    return out;
}

// A string attribute, or "" when absent; `what` says what it holds in the refusal of a non-string.
std::string optionalString(const dnn::LayerParams& params, const char* key, const char* what)
{
    if (!params.has(key)) return std::string();
    const dnn::DictValue& value = params.get(key);
    if (!value.isString())
        CV_Error(Error::StsBadArg, "cv::naf dnn layer '" + params.name + "': attribute '" + key +
                                       "' must be a string (" + what + ")");
    return value.get<String>();
}

int positiveInt(const dnn::LayerParams& params, const char* key, int fallback, bool required)
{
    if (!params.has(key))
    {
        if (required)
            CV_Error(Error::StsBadArg, "cv::naf dnn layer '" + params.name + "': missing required attribute '" + key + "'");
        return fallback;
    }
    const dnn::DictValue& v = params.get(key);
    if (!v.isInt() || v.size() != 1)
        CV_Error(Error::StsBadArg, "cv::naf dnn layer '" + params.name + "': attribute '" + key + "' must be one integer");
    const int64 value = v.get<int64>();
    if (value < 1 || value > (1 << 20))
        CV_Error(Error::StsOutOfRange, "cv::naf dnn layer '" + params.name + "': attribute '" + key + "' = " +
                                           std::to_string(value) + " is outside [1, 1048576]");
    return static_cast<int>(value);
}

class NafLayer CV_FINAL : public dnn::Layer
{
public:
    explicit NafLayer(const dnn::LayerParams& params) : Layer(params)
    {
        outputHeight_ = positiveInt(params, "output_height", 0, true);
        outputWidth_ = positiveInt(params, "output_width", 0, true);
        if (params.has("naf_config") && params.blobs.empty())
            CV_Error(Error::StsBadArg, "cv::naf dnn layer '" + params.name +
                                           "': attribute 'naf_config' goes with embedded weights only (a weights "
                                           "file carries its own)");
        if (!params.blobs.empty())
        {
            if (!params.has("weight_names"))
                CV_Error(Error::StsBadArg, "cv::naf dnn layer '" + params.name + "': " +
                                               std::to_string(params.blobs.size()) +
                                               " embedded weight tensors but no 'weight_names' attribute");
            const std::vector<std::string> names = stringList(params.get("weight_names"));
            if (names.size() != params.blobs.size())
                CV_Error(Error::StsBadArg, "cv::naf dnn layer '" + params.name + "': 'weight_names' lists " +
                                               std::to_string(names.size()) + " names for " +
                                               std::to_string(params.blobs.size()) + " embedded tensors");
            std::map<std::string, Mat> tensors;
            for (size_t i = 0; i < names.size(); ++i) tensors[names[i]] = params.blobs[i];
            // Absent: the default config (graphs written before the attribute existed).
            const std::string configJson = optionalString(params, "naf_config", "the weights' JSON");
            naf_ = detail::createWithWeights(
                detail::weightsFromTensors(tensors, "ONNX node '" + params.name + "'", configJson));
        }
        else
        {
            naf_ = NAF::create(optionalString(params, "weights_path", "a file path"));
        }
        // Absent: the kernel size of the weights' config stays (it used to be forced to 9).
        if (params.has("kernel_size")) naf_->setKernelSize(positiveInt(params, "kernel_size", 9, false));
    }

    static Ptr<dnn::Layer> create(dnn::LayerParams& params) { return makePtr<NafLayer>(params); }

    bool getMemoryShapes(const std::vector<dnn::MatShape>& inputs, const int, std::vector<dnn::MatShape>& outputs,
                         std::vector<dnn::MatShape>&) const CV_OVERRIDE
    {
        if (inputs.size() != 2)
            CV_Error(Error::StsBadArg, "cv::naf dnn layer '" + name + "': expects 2 inputs (image, features), got " +
                                           std::to_string(inputs.size()));
        const dnn::MatShape& image = inputs[0];
        const dnn::MatShape& feats = inputs[1];
        if (image.size() != 4 || feats.size() != 4)
            CV_Error(Error::StsBadArg, "cv::naf dnn layer '" + name + "': image and features must be 4-D (NCHW)");
        if (image[0] != feats[0])
            CV_Error(Error::StsBadArg, "cv::naf dnn layer '" + name + "': batch mismatch (image " +
                                           std::to_string(image[0]) + ", features " + std::to_string(feats[0]) + ")");
        // dnn allocates the output from this shape before forward(): refuse oversized graphs here.
        const size_t outputBytes = detail::checkedProduct({feats[0], feats[1], outputHeight_, outputWidth_, 4},
                                                          "cv::naf dnn layer '" + name + "' output");
        detail::checkMemoryBudget(outputBytes, "cv::naf dnn layer '" + name + "' output " + std::to_string(feats[0]) +
                                                   " x " + std::to_string(feats[1]) + " x " +
                                                   std::to_string(outputHeight_) + " x " + std::to_string(outputWidth_));
        outputs.assign(1, dnn::MatShape{feats[0], feats[1], outputHeight_, outputWidth_});
        return false;
    }

    void forward(InputArrayOfArrays inputsArr, OutputArrayOfArrays outputsArr, OutputArrayOfArrays) CV_OVERRIDE
    {
        std::vector<Mat> inputs, outputs;
        inputsArr.getMatVector(inputs);
        outputsArr.getMatVector(outputs);
        CV_Assert(inputs.size() == 2 && outputs.size() == 1);
        // A header on dnn's own output buffer: NAF writes into it in place when the shape matches
        // (it always should); otherwise NAF makes a new blob, which is copied into the buffer.
        Mat result = outputs[0];
        naf_->upsampleBlob(inputs[0], inputs[1], result, Size(outputWidth_, outputHeight_));
        if (result.data != outputs[0].data) result.copyTo(outputs[0]);
    }

private:
    int outputHeight_ = 0, outputWidth_ = 0;
    Ptr<NAF> naf_;
};

// Base of the VFM graphs' layers: names the layer in every error, checks cv::dnn's blobs
// (continuous CV_32F, one output) and turns the kernels' std::exception into cv::Exception.
class VfmLayer : public dnn::Layer
{
public:
    VfmLayer(const dnn::LayerParams& params, const char* kind) : Layer(params), kind_(kind) {}

    void forward(InputArrayOfArrays inputsArr, OutputArrayOfArrays outputsArr, OutputArrayOfArrays) CV_OVERRIDE
    {
        // Before any work: a cancel leaves this layer's output as cv::dnn allocated it.
        if (detail::VfmForwardObserver* observer = detail::currentVfmForwardObserver()) observer->layerStarting();
        std::vector<Mat> inputs, outputs;
        inputsArr.getMatVector(inputs);
        outputsArr.getMatVector(outputs);
        if (outputs.size() != 1)
            CV_Error(Error::StsBadArg, prefix() + "expects 1 output, got " + std::to_string(outputs.size()));
        requireFloat(outputs[0]);
        for (const Mat& m : inputs) requireFloat(m);
        try
        {
            compute(inputs, outputs[0]);
        }
        catch (const cv::Exception&)
        {
            throw;
        }
        catch (const std::exception& e)
        {
            CV_Error(Error::StsError, prefix() + e.what());
        }
    }

protected:
    std::string prefix() const { return "cv::naf dnn layer '" + name + "' (" + kind_ + "): "; }
    /// The layer's work on blobs already checked; the input count is the layer's to check.
    virtual void compute(const std::vector<Mat>& inputs, Mat& output) = 0;

private:
    void requireFloat(const Mat& m) const
    {
        if (m.type() != CV_32F || !m.isContinuous())
            CV_Error(Error::StsUnsupportedFormat, prefix() + "needs continuous CV_32F blobs (type " +
                                                      std::to_string(m.type()) +
                                                      "; run on cv::dnn's CPU target in FP32)");
    }

    std::string kind_;
};

// The one-input layers that keep their input's shape (GELU, softmax, LayerNorm): cv::dnn may run
// them in place, as its own activations; each computes rows of the last axis.
class RowwiseLayer : public VfmLayer
{
public:
    using VfmLayer::VfmLayer;

    bool getMemoryShapes(const std::vector<dnn::MatShape>& inputs, const int, std::vector<dnn::MatShape>& outputs,
                         std::vector<dnn::MatShape>&) const CV_OVERRIDE
    {
        if (inputs.size() != 1 || inputs[0].empty())
            CV_Error(Error::StsBadArg, prefix() + "expects 1 input, got " + std::to_string(inputs.size()));
        checkShape(inputs[0]);
        outputs.assign(1, inputs[0]);
        return true;
    }

protected:
    void compute(const std::vector<Mat>& inputs, Mat& output) CV_OVERRIDE
    {
        if (inputs.size() != 1 || output.total() != inputs[0].total())
            CV_Error(Error::StsBadArg, prefix() + "expects 1 input of the output's size, got " +
                                           std::to_string(inputs.size()));
        const Mat& x = inputs[0];
        const size_t cols = static_cast<size_t>(x.size[x.dims - 1]);
        if (cols == 0 || x.total() == 0) return;
        run(x.ptr<float>(), output.ptr<float>(), x.total() / cols, cols);
    }
    // For the layers over the last axis: cv::dnn 4.6 keeps a 1-D blob [N] as an N x 1 Mat, whose
    // last axis would be the 1.
    void refuseOneDimensional(const dnn::MatShape& shape) const
    {
        if (shape.size() < 2)
            CV_Error(Error::StsNotImplemented, prefix() + "a " + std::to_string(shape.size()) +
                                                   "-D input; the last axis of at least 2 dims is supported");
    }
    virtual void checkShape(const dnn::MatShape&) const {}
    virtual void run(const float* src, float* dst, size_t rows, size_t cols) = 0;
};

// "NafGelu": GELU's tanh form, x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), in one pass; the
// converter writes it where cv::dnn 4.6 would run 7 elementwise layers (it has no Erf or GELU).
class GeluLayer CV_FINAL : public RowwiseLayer
{
public:
    explicit GeluLayer(const dnn::LayerParams& params) : RowwiseLayer(params, "NafGelu") {}
    static Ptr<dnn::Layer> create(dnn::LayerParams& params) { return makePtr<GeluLayer>(params); }

protected:
    void run(const float* src, float* dst, size_t rows, size_t cols) CV_OVERRIDE
    {
        ::naf::kernels::geluTanh(src, dst, rows * cols, detail::opencvParallelFor());
    }
};

// "NafSoftmax": softmax over the last axis (attribute `axis`: -1 or the last axis' index), rows
// at a time with a vectorized exp; cv::dnn 4.6's Softmax spends ~7 ns per value.
class SoftmaxLayer CV_FINAL : public RowwiseLayer
{
public:
    explicit SoftmaxLayer(const dnn::LayerParams& params)
        : RowwiseLayer(params, "NafSoftmax"), axis_(params.get<int>("axis", -1))
    {
    }
    static Ptr<dnn::Layer> create(dnn::LayerParams& params) { return makePtr<SoftmaxLayer>(params); }

protected:
    void checkShape(const dnn::MatShape& shape) const CV_OVERRIDE
    {
        refuseOneDimensional(shape);
        const int rank = static_cast<int>(shape.size());
        if (axis_ != -1 && axis_ != rank - 1)
            CV_Error(Error::StsNotImplemented, prefix() + "axis " + std::to_string(axis_) + " of a " +
                                                   std::to_string(rank) + "-D input; only the last axis is supported");
    }
    void run(const float* src, float* dst, size_t rows, size_t cols) CV_OVERRIDE
    {
        ::naf::kernels::softmaxRows(src, dst, rows, cols, detail::opencvParallelFor());
    }

private:
    int axis_;
};

// "NafLayerNorm": LayerNorm over the last axis (attribute `eps`), times gamma plus beta when the
// node has them (blobs[0], blobs[1]: one value per channel); the converter writes it in place of
// Reshape, MVN, Reshape and two broadcast constants.
class LayerNormLayer CV_FINAL : public RowwiseLayer
{
public:
    explicit LayerNormLayer(const dnn::LayerParams& params)
        : RowwiseLayer(params, "NafLayerNorm"), eps_(static_cast<float>(params.get<double>("eps", 1e-5)))
    {
        // NaN was reported as "eps nan < 0"; an eps past float's range became inf and gave zeros.
        if (!(eps_ >= 0.f) || !std::isfinite(eps_))
            CV_Error(Error::StsBadArg, prefix() + "eps " + std::to_string(params.get<double>("eps", 1e-5)) +
                                           " must be finite, >= 0 and within float's range");
        if (params.blobs.size() != 0 && params.blobs.size() != 2)
            CV_Error(Error::StsBadArg, prefix() + std::to_string(params.blobs.size()) +
                                           " constant inputs; expects none or gamma and beta");
        if (params.blobs.size() == 2)
        {
            if (params.blobs[0].total() != params.blobs[1].total() || params.blobs[0].type() != CV_32F ||
                params.blobs[1].type() != CV_32F || params.blobs[0].empty())
                CV_Error(Error::StsBadArg, prefix() + "gamma (" + std::to_string(params.blobs[0].total()) +
                                               " values) and beta (" + std::to_string(params.blobs[1].total()) +
                                               ") must be CV_32F of one length");
            gamma_ = params.blobs[0].reshape(1, 1).clone();
            beta_ = params.blobs[1].reshape(1, 1).clone();
        }
    }
    static Ptr<dnn::Layer> create(dnn::LayerParams& params) { return makePtr<LayerNormLayer>(params); }

protected:
    void checkShape(const dnn::MatShape& shape) const CV_OVERRIDE
    {
        refuseOneDimensional(shape);
        if (!gamma_.empty() && static_cast<size_t>(shape.back()) != gamma_.total())
            CV_Error(Error::StsBadArg, prefix() + "the last axis has " + std::to_string(shape.back()) +
                                           " values, gamma and beta " + std::to_string(gamma_.total()));
    }
    void run(const float* src, float* dst, size_t rows, size_t cols) CV_OVERRIDE
    {
        ::naf::kernels::layerNormRows(src, dst, rows, cols, gamma_.empty() ? nullptr : gamma_.ptr<float>(),
                                      beta_.empty() ? nullptr : beta_.ptr<float>(), eps_,
                                      detail::opencvParallelFor());
    }

private:
    float eps_;
    Mat gamma_, beta_;  // 1 x C each, or empty
};

// "NafMatMul": A B on the CPU convolutions' GEMM. B is either a constant [K, N] (the node's second
// input an initializer, so blobs[0]; an optional blobs[1] of N values is the bias) and A's rows are
// all its axes but the last, or B is a second input of A's rank with the same leading axes (one
// product per leading index). cv::dnn 4.6's InnerProduct ran these at about a fifth of the peak.
class MatMulLayer CV_FINAL : public VfmLayer
{
public:
    explicit MatMulLayer(const dnn::LayerParams& params) : VfmLayer(params, "NafMatMul")
    {
        if (params.blobs.empty()) return;
        const Mat& w = params.blobs[0];
        if (params.blobs.size() > 2 || w.dims != 2 || w.type() != CV_32F || w.empty())
            CV_Error(Error::StsBadArg, prefix() + "a constant B must be one 2-D CV_32F matrix [K, N] with at most a "
                                                  "bias, got " + std::to_string(params.blobs.size()) + " blobs, B of " +
                                           std::to_string(w.dims) + " dims, type " + std::to_string(w.type()));
        k_ = w.size[0];
        n_ = w.size[1];
        const bool bias = params.blobs.size() == 2;
        if (bias && (params.blobs[1].total() != static_cast<size_t>(n_) || params.blobs[1].type() != CV_32F))
            CV_Error(Error::StsBadArg, prefix() + "the bias has " + std::to_string(params.blobs[1].total()) +
                                           " values, B has N = " + std::to_string(n_) + " columns");
        // [B; bias]: the kernel adds the last row as if A had a column of ones.
        constantB_.create(k_ + (bias ? 1 : 0), n_, CV_32F);
        w.copyTo(constantB_.rowRange(0, k_));
        if (bias) params.blobs[1].reshape(1, 1).copyTo(constantB_.row(k_));
        biasRow_ = bias;
    }
    static Ptr<dnn::Layer> create(dnn::LayerParams& params) { return makePtr<MatMulLayer>(params); }

    bool getMemoryShapes(const std::vector<dnn::MatShape>& inputs, const int, std::vector<dnn::MatShape>& outputs,
                         std::vector<dnn::MatShape>&) const CV_OVERRIDE
    {
        const size_t expected = constantB_.empty() ? 2 : 1;
        if (inputs.size() != expected || inputs[0].size() < 2)
            CV_Error(Error::StsBadArg, prefix() + "expects " + std::to_string(expected) +
                                           " input(s) of at least 2 dims, got " + std::to_string(inputs.size()));
        const dnn::MatShape& a = inputs[0];
        dnn::MatShape out = a;
        if (!constantB_.empty())
        {
            if (a.back() != k_)
                CV_Error(Error::StsBadArg, prefix() + "A's last axis has " + std::to_string(a.back()) +
                                               " values, B has K = " + std::to_string(k_) + " rows");
            out.back() = n_;
        }
        else
        {
            const dnn::MatShape& b = inputs[1];
            const bool leadingMatch = b.size() == a.size() && std::equal(a.begin(), a.end() - 2, b.begin());
            if (!leadingMatch || a.back() != b[b.size() - 2])
                CV_Error(Error::StsBadArg, prefix() + "A " + dnn::toString(a) + " and B " + dnn::toString(b) +
                                               " are not a batch of [M, K] x [K, N] products");
            out.back() = b.back();
        }
        outputs.assign(1, out);
        return false;
    }

protected:
    void compute(const std::vector<Mat>& inputs, Mat& c) CV_OVERRIDE
    {
        const bool constant = !constantB_.empty();
        if (inputs.size() != (constant ? 1u : 2u))
            CV_Error(Error::StsBadArg, prefix() + std::to_string(inputs.size()) + " inputs");
        const Mat& a = inputs[0];
        const Mat& b = constant ? constantB_ : inputs[1];
        if (c.total() == 0) return;  // M or N is 0: nothing to write
        if (a.total() == 0)          // K is 0 (B is an input): every entry is an empty sum
        {
            c.setTo(Scalar::all(0));
            return;
        }
        ::naf::kernels::MatMulShape shape;
        shape.K = a.size[a.dims - 1];
        shape.N = constant ? n_ : b.size[b.dims - 1];
        if (constant)
        {
            shape.M = static_cast<int>(a.total() / static_cast<size_t>(shape.K));
            shape.sharedB = true;
            shape.biasRow = biasRow_;
        }
        else
        {
            shape.M = a.size[a.dims - 2];
            shape.batch = a.total() / (static_cast<size_t>(shape.M) * shape.K);
        }
        ::naf::kernels::matmul(a.ptr<float>(), b.ptr<float>(), c.ptr<float>(), shape, detail::opencvParallelFor());
    }

private:
    Mat constantB_;  // [K (+1), N]: B, then the bias row when there is one; empty: B is an input
    int k_ = 0, n_ = 0;
    bool biasRow_ = false;
};

// "NafConv1x1": a 1x1 convolution (stride 1, one group) on NCHW blobs with the CPU encoder's
// convolution (kernels::conv2dReflect, whose padding a 1x1 kernel never reads): blobs[0] the weight
// [cout, cin, 1, 1], blobs[1] an optional bias [cout]; packed once, kept with the layer.
class Conv1x1Layer CV_FINAL : public VfmLayer
{
public:
    explicit Conv1x1Layer(const dnn::LayerParams& params) : VfmLayer(params, "NafConv1x1")
    {
        if (params.blobs.empty() || params.blobs.size() > 2)
            CV_Error(Error::StsBadArg, prefix() + "expects a constant weight and an optional bias, got " +
                                           std::to_string(params.blobs.size()) + " constant inputs");
        const Mat& w = params.blobs[0];
        if (w.dims != 4 || w.size[2] != 1 || w.size[3] != 1 || w.type() != CV_32F || w.empty())
            CV_Error(Error::StsBadArg, prefix() + "the weight must be CV_32F [cout, cin, 1, 1], got " +
                                           dnn::toString(dnn::shape(w)) + " of type " + std::to_string(w.type()));
        weight_ = w.clone();
        if (params.blobs.size() == 2)
        {
            if (params.blobs[1].total() != static_cast<size_t>(w.size[0]) || params.blobs[1].type() != CV_32F)
                CV_Error(Error::StsBadArg, prefix() + "the bias has " + std::to_string(params.blobs[1].total()) +
                                               " values for " + std::to_string(w.size[0]) + " output channels");
            bias_ = params.blobs[1].reshape(1, 1).clone();
        }
        conv_.weight = weight_.ptr<float>();
        conv_.bias = bias_.empty() ? nullptr : bias_.ptr<float>();
        conv_.cout = w.size[0];
        conv_.cin = w.size[1];
        conv_.k = 1;
    }
    static Ptr<dnn::Layer> create(dnn::LayerParams& params) { return makePtr<Conv1x1Layer>(params); }

    bool getMemoryShapes(const std::vector<dnn::MatShape>& inputs, const int, std::vector<dnn::MatShape>& outputs,
                         std::vector<dnn::MatShape>&) const CV_OVERRIDE
    {
        if (inputs.size() != 1 || inputs[0].size() != 4 || inputs[0][1] != conv_.cin)
            CV_Error(Error::StsBadArg, prefix() + "expects one NCHW input of " + std::to_string(conv_.cin) +
                                           " channels, got " +
                                           (inputs.empty() ? std::string("none") : dnn::toString(inputs[0])));
        dnn::MatShape out = inputs[0];
        out[1] = conv_.cout;
        outputs.assign(1, out);
        return false;
    }

protected:
    void compute(const std::vector<Mat>& inputs, Mat& y) CV_OVERRIDE
    {
        if (inputs.size() != 1 || inputs[0].dims != 4 || y.dims != 4)
            CV_Error(Error::StsBadArg, prefix() + "expects one 4-D input and output");
        const Mat& x = inputs[0];
        if (x.total() == 0) return;  // no pixels (or no images): nothing to write
        const int h = x.size[2], w = x.size[3];
        const size_t plane = static_cast<size_t>(h) * w;
        for (int n = 0; n < x.size[0]; ++n)
            ::naf::kernels::conv2dReflect(x.ptr<float>() + n * conv_.cin * plane, h, w, conv_,
                                          y.ptr<float>() + n * conv_.cout * plane, detail::opencvParallelFor(), &packed_);
    }

private:
    Mat weight_, bias_;
    ::naf::kernels::ConvWeights conv_;
    std::vector<::naf::kernels::PackedConvWeights> packed_;  // cv::dnn runs a Net's layers one at a time
};

// The VFM layers (all VfmLayer, so all report to an extract()'s progress).
struct VfmLayerType
{
    const char* name;
    dnn::LayerFactory::Constructor create;
};
const VfmLayerType kVfmLayerTypes[] = {{"NafGelu", GeluLayer::create},
                                       {"NafSoftmax", SoftmaxLayer::create},
                                       {"NafMatMul", MatMulLayer::create},
                                       {"NafLayerNorm", LayerNormLayer::create},
                                       {"NafConv1x1", Conv1x1Layer::create}};

}  // namespace

void registerLayers()
{
    static std::once_flag once;
    std::call_once(once, [] {
        // OpenCV 4.6 names custom-domain ONNX ops "<domain>.<op>"; with
        // OPENCV_DNN_CUSTOM_ONNX_TYPE_INCLUDE_DOMAIN_NAME=0 it uses the bare op type.
        dnn::LayerFactory::registerLayer("naf.NAF", NafLayer::create);
        dnn::LayerFactory::registerLayer("NAF", NafLayer::create);
        // Op types of the default ONNX domain, named so that they cannot replace cv::dnn's own
        // layers: OpenCV 4.6 creates a node of an unknown type by its name without a word, while a
        // custom domain costs one warning per node in the log (33 for MobileSAM).
        for (const VfmLayerType& layer : kVfmLayerTypes) dnn::LayerFactory::registerLayer(layer.name, layer.create);
    });
}

namespace detail {

namespace {
thread_local VfmForwardObserver* tlsVfmForwardObserver = nullptr;
}  // namespace

VfmForwardObserver* currentVfmForwardObserver() { return tlsVfmForwardObserver; }

ScopedVfmForwardObserver::ScopedVfmForwardObserver(VfmForwardObserver* observer) : previous_(tlsVfmForwardObserver)
{
    tlsVfmForwardObserver = observer;
}

ScopedVfmForwardObserver::~ScopedVfmForwardObserver() { tlsVfmForwardObserver = previous_; }

int countReportingLayers(const dnn::Net& net, const std::string& outputLayer)
{
    // Net::forward(name) runs every layer up to that one, in id order (getLayerNames' order).
    int last = outputLayer.empty() ? -1 : net.getLayerId(outputLayer);
    if (last < 0 && !outputLayer.empty())
    {
        const size_t dot = outputLayer.rfind('.');  // "layer.N": output N of a layer
        if (dot != std::string::npos) last = net.getLayerId(outputLayer.substr(0, dot));
    }
    int count = 0;
    for (const String& name : net.getLayerNames())
    {
        const int id = net.getLayerId(name);
        if (last >= 0 && id > last) continue;
        const Ptr<dnn::Layer> layer = net.getLayer(id);
        for (const VfmLayerType& type : kVfmLayerTypes)
            if (layer && layer->type == type.name) ++count;
    }
    return count;
}

}  // namespace detail

}  // namespace naf
}  // namespace cv
