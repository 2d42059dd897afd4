// Minimal, validating safetensors reader (header parsed with nlohmann/json).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace cv {
namespace naf {
namespace detail {

struct SafetensorsTensor
{
    std::string dtype;           // "F32", "I32", "U8", ...
    std::vector<int64_t> shape;  // may be empty (scalar)
    size_t begin = 0, end = 0;   // byte range inside the data section
};

/// A whole safetensors file in memory. Every offset and size is checked when it is read, so the
/// accessors never read outside the buffer.
class SafetensorsFile
{
public:
    /// Reads and validates `path`; cv::Exception (StsParseError / StsObjectNotFound) on any problem.
    static SafetensorsFile read(const std::string& path);
    /// Parses an in-memory file; `origin` names it in error messages.
    static SafetensorsFile parse(std::vector<uint8_t> bytes, const std::string& origin);

    const std::string& origin() const { return origin_; }
    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    const std::map<std::string, SafetensorsTensor>& tensors() const { return tensors_; }
    bool has(const std::string& name) const { return tensors_.count(name) != 0; }
    const SafetensorsTensor& tensor(const std::string& name) const;
    const uint8_t* data(const std::string& name) const;
    /// The whole data section (everything after the header) and its size.
    const uint8_t* dataSection() const { return bytes_.data() + dataOffset_; }
    size_t dataSectionSize() const { return bytes_.size() - dataOffset_; }

    /// A copy of the tensor as a Mat: dims = shape (a 1-D tensor becomes an n x 1 Mat), type from
    /// the dtype (F32 -> CV_32F, I32 -> CV_32S, U8 -> CV_8U).
    Mat mat(const std::string& name) const;

private:
    std::string origin_;
    std::vector<uint8_t> bytes_;
    size_t dataOffset_ = 0;
    std::map<std::string, std::string> metadata_;
    std::map<std::string, SafetensorsTensor> tensors_;
};

/// The bytes of a safetensors file holding `tensors` (in map order) and string `metadata`: the
/// inverse of SafetensorsFile::mat(). Types CV_8U -> U8, CV_32S -> I32, CV_32F -> F32; shape =
/// the Mat's sizes plus the channel count when > 1, and an n x 1 single-channel Mat is 1-D [n].
/// The header is padded so that the data section starts 8-byte aligned.
/// @throws cv::Exception for an empty tensor or another type.
std::vector<uint8_t> serializeSafetensors(const std::map<std::string, Mat>& tensors,
                                          const std::map<std::string, std::string>& metadata);

/// Bytes per element of a safetensors dtype, 0 when unknown.
size_t dtypeSize(const std::string& dtype);

}  // namespace detail
}  // namespace naf
}  // namespace cv
