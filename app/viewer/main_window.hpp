// The viewer's main window: controls, panels, and the workers that compute (never the GUI thread).
#pragma once

#include <map>
#include <memory>
#include <optional>

#include <QFutureWatcher>
#include <QMainWindow>

#include "naf_app/pipeline.hpp"

class QCheckBox;
class QComboBox;
class QLabel;
class QListWidget;
class QProgressBar;
class QPushButton;
class QSlider;
class QSpinBox;
class QMenu;
class ElidedLabel;
class FittedImageLabel;
class WrappedLabel;
class PanelView;
class ViewSync;

/// What a panel shows (the panel's combo box item data).
enum PanelContent
{
    CONTENT_IMAGE = 0,
    CONTENT_LOWRES = 1,
    CONTENT_SEGMENTATION = 2,  ///< k-means (or probe) labels over the image
    CONTENT_ATTENTION = 3,
    CONTENT_SIMILARITY = 4,
    CONTENT_METHOD = 100       ///< + cv::naf::UpsampleMethod: that method's upsampled PCA
};

/// Output of the image-decoding worker.
struct LoadedImage
{
    QString path;   ///< the file it was asked for (a stale result is recognized by it)
    cv::Mat image;  ///< BGR, empty when unreadable
    QString warning;  ///< e.g. a truncated JPEG (naf_app::truncatedJpegWarning), shown once adopted
};

/// Output of the main worker: the pipeline result and its renderings.
struct RunOutput
{
    bool ok = false, cancelled = false;
    QString error;
    std::shared_ptr<naf_app::PipelineResult> result;
    std::map<int, cv::Mat> renders;  ///< PanelContent -> BGR image
};

struct SegmentationOutput
{
    QString error;
    std::shared_ptr<const naf_app::PipelineResult> source;  ///< the run it belongs to
    cv::Mat labels;   ///< H x W CV_32S
    QStringList names;
    std::vector<double> fractions;
};

struct InspectionOutput
{
    QString error;
    std::shared_ptr<const naf_app::PipelineResult> source;  ///< the run it belongs to
    naf_app::PixelInspection inspection;
    cv::Mat attention, similarity;  ///< renderings
    cv::Mat attentionInset;         ///< the window zoomed, for the side panel
};

class MainWindow : public QMainWindow
{
    Q_OBJECT
public:
    explicit MainWindow(QWidget* parent = nullptr);
    ~MainWindow() override;

    /// Loads an image on the calling (GUI) thread, no computation: for scripted use (command line,
    /// tests). Shows an error dialog and returns false when unreadable. Emits imageOpened().
    bool openImage(const QString& path);
    /// Decodes the image in a worker (a 20000 x 20000 PNG takes seconds), then adopts it like
    /// openImage() and, with runWhenOpened, starts a run. The menu, recent files and drops use it.
    /// A newer open replaces a pending one (the older decode's result is dropped). Emits
    /// imageOpened() when done.
    void openImageInBackground(const QString& path, bool runWhenOpened = false);
    bool isLoadingImage() const { return !loadingPath_.isEmpty(); }
    void setVfm(const QString& name);
    void setOutputLongSide(int pixels);
    /// Where NAF runs (cv::naf::Backend) and its encoder's precision on CUDA (cv::naf::GpuPrecision),
    /// for the next run; an unknown value shows an error dialog. Whether CUDA is usable is checked
    /// when a run starts (startRun() then shows the module's refusal).
    void setNafBackend(int backend);
    void setGpuPrecision(int precision);
    /// Starts the worker for the current image and settings; false (with a dialog) if it cannot,
    /// false without one while another run is in progress. While a cancelled run is still
    /// finishing, the new run starts as soon as it has (returns true).
    bool startRun();
    void cancelRun();
    bool isRunning() const;
    /// Attention and similarity for an output pixel, computed in a worker.
    void inspectPixel(QPoint outputPixel);
    void setPanelContent(int panel, int content);
    void setClusterCount(int k);

    int panelCount() const;
    QImage panelImage(int panel) const;
    QImage attentionImage() const;
    QImage similarityImage() const;
    QString lastError() const { return lastError_; }
    QString statusText() const;
    QStringList legendEntries() const;
    const naf_app::PipelineResult* result() const { return run_.result.get(); }

    /// Writes the visible panels side by side as one PNG.
    bool exportPanels(const QString& pngPath);
    /// Writes <base>.lowres.npy and <base>.<method>.npy for every upsampled map.
    bool exportFeatures(const QString& basePath);

signals:
    void imageOpened(bool ok);
    void runFinished(bool ok);
    void segmentationFinished(bool ok);
    void inspectionFinished(bool ok);
    void errorShown(const QString& message);

protected:
    void dragEnterEvent(QDragEnterEvent* event) override;
    void dropEvent(QDropEvent* event) override;

private:
    void buildUi();
    void showError(const QString& title, const QString& message);
    bool refuseIrregularFile(const QString& path);
    bool adoptImage(const QString& path, const cv::Mat& image, const QString& warning);
    void onImageLoaded();
    void addRecent(const QString& path);
    void removeRecent(const QString& path);
    void rebuildRecentMenu();
    void onRunFinished();
    void startSegmentation();
    void onSegmentationFinished();
    void onInspectionFinished();
    void refreshPanels();
    /// Empties the side panel's pixel inspection (a new image or run).
    void clearInspection();
    /// The captions of the attention and similarity insets, with their colour scales' ends.
    void setInspectionCaptions(const std::optional<naf_app::PixelInspection>& inspection);
    void refreshPanelChoices();
    cv::Mat renderContent(int content) const;
    void updateStatus();
    void updateProbeLabel();
    naf_app::PipelineSettings currentSettings() const;

    // Controls.
    QComboBox* vfmBox_ = nullptr;
    QSpinBox* sizeBox_ = nullptr;
    QComboBox* backendBox_ = nullptr;
    QComboBox* precisionBox_ = nullptr;
    QPushButton* runButton_ = nullptr;
    QPushButton* cancelButton_ = nullptr;
    QProgressBar* progress_ = nullptr;
    ElidedLabel* stageLabel_ = nullptr;
    ElidedLabel* timingLabel_ = nullptr;
    QLabel* deviceLabel_ = nullptr;
    QLabel* weightsLabel_ = nullptr;
    QMenu* recentMenu_ = nullptr;
    QSpinBox* clustersBox_ = nullptr;
    QComboBox* segSourceBox_ = nullptr;
    QComboBox* segKindBox_ = nullptr;
    QSlider* opacitySlider_ = nullptr;
    QListWidget* legend_ = nullptr;
    QLabel* probeLabel_ = nullptr;
    QCheckBox* wipeBox_ = nullptr;
    QSlider* wipeSlider_ = nullptr;
    FittedImageLabel* attentionLabel_ = nullptr;
    FittedImageLabel* similarityLabel_ = nullptr;
    WrappedLabel* attentionCaption_ = nullptr;
    WrappedLabel* similarityCaption_ = nullptr;
    WrappedLabel* pixelLabel_ = nullptr;

    std::vector<PanelView*> views_;
    std::vector<QComboBox*> panelBoxes_;
    ViewSync* sync_ = nullptr;

    // State.
    QString imagePath_;
    cv::Mat image_;
    QString lastError_;
    QString statusError_;  // the status bar's line for the last error, until an image opens
    RunOutput run_;
    SegmentationOutput segmentation_;
    std::optional<InspectionOutput> inspection_;
    std::optional<naf_app::ProbeHead> probe_;
    QImage attentionImage_, similarityImage_;
    std::optional<QPoint> pendingPixel_;
    bool segmentationPending_ = false;
    bool runAfterCancel_ = false;  // startRun() while a cancelled run was finishing
    QString loadingPath_;          // the image being decoded in the background, empty when none
    bool runWhenLoaded_ = false;

    // Workers. The pipeline (its cv::dnn net and NAF) is used by one run at a time; inspections
    // use their own NAF object so that they never share one with a run.
    naf_app::Pipeline pipeline_;
    cv::Ptr<cv::naf::NAF> inspectNaf_;
    QFutureWatcher<LoadedImage> loadWatcher_;
    QFutureWatcher<RunOutput> runWatcher_;
    QFutureWatcher<SegmentationOutput> segWatcher_;
    QFutureWatcher<InspectionOutput> inspectWatcher_;
};
