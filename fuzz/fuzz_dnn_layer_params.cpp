// Fuzz target: the attributes and embedded tensors a cv::dnn node hands to one of our layers
// (what cv::dnn's ONNX importer builds from a node), then its shape inference and forward.
// "naf.NAF" unless the input picks another of registerLayers()' types.
//
// Input: text, one item per line (fuzz/make_seeds.py writes the seeds from the graphs of
// tools/make_naf_onnx.py --test-set):
//   <attribute> <value> [<value> ...]  integers become ints, other numbers reals, the rest
//                                      strings; several values make an array
//   @blob <name> <d0> [<d1> ...]       an embedded tensor (initializer) of that shape
//   @input <d0> <d1> <d2> <d3>         input shapes (for NAF: image first, then features)
//   @type <name>                       NafGelu, NafSoftmax, NafLayerNorm, NafMatMul or NafConv1x1
//                                      instead of naf.NAF
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <opencv2/dnn.hpp>

#include "fuzz_support.hpp"

namespace {

constexpr size_t kMaxElements = size_t(1) << 22;  // per blob / input: keep each run fast
constexpr size_t kMaxForwardElements = 4096;      // inputs and output of a forward

bool parseInt(const std::string& t, int64_t* out)
{
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(t.c_str(), &end, 10);
    if (t.empty() || *end != '\0' || errno != 0) return false;
    *out = v;
    return true;
}

bool parseReal(const std::string& t, double* out)
{
    char* end = nullptr;
    const double v = std::strtod(t.c_str(), &end);
    if (t.empty() || *end != '\0') return false;
    *out = v;
    return true;
}

// A shape from tokens; false when a dim is not in [1, 4096] or the total is too large.
bool parseShape(const std::vector<std::string>& tokens, size_t first, std::vector<int>* shape)
{
    size_t total = 1;
    for (size_t i = first; i < tokens.size() && shape->size() < 6; ++i)
    {
        int64_t d = 0;
        if (!parseInt(tokens[i], &d) || d < 1 || d > 4096) return false;
        total *= static_cast<size_t>(d);
        if (total > kMaxElements) return false;
        shape->push_back(static_cast<int>(d));
    }
    return !shape->empty();
}

cv::Mat filled(const std::vector<int>& shape, float scale)
{
    cv::Mat m(static_cast<int>(shape.size()), shape.data(), CV_32F);
    float* p = m.ptr<float>();
    for (size_t i = 0; i < m.total(); ++i) p[i] = scale * std::sin(0.37f * static_cast<float>(i));
    return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    naf_fuzz::setUpOnce();
    static const bool registered = (cv::naf::registerLayers(), true);
    (void)registered;

    cv::dnn::LayerParams params;
    params.name = "naf";
    params.type = "naf.NAF";
    std::string type = "naf.NAF";
    std::vector<std::vector<int>> inputShapes;
    std::istringstream text(std::string(reinterpret_cast<const char*>(data), size));
    std::string line;
    while (std::getline(text, line))
    {
        std::istringstream words(line);
        std::vector<std::string> tokens;
        for (std::string w; words >> w;) tokens.push_back(w);
        if (tokens.empty()) continue;
        if (tokens[0] == "@blob" && tokens.size() >= 3)
        {
            std::vector<int> shape;
            if (!parseShape(tokens, 2, &shape)) continue;
            params.blobs.push_back(filled(shape, 0.05f));
            continue;
        }
        if (tokens[0] == "@type" && tokens.size() == 2)
        {
            if (tokens[1] == "NafGelu" || tokens[1] == "NafSoftmax" || tokens[1] == "NafLayerNorm" ||
                tokens[1] == "NafMatMul" || tokens[1] == "NafConv1x1")
                type = tokens[1];
            continue;
        }
        if (tokens[0] == "@input")
        {
            std::vector<int> shape;
            if (parseShape(tokens, 1, &shape)) inputShapes.push_back(shape);
            continue;
        }
        if (tokens.size() < 2) continue;
        std::vector<int64_t> ints;
        std::vector<double> reals;
        std::vector<cv::String> strings;
        for (size_t i = 1; i < tokens.size(); ++i)
        {
            int64_t iv;
            double rv;
            if (parseInt(tokens[i], &iv)) ints.push_back(iv);
            else if (parseReal(tokens[i], &rv)) reals.push_back(rv);
            else strings.push_back(tokens[i]);
        }
        const size_t n = tokens.size() - 1;
        if (ints.size() == n)
            params.set(tokens[0], cv::dnn::DictValue::arrayInt(ints.data(), static_cast<int>(n)));
        else if (reals.size() == n)
            params.set(tokens[0], cv::dnn::DictValue::arrayReal(reals.data(), static_cast<int>(n)));
        else if (strings.size() == n)
            params.set(tokens[0], cv::dnn::DictValue::arrayString(strings.begin(), static_cast<int>(n)));
        else
            params.set(tokens[0], cv::String(line.substr(tokens[0].size() + 1)));  // mixed: one string
    }

    cv::Ptr<cv::dnn::Layer> layer;
    try
    {
        params.type = type;
        layer = cv::dnn::LayerFactory::createLayerInstance(type, params);
    }
    catch (const cv::Exception&)
    {
        return 0;
    }
    if (!layer) std::abort();  // registered type: the factory must give a layer or throw
    if (inputShapes.empty() || inputShapes.size() > 2) return 0;
    try
    {
        std::vector<cv::dnn::MatShape> inShapes(inputShapes.begin(), inputShapes.end()), outShapes, internals;
        layer->getMemoryShapes(inShapes, 1, outShapes, internals);
        if (outShapes.size() != 1) std::abort();
        size_t outTotal = 1;
        for (int d : outShapes[0]) outTotal *= static_cast<size_t>(d);
        // Forward only on small shapes: the compute is not what this target fuzzes, and under the
        // sanitizers a full-size encoder takes seconds per input.
        if (outTotal > kMaxForwardElements) return 0;
        for (const auto& shape : inputShapes)
        {
            size_t inTotal = 1;
            for (int d : shape) inTotal *= static_cast<size_t>(d);
            if (inTotal > kMaxForwardElements) return 0;
        }
        std::vector<cv::Mat> inputs;
        for (size_t i = 0; i < inputShapes.size(); ++i) inputs.push_back(filled(inputShapes[i], i == 0 ? 0.5f : 1.f));
        // NAF's image blob holds RGB in [0, 1].
        if (type == "naf.NAF") inputs[0] = cv::abs(inputs[0]);
        std::vector<cv::Mat> outputs{cv::Mat(outShapes[0], CV_32F)}, scratch;
        layer->forward(inputs, outputs, scratch);
    }
    catch (const cv::Exception&)
    {
    }
    return 0;
}
