// File output and input discovery of the app, see naf_app/io.hpp.
#include "naf_app/io.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <opencv2/imgcodecs.hpp>

#include <unistd.h>

namespace fs = std::filesystem;

namespace naf_app {

void writeFileAtomic(const std::string& path, const std::string& bytes)
{
    static std::atomic<unsigned> counter{0};
    const fs::path target(path);
    std::error_code ec;
    if (target.has_parent_path()) fs::create_directories(target.parent_path(), ec);
    // Unique per process and call, in the target's folder so that rename() stays on one file system.
    std::ostringstream tmpName;
    tmpName << path << ".tmp-" << ::getpid() << "-" << counter++;
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

bool isImageFile(const fs::path& p)
{
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    static const char* known[] = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"};
    return std::any_of(std::begin(known), std::end(known), [&](const char* k) { return ext == k; });
}

bool isListFile(const fs::path& p)
{
    const std::string ext = p.extension().string();
    return ext == ".txt" || ext == ".lst";
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
            std::vector<std::string> found;
            for (const auto& entry : fs::directory_iterator(p, ec))
                if (entry.is_regular_file() && isImageFile(entry.path())) found.push_back(entry.path().string());
            std::sort(found.begin(), found.end());
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
                images.push_back(item.is_absolute() ? line : (p.parent_path() / item).string());
            }
        }
        else if (fs::exists(p, ec))
            images.push_back(input);  // any other file is taken as an image; decoding decides
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

}  // namespace naf_app
