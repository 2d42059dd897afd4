// This file is part of cv::naf.
#ifndef OPENCV_NAF_HPP
#define OPENCV_NAF_HPP

/** @defgroup naf Neighborhood Attention Filtering: full-resolution features for any vision foundation model

cv::naf upsamples the low-resolution feature maps of vision foundation models (SAM, DINOv2/v3,
CLIP, RADIO, ...) to full image resolution with NAF (arXiv 2511.18452), guided by the image.
See cv::naf::NAF, cv::naf::upsample() and cv::naf::registerLayers(); VFM features with cv::dnn in
opencv2/naf/vfm.hpp (cv::naf::VisionFoundationModel, cv::naf::VfmRegistry); baselines and visualizations
(PCA colours, k-means, similarity maps, panels) in opencv2/naf/visualize.hpp.
*/

#include "opencv2/naf/naf.hpp"
#include "opencv2/naf/visualize.hpp"
#include "opencv2/naf/vfm.hpp"

#endif
