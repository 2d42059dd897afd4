// File output and input discovery of the app, see naf_app/io.hpp.
#include "naf_app/io.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <opencv2/imgcodecs.hpp>

#include <signal.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace naf_app {

namespace {

// This host's name with characters other than [A-Za-z0-9.-] replaced, for temporary file names.
std::string hostName()
{
    char name[256] = {};
    if (::gethostname(name, sizeof name - 1) != 0 || !name[0]) return "host";
    std::string out(name);
    for (char& c : out)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-') c = '_';
    return out;
}

}  // namespace

int removeStaleTemporaries(const std::string& folder)
{
    const std::string marker = ".tmp-" + hostName() + "-";
    int removed = 0;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(folder, ec))
    {
        const std::string name = entry.path().filename().string();
        const size_t at = name.rfind(marker);
        if (at == std::string::npos || !entry.is_regular_file(ec)) continue;
        // <pid>-<counter> after the marker, digits only.
        const std::string tail = name.substr(at + marker.size());
        const size_t dash = tail.find('-');
        if (dash == std::string::npos || dash == 0 || dash + 1 == tail.size() ||
            tail.find_first_not_of("0123456789-") != std::string::npos || tail.find('-', dash + 1) != std::string::npos)
            continue;
        const long pid = std::strtol(tail.substr(0, dash).c_str(), nullptr, 10);
        if (pid <= 0 || pid == ::getpid() || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;
        std::error_code removeError;
        if (fs::remove(entry.path(), removeError)) ++removed;
    }
    return removed;
}

void writeFileAtomic(const std::string& path, const std::string& bytes)
{
    static std::atomic<unsigned> counter{0};
    const fs::path target(path);
    std::error_code ec;
    if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
    // Unique per process and call, in the target's folder so that rename() stays on one file system.
    std::ostringstream tmpName;
    tmpName << path << ".tmp-" << hostName() << "-" << ::getpid() << "-" << counter++;
    const std::string tmp = tmpName.str();
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) CV_Error(cv::Error::StsError, "cannot write '" + tmp + "': " + std::strerror(errno));
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        out.flush();
        if (!out)
        {
            const std::string reason = std::strerror(errno);
            out.close();
            fs::remove(tmp, ec);
            CV_Error(cv::Error::StsError, "cannot write '" + tmp + "': " + reason);
        }
    }
    fs::rename(tmp, target, ec);
    if (ec)
    {
        std::error_code ignored;
        fs::remove(tmp, ignored);
        CV_Error(cv::Error::StsError, "cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
    }
}

void writeImageAtomic(const std::string& path, const cv::Mat& image)
{
    const std::string ext = fs::path(path).extension().string();
    std::vector<uchar> buffer;
    if (ext.empty() || !cv::imencode(ext, image, buffer))
        CV_Error(cv::Error::StsError, "cannot encode '" + path + "' (extension '" + ext + "')");
    writeFileAtomic(path, std::string(buffer.begin(), buffer.end()));
}

std::string encodeNpy(const cv::Mat& array)
{
    CV_Assert(!array.empty() && array.isContinuous() && array.channels() == 1);
    const int depth = array.depth();
    const char* descr = depth == CV_32F ? "<f4" : depth == CV_8U ? "|u1" : depth == CV_32S ? "<i4" : nullptr;
    if (!descr) CV_Error(cv::Error::StsUnsupportedFormat, "encodeNpy: unsupported type " + cv::typeToString(array.type()));
    std::ostringstream shape;
    shape << "(";
    for (int d = 0; d < array.dims; ++d) shape << array.size[d] << (array.dims == 1 || d + 1 < array.dims ? ", " : "");
    shape << ")";
    std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape.str() + ", }";
    // Version 1.0: magic, version, 2-byte header length; the whole preamble padded to 64 bytes.
    const size_t preamble = 10;
    header.append(63 - (preamble + header.size()) % 64, ' ');
    header.push_back('\n');
    std::string out("\x93NUMPY\x01\x00", 8);
    out.push_back(static_cast<char>(header.size() & 0xff));
    out.push_back(static_cast<char>(header.size() >> 8));
    out += header;
    out.append(reinterpret_cast<const char*>(array.data), array.total() * array.elemSize());
    return out;
}

namespace {

std::string lowerExtension(const fs::path& p)
{
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    return ext;
}

bool isImageFile(const fs::path& p)
{
    const std::string ext = lowerExtension(p);
    static const char* known[] = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"};
    return std::any_of(std::begin(known), std::end(known), [&](const char* k) { return ext == k; });
}

bool isListFile(const fs::path& p)
{
    const std::string ext = lowerExtension(p);
    return ext == ".txt" || ext == ".lst";
}

// A folder's image files, sorted.
std::vector<std::string> folderImages(const fs::path& folder)
{
    std::vector<std::string> found;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(folder, ec))
        if (entry.is_regular_file() && isImageFile(entry.path())) found.push_back(entry.path().string());
    std::sort(found.begin(), found.end());
    return found;
}

}  // namespace

std::vector<std::string> collectImages(const std::vector<std::string>& inputs)
{
    std::vector<std::string> images;
    for (const std::string& input : inputs)
    {
        const fs::path p(input);
        std::error_code ec;
        if (fs::is_directory(p, ec))
        {
            const std::vector<std::string> found = folderImages(p);
            images.insert(images.end(), found.begin(), found.end());
        }
        else if (fs::is_regular_file(p, ec) && isListFile(p))
        {
            std::ifstream list(input);
            std::string line;
            while (std::getline(list, line))
            {
                line.erase(0, line.find_first_not_of(" \t\r"));
                line.erase(line.find_last_not_of(" \t\r") + 1);
                if (line.empty() || line[0] == '#') continue;
                const fs::path item(line);
                const std::string path = item.is_absolute() ? line : (p.parent_path() / item).string();
                if (fs::is_directory(path, ec))
                {
                    const std::vector<std::string> found = folderImages(path);
                    images.insert(images.end(), found.begin(), found.end());
                }
                else
                    images.push_back(path);  // checked when its turn comes (a skip, not an abort)
            }
        }
        else if (fs::is_regular_file(p, ec))
            images.push_back(input);  // any other file is taken as an image; decoding decides
        else if (fs::exists(p, ec))
            CV_Error(cv::Error::StsBadArg, "input '" + input + "' is neither a regular file nor a folder");
        else
            CV_Error(cv::Error::StsObjectNotFound, "input '" + input + "' does not exist");
    }
    return images;
}

std::vector<std::string> selectShard(const std::vector<std::string>& items, int index, int count)
{
    CV_CheckGT(count, 0, "shard count");
    CV_CheckGE(index, 0, "shard index");
    CV_CheckLT(index, count, "shard index must be < shard count");
    std::vector<std::string> out;
    for (size_t k = static_cast<size_t>(index); k < items.size(); k += static_cast<size_t>(count)) out.push_back(items[k]);
    return out;
}

void parseShard(const std::string& text, int& index, int& count)
{
    const size_t slash = text.find('/');
    try
    {
        size_t used1 = 0, used2 = 0;
        if (slash == std::string::npos) throw std::invalid_argument("no '/'");
        index = std::stoi(text.substr(0, slash), &used1);
        count = std::stoi(text.substr(slash + 1), &used2);
        if (used1 != slash || used2 != text.size() - slash - 1) throw std::invalid_argument("trailing text");
    }
    catch (const std::exception&)
    {
        CV_Error(cv::Error::StsBadArg, "--shard '" + text + "': expected i/n, e.g. 0/4");
    }
    if (count < 1 || index < 0 || index >= count)
        CV_Error(cv::Error::StsOutOfRange, "--shard '" + text + "': need 0 <= i < n");
}

namespace {

// True when the file starts like a JPEG (FF D8 FF): a format without alpha, decoded once with
// IMREAD_COLOR (which also applies its EXIF orientation).
bool looksLikeJpeg(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    unsigned char magic[3] = {0, 0, 0};
    return in.read(reinterpret_cast<char*>(magic), 3) && magic[0] == 0xFF && magic[1] == 0xD8 && magic[2] == 0xFF;
}

}  // namespace

cv::Mat readImageBgr(const std::string& path)
{
    // Alpha is found from the decoded content, not the file name: an RGBA PNG without an
    // extension (or named .jpg) is composited all the same.
    if (!looksLikeJpeg(path))
    {
        const cv::Mat raw = cv::imread(path, cv::IMREAD_UNCHANGED);
        if (raw.channels() == 4)
        {
            cv::Mat rgba;
            raw.convertTo(rgba, CV_32F, raw.depth() == CV_16U ? 1.0 / 65535 : raw.depth() == CV_8U ? 1.0 / 255 : 1.0);
            std::vector<cv::Mat> planes;
            cv::split(rgba, planes);
            cv::Mat bgr;
            const cv::Mat& alpha = planes[3];
            for (int c = 0; c < 3; ++c) planes[c] = planes[c].mul(alpha) + (1.0 - alpha);  // over white
            planes.resize(3);
            cv::merge(planes, bgr);
            bgr.convertTo(bgr, CV_8U, 255.0);
            return bgr;
        }
        // No alpha: decoded again as before, so that grey, 16-bit and oriented images get
        // IMREAD_COLOR's conversion to 8-bit BGR.
    }
    return cv::imread(path, cv::IMREAD_COLOR);
}

std::string truncatedJpegWarning(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    char magic[2] = {0, 0};
    // Not a JPEG: only its first two bytes are read.
    if (!in.read(magic, 2) || static_cast<unsigned char>(magic[0]) != 0xFF || static_cast<unsigned char>(magic[1]) != 0xD8)
        return std::string();
    const std::string data = std::string(magic, 2) + std::string(std::istreambuf_iterator<char>(in), {});
    const auto byte = [&](size_t i) { return static_cast<unsigned char>(data[i]); };
    if (data.size() < 4) return std::string();
    const std::string truncated =
        "'" + path + "' looks truncated (its data ends before the JPEG end-of-image marker): the decoder filled in "
        "what is missing";
    // Walk the segments by their lengths (an EXIF thumbnail's own end marker inside APP1 is
    // skipped), and each scan's entropy-coded data up to the next marker (progressive files have
    // several scans); the first end-of-image marker after them ends the image (data appended
    // after it, e.g. a camera's video, does not matter).
    size_t pos = 2;
    while (pos + 1 < data.size())
    {
        if (byte(pos) != 0xFF) return std::string();  // not a structure we know: no opinion
        if (byte(pos + 1) == 0xFF)
        {
            ++pos;  // fill byte
            continue;
        }
        const unsigned char marker = byte(pos + 1);
        if (marker == 0xD9) return std::string();  // end of image: whole
        if ((marker >= 0xD0 && marker <= 0xD7) || marker == 0x01)
        {
            pos += 2;
            continue;
        }
        if (pos + 3 >= data.size()) return truncated;
        const size_t length = (static_cast<size_t>(byte(pos + 2)) << 8) | byte(pos + 3);
        if (length < 2) return std::string();
        pos += 2 + length;
        if (pos > data.size()) return truncated;  // a segment cut off
        if (marker != 0xDA) continue;
        // Entropy-coded data: FF 00 is a stuffed byte, FF D0-D7 a restart marker; any other FF xx
        // is the next marker.
        while (pos + 1 < data.size() &&
               !(byte(pos) == 0xFF && byte(pos + 1) != 0x00 && !(byte(pos + 1) >= 0xD0 && byte(pos + 1) <= 0xD7)))
            ++pos;
    }
    return truncated;  // the data ran out before the end-of-image marker
}

}  // namespace naf_app
