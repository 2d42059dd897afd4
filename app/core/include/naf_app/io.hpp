// File output of the app: atomic writes, PNG and .npy encoders, input discovery.
#pragma once

#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace naf_app {

/// Writes bytes to `path` atomically: a temporary file in the same folder
/// (`<path>.tmp-<host>-<pid>-<n>`), then rename(), so a reader (or a resumed batch) never sees a
/// half-written file. Creates missing parent folders.
/// @throws cv::Exception naming the path and the OS error.
void writeFileAtomic(const std::string& path, const std::string& bytes);
/// Removes the temporary files of writeFileAtomic in `folder` that a process of this host which
/// is no longer running left behind (killed mid-write); returns how many. Another host's files,
/// e.g. of array-job tasks sharing the folder, are left alone.
int removeStaleTemporaries(const std::string& folder);
/// cv::imencode + writeFileAtomic (format from the extension, e.g. .png).
void writeImageAtomic(const std::string& path, const cv::Mat& image);
/// A CV_32F / CV_8U / CV_32S Mat (any dims) as NumPy .npy bytes (C order, little endian).
std::string encodeNpy(const cv::Mat& array);

/// Image files named by the inputs: a file is taken as is; a folder contributes its image files
/// (.jpg .jpeg .png .bmp .tif .tiff .webp in any case, not recursive, sorted); a `.txt`/`.lst`
/// file (any case) is a list, one path per line (relative to the list's folder, blank lines and #
/// comments ignored; a folder in it contributes its images). Listed files are not checked here:
/// the batch reports a missing one per image.
/// @throws cv::Exception for an input that does not exist or is neither a regular file nor a
/// folder (a FIFO would block the decoder).
std::vector<std::string> collectImages(const std::vector<std::string>& inputs);

/// The image at `path` as 8-bit BGR, as the app feeds it to a VFM: cv::imread(IMREAD_COLOR)
/// (which applies the EXIF orientation), except that an image with an alpha channel (PNG, WebP,
/// TIFF; found from the decoded content, whatever the file's extension) is composited over white: IMREAD_COLOR drops alpha and showed whatever colour the
/// transparent pixels stored. Empty when unreadable, like imread.
cv::Mat readImageBgr(const std::string& path);

/// A warning when `path` is a JPEG whose data ends before its end-of-image marker: the decoder
/// only prints "Premature end of JPEG file" and returns the image with the missing part filled
/// in. Walks the file's segments and scans (EXIF thumbnails, progressive scans and data appended
/// after the image are handled). Empty when the file is whole or is not a JPEG.
std::string truncatedJpegWarning(const std::string& path);

/// The items of shard `index` of `count` (round-robin over the sorted list: item k goes to k % count).
std::vector<std::string> selectShard(const std::vector<std::string>& items, int index, int count);

/// Parses "i/n" (0 <= i < n). @throws cv::Exception with the text.
void parseShard(const std::string& text, int& index, int& count);

}  // namespace naf_app
