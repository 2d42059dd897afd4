// The VFM feature cache used to train and evaluate NAF weights (docs/TRAINING.md).
//
// One safetensors file per image, written atomically (temporary file + rename) so that an
// interrupted extraction never leaves a half-written entry and a rerun skips finished ones:
//   "image"       U8  [S, S, 3]        the square BGR image the VFM saw at full resolution
//   "features_hi" F32 [1, C, S/p, S/p] VFM features of the S x S image (the training target)
//   "features_lo" F32 [1, C, S/2p, S/2p] VFM features of the same image at S/2 x S/2 (NAF input;
//                 see naf_extract_features.cpp for how they are computed; absent in caches
//                 written with --hi-only, which only serve as NAF input at full resolution)
//   metadata: format "cv-naf-feature-cache" v1, source path, crop, vfm name, sizes.
#pragma once

#include <map>
#include <string>

#include <opencv2/core.hpp>

namespace naf_tools {

struct CacheEntry
{
    cv::Mat image;       // S x S CV_8UC3 BGR
    cv::Mat featuresHi;  // 4-D 1 x C x h x w CV_32F
    cv::Mat featuresLo;  // 4-D 1 x C x h/2 x w/2 CV_32F, or empty (--hi-only cache)
    std::map<std::string, std::string> metadata;
};

/// Writes named tensors (cv::naf::detail::serializeSafetensors: CV_8U / CV_32S / CV_32F; 2-D Mats with channels become [rows, cols, ch])
/// and string metadata to `path` atomically (through `<path>.tmp-<pid>-<n>`, removed when anything
/// fails, the final flush on close included). cv::Exception on unsupported types or I/O errors.
void writeSafetensors(const std::string& path, const std::map<std::string, cv::Mat>& tensors,
                      const std::map<std::string, std::string>& metadata);

/// Reads a cache entry written by naf_extract_features. cv::Exception on a wrong file.
CacheEntry readCacheEntry(const std::string& path);

/// The largest centred square of `image`, resized to side x side (INTER_AREA when shrinking).
/// `crop` receives the square in source pixels.
cv::Mat centredSquare(const cv::Mat& image, int side, cv::Rect* crop = nullptr);

/// The path as one spelling for every working directory and path form (x.jpg, ./x.jpg,
/// /abs/x.jpg, also when it does not exist yet): how the tools tell two paths of one file apart
/// from two files.
std::string absolutePath(const std::string& path);

/// A file name for a source image: its last `components` path components joined with "__",
/// extension replaced by ".safetensors" (e.g. .../segmentation/camvid/train/images/x.jpg -> camvid__train__images__x.safetensors).
std::string cacheNameFor(const std::string& imagePath, int components = 4);

/// A whole decimal integer >= 1, or -1 when the text is anything else ("0", "0x", "", "3.5",
/// "64abc": std::stoi alone reads that as 64).
int parsePositiveInt(const std::string& text);

/// True when an argument asks for the usage text (--help or -h).
inline bool isHelpOption(const std::string& arg) { return arg == "--help" || arg == "-h"; }

}  // namespace naf_tools
