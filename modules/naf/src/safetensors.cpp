#include "safetensors.hpp"

#include "size_limits.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>

#include <sys/stat.h>

#include <nlohmann/json.hpp>

namespace cv {
namespace naf {
namespace detail {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;  // the safetensors spec's own limit

[[noreturn]] void parseError(const std::string& origin, const std::string& what)
{
    CV_Error(Error::StsParseError, "cv::naf: '" + origin + "' is not a valid safetensors file: " + what);
}

}  // namespace

size_t dtypeSize(const std::string& dtype)
{
    if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
    if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
    if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
    if (dtype == "U8" || dtype == "I8" || dtype == "BOOL") return 1;
    return 0;
}

std::vector<uint8_t> serializeSafetensors(const std::map<std::string, Mat>& tensors,
                                          const std::map<std::string, std::string>& metadata)
{
    nlohmann::json header = nlohmann::json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<Mat> continuous;
    size_t offset = 0;
    for (const auto& [name, mat] : tensors)
    {
        const int depth = mat.depth();
        const char* dtype = depth == CV_8U ? "U8" : depth == CV_32S ? "I32" : depth == CV_32F ? "F32" : nullptr;
        if (mat.empty() || !dtype)
            CV_Error(Error::StsUnsupportedFormat, "cv::naf: cannot write tensor '" + name + "' of type " +
                                                      (mat.empty() ? std::string("empty") : typeToString(mat.type())) +
                                                      " (expected CV_8U, CV_32S or CV_32F)");
        std::vector<int64_t> shape;
        if (mat.dims == 2 && mat.cols == 1 && mat.channels() == 1)
            shape = {mat.rows};
        else
            for (int i = 0; i < mat.dims; ++i) shape.push_back(mat.size[i]);
        if (mat.channels() > 1) shape.push_back(mat.channels());
        const Mat m = mat.isContinuous() ? mat : mat.clone();
        const size_t bytes = m.total() * m.elemSize();
        header[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
        offset += bytes;
        continuous.push_back(m);
    }
    std::string text = header.dump();
    while ((8 + text.size()) % 8) text += ' ';
    // one allocation of the final size, filled with memcpy (vector::insert of the header text
    // also tripped a GCC 12 -Warray-bounds false positive)
    std::vector<uint8_t> out(8 + text.size() + offset);
    for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>((static_cast<uint64_t>(text.size()) >> (8 * i)) & 0xff);
    std::memcpy(out.data() + 8, text.data(), text.size());
    size_t position = 8 + text.size();
    for (const Mat& m : continuous)
    {
        const size_t bytes = m.total() * m.elemSize();
        if (bytes) std::memcpy(out.data() + position, m.data, bytes);
        position += bytes;
    }
    return out;
}

SafetensorsFile SafetensorsFile::read(const std::string& path)
{
    // Only regular files: a path from an untrusted graph must not make us block on a FIFO or a
    // device such as /dev/stdin, or read /dev/zero forever.
    struct stat info;
    if (::stat(path.c_str(), &info) != 0)
        CV_Error(Error::StsObjectNotFound, "cv::naf: cannot open weights/tensor file '" + path + "'");
    if (!S_ISREG(info.st_mode))
        CV_Error(Error::StsBadArg, "cv::naf: '" + path + "' is not a regular file");
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) CV_Error(Error::StsObjectNotFound, "cv::naf: cannot open weights/tensor file '" + path + "'");
    const std::streamoff size = in.tellg();
    if (size < 0) CV_Error(Error::StsError, "cv::naf: cannot read '" + path + "'");
    checkMemoryBudget(static_cast<size_t>(size), "reading '" + path + "'");
    std::vector<uint8_t> bytes(static_cast<size_t>(size));
    in.seekg(0);
    if (size > 0 && !in.read(reinterpret_cast<char*>(bytes.data()), size))
        CV_Error(Error::StsError, "cv::naf: cannot read '" + path + "'");
    return parse(std::move(bytes), path);
}

SafetensorsFile SafetensorsFile::parse(std::vector<uint8_t> bytes, const std::string& origin)
{
    SafetensorsFile f;
    f.origin_ = origin;
    if (bytes.size() < 8)
        parseError(origin, "file has " + std::to_string(bytes.size()) + " bytes, fewer than the 8-byte header length");
    uint64_t headerLen = 0;
    for (int i = 7; i >= 0; --i) headerLen = (headerLen << 8) | bytes[i];
    if (headerLen > kMaxHeaderBytes || headerLen > bytes.size() - 8)
        parseError(origin, "header length " + std::to_string(headerLen) + " exceeds the file (" +
                               std::to_string(bytes.size()) + " bytes)");
    f.dataOffset_ = 8 + static_cast<size_t>(headerLen);
    const size_t dataSize = bytes.size() - f.dataOffset_;

    nlohmann::json header;
    try
    {
        header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + static_cast<std::ptrdiff_t>(f.dataOffset_));
    }
    catch (const nlohmann::json::exception& e)
    {
        parseError(origin, std::string("header is not JSON (") + e.what() + ")");
    }
    if (!header.is_object()) parseError(origin, "header is not a JSON object");

    std::vector<std::pair<size_t, size_t>> ranges;
    for (auto it = header.begin(); it != header.end(); ++it)
    {
        const std::string& name = it.key();
        const nlohmann::json& v = it.value();
        if (name == "__metadata__")
        {
            if (!v.is_object()) parseError(origin, "__metadata__ is not an object");
            for (auto m = v.begin(); m != v.end(); ++m)
            {
                if (!m.value().is_string()) parseError(origin, "__metadata__ value '" + m.key() + "' is not a string");
                f.metadata_[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") ||
            !v["dtype"].is_string() || !v["shape"].is_array() || !v["data_offsets"].is_array() ||
            v["data_offsets"].size() != 2)
            parseError(origin, "tensor '" + name + "' needs dtype (string), shape (array), data_offsets ([begin, end])");
        SafetensorsTensor t;
        t.dtype = v["dtype"].get<std::string>();
        const size_t elem = dtypeSize(t.dtype);
        if (elem == 0) parseError(origin, "tensor '" + name + "' has unknown dtype '" + t.dtype + "'");
        uint64_t count = 1;
        for (const auto& d : v["shape"])
        {
            if (!d.is_number_integer() || d.get<int64_t>() < 0)
                parseError(origin, "tensor '" + name + "' has a shape entry that is not a non-negative integer");
            const uint64_t dim = d.get<uint64_t>();
            if (dim != 0 && count > std::numeric_limits<uint64_t>::max() / dim / elem)
                parseError(origin, "tensor '" + name + "' shape overflows");
            count *= dim;
            t.shape.push_back(static_cast<int64_t>(dim));
        }
        const auto& off = v["data_offsets"];
        if (!off[0].is_number_unsigned() && !(off[0].is_number_integer() && off[0].get<int64_t>() >= 0))
            parseError(origin, "tensor '" + name + "' has a negative or non-integer offset");
        if (!off[1].is_number_unsigned() && !(off[1].is_number_integer() && off[1].get<int64_t>() >= 0))
            parseError(origin, "tensor '" + name + "' has a negative or non-integer offset");
        const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
        if (b > e || e > dataSize)
            parseError(origin, "tensor '" + name + "' data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                                   "] outside the " + std::to_string(dataSize) + "-byte data section (truncated file?)");
        if (e - b != count * elem)
            parseError(origin, "tensor '" + name + "' has " + std::to_string(e - b) + " bytes but its shape needs " +
                                   std::to_string(count * elem));
        t.begin = static_cast<size_t>(b);
        t.end = static_cast<size_t>(e);
        if (t.end > t.begin) ranges.emplace_back(t.begin, t.end);
        f.tensors_[name] = t;
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
        if (ranges[i].first < ranges[i - 1].second) parseError(origin, "tensors overlap in the data section");
    f.bytes_ = std::move(bytes);
    return f;
}

const SafetensorsTensor& SafetensorsFile::tensor(const std::string& name) const
{
    auto it = tensors_.find(name);
    if (it == tensors_.end()) CV_Error(Error::StsObjectNotFound, "cv::naf: '" + origin_ + "' has no tensor '" + name + "'");
    return it->second;
}

const uint8_t* SafetensorsFile::data(const std::string& name) const
{
    return bytes_.data() + dataOffset_ + tensor(name).begin;
}

Mat SafetensorsFile::mat(const std::string& name) const
{
    const SafetensorsTensor& t = tensor(name);
    int type = -1;
    if (t.dtype == "F32") type = CV_32F;
    else if (t.dtype == "I32") type = CV_32S;
    else if (t.dtype == "U8") type = CV_8U;
    else
        CV_Error(Error::StsUnsupportedFormat, "cv::naf: tensor '" + name + "' in '" + origin_ + "' has dtype " + t.dtype +
                                                  ", expected F32, I32 or U8");
    std::vector<int> sizes;
    for (int64_t d : t.shape)
    {
        if (d > std::numeric_limits<int>::max())
            CV_Error(Error::StsOutOfRange, "cv::naf: tensor '" + name + "' is too large for a Mat");
        sizes.push_back(static_cast<int>(d));
    }
    if (sizes.empty()) sizes.push_back(1);
    if (sizes.size() == 1) sizes.push_back(1);
    Mat m(static_cast<int>(sizes.size()), sizes.data(), type);
    if (t.end > t.begin) std::memcpy(m.data, data(name), t.end - t.begin);
    return m;
}

}  // namespace detail
}  // namespace naf
}  // namespace cv
