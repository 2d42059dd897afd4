// Progress of a VisionFoundationModel::extract() from inside cv::dnn's forward.
//
// cv::dnn 4.6 has no per-layer hook, but it runs a graph's layers one after another on the calling
// thread (the threads work inside each layer). The cv::naf layers of a converted graph
// (tools/vfm/onnx_for_opencv46.py) are spread through it, so each reports to the extract running
// on its thread as it starts: that is how far the forward is, and where a cancel can stop it.
#ifndef NAF_MODULE_VFM_PROGRESS_HPP
#define NAF_MODULE_VFM_PROGRESS_HPP

#include <opencv2/dnn.hpp>

namespace cv {
namespace naf {
namespace detail {

class VfmForwardObserver
{
public:
    virtual ~VfmForwardObserver() = default;
    /// A reporting layer is about to compute. Throws to stop the forward (a cancel, or the
    /// progress callback's own exception).
    virtual void layerStarting() = 0;
};

/// The observer of the extract() running on this thread, or nullptr (a plain Net::forward).
VfmForwardObserver* currentVfmForwardObserver();

/// Installs an observer for this thread's forward and restores the previous one on exit.
class ScopedVfmForwardObserver
{
public:
    explicit ScopedVfmForwardObserver(VfmForwardObserver* observer);
    ~ScopedVfmForwardObserver();
    ScopedVfmForwardObserver(const ScopedVfmForwardObserver&) = delete;
    ScopedVfmForwardObserver& operator=(const ScopedVfmForwardObserver&) = delete;

private:
    VfmForwardObserver* previous_;
};

/// How many layers report to the observer during Net::forward(outputLayer) (the cv::naf VFM
/// layers up to that layer; all of them for an empty name). Defined with the layers.
int countReportingLayers(const dnn::Net& net, const std::string& outputLayer);

}  // namespace detail
}  // namespace naf
}  // namespace cv

#endif
