#include "feature_cache.hpp"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include <opencv2/imgproc.hpp>

#include <unistd.h>

#include "safetensors.hpp"

namespace naf_tools {

void writeSafetensors(const std::string& path, const std::map<std::string, cv::Mat>& tensors,
                      const std::map<std::string, std::string>& metadata)
{
    static std::atomic<unsigned> counter{0};
    const std::vector<uint8_t> bytes = cv::naf::detail::serializeSafetensors(tensors, metadata);
    // Unique per process and call: two runs (or threads) writing the same entry never share a
    // temporary; in the target's folder so that rename() stays on one file system.
    const std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    // A failed write leaves no temporary behind.
    const auto fail = [&](const std::string& what) {
        const std::string reason = errno ? std::string(": ") + std::strerror(errno) : std::string();
        std::remove(tmp.c_str());
        CV_Error(cv::Error::StsError, "writeSafetensors: " + what + reason);
    };
    errno = 0;
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot open '" + tmp + "' for writing");
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) fail("write to '" + tmp + "' failed");
    out.close();  // flushes: a full disk shows here
    if (!out) fail("closing '" + tmp + "' failed");
    if (std::rename(tmp.c_str(), path.c_str()) != 0) fail("cannot rename '" + tmp + "' to '" + path + "'");
}

CacheEntry readCacheEntry(const std::string& path)
{
    const auto file = cv::naf::detail::SafetensorsFile::read(path);
    const auto& meta = file.metadata();
    const auto format = meta.find("format");
    if (format == meta.end() || format->second != "cv-naf-feature-cache")
        CV_Error(cv::Error::StsParseError, "'" + path + "' is not a cv-naf-feature-cache file (metadata 'format')");
    for (const char* name : {"image", "features_hi"})
        if (!file.has(name)) CV_Error(cv::Error::StsParseError, "'" + path + "' lacks tensor '" + name + "'");
    CacheEntry e;
    e.metadata = meta;
    const auto& img = file.tensor("image");
    if (img.dtype != "U8" || img.shape.size() != 3 || img.shape[2] != 3)
        CV_Error(cv::Error::StsParseError, "'" + path + "': 'image' must be U8 [H, W, 3]");
    e.image = cv::Mat(static_cast<int>(img.shape[0]), static_cast<int>(img.shape[1]), CV_8UC3,
                      const_cast<uint8_t*>(file.data("image")))
                  .clone();
    e.featuresHi = file.mat("features_hi");
    if (file.has("features_lo")) e.featuresLo = file.mat("features_lo");  // absent in --hi-only caches
    if (e.featuresHi.dims != 4 || e.featuresHi.type() != CV_32F ||
        (!e.featuresLo.empty() && (e.featuresLo.dims != 4 || e.featuresLo.type() != CV_32F ||
                                   e.featuresHi.size[1] != e.featuresLo.size[1])))
        CV_Error(cv::Error::StsParseError, "'" + path + "': features must be F32 [1, C, h, w] with equal C");
    return e;
}

cv::Mat centredSquare(const cv::Mat& image, int side, cv::Rect* crop)
{
    CV_Assert(!image.empty() && side > 0);
    const int s = std::min(image.cols, image.rows);
    const cv::Rect square((image.cols - s) / 2, (image.rows - s) / 2, s, s);
    cv::Mat out;
    cv::resize(image(square), out, cv::Size(side, side), 0, 0, s > side ? cv::INTER_AREA : cv::INTER_LINEAR);
    if (crop) *crop = square;
    return out;
}

std::string absolutePath(const std::string& path)
{
    std::error_code ec;
    // Made absolute first: a relative path none of whose parts exists would stay relative.
    const std::filesystem::path canonical = std::filesystem::weakly_canonical(std::filesystem::absolute(path), ec);
    return ec ? std::filesystem::absolute(path).lexically_normal().string() : canonical.string();
}

std::string cacheNameFor(const std::string& imagePath, int components)
{
    std::vector<std::string> parts;
    std::string cur;
    for (char c : imagePath)
    {
        if (c == '/' || c == '\\')
        {
            if (!cur.empty()) parts.push_back(cur);
            cur.clear();
        }
        else
            cur += c;
    }
    if (!cur.empty()) parts.push_back(cur);
    CV_Assert(!parts.empty());
    std::string& last = parts.back();
    const size_t dot = last.rfind('.');
    if (dot != std::string::npos && dot > 0) last = last.substr(0, dot);
    std::string name;
    const size_t first = parts.size() > static_cast<size_t>(components) ? parts.size() - components : 0;
    for (size_t i = first; i < parts.size(); ++i) name += (name.empty() ? "" : "__") + parts[i];
    return name + ".safetensors";
}

int parsePositiveInt(const std::string& text)
{
    try
    {
        size_t used = 0;
        const int v = std::stoi(text, &used);
        return used == text.size() && v >= 1 ? v : -1;
    }
    catch (const std::exception&)
    {
        return -1;
    }
}

}  // namespace naf_tools
