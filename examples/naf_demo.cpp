// naf_demo: runs a vision foundation model (default: MobileSAM's image encoder, from the registry
// models/vfm/) on each image with cv::dnn, upsamples its low-resolution features with cv::naf and
// writes comparison panels: image | low-res PCA | bilinear PCA | NAF PCA. The 3 PCA components are
// fitted on the low-res features and applied to every map, so that the colours agree.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/core/utils/filesystem.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/naf.hpp>

namespace {

double msSince(std::chrono::steady_clock::time_point t0)
{
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<cv::String> imagesOf(const std::string& input)
{
    std::vector<cv::String> files;
    if (!cv::utils::fs::isDirectory(input))
        return {input};
    std::vector<cv::String> found;
    cv::utils::fs::glob(input, "*", found);
    for (const cv::String& f : found)
    {
        std::string ext = f.substr(f.find_last_of('.') + 1);
        std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
        if (ext == "jpg" || ext == "jpeg" || ext == "png") files.push_back(f);
    }
    std::sort(files.begin(), files.end());
    return files;
}

}  // namespace

int main(int argc, char** argv)
{
    const cv::String keys =
        "{help h   |          | print this help}"
        "{@input   |data      | an image file or a folder of .jpg/.png images}"
        "{out      |out       | output folder for the panels (--out=DIR)}"
        "{model    |mobilesam | vision foundation model: a registry name (models/vfm/<name>.json)}"
        "{registry |          | registry folder; default: cv::naf::VfmRegistry::defaultDirectory()}"
        "{weights  |          | NAF weights (.safetensors); default: cv::naf::getDefaultWeightsPath()}"
        "{max-side |448       | long side of the panels (the image is resized to it)}"
        "{threads  |-1        | cv::setNumThreads (-1: OpenCV's default)}";
    // cv::CommandLineParser takes "--out DIR" as the flag --out=true and DIR as the input: refuse
    // the space form of the options that take a value instead of writing to a folder named "true".
    for (int i = 1; i < argc; ++i)
        for (const char* name : {"out", "model", "registry", "weights", "max-side", "threads"})
            if (std::string(argv[i]) == std::string("--") + name || std::string(argv[i]) == std::string("-") + name)
            {
                std::cerr << "naf_demo: write " << argv[i] << "=VALUE (with '='), e.g. --out=panels\n";
                return 2;
            }
    cv::CommandLineParser parser(argc, argv, keys);
    parser.about("naf_demo: VFM features (cv::dnn) -> NAF upsampling -> PCA panels");
    if (parser.has("help"))
    {
        parser.printMessage();
        return 0;
    }
    const std::string input = parser.get<std::string>("@input");
    const std::string outDir = parser.get<std::string>("out");
    const int maxSide = parser.get<int>("max-side"), threads = parser.get<int>("threads");
    if (!parser.check() || maxSide < 16)
    {
        parser.printErrors();
        std::cerr << "naf_demo: --max-side must be >= 16\n";
        return 2;
    }
    const std::vector<cv::String> files = imagesOf(input);
    if (files.empty())
    {
        std::cerr << "naf_demo: no images in '" << input << "'\n";
        return 1;
    }
    if (threads >= 0) cv::setNumThreads(threads);
    cv::utils::fs::createDirectories(outDir);

    try
    {
        const cv::naf::VfmSpec spec = cv::naf::VfmRegistry::find(parser.get<std::string>("model"),
                                                                 parser.get<std::string>("registry"));
        cv::Ptr<cv::naf::VisionFoundationModel> vfm = cv::naf::VisionFoundationModel::create(spec);
        cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::create(parser.get<std::string>("weights"));
        std::cout << "model: " << spec.displayName << " (" << spec.inputSize << " px, stride " << spec.stride << ", "
                  << spec.channels << " channels)\nNAF weights: " << naf->getWeightsInfo() << "\nthreads: "
                  << cv::getNumThreads() << "\n";
        int failures = 0;
        for (size_t i = 0; i < files.size(); ++i)
        {
            const std::string tag = "[" + std::to_string(i + 1) + "/" + std::to_string(files.size()) + "] " + files[i];
            const cv::Mat original = cv::imread(files[i], cv::IMREAD_COLOR);
            if (original.empty())
            {
                std::cerr << tag << ": cannot read, skipped\n";
                ++failures;
                continue;
            }
            // One image's failure (e.g. too small for the network's grid) skips that image only.
            try
            {
                auto t0 = std::chrono::steady_clock::now();
                cv::Mat lowRes;
                cv::naf::VfmGeometry geometry;
                vfm->extract(original, lowRes, &geometry);
                const double vfmMs = msSince(t0);

                // Panels at maxSide. The feature cells cover the image plus a sliver of the network's
                // padding (the last cell row/column); upsample onto that covered area, guided by the
                // image padded with black as the network saw it, then crop to the image.
                const double display = static_cast<double>(maxSide) / std::max(original.cols, original.rows);
                // Each side at least 1 pixel (a 256x2 image would otherwise round to 0 rows).
                const cv::Size shown(std::max(1, cvRound(original.cols * display)),
                                     std::max(1, cvRound(original.rows * display)));
                cv::Mat image;
                cv::resize(original, image, shown, 0, 0, display < 1 ? cv::INTER_AREA : cv::INTER_LINEAR);
                const cv::Size covered = cv::naf::coveredOutputSize(geometry, image.size());
                cv::Mat guide;
                cv::copyMakeBorder(image, guide, 0, covered.height - image.rows, 0, covered.width - image.cols,
                                   cv::BORDER_CONSTANT, cv::Scalar::all(0));
                const cv::Rect crop(0, 0, image.cols, image.rows);

                cv::Mat bilinear, upsampled;
                cv::naf::upsampleWith(cv::naf::UPSAMPLE_BILINEAR, guide, lowRes, bilinear, covered);
                t0 = std::chrono::steady_clock::now();
                cv::naf::upsampleWith(cv::naf::UPSAMPLE_NAF, guide, lowRes, upsampled, covered, naf);
                const double nafMs = msSince(t0);

                cv::naf::FeaturePca pca;
                pca.fit(lowRes);
                cv::Mat lowPca, bilinearPca, nafPca;
                pca.apply(lowRes, lowPca);
                cv::resize(lowPca, lowPca, covered, 0, 0, cv::INTER_NEAREST);
                pca.apply(bilinear, bilinearPca);
                pca.apply(upsampled, nafPca);
                cv::Mat panel;
                const std::string low = std::to_string(lowRes.size[3]) + "x" + std::to_string(lowRes.size[2]);
                cv::naf::makePanel({image, lowPca(crop).clone(), bilinearPca(crop).clone(), nafPca(crop).clone()},
                                   {"image", spec.name + " " + low + " (PCA)", "bilinear", "NAF"}, panel);
                const std::string base = files[i].substr(files[i].find_last_of('/') + 1);
                const std::string outPath =
                    cv::utils::fs::join(outDir, base.substr(0, base.find_last_of('.')) + "_" + spec.name + "_naf.png");
                if (!cv::imwrite(outPath, panel))
                {
                    std::cerr << tag << ": cannot write " << outPath << "\n";
                    ++failures;
                    continue;
                }
                std::cout << tag << ": " << spec.name << " " << lowRes.size[1] << " x " << low << " in "
                          << static_cast<int>(vfmMs) << " ms, NAF -> " << covered.width << "x" << covered.height << " in "
                          << static_cast<int>(nafMs) << " ms -> " << outPath << "\n";
            }
            catch (const cv::Exception& e)
            {
                std::cerr << tag << ": " << e.err << ", skipped\n";
                ++failures;
            }
        }
        return failures == 0 ? 0 : 1;
    }
    catch (const cv::Exception& e)
    {
        std::cerr << "naf_demo: " << e.what() << "\n";
        return 1;
    }
}
