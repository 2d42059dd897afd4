// SHA-256 (FIPS 180-4), for verifying the tensor data of weight files. No crypto library is
// available on the target systems and only this one digest is needed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace cv {
namespace naf {
namespace detail {

class Sha256
{
public:
    Sha256();
    void update(const uint8_t* data, size_t size);
    /// Finishes and returns the digest as 64 lowercase hex digits; the object is then spent.
    std::string hexDigest();

private:
    void block(const uint8_t* p);
    uint32_t h_[8];
    uint8_t buffer_[64];
    size_t buffered_ = 0;
    uint64_t totalBytes_ = 0;
};

/// SHA-256 of a byte range as 64 lowercase hex digits.
std::string sha256Hex(const uint8_t* data, size_t size);

}  // namespace detail
}  // namespace naf
}  // namespace cv
