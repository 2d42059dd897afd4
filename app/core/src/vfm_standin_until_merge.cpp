// TEMPORARY (branch app only): a stand-in for the VFM runner of branch `vfm`, so that the app
// builds and can be tried before that branch is merged. Compiled only while
// modules/naf/src has no vfm*.cpp; delete this file when merging `vfm`.
#include <opencv2/imgproc.hpp>
#include <opencv2/naf/vfm.hpp>

namespace cv {
namespace naf {

namespace {

VfmSpec standinSpec()
{
    VfmSpec s;
    s.name = "standin";
    s.displayName = "colour statistics stand-in (not a VFM)";
    s.stride = 16;
    s.channels = 8;
    s.inputSize = 512;
    s.sizePolicy = "resize";
    return s;
}

class StandinModel : public VisionFoundationModel
{
public:
    const VfmSpec& getSpec() const override { return spec_; }
    void preprocess(InputArray, OutputArray, VfmGeometry*) const override { CV_Error(Error::StsNotImplemented, "stand-in"); }
    void extract(InputArray image, OutputArray features, VfmGeometry* geometry) override
    {
        const Mat bgr = image.getMat();
        const Size low(std::max(1, bgr.cols / 16), std::max(1, bgr.rows / 16));
        Mat f32, lab, gray, gx, gy;
        bgr.convertTo(f32, CV_32F, 1.0 / 255);
        cvtColor(f32, lab, COLOR_BGR2Lab);
        cvtColor(f32, gray, COLOR_BGR2GRAY);
        Sobel(gray, gx, CV_32F, 1, 0);
        Sobel(gray, gy, CV_32F, 0, 1);
        std::vector<Mat> planes;
        split(lab, planes);
        for (auto& p : planes) p /= 100.f;
        std::vector<Mat> b;
        split(f32, b);
        planes.insert(planes.end(), b.begin(), b.end());
        planes.push_back(gx);
        planes.push_back(gy);
        const int sizes[4] = {1, 8, low.height, low.width};
        Mat blob(4, sizes, CV_32F);
        for (int c = 0; c < 8; ++c)
        {
            Mat dst(low, CV_32F, blob.ptr<float>(0, c));
            resize(planes[c], dst, low, 0, 0, INTER_AREA);
        }
        blob.copyTo(features);
        if (geometry)
        {
            geometry->imageSize = bgr.size();
            geometry->gridSize = low;
            geometry->validCells = Rect(Point(), low);
        }
    }
    VfmSpec spec_ = standinSpec();
};

}  // namespace

String VfmRegistry::defaultDirectory() { return String(); }
VfmSpec VfmRegistry::loadFile(const String&) { return standinSpec(); }
std::vector<VfmSpec> VfmRegistry::loadDirectory(const String&) { return {standinSpec()}; }
VfmSpec VfmRegistry::find(const String& name, const String&)
{
    if (name != "standin") CV_Error(Error::StsObjectNotFound, "unknown VFM '" + name + "'; known: standin");
    return standinSpec();
}
Ptr<VisionFoundationModel> VisionFoundationModel::create(const VfmSpec&) { return makePtr<StandinModel>(); }
Ptr<VisionFoundationModel> VisionFoundationModel::create(const String& name)
{
    VfmRegistry::find(name);
    return makePtr<StandinModel>();
}

}  // namespace naf
}  // namespace cv
