// Fuzz target: a weight file (safetensors container: header length, header JSON, dtypes, shapes,
// data_offsets, __metadata__ with naf_config / naf_provenance / data_sha256). Every input must be
// either accepted or refused with cv::Exception; accepted weights then run one tiny upsampling,
// so odd but valid configs (kernel size, heads, groups, layers) reach the kernels too.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "fuzz_support.hpp"
#include "safetensors.hpp"
#include "weights.hpp"

namespace cv {
namespace naf {
namespace detail {
Ptr<NAF> createWithWeights(std::shared_ptr<const LoadedWeights> weights);
}
}  // namespace naf
}  // namespace cv

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    naf_fuzz::setUpOnce();
    std::vector<uint8_t> bytes(data, data + size);
    // The plain container first (also what the golden-file reader uses), then the weights on top.
    try
    {
        const auto file = cv::naf::detail::SafetensorsFile::parse(bytes, "fuzz");
        for (const auto& t : file.tensors())
        {
            try
            {
                file.mat(t.first);
            }
            catch (const cv::Exception&)
            {
            }
        }
    }
    catch (const cv::Exception&)
    {
    }
    std::shared_ptr<const cv::naf::detail::LoadedWeights> weights;
    try
    {
        weights = cv::naf::detail::loadWeightsBytes(std::move(bytes), "fuzz");
    }
    catch (const cv::Exception&)
    {
        return 0;
    }
    try
    {
        cv::Ptr<cv::naf::NAF> naf = cv::naf::detail::createWithWeights(weights);
        const int channels = weights->cfg.headsAttn;
        const int sizes[4] = {1, channels, 2, 3};
        cv::Mat features(4, sizes, CV_32F, cv::Scalar(0.5));
        cv::Mat image(6, 7, CV_8UC3, cv::Scalar(10, 200, 90));
        cv::Mat out;
        naf->upsample(image, features, out, cv::Size(5, 4));
        if (out.dims != 4 || out.size[1] != channels || out.size[2] != 4 || out.size[3] != 5) std::abort();
    }
    catch (const cv::Exception&)
    {
        // A refusal (e.g. of a shape this config cannot run) is fine; crashes and leaks are not.
    }
    return 0;
}
