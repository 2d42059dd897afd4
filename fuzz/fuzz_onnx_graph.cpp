// Fuzz target: whole ONNX graphs with a naf.NAF node, through cv::dnn::readNetFromONNX (OpenCV's
// importer parses the protobuf and hands the node's attributes and initializers to our layer),
// then one forward on small inputs. Seeds: the graphs of tools/make_naf_onnx.py --test-set.
#include <cstdint>
#include <cstdlib>

#include <opencv2/dnn.hpp>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    naf_fuzz::setUpOnce();
    static const bool registered = (cv::naf::registerLayers(), true);
    (void)registered;
    try
    {
        cv::dnn::Net net = cv::dnn::readNetFromONNX(reinterpret_cast<const char*>(data), size);
        if (net.empty()) return 0;
        // Small inputs: the graph's attributes decide the rest (output size within the budget).
        const int imageShape[4] = {1, 3, 8, 10}, featureShape[4] = {1, 8, 2, 3};
        cv::Mat image(4, imageShape, CV_32F, cv::Scalar(0.25)), features(4, featureShape, CV_32F, cv::Scalar(1));
        net.setInput(image, "image");
        net.setInput(features, "features");
        net.forward();
    }
    catch (const cv::Exception&)
    {
    }
    return 0;
}
