// Feature upsampling baselines and visualizations shared by naf_demo, the viewer, batch export
// and the evaluation (PCA colours, k-means, similarity maps, panels).
#include <algorithm>
#include <atomic>
#include <cmath>

#include <opencv2/imgproc.hpp>
#if defined(NAF_HAVE_XIMGPROC)
#include <opencv2/ximgproc.hpp>
#endif

#include "opencv2/naf.hpp"
#include "opencv2/naf/visualize.hpp"

namespace cv {
namespace naf {

namespace {

const char* const kMethodNames[] = {"nearest", "bilinear", "bicubic", "guided", "bilateral", "naf"};
constexpr int kMethodCount = static_cast<int>(sizeof(kMethodNames) / sizeof(kMethodNames[0]));

std::string shapeString(const Mat& m)
{
    std::string s;
    for (int i = 0; i < m.dims; ++i) s += (i ? "x" : "") + std::to_string(m.size[i]);
    return s + " " + typeToString(m.type());
}

// A continuous 1 x C x H x W CV_32F blob, or a cv::Exception naming `fn` and what was given.
Mat singleBlob(InputArray features, const char* fn)
{
    if (features.empty()) CV_Error(Error::StsBadArg, std::string("cv::naf::") + fn + ": features are empty");
    Mat f = features.getMat();
    if (f.dims != 4 || f.type() != CV_32F || f.size[0] != 1 || f.size[1] < 1)
        CV_Error(Error::StsBadArg, std::string("cv::naf::") + fn + ": features must be a 1 x C x H x W CV_32F blob, got " +
                                       shapeString(f));
    return f.isContinuous() ? f : f.clone();
}

// Channel c of a 1 x C x H x W blob as an H x W header.
Mat plane(const Mat& blob, int c)
{
    return Mat(blob.size[2], blob.size[3], CV_32F, const_cast<float*>(blob.ptr<float>(0, c)));
}

// Refuses a blob holding NaN or Inf, naming the first such pixel in row-major order (the whole
// blob is scanned, so the answer does not depend on sampling or on which thread saw one first).
[[noreturn]] void refuseNonFinite(const Mat& blob, const char* fn)
{
    const int c = blob.size[1], w = blob.size[3], n = blob.size[2] * w;
    int first = n;
    for (int ch = 0; ch < c; ++ch)
    {
        const float* p = blob.ptr<float>(0, ch);
        for (int i = 0; i < first; ++i)
            if (!std::isfinite(p[i])) first = i;
    }
    CV_Assert(first < n);
    CV_Error(Error::StsBadArg, std::string("cv::naf::") + fn + ": the feature of pixel (" + std::to_string(first % w) +
                                   ", " + std::to_string(first / w) + ") contains NaN or Inf");
}

// The features of pixels `idx` as rows (idx.size() x C), each L2-normalized (zero vectors stay
// zero). Gathered from the planes, so the whole blob is never transposed (at 2016x2016x384 that
// copy alone was 6 GB and seconds of cache misses).
Mat normalizedPixelRows(const Mat& blob, const std::vector<int>& idx, const char* fn)
{
    const int c = blob.size[1];
    Mat rows(static_cast<int>(idx.size()), c, CV_32F);
    for (int ch = 0; ch < c; ++ch)
    {
        const float* p = blob.ptr<float>(0, ch);
        for (size_t i = 0; i < idx.size(); ++i) rows.at<float>(static_cast<int>(i), ch) = p[idx[i]];
    }
    for (int i = 0; i < rows.rows; ++i)
    {
        float* r = rows.ptr<float>(i);
        double s = 0;
        for (int j = 0; j < c; ++j) s += static_cast<double>(r[j]) * r[j];
        if (!std::isfinite(s)) refuseNonFinite(blob, fn);  // finite floats cannot overflow a double sum
        const double inv = s > 0 ? 1.0 / std::sqrt(s) : 0.0;
        for (int j = 0; j < c; ++j) r[j] = static_cast<float>(r[j] * inv);
    }
    return rows;
}

// Streams the pixels of a blob in chunks of its C x HW planes, so that scratch stays ~(k + C) x
// 1024 floats per thread whatever the size: per chunk, each pixel's feature is L2-normalized
// (norms summed in double: features from 1e-23 to 1e37 work) into a scratch copy, then
// dots = directions (k x C) times it (k x len), then emit(begin, len, dots). A zero feature stays
// zero. Throws (after the last chunk) when a feature is not finite, so callers that write their
// output after it leave nothing half-written.
template <class Emit>
void streamPixelDots(const Mat& blob, const Mat& directions, const char* fn, Emit emit)
{
    const int c = blob.size[1], w = blob.size[3], n = blob.size[2] * w, k = directions.rows;
    CV_Assert(directions.type() == CV_32F && directions.cols == c);
    const Mat planes(c, n, CV_32F, const_cast<float*>(blob.ptr<float>()));
    constexpr int kChunk = 1024;
    std::atomic<bool> nonFinite{false};
    parallel_for_(Range(0, (n + kChunk - 1) / kChunk), [&](const Range& r) {
        Mat dots, unit;
        std::vector<double> norms;
        for (int chunk = r.start; chunk < r.end; ++chunk)
        {
            const int begin = chunk * kChunk, len = std::min(n - begin, kChunk);
            norms.assign(len, 0.0);
            for (int ch = 0; ch < c; ++ch)
            {
                const float* p = planes.ptr<float>(ch) + begin;
                for (int i = 0; i < len; ++i) norms[i] += static_cast<double>(p[i]) * p[i];
            }
            for (int i = 0; i < len; ++i)
            {
                if (!std::isfinite(norms[i])) nonFinite = true;
                norms[i] = norms[i] > 0 && std::isfinite(norms[i]) ? 1.0 / std::sqrt(norms[i]) : 0.0;
            }
            // Channel by channel along the pixels: contiguous, vectorizable loops (cv::gemm on the
            // strided column block was 3x slower).
            unit.create(c, len, CV_32F);
            dots.create(k, len, CV_32F);
            dots.setTo(0);
            for (int ch = 0; ch < c; ++ch)
            {
                const float* p = planes.ptr<float>(ch) + begin;
                float* u = unit.ptr<float>(ch);
                for (int i = 0; i < len; ++i) u[i] = static_cast<float>(p[i] * norms[i]);
                for (int j = 0; j < k; ++j)
                {
                    const float weight = directions.at<float>(j, ch);
                    float* d = dots.ptr<float>(j);
                    for (int i = 0; i < len; ++i) d[i] += weight * u[i];
                }
            }
            emit(begin, len, dots);
        }
    });
    if (nonFinite) refuseNonFinite(blob, fn);
}

// Indices of at most maxSamples items of [0, n) on a fixed stride (deterministic subsample).
std::vector<int> strideSample(int n, int maxSamples)
{
    const int count = std::max(1, std::min(n, maxSamples));
    std::vector<int> idx(count);
    for (int i = 0; i < count; ++i) idx[i] = static_cast<int>(static_cast<int64>(i) * n / count);
    return idx;
}

}  // namespace

String upsampleMethodName(int method)
{
    if (method < 0 || method >= kMethodCount)
        CV_Error(Error::StsOutOfRange, "cv::naf::upsampleMethodName: unknown method " + std::to_string(method));
    return kMethodNames[method];
}

int upsampleMethodFromName(const String& name)
{
    std::string all;
    for (int i = 0; i < kMethodCount; ++i)
    {
        if (name == kMethodNames[i]) return i;
        all += std::string(i ? ", " : "") + kMethodNames[i];
    }
    CV_Error(Error::StsBadArg, "cv::naf::upsampleMethodFromName: unknown method '" + name + "' (known: " + all + ")");
}

bool isUpsampleMethodAvailable(int method)
{
    upsampleMethodName(method);  // validates
#if defined(NAF_HAVE_XIMGPROC)
    return true;
#else
    return method != UPSAMPLE_GUIDED_FILTER && method != UPSAMPLE_JOINT_BILATERAL;
#endif
}

void upsampleWith(int method, InputArray image, InputArray lowResFeatures, OutputArray dst, Size dstSize,
                  const Ptr<NAF>& naf)
{
    if (!isUpsampleMethodAvailable(method))
        CV_Error(Error::StsNotImplemented, "cv::naf::upsampleWith: method '" + upsampleMethodName(method) +
                                               "' needs OpenCV's ximgproc module (opencv_contrib), and this build of "
                                               "cv::naf has none (NAF_WITH_XIMGPROC=OFF)");
    if (method == UPSAMPLE_NAF)
    {
        if (naf)
            naf->upsample(image, lowResFeatures, dst, dstSize);
        else
            upsample(image, lowResFeatures, dst, dstSize);
        return;
    }
    const Mat low = singleBlob(lowResFeatures, "upsampleWith");
    const int c = low.size[1], h = low.size[2], w = low.size[3];
    if (dstSize.width < 1 || dstSize.height < 1)
        CV_Error(Error::StsBadArg, "cv::naf::upsampleWith: output size " + std::to_string(dstSize.width) + "x" +
                                       std::to_string(dstSize.height) + " is empty");
    Mat guide;
    if (method == UPSAMPLE_GUIDED_FILTER || method == UPSAMPLE_JOINT_BILATERAL)
    {
        const Mat img = image.getMat();
        if (img.empty() || img.type() != CV_8UC3)
            CV_Error(Error::StsBadArg, "cv::naf::upsampleWith: method '" + upsampleMethodName(method) +
                                           "' needs a CV_8UC3 guide image, got " +
                                           (img.empty() ? std::string("an empty image") : typeToString(img.type())));
        resize(img, guide, dstSize, 0, 0, INTER_AREA);
    }
    const int sizes[4] = {1, c, dstSize.height, dstSize.width};
    Mat out(4, sizes, CV_32F);
    // Radius of the edge-aware filters: one low-resolution cell, in output pixels.
    const double cell = std::max(static_cast<double>(dstSize.width) / w, static_cast<double>(dstSize.height) / h);
    const int radius = std::max(1, cvRound(cell));
#if defined(NAF_HAVE_XIMGPROC)
    Ptr<ximgproc::GuidedFilter> guided;
    Mat guideF;
    if (method == UPSAMPLE_GUIDED_FILTER)
        guided = ximgproc::createGuidedFilter(guide, radius, 0.01 * 255 * 255);  // eps: (10% of the range)^2
    if (method == UPSAMPLE_JOINT_BILATERAL) guide.convertTo(guideF, CV_32F);
#else
    (void)radius;
#endif
    const int interpolation = method == UPSAMPLE_NEAREST ? INTER_NEAREST : method == UPSAMPLE_BICUBIC ? INTER_CUBIC
                                                                                                     : INTER_LINEAR;
    parallel_for_(Range(0, c), [&](const Range& r) {
        for (int ch = r.start; ch < r.end; ++ch)
        {
            Mat target = plane(out, ch);
            resize(plane(low, ch), target, dstSize, 0, 0, interpolation);
#if defined(NAF_HAVE_XIMGPROC)
            if (guided)
            {
                Mat filtered;
                guided->filter(target, filtered, CV_32F);
                filtered.copyTo(target);
            }
            else if (!guideF.empty())
            {
                Mat filtered;
                ximgproc::jointBilateralFilter(guideF, target, filtered, 2 * radius + 1, 25.0, radius);
                filtered.copyTo(target);
            }
#endif
        }
    });
    out.copyTo(dst);
}

// ---- PCA -----------------------------------------------------------------------------------

void FeaturePca::fit(InputArray features, int maxSamples)
{
    const Mat blob = singleBlob(features, "FeaturePca::fit");
    CV_CheckGT(maxSamples, 2, "cv::naf::FeaturePca::fit: maxSamples must be > 2");
    const int c = blob.size[1];
    const int n = blob.size[2] * blob.size[3];
    const Mat all(c, n, CV_32F, const_cast<float*>(blob.ptr<float>()));
    const std::vector<int> idx = strideSample(n, maxSamples);
    Mat samples(static_cast<int>(idx.size()), c, CV_32F);
    for (size_t i = 0; i < idx.size(); ++i)
        for (int j = 0; j < c; ++j) samples.at<float>(static_cast<int>(i), j) = all.at<float>(j, idx[i]);
    for (int i = 0; i < samples.rows; ++i)
        if (!checkRange(samples.row(i)))
            CV_Error(Error::StsBadArg, "cv::naf::FeaturePca::fit: features contain NaN or Inf");
    const int components = std::min(3, std::min(c, samples.rows));
    PCA pca(samples, noArray(), PCA::DATA_AS_ROW, components);
    Mat basis = Mat::zeros(3, c, CV_32F);  // fewer than 3 channels: the missing components stay 0
    pca.eigenvectors.rowRange(0, components).copyTo(basis.rowRange(0, components));
    Mat projected = (samples - repeat(pca.mean, samples.rows, 1)) * basis.t();  // samples x 3
    Mat lo(1, 3, CV_32F), hi(1, 3, CV_32F);
    for (int k = 0; k < 3; ++k)
    {
        const Mat column = projected.col(k).clone();
        std::vector<float> v(column.ptr<float>(), column.ptr<float>() + column.rows);
        std::sort(v.begin(), v.end());
        const float a = v[static_cast<size_t>(0.01 * (v.size() - 1))];
        const float b = v[static_cast<size_t>(0.99 * (v.size() - 1))];
        lo.at<float>(k) = a;
        hi.at<float>(k) = b > a ? b : a + 1.f;
    }
    mean_ = pca.mean.clone();
    basis_ = basis;
    lo_ = lo;
    hi_ = hi;
}

void FeaturePca::apply(InputArray features, OutputArray bgr) const
{
    if (empty()) CV_Error(Error::StsError, "cv::naf::FeaturePca::apply: call fit() first");
    const Mat blob = singleBlob(features, "FeaturePca::apply");
    const int c = blob.size[1], h = blob.size[2], w = blob.size[3];
    if (c != channels())
        CV_Error(Error::StsBadArg, "cv::naf::FeaturePca::apply: fitted on " + std::to_string(channels()) +
                                       " channels, got " + std::to_string(c));
    const Mat all(c, h * w, CV_32F, const_cast<float*>(blob.ptr<float>()));
    // A NaN feature would come out black, indistinguishable from a dark colour: refused, like
    // kmeansSegmentation and cosineSimilarityMap do.
    if (!checkRange(all, true)) refuseNonFinite(blob, "FeaturePca::apply");
    Mat proj = basis_ * all;  // 3 x HW
    const Mat offset = basis_ * mean_.t();
    std::vector<Mat> rgb(3);
    for (int k = 0; k < 3; ++k)
    {
        const double a = lo_.at<float>(k), b = hi_.at<float>(k);
        proj.row(k).reshape(1, h).convertTo(rgb[k], CV_8U, 255.0 / (b - a), -255.0 * (a + offset.at<float>(k)) / (b - a));
    }
    std::swap(rgb[0], rgb[2]);  // components 1, 2, 3 shown as R, G, B
    merge(rgb, bgr);
}

bool FeaturePca::empty() const { return basis_.empty(); }
int FeaturePca::channels() const { return basis_.cols; }

// ---- segmentation and similarity ------------------------------------------------------------

void kmeansSegmentation(InputArray features, int k, OutputArray labels, int seed, int maxSamples)
{
    const Mat blob = singleBlob(features, "kmeansSegmentation");
    const int h = blob.size[2], w = blob.size[3];
    if (k < 1 || k > 255 || k > static_cast<int64>(h) * w)
        CV_Error(Error::StsOutOfRange, "cv::naf::kmeansSegmentation: k = " + std::to_string(k) + " must be in [1, " +
                                           std::to_string(std::min<int64>(255, static_cast<int64>(h) * w)) + "]");
    CV_CheckGE(maxSamples, k, "cv::naf::kmeansSegmentation: maxSamples must be >= k");
    const std::vector<int> idx = strideSample(h * w, maxSamples);
    const Mat samples = normalizedPixelRows(blob, idx, "kmeansSegmentation");
    Mat sampleLabels, centers;
    // cv::kmeans draws from this thread's theRNG(): seeded for reproducible labels, and the
    // caller's state given back afterwards.
    const uint64 callerState = theRNG().state;
    theRNG().state = static_cast<uint64>(seed) * 6364136223846793005ULL + 1442695040888963407ULL;
    try
    {
        // One k-means++ attempt: three (as before) tripled the time for no visible change.
        kmeans(samples, k, sampleLabels, TermCriteria(TermCriteria::COUNT + TermCriteria::EPS, 50, 1e-4), 1,
               KMEANS_PP_CENTERS, centers);
    }
    catch (...)
    {
        theRNG().state = callerState;
        throw;
    }
    theRNG().state = callerState;
    // Nearest centre for every pixel: argmin ||x - c||^2 = argmax (x.c - |c|^2 / 2).
    Mat halfNorms(1, k, CV_32F);
    for (int j = 0; j < k; ++j) halfNorms.at<float>(j) = static_cast<float>(0.5 * centers.row(j).dot(centers.row(j)));
    Mat out(h, w, CV_32S);
    streamPixelDots(blob, centers, "kmeansSegmentation", [&](int begin, int len, const Mat& dots) {
        int* o = out.ptr<int>() + begin;
        for (int i = 0; i < len; ++i)
        {
            int best = 0;
            float bestScore = dots.at<float>(0, i) - halfNorms.at<float>(0);
            for (int j = 1; j < k; ++j)
            {
                const float v = dots.at<float>(j, i) - halfNorms.at<float>(j);
                if (v > bestScore) bestScore = v, best = j;
            }
            o[i] = best;
        }
    });
    out.copyTo(labels);
}

void cosineSimilarityMap(InputArray features, Point pixel, OutputArray similarity)
{
    const Mat blob = singleBlob(features, "cosineSimilarityMap");
    const int c = blob.size[1], h = blob.size[2], w = blob.size[3];
    if (pixel.x < 0 || pixel.y < 0 || pixel.x >= w || pixel.y >= h)
        CV_Error(Error::StsOutOfRange, "cv::naf::cosineSimilarityMap: pixel (" + std::to_string(pixel.x) + ", " +
                                           std::to_string(pixel.y) + ") outside the " + std::to_string(w) + "x" +
                                           std::to_string(h) + " map");
    const Mat ref = normalizedPixelRows(blob, {pixel.y * w + pixel.x}, "cosineSimilarityMap");  // 1 x C
    CV_Assert(c == ref.cols);
    Mat sim(h, w, CV_32F);
    streamPixelDots(blob, ref, "cosineSimilarityMap", [&](int begin, int len, const Mat& dots) {
        float* o = sim.ptr<float>() + begin;
        // Two unit vectors' float dot can round past 1 (1.0000001 for a pixel and itself).
        for (int i = 0; i < len; ++i) o[i] = std::min(1.f, std::max(-1.f, dots.at<float>(0, i)));
    });
    sim.copyTo(similarity);
}

// ---- colours and panels ---------------------------------------------------------------------

Vec3b labelColor(int label)
{
    CV_CheckGE(label, 0, "cv::naf::labelColor: label must be >= 0");
    // Golden-ratio hue steps with alternating value: neighbouring labels stay distinct.
    const double hue = std::fmod(label * 0.618033988749895, 1.0) * 180.0;
    Mat hsv(1, 1, CV_8UC3, Scalar(hue, label % 2 ? 200 : 255, label % 3 == 2 ? 170 : 240)), bgr;
    cvtColor(hsv, bgr, COLOR_HSV2BGR);
    return bgr.at<Vec3b>(0);
}

void colorizeLabels(InputArray labels, OutputArray bgr)
{
    const Mat l = labels.getMat();
    if (l.empty() || l.type() != CV_32S || l.dims != 2)
        CV_Error(Error::StsBadArg, "cv::naf::colorizeLabels: labels must be a non-empty 2-D CV_32S map, got " +
                                       (l.empty() ? std::string("an empty map")
                                                  : std::to_string(l.dims) + "-D " + typeToString(l.type())));
    Mat out(l.size(), CV_8UC3);
    // Labels 0..255 (what kmeansSegmentation gives) from a table; a larger one is coloured on its
    // own (a table up to it grew one entry per label: INT_MAX never returned).
    constexpr int kTable = 256;
    std::vector<Vec3b> palette;
    for (int y = 0; y < l.rows; ++y)
        for (int x = 0; x < l.cols; ++x)
        {
            const int v = l.at<int>(y, x);
            if (v < 0) CV_Error(Error::StsOutOfRange, "cv::naf::colorizeLabels: negative label " + std::to_string(v));
            if (v >= kTable)
            {
                out.at<Vec3b>(y, x) = labelColor(v);
                continue;
            }
            if (v >= static_cast<int>(palette.size()))
                for (int i = static_cast<int>(palette.size()); i <= v; ++i) palette.push_back(labelColor(i));
            out.at<Vec3b>(y, x) = palette[v];
        }
    out.copyTo(bgr);
}

void overlay(InputArray image, InputArray colour, double alpha, OutputArray dst)
{
    const Mat a = image.getMat(), b = colour.getMat();
    if (a.type() != CV_8UC3 || b.type() != CV_8UC3 || a.size() != b.size() || a.empty())
        CV_Error(Error::StsBadArg, "cv::naf::overlay: image and colour must be CV_8UC3 of one size, got " +
                                       typeToString(a.type()) + " " + std::to_string(a.cols) + "x" + std::to_string(a.rows) +
                                       " and " + typeToString(b.type()) + " " + std::to_string(b.cols) + "x" +
                                       std::to_string(b.rows));
    if (!(alpha >= 0 && alpha <= 1))
        CV_Error(Error::StsOutOfRange, "cv::naf::overlay: alpha " + std::to_string(alpha) + " outside [0, 1]");
    addWeighted(a, 1 - alpha, b, alpha, 0, dst);
}

void colorizeScalarMap(InputArray map, double lo, double hi, OutputArray bgr)
{
    const Mat m = map.getMat();
    if (m.empty() || m.type() != CV_32F)
        CV_Error(Error::StsBadArg, "cv::naf::colorizeScalarMap: map must be a non-empty CV_32F image");
    if (!(hi > lo) || !std::isfinite(lo) || !std::isfinite(hi))
        CV_Error(Error::StsBadArg, "cv::naf::colorizeScalarMap: range [" + std::to_string(lo) + ", " +
                                       std::to_string(hi) + "] is empty or not finite");
    Mat u8;
    m.convertTo(u8, CV_8U, 255.0 / (hi - lo), -255.0 * lo / (hi - lo));
    applyColorMap(u8, bgr, COLORMAP_TURBO);
}

void makePanel(const std::vector<Mat>& tiles, const std::vector<String>& captions, OutputArray panel)
{
    if (tiles.empty()) CV_Error(Error::StsBadArg, "cv::naf::makePanel: no tiles");
    if (!captions.empty() && captions.size() != tiles.size())
        CV_Error(Error::StsBadArg, "cv::naf::makePanel: " + std::to_string(captions.size()) + " captions for " +
                                       std::to_string(tiles.size()) + " tiles");
    const Size size = tiles[0].size();
    for (size_t i = 0; i < tiles.size(); ++i)
        if (tiles[i].size() != size || tiles[i].type() != CV_8UC3 || tiles[i].empty())
            CV_Error(Error::StsBadArg, "cv::naf::makePanel: tile " + std::to_string(i) + " is " +
                                           typeToString(tiles[i].type()) + " " + std::to_string(tiles[i].cols) + "x" +
                                           std::to_string(tiles[i].rows) + ", expected CV_8UC3 " +
                                           std::to_string(size.width) + "x" + std::to_string(size.height));
    const int bar = captions.empty() ? 0 : std::max(18, std::min(40, size.width / 14));
    const int gap = 4;
    const int n = static_cast<int>(tiles.size());
    Mat out(size.height + bar, n * size.width + (n - 1) * gap, CV_8UC3, Scalar::all(255));
    for (int i = 0; i < n; ++i)
    {
        const int x0 = i * (size.width + gap);
        tiles[i].copyTo(out(Rect(x0, bar, size.width, size.height)));
        if (bar > 0)
        {
            const double scale = bar / 40.0;
            int baseline = 0;
            const Size text = getTextSize(captions[i], FONT_HERSHEY_SIMPLEX, scale, 1, &baseline);
            putText(out, captions[i], Point(x0 + std::max(2, (size.width - text.width) / 2), bar - baseline - 3),
                    FONT_HERSHEY_SIMPLEX, scale, Scalar::all(20), 1, LINE_AA);
        }
    }
    out.copyTo(panel);
}

}  // namespace naf
}  // namespace cv
