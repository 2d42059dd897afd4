// This file is part of cv::naf. See docs/ARCHITECTURE.md for the data flow.
#ifndef OPENCV_NAF_VISUALIZE_HPP
#define OPENCV_NAF_VISUALIZE_HPP

#include <opencv2/core.hpp>

namespace cv {
namespace naf {

//! @addtogroup naf
//! @{

/** @brief Feature upsampling methods compared with NAF (viewer, batch export, evaluation). */
enum UpsampleMethod
{
    UPSAMPLE_NEAREST = 0,         //!< cv::resize INTER_NEAREST per channel
    UPSAMPLE_BILINEAR = 1,        //!< cv::resize INTER_LINEAR (half-pixel centers)
    UPSAMPLE_BICUBIC = 2,         //!< cv::resize INTER_CUBIC
    UPSAMPLE_GUIDED_FILTER = 3,   //!< bilinear, then cv::ximgproc guided filter per channel, image as guide
    UPSAMPLE_JOINT_BILATERAL = 4, //!< bilinear, then cv::ximgproc joint bilateral filter per channel
    UPSAMPLE_NAF = 5              //!< cv::naf::NAF (the `naf` argument, or the default weights)
};

/** @brief Short name of a method ("nearest", "bilinear", "bicubic", "guided", "bilateral", "naf"). */
CV_EXPORTS String upsampleMethodName(int method);
/** @brief Inverse of upsampleMethodName(). @throws cv::Exception listing the valid names. */
CV_EXPORTS int upsampleMethodFromName(const String& name);

/** @brief Whether this build runs `method`: UPSAMPLE_GUIDED_FILTER and UPSAMPLE_JOINT_BILATERAL need
OpenCV's ximgproc (opencv_contrib; CMake option NAF_WITH_XIMGPROC), the others are always there.
@throws cv::Exception for an unknown method. */
CV_EXPORTS bool isUpsampleMethodAvailable(int method);

/** @brief Upsamples a 1 x C x h x w CV_32F blob to 1 x C x dstSize with one of UpsampleMethod.
@param image CV_8UC3 BGR guide (used by the guided methods and NAF).
@param naf upsampler for UPSAMPLE_NAF; empty: the default weights.
@throws cv::Exception (StsNotImplemented) for a method this build lacks (isUpsampleMethodAvailable()). */
CV_EXPORTS void upsampleWith(int method, InputArray image, InputArray lowResFeatures, OutputArray dst, Size dstSize,
                             const Ptr<class NAF>& naf = Ptr<class NAF>());

/** @brief PCA of feature maps to colours: fitted once (on low-resolution features), then applied
to any map with the same channels, so that low-res and upsampled maps share colours. */
class CV_EXPORTS FeaturePca
{
public:
    /** @brief Fits 3 components on the cells of a 1 x C x h x w CV_32F blob (at most maxSamples
    cells, taken on a fixed grid) and the colour range (1st/99th percentiles per component). */
    void fit(InputArray features, int maxSamples = 20000);
    /** @brief Projects a 1 x C x H x W blob to an H x W CV_8UC3 BGR image. @throws cv::Exception if
    not fitted, if C differs, or (StsBadArg) naming the first pixel whose feature holds NaN or Inf. */
    void apply(InputArray features, OutputArray bgr) const;
    bool empty() const;
    int channels() const;

private:
    Mat mean_, basis_, lo_, hi_;
};

/** @brief k-means clusters of the pixels of a 1 x C x H x W CV_32F blob (features L2-normalized
per pixel first). labels: H x W CV_32S in [0, k). Deterministic for a given seed.

The centres are fitted (one k-means++ attempt, cv::kmeans) on at most maxSamples pixels taken on
a fixed stride; then every pixel gets its nearest centre. Memory beyond the output is about
maxSamples x C floats: the blob is read in place, never copied. k must be in [1, min(255, H*W)]
and maxSamples >= k. @throws cv::Exception (StsBadArg) naming the first pixel whose feature
holds NaN or Inf (labels untouched). The calling thread's cv::theRNG() state is left as it was. */
CV_EXPORTS void kmeansSegmentation(InputArray features, int k, OutputArray labels, int seed = 0,
                                   int maxSamples = 20000);

/** @brief Cosine similarity of every pixel's feature to the feature at `pixel` (x, y):
H x W CV_32F in [-1, 1] (0 where either feature is all zeros). The blob is read in place.
@throws cv::Exception (StsOutOfRange) for a pixel outside the map, (StsBadArg) naming the first
pixel whose feature holds NaN or Inf (similarity untouched). */
CV_EXPORTS void cosineSimilarityMap(InputArray features, Point pixel, OutputArray similarity);

/** @brief A distinct BGR colour per label (fixed palette, label 0..255). */
CV_EXPORTS Vec3b labelColor(int label);
/** @brief Colours a non-empty 2-D CV_32S map of labels >= 0 (labelColor(); labels up to 255 from a
table, a larger one computed for each pixel that has it). */
CV_EXPORTS void colorizeLabels(InputArray labels, OutputArray bgr);
/** @brief image * (1 - alpha) + colour * alpha, both CV_8UC3 of one size. */
CV_EXPORTS void overlay(InputArray image, InputArray colour, double alpha, OutputArray dst);
/** @brief A CV_32F map in [lo, hi] (finite, lo < hi) to a BGR colour map (cv::COLORMAP_TURBO). */
CV_EXPORTS void colorizeScalarMap(InputArray map, double lo, double hi, OutputArray bgr);

/** @brief Non-empty CV_8UC3 tiles of equal size side by side, each with a caption bar on top (one
caption per tile, or none): one BGR image. */
CV_EXPORTS void makePanel(const std::vector<Mat>& tiles, const std::vector<String>& captions, OutputArray panel);

//! @}

}  // namespace naf
}  // namespace cv

#endif
