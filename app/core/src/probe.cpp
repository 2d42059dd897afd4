// Linear-probe heads (ProbeHead in naf_app/pipeline.hpp), stored as safetensors.
#include "naf_app/pipeline.hpp"

#include <nlohmann/json.hpp>
#include <opencv2/core/utils/filesystem.hpp>

#include "safetensors.hpp"  // the module's validating reader (modules/naf/src)

namespace naf_app {

std::string ProbeHead::expectedPath(const std::string& vfmName, const std::string& registryDir)
{
    const std::string dir = registryDir.empty() ? cv::naf::VfmRegistry::defaultDirectory() : registryDir;
    return cv::utils::fs::join(dir, vfmName + ".probe.safetensors");
}

ProbeHead ProbeHead::load(const std::string& path)
{
    const auto file = cv::naf::detail::SafetensorsFile::read(path);
    auto fail = [&](const std::string& what) {
        CV_Error(cv::Error::StsParseError, "linear-probe head '" + path + "': " + what);
    };
    if (!file.has("weight") || !file.has("bias")) fail("needs tensors 'weight' [K, C] and 'bias' [K]");
    ProbeHead head;
    head.path = path;
    head.weight = file.mat("weight");
    head.bias = file.mat("bias");
    if (head.weight.type() != CV_32F || head.weight.dims != 2) fail("'weight' must be F32 [K, C]");
    if (head.bias.type() != CV_32F || head.bias.total() != static_cast<size_t>(head.weight.rows))
        fail("'bias' must be F32 [K] with K = " + std::to_string(head.weight.rows) + ", has " +
             std::to_string(head.bias.total()) + " values");
    head.bias = head.bias.reshape(1, head.weight.rows);
    const auto& meta = file.metadata();
    auto classes = meta.find("classes");
    if (classes == meta.end()) fail("metadata 'classes' (a JSON array of K names) is missing");
    try
    {
        head.classes = nlohmann::json::parse(classes->second).get<std::vector<std::string>>();
    }
    catch (const std::exception& e)
    {
        fail(std::string("metadata 'classes' is not a JSON array of strings: ") + e.what());
    }
    if (head.classes.size() != static_cast<size_t>(head.weight.rows))
        fail(std::to_string(head.classes.size()) + " class names for " + std::to_string(head.weight.rows) + " classes");
    auto vfm = meta.find("vfm");
    if (vfm != meta.end()) head.vfmName = vfm->second;
    return head;
}

cv::Mat ProbeHead::classify(const cv::Mat& features) const
{
    CV_Assert(features.dims == 4 && features.size[0] == 1 && features.type() == CV_32F && features.isContinuous());
    const int c = features.size[1], h = features.size[2], w = features.size[3];
    if (c != weight.cols)
        CV_Error(cv::Error::StsBadSize, "linear-probe head '" + path + "' takes " + std::to_string(weight.cols) +
                                            " channels, the features have " + std::to_string(c));
    const cv::Mat planes(c, h * w, CV_32F, const_cast<float*>(features.ptr<float>()));
    cv::Mat scores = weight * planes;  // K x HW
    for (int k = 0; k < scores.rows; ++k) scores.row(k) += bias.at<float>(k);
    cv::Mat labels(h, w, CV_32S);
    for (int i = 0; i < h * w; ++i)
    {
        int best = 0;
        for (int k = 1; k < scores.rows; ++k)
            if (scores.at<float>(k, i) > scores.at<float>(best, i)) best = k;
        labels.at<int>(i / w, i % w) = best;
    }
    return labels;
}

}  // namespace naf_app
