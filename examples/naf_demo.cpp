// naf_demo: upsamples a coarse feature map of each image with cv::naf and writes comparison
// panels (image | nearest | bilinear | NAF, features shown as PCA colours).
//
// Until the VFM runner lands (models/, issue 3), the low-resolution features are a simple
// stand-in computed here: per 16x16 cell, mean Lab colour, RGB and Sobel gradients (8 channels).
#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/core/utils/filesystem.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/naf.hpp>

namespace {

// 8-channel coarse features, 1 x 8 x h x w.
cv::Mat coarseFeatures(const cv::Mat& bgr, int stride)
{
    const cv::Size low(std::max(1, bgr.cols / stride), std::max(1, bgr.rows / stride));
    cv::Mat f32, lab, gray, gx, gy;
    bgr.convertTo(f32, CV_32F, 1.0 / 255);
    cv::cvtColor(f32, lab, cv::COLOR_BGR2Lab);
    cv::cvtColor(f32, gray, cv::COLOR_BGR2GRAY);
    cv::Sobel(gray, gx, CV_32F, 1, 0);
    cv::Sobel(gray, gy, CV_32F, 0, 1);
    std::vector<cv::Mat> planes, labPlanes, bgrPlanes;
    cv::split(lab, labPlanes);
    cv::split(f32, bgrPlanes);
    labPlanes[0] /= 100.f;
    labPlanes[1] /= 100.f;
    labPlanes[2] /= 100.f;
    for (auto& p : labPlanes) planes.push_back(p);
    for (auto& p : bgrPlanes) planes.push_back(p);
    planes.push_back(gx);
    planes.push_back(gy);
    const int sizes[4] = {1, static_cast<int>(planes.size()), low.height, low.width};
    cv::Mat blob(4, sizes, CV_32F);
    for (size_t c = 0; c < planes.size(); ++c)
    {
        cv::Mat small(low, CV_32F, blob.ptr<float>(0, static_cast<int>(c)));
        cv::resize(planes[c], small, low, 0, 0, cv::INTER_AREA);
    }
    return blob;
}

// Channel-major blob plane c of item 0 as a 2-D Mat header.
cv::Mat plane(const cv::Mat& blob, int c)
{
    return cv::Mat(blob.size[2], blob.size[3], CV_32F, const_cast<float*>(blob.ptr<float>(0, c)));
}

// PCA basis fitted on the low-res features, applied to any map of the same channels.
struct PcaColors
{
    cv::PCA pca;
    cv::Mat lo, hi;

    explicit PcaColors(const cv::Mat& lowRes)
    {
        const cv::Mat samples = pixelsAsRows(lowRes);
        pca = cv::PCA(samples, cv::Mat(), cv::PCA::DATA_AS_ROW, 3);
        const cv::Mat proj = pca.project(samples);
        cv::reduce(proj, lo, 0, cv::REDUCE_MIN);
        cv::reduce(proj, hi, 0, cv::REDUCE_MAX);
    }

    static cv::Mat pixelsAsRows(const cv::Mat& blob)
    {
        const int c = blob.size[1], n = blob.size[2] * blob.size[3];
        cv::Mat rows(c, n, CV_32F, const_cast<float*>(blob.ptr<float>()));
        return rows.t();
    }

    cv::Mat render(const cv::Mat& blob, cv::Size size) const
    {
        cv::Mat proj = pca.project(pixelsAsRows(blob));
        cv::Mat rgb(blob.size[2], blob.size[3], CV_8UC3);
        for (int i = 0; i < proj.rows; ++i)
            for (int k = 0; k < 3; ++k)
            {
                const float range = std::max(1e-6f, hi.at<float>(k) - lo.at<float>(k));
                const float v = (proj.at<float>(i, k) - lo.at<float>(k)) / range;
                rgb.at<cv::Vec3b>(i / blob.size[3], i % blob.size[3])[k] = cv::saturate_cast<uchar>(255.f * v);
            }
        cv::Mat out;
        cv::resize(rgb, out, size, 0, 0, cv::INTER_NEAREST);
        return out;
    }
};

cv::Mat resizeBlob(const cv::Mat& blob, cv::Size size, int interpolation)
{
    const int sizes[4] = {1, blob.size[1], size.height, size.width};
    cv::Mat out(4, sizes, CV_32F);
    for (int c = 0; c < blob.size[1]; ++c)
    {
        cv::Mat dst = plane(out, c);
        cv::resize(plane(blob, c), dst, size, 0, 0, interpolation);
    }
    return out;
}

}  // namespace

int main(int argc, char** argv)
{
    const cv::String keys =
        "{help h   |      | print this help}"
        "{@input   |data  | an image file or a folder of .jpg/.png images}"
        "{out      |out   | output folder for the panels (--out=DIR)}"
        "{weights  |      | NAF weights (.safetensors); default: cv::naf::getDefaultWeightsPath()}"
        "{max-side |384   | output long side (the image is resized to it)}"
        "{stride   |16    | feature stride of the stand-in features}";
    cv::CommandLineParser parser(argc, argv, keys);
    parser.about("naf_demo: upsample coarse features of images with cv::naf and write comparison panels");
    if (parser.has("help"))
    {
        parser.printMessage();
        return 0;
    }
    const std::string input = parser.get<std::string>("@input");
    const std::string outDir = parser.get<std::string>("out");
    const int maxSide = parser.get<int>("max-side"), stride = parser.get<int>("stride");
    if (!parser.check() || maxSide < 16 || stride < 1)
    {
        parser.printErrors();
        std::cerr << "naf_demo: --max-side must be >= 16 and --stride >= 1\n";
        return 2;
    }
    std::vector<cv::String> files;
    if (cv::utils::fs::isDirectory(input))
    {
        std::vector<cv::String> found;
        cv::utils::fs::glob(input, "*", found);
        for (const cv::String& f : found)
        {
            const std::string ext = f.substr(f.find_last_of('.') + 1);
            if (ext == "jpg" || ext == "jpeg" || ext == "png" || ext == "JPG" || ext == "PNG") files.push_back(f);
        }
        std::sort(files.begin(), files.end());
    }
    else
        files.push_back(input);
    if (files.empty())
    {
        std::cerr << "naf_demo: no images in '" << input << "'\n";
        return 1;
    }
    cv::utils::fs::createDirectories(outDir);

    try
    {
        cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create(parser.get<std::string>("weights"));
        std::cout << "weights: " << naf->getWeightsInfo() << "\n";
        int failures = 0;
        for (size_t i = 0; i < files.size(); ++i)
        {
            cv::Mat image = cv::imread(files[i], cv::IMREAD_COLOR);
            if (image.empty())
            {
                std::cerr << "[" << i + 1 << "/" << files.size() << "] " << files[i] << ": cannot read, skipped\n";
                ++failures;
                continue;
            }
            const double scale = static_cast<double>(maxSide) / std::max(image.cols, image.rows);
            cv::resize(image, image, cv::Size(), scale, scale, scale < 1 ? cv::INTER_AREA : cv::INTER_LINEAR);
            const cv::Mat lowRes = coarseFeatures(image, stride);
            cv::Mat upsampled;
            const auto t0 = std::chrono::steady_clock::now();
            naf->upsample(image, lowRes, upsampled, image.size());
            const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            const PcaColors pca(lowRes);
            std::vector<cv::Mat> panels = {image, pca.render(lowRes, image.size()),
                                           pca.render(resizeBlob(lowRes, image.size(), cv::INTER_LINEAR), image.size()),
                                           pca.render(upsampled, image.size())};
            cv::Mat row;
            cv::hconcat(panels, row);
            const std::string base = files[i].substr(files[i].find_last_of('/') + 1);
            const std::string outPath = cv::utils::fs::join(outDir, base.substr(0, base.find_last_of('.')) + "_naf.png");
            cv::imwrite(outPath, row);
            std::cout << "[" << i + 1 << "/" << files.size() << "] " << files[i] << ": " << lowRes.size[3] << "x"
                      << lowRes.size[2] << "x" << lowRes.size[1] << " -> " << image.cols << "x" << image.rows << " in "
                      << static_cast<int>(ms) << " ms -> " << outPath << "\n";
        }
        return failures == 0 ? 0 : 1;
    }
    catch (const cv::Exception& e)
    {
        std::cerr << "naf_demo: " << e.what() << "\n";
        return 1;
    }
}
