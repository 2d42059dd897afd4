// Encoder convolutions through cuDNN (legacy convolution API, NCHW; the last convolution of each
// branch optionally NHWC, runNhwc): on fp32 tensors, FP32 mode
// restricts cuDNN to FMA kernels and TF32 mode allows tensor-core kernels; fp16 tensors
// (MathMode::FP16) run with float32 accumulation (PSEUDO_HALF_CONFIG) on tensor cores. The input
// is already reflect-padded (cuDNN only zero-pads), so the convolution itself has no padding; the
// bias is added by the kernel that consumes the output (GroupNorm statistics or the final pooling).
#include <cudnn.h>

#include <algorithm>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>

#include "naf_cuda_internal.cuh"

namespace naf {
namespace kernels {
namespace cuda {
namespace detail {

namespace {

void checkCudnn(cudnnStatus_t status, const char* what)
{
    if (status == CUDNN_STATUS_SUCCESS) return;
    const std::string message =
        std::string("naf::kernels::cuda: cuDNN ") + what + " failed: " + cudnnGetErrorString(status);
#if CUDNN_MAJOR >= 9
    if (status == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED) throw OutOfDeviceMemory(message);
#else
    if (status == CUDNN_STATUS_ALLOC_FAILED) throw OutOfDeviceMemory(message);
#endif
    throw std::runtime_error(message);
}

/// Workspace offered to the algorithm search: algorithms that need more are not considered.
/// cuDNN's tensor-core kernels for NCHW fp32 stage the tensors in another layout, so the limit
/// grows with the tensors (with a fixed 256 MiB, TF32 at 1024x1024 fell back to kernels slower
/// than FP32 ones: 71 ms against 45 ms for the encoder on an H200).
size_t workspaceLimit(size_t tensorBytes)
{
    return std::max(size_t(256) << 20, tensorBytes * 3 / 2);
}

const char* algoName(cudnnConvolutionFwdAlgo_t a)
{
    switch (a)
    {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: return "IMPLICIT_GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM: return "IMPLICIT_PRECOMP_GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM: return "GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_DIRECT: return "DIRECT";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT: return "FFT";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING: return "FFT_TILING";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD: return "WINOGRAD";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED: return "WINOGRAD_NONFUSED";
    default: return "other";
    }
}

}  // namespace

struct CudnnConvolver::Impl
{
    cudaStream_t stream = nullptr;
    cudnnHandle_t handle = nullptr;
    cudnnTensorDescriptor_t xDesc = nullptr, yDesc = nullptr;
    cudnnFilterDescriptor_t wDesc = nullptr;
    cudnnConvolutionDescriptor_t convDesc = nullptr;
    DeviceBuffer workspace;  // grows to the largest chosen algorithm's need
    std::string log;  // one entry per plan chosen

    struct Plan
    {
        cudnnConvolutionFwdAlgo_t algo;
        cudnnMathType_t math;
        size_t workspace;
    };
    /// How a convolution's tensors are stored and multiplied.
    enum class Numeric
    {
        FP32,
        TF32,
        FP16
    };
    // (h, w, cin, cout, k, numeric, layout) -> plan
    std::map<std::tuple<int, int, int, int, int, Numeric, cudnnTensorFormat_t>, Plan> plans;

    /// layout: CUDNN_TENSOR_NCHW (weight [cout][cin][k][k]) or CUDNN_TENSOR_NHWC (tensors
    /// pixel-major, weight [cout][k][k][cin]).
    void run(const void* srcPadded, int h, int w, const DevConv& conv, const void* weight, void* dst, Numeric numeric,
             cudnnTensorFormat_t layout = CUDNN_TENSOR_NCHW);

    ~Impl()
    {
        workspace.release();
        if (convDesc) (void)cudnnDestroyConvolutionDescriptor(convDesc);
        if (wDesc) (void)cudnnDestroyFilterDescriptor(wDesc);
        if (yDesc) (void)cudnnDestroyTensorDescriptor(yDesc);
        if (xDesc) (void)cudnnDestroyTensorDescriptor(xDesc);
        if (handle) (void)cudnnDestroy(handle);
    }
};

CudnnConvolver::CudnnConvolver(cudaStream_t stream)
    : impl_(new Impl)
{
    try
    {
        impl_->stream = stream;
        checkCudnn(cudnnCreate(&impl_->handle), "initialization (cudnnCreate)");
        checkCudnn(cudnnSetStream(impl_->handle, stream), "cudnnSetStream");
        checkCudnn(cudnnCreateTensorDescriptor(&impl_->xDesc), "descriptor creation");
        checkCudnn(cudnnCreateTensorDescriptor(&impl_->yDesc), "descriptor creation");
        checkCudnn(cudnnCreateFilterDescriptor(&impl_->wDesc), "descriptor creation");
        checkCudnn(cudnnCreateConvolutionDescriptor(&impl_->convDesc), "descriptor creation");
    }
    catch (...)
    {
        delete impl_;
        throw;
    }
}

CudnnConvolver::~CudnnConvolver()
{
    delete impl_;
}

size_t CudnnConvolver::workspaceBytes() const
{
    return impl_->workspace.bytes;
}

void CudnnConvolver::releaseWorkspace()
{
    impl_->workspace.release();
}

std::string CudnnConvolver::plans() const
{
    return version() + ": " + impl_->log;
}

std::string CudnnConvolver::version()
{
    const size_t v = cudnnGetVersion();  // major*10000 + minor*100 + patch (cuDNN 9)
    return "cuDNN " + std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
           std::to_string(v % 100);
}

void CudnnConvolver::run(const float* srcPadded, int h, int w, const DevConv& conv, float* dst, bool tf32)
{
    impl_->run(srcPadded, h, w, conv, conv.weight, dst, tf32 ? Impl::Numeric::TF32 : Impl::Numeric::FP32);
}

void CudnnConvolver::run(const __half* srcPadded, int h, int w, const DevConv& conv, __half* dst)
{
    if (!conv.weightHalf)
        throw std::invalid_argument("naf::kernels::cuda: float16 convolution without float16 weights");
    impl_->run(srcPadded, h, w, conv, conv.weightHalf, dst, Impl::Numeric::FP16);
}

void CudnnConvolver::runNhwc(const float* srcPadded, int h, int w, const DevConv& conv, float* dst, bool tf32)
{
    if (!conv.weightKrsc)
        throw std::invalid_argument("naf::kernels::cuda: NHWC convolution without [cout][k][k][cin] weights");
    impl_->run(srcPadded, h, w, conv, conv.weightKrsc, dst, tf32 ? Impl::Numeric::TF32 : Impl::Numeric::FP32,
               CUDNN_TENSOR_NHWC);
}

void CudnnConvolver::Impl::run(const void* srcPadded, int h, int w, const DevConv& conv, const void* weight, void* dst,
                               Numeric numeric, cudnnTensorFormat_t layout)
{
    Impl& s = *this;
    const bool tf32 = numeric == Numeric::TF32;
    const bool fp16 = numeric == Numeric::FP16;
    const cudnnDataType_t storage = fp16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
    const size_t elementBytes = fp16 ? sizeof(__half) : sizeof(float);
    const int pad = conv.k / 2;
    // Dimensions are given as N, C, H, W whatever the layout; the format says how they are stored.
    checkCudnn(cudnnSetTensor4dDescriptor(s.xDesc, layout, storage, 1, conv.cin, h + 2 * pad, w + 2 * pad),
               "input descriptor");
    checkCudnn(cudnnSetTensor4dDescriptor(s.yDesc, layout, storage, 1, conv.cout, h, w), "output descriptor");
    checkCudnn(cudnnSetFilter4dDescriptor(s.wDesc, storage, layout, conv.cout, conv.cin, conv.k, conv.k),
               "filter descriptor");
    // Accumulation in float32 for every storage type (for fp16: cuDNN's PSEUDO_HALF_CONFIG).
    checkCudnn(cudnnSetConvolution2dDescriptor(s.convDesc, 0, 0, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                               CUDNN_DATA_FLOAT),
               "convolution descriptor");
    // FP32: FMA kernels only (cuDNN would otherwise use TF32 for fp32 data on sm >= 80).
    const cudnnMathType_t wanted = tf32 || fp16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
    checkCudnn(cudnnSetConvolutionMathType(s.convDesc, wanted), "math type");

    const auto key = std::make_tuple(h, w, conv.cin, conv.cout, conv.k, numeric, layout);
    auto it = s.plans.find(key);
    if (it == s.plans.end())
    {
        // Time the candidates once for this shape on the real buffers (dst is overwritten below),
        // in a temporary workspace: only the chosen algorithm's need is kept afterwards.
        const size_t tensorBytes = (static_cast<size_t>(conv.cin) * (h + 2 * pad) * (w + 2 * pad) +
                                    static_cast<size_t>(conv.cout) * h * w) * elementBytes;
        const size_t limit = workspaceLimit(tensorBytes);
        void* searchSpace = allocateDevice(limit, "allocating the cuDNN search workspace");
        constexpr int kMaxAlgos = 16;
        cudnnConvolutionFwdAlgoPerf_t perf[kMaxAlgos];
        int returned = 0;
        const cudnnStatus_t found = cudnnFindConvolutionForwardAlgorithmEx(
            s.handle, s.xDesc, srcPadded, s.wDesc, weight, s.convDesc, s.yDesc, dst, kMaxAlgos, &returned, perf,
            searchSpace, limit);
        (void)cudaStreamSynchronize(s.stream);
        (void)cudaFree(searchSpace);
        checkCudnn(found, "algorithm search");
        const Impl::Plan* chosen = nullptr;
        Impl::Plan candidate{};
        float chosenMs = 0.f;
        for (int i = 0; i < returned && !chosen; ++i)
        {
            if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > limit) continue;
            if (perf[i].determinism != CUDNN_DETERMINISTIC) continue;  // repeated calls must be bit-identical
            if (numeric == Numeric::FP32 && (perf[i].mathType == CUDNN_TENSOR_OP_MATH ||
                                             perf[i].mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
                continue;
            if (tf32 && perf[i].mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) continue;  // no fp16 downcast
            // FP32 always executes with FMA math: cuDNN's default math allows TF32 on sm >= 80.
            candidate = Impl::Plan{perf[i].algo, numeric == Numeric::FP32 ? CUDNN_FMA_MATH : perf[i].mathType,
                                   perf[i].memory};
            chosen = &candidate;
            chosenMs = perf[i].time;
        }
        if (!chosen)
            throw std::runtime_error("naf::kernels::cuda: cuDNN found no usable deterministic algorithm for a " +
                                     std::to_string(conv.cout) + "x" + std::to_string(conv.cin) + "x" +
                                     std::to_string(conv.k) + "x" + std::to_string(conv.k) + " convolution on " +
                                     std::to_string(h) + "x" + std::to_string(w));
        it = s.plans.emplace(key, candidate).first;
        s.log += std::to_string(conv.cout) + "x" + std::to_string(conv.cin) + "x" + std::to_string(conv.k) + "x" +
                 std::to_string(conv.k) + " on " + std::to_string(h) + "x" + std::to_string(w) +
                 (fp16 ? " fp16" : (tf32 ? " tf32" : " fp32")) + (layout == CUDNN_TENSOR_NHWC ? " nhwc: " : ": ") +
                 algoName(candidate.algo) + " (" + std::to_string(chosenMs) + " ms in the search, workspace " +
                 std::to_string(candidate.workspace >> 20) + " MiB); ";
    }
    const Impl::Plan& plan = it->second;
    checkCudnn(cudnnSetConvolutionMathType(s.convDesc, plan.math), "math type");
    s.workspace.ensure(plan.workspace, "allocating the cuDNN workspace");
    const float alpha = 1.f, beta = 0.f;
    checkCudnn(cudnnConvolutionForward(s.handle, &alpha, s.xDesc, srcPadded, s.wDesc, weight, s.convDesc,
                                       plan.algo, s.workspace.ptr, plan.workspace, &beta, s.yDesc, dst),
               "convolution");
}

}  // namespace detail
}  // namespace cuda
}  // namespace kernels
}  // namespace naf
