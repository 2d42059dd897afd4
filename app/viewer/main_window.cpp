#include "main_window.hpp"

#include <algorithm>
#include <filesystem>

#include <QApplication>
#include <QCheckBox>
#include <QComboBox>
#include <QDir>
#include <QDockWidget>
#include <QDragEnterEvent>
#include <QDropEvent>
#include <QFileDialog>
#include <QFileInfo>
#include <QFormLayout>
#include <QGroupBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QListWidget>
#include <QMenuBar>
#include <QMessageBox>
#include <QMimeData>
#include <QProgressBar>
#include <QPromise>
#include <QPushButton>
#include <QSettings>
#include <QScrollArea>
#include <QSlider>
#include <QSpinBox>
#include <QSplitter>
#include <QStatusBar>
#include <QToolBar>
#include <QVBoxLayout>
#include <QtConcurrent/QtConcurrentRun>

#include <opencv2/core/utils/filesystem.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "naf_app/io.hpp"
#include "panel_view.hpp"

namespace {

constexpr int kPanels = 3;
constexpr int kMaxRecent = 8;

// naf_app::defaultUpsampleMethods() (naf_batch --methods can still ask for the joint bilateral
// filter).
const std::vector<int>& viewerMethods()
{
    static const std::vector<int> methods = naf_app::defaultUpsampleMethods();
    return methods;
}

QImage toQImage(const cv::Mat& bgr)
{
    if (bgr.empty()) return QImage();
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    return QImage(rgb.data, rgb.cols, rgb.rows, static_cast<int>(rgb.step), QImage::Format_RGB888).copy();
}

QString errorText(const std::exception& e)
{
    if (auto* cvErr = dynamic_cast<const cv::Exception*>(&e)) return QString::fromStdString(cvErr->err);
    return QString::fromUtf8(e.what());
}

QString methodLabel(int method)
{
    return QString::fromStdString(cv::naf::upsampleMethodName(method));
}

// Decodes an image file as the app feeds it to the VFM, with a warning for a truncated JPEG; an
// empty image when it cannot be read. Run in a worker by openImageInBackground().
LoadedImage decodeImage(const QString& path)
{
    LoadedImage loaded{path, cv::Mat(), QString()};
    try
    {
        loaded.image = naf_app::readImageBgr(path.toStdString());
        loaded.warning = QString::fromStdString(naf_app::truncatedJpegWarning(path.toStdString()));
    }
    catch (const std::exception&)  // e.g. a codec refusing a huge image: reported as unreadable
    {
    }
    return loaded;
}

}  // namespace

MainWindow::MainWindow(QWidget* parent) : QMainWindow(parent)
{
    setWindowTitle("cv::naf viewer");
    setAcceptDrops(true);
    buildUi();
    connect(&loadWatcher_, &QFutureWatcher<LoadedImage>::finished, this, &MainWindow::onImageLoaded);
    connect(&runWatcher_, &QFutureWatcher<RunOutput>::finished, this, &MainWindow::onRunFinished);
    connect(&runWatcher_, &QFutureWatcher<RunOutput>::progressValueChanged, progress_, &QProgressBar::setValue);
    connect(&runWatcher_, &QFutureWatcher<RunOutput>::progressTextChanged, stageLabel_, &ElidedLabel::setFullText);
    connect(&segWatcher_, &QFutureWatcher<SegmentationOutput>::finished, this, &MainWindow::onSegmentationFinished);
    connect(&inspectWatcher_, &QFutureWatcher<InspectionOutput>::finished, this, &MainWindow::onInspectionFinished);
}

MainWindow::~MainWindow()
{
    // Workers reference this window's members: let them end before the members go.
    runWatcher_.cancel();
    runWatcher_.waitForFinished();
    loadWatcher_.waitForFinished();  // only a decode: its result holds no reference to this window
    segWatcher_.waitForFinished();
    inspectWatcher_.waitForFinished();
}

void MainWindow::buildUi()
{
    QMenu* file = menuBar()->addMenu("&File");
    file->addAction("&Open image...", QKeySequence::Open, this, [this] {
        const QString path = QFileDialog::getOpenFileName(this, "Open image", QFileInfo(imagePath_).path(),
                                                          "Images (*.jpg *.jpeg *.png *.bmp *.tif *.tiff *.webp)");
        if (!path.isEmpty()) openImageInBackground(path, true);
    });
    recentMenu_ = file->addMenu("Open &recent");
    file->addSeparator();
    file->addAction("Export &panels (PNG)...", this, [this] {
        const QString path = QFileDialog::getSaveFileName(this, "Export panels", "panels.png", "PNG (*.png)");
        if (!path.isEmpty()) exportPanels(path);
    });
    file->addAction("Export &features (.npy)...", this, [this] {
        const QString path = QFileDialog::getSaveFileName(this, "Export features (base name)", "features", "NumPy (*.npy)");
        if (!path.isEmpty()) exportFeatures(path);
    });
    file->addSeparator();
    file->addAction("&Quit", QKeySequence::Quit, this, &QWidget::close);
    rebuildRecentMenu();

    QToolBar* bar = addToolBar("Run");
    bar->setMovable(false);
    bar->addWidget(new QLabel(" Model "));
    vfmBox_ = new QComboBox;
    vfmBox_->setObjectName("vfmBox");
    try
    {
        for (const cv::naf::VfmSpec& spec : cv::naf::VfmRegistry::loadDirectory())
        {
            const bool present = spec.onnxPath.empty() || cv::utils::fs::exists(spec.onnxPath);
            vfmBox_->addItem(QString::fromStdString(spec.name) + (present ? "" : "  (model file missing)"),
                             QString::fromStdString(spec.name));
            vfmBox_->setItemData(vfmBox_->count() - 1,
                                 QString::fromStdString(spec.displayName + (present ? "" : "\nmissing: " + spec.onnxPath +
                                                                                              "\nget it with: " + spec.fetchCommand)),
                                 Qt::ToolTipRole);
        }
    }
    catch (const std::exception& e)
    {
        lastError_ = statusError_ = "model registry: " + errorText(e);  // shown in the status bar; the app still opens
    }
    bar->addWidget(vfmBox_);
    bar->addWidget(new QLabel("  Output long side "));
    sizeBox_ = new QSpinBox;
    sizeBox_->setObjectName("sizeBox");
    sizeBox_->setRange(16, 4096);
    sizeBox_->setSingleStep(64);
    sizeBox_->setValue(448);
    sizeBox_->setSuffix(" px");
    bar->addWidget(sizeBox_);
    bar->addWidget(new QLabel("  NAF on "));
    backendBox_ = new QComboBox;
    backendBox_->setObjectName("backendBox");
    backendBox_->addItem("auto", cv::naf::BACKEND_AUTO);
    backendBox_->addItem("CPU", cv::naf::BACKEND_CPU);
    backendBox_->addItem("CUDA", cv::naf::BACKEND_CUDA);
    backendBox_->setToolTip(QString("Where NAF runs; auto: CUDA when available, else CPU (here: %1). "
                                    "The VFM always runs on cv::dnn's CPU backend.")
                                .arg(cv::naf::isCudaAvailable() ? "CUDA" : "CPU"));
    bar->addWidget(backendBox_);
    bar->addWidget(new QLabel("  GPU precision "));
    precisionBox_ = new QComboBox;
    precisionBox_->setObjectName("gpuPrecisionBox");
    precisionBox_->addItem("FP32", cv::naf::GPU_PRECISION_FP32);
    precisionBox_->addItem("TF32", cv::naf::GPU_PRECISION_TF32);
    precisionBox_->addItem("FP16", cv::naf::GPU_PRECISION_FP16);
    precisionBox_->setToolTip("Precision of NAF's image encoder on CUDA; the CPU backend ignores it (float32)");
    bar->addWidget(precisionBox_);
    bar->addSeparator();
    runButton_ = new QPushButton("Run");
    runButton_->setObjectName("runButton");
    connect(runButton_, &QPushButton::clicked, this, [this] { startRun(); });
    bar->addWidget(runButton_);
    cancelButton_ = new QPushButton("Cancel");
    cancelButton_->setObjectName("cancelButton");
    cancelButton_->setEnabled(false);
    connect(cancelButton_, &QPushButton::clicked, this, &MainWindow::cancelRun);
    bar->addWidget(cancelButton_);
    progress_ = new QProgressBar;
    progress_->setRange(0, 100);
    progress_->setMaximumWidth(160);
    bar->addWidget(progress_);
    stageLabel_ = new ElidedLabel;
    stageLabel_->setObjectName("stageLabel");
    // A fixed width: long messages elide (tooltip) instead of pushing the wipe controls away.
    stageLabel_->setSizePolicy(QSizePolicy::Fixed, QSizePolicy::Preferred);
    stageLabel_->setFixedWidth(220);
    bar->addWidget(stageLabel_);
    bar->addSeparator();
    wipeBox_ = new QCheckBox("Wipe 1|2");
    wipeBox_->setObjectName("wipeBox");
    wipeBox_->setToolTip("Show panel 2 over panel 1, split at the slider");
    bar->addWidget(wipeBox_);
    wipeSlider_ = new QSlider(Qt::Horizontal);
    wipeSlider_->setObjectName("wipeSlider");
    wipeSlider_->setRange(0, 100);
    wipeSlider_->setValue(50);
    wipeSlider_->setMaximumWidth(140);
    bar->addWidget(wipeSlider_);
    connect(wipeBox_, &QCheckBox::toggled, this, &MainWindow::refreshPanels);
    connect(wipeSlider_, &QSlider::valueChanged, this, &MainWindow::refreshPanels);

    // Panels.
    sync_ = new ViewSync(this);
    auto* splitter = new QSplitter;
    const int defaults[kPanels] = {CONTENT_IMAGE, CONTENT_METHOD + cv::naf::UPSAMPLE_BILINEAR,
                                   CONTENT_METHOD + cv::naf::UPSAMPLE_NAF};
    for (int i = 0; i < kPanels; ++i)
    {
        auto* box = new QWidget;
        auto* layout = new QVBoxLayout(box);
        layout->setContentsMargins(2, 2, 2, 2);
        auto* choice = new QComboBox;
        choice->setObjectName(QString("panelChoice%1").arg(i));
        choice->addItem("Image", CONTENT_IMAGE);
        choice->addItem("Low-res features (PCA)", CONTENT_LOWRES);
        for (int m : viewerMethods()) choice->addItem("Upsampled: " + methodLabel(m) + " (PCA)", CONTENT_METHOD + m);
        choice->addItem("Segmentation overlay", CONTENT_SEGMENTATION);
        choice->addItem("NAF attention of clicked pixel", CONTENT_ATTENTION);
        choice->addItem("Similarity to clicked pixel", CONTENT_SIMILARITY);
        choice->setCurrentIndex(choice->findData(defaults[i]));
        connect(choice, QOverload<int>::of(&QComboBox::currentIndexChanged), this, &MainWindow::refreshPanels);
        auto* view = new PanelView;
        view->setObjectName(QString("panel%1").arg(i));
        connect(view, &PanelView::pixelClicked, this, &MainWindow::inspectPixel);
        sync_->add(view);
        layout->addWidget(choice);
        layout->addWidget(view, 1);
        splitter->addWidget(box);
        views_.push_back(view);
        panelBoxes_.push_back(choice);
    }
    setCentralWidget(splitter);

    // Side dock: segmentation and pixel inspector.
    auto* side = new QWidget;
    auto* sideLayout = new QVBoxLayout(side);
    auto* seg = new QGroupBox("Segmentation");
    auto* segForm = new QFormLayout(seg);
    segKindBox_ = new QComboBox;
    segKindBox_->setObjectName("segKindBox");
    segKindBox_->addItem("k-means clusters", 0);
    segKindBox_->addItem("linear probe", 1);
    segForm->addRow("Kind", segKindBox_);
    segSourceBox_ = new QComboBox;
    for (int m : viewerMethods()) segSourceBox_->addItem(methodLabel(m), m);
    segSourceBox_->setCurrentIndex(segSourceBox_->findData(cv::naf::UPSAMPLE_NAF));
    segForm->addRow("Features", segSourceBox_);
    clustersBox_ = new QSpinBox;
    clustersBox_->setObjectName("clustersBox");
    clustersBox_->setRange(2, 32);
    clustersBox_->setValue(6);
    segForm->addRow("Clusters", clustersBox_);
    opacitySlider_ = new QSlider(Qt::Horizontal);
    opacitySlider_->setRange(0, 100);
    opacitySlider_->setValue(55);
    segForm->addRow("Opacity", opacitySlider_);
    probeLabel_ = new QLabel;
    probeLabel_->setWordWrap(true);
    segForm->addRow(probeLabel_);
    legend_ = new QListWidget;
    legend_->setObjectName("legend");
    legend_->setMaximumHeight(120);
    segForm->addRow(legend_);
    connect(clustersBox_, QOverload<int>::of(&QSpinBox::valueChanged), this, &MainWindow::startSegmentation);
    connect(segSourceBox_, QOverload<int>::of(&QComboBox::currentIndexChanged), this, &MainWindow::startSegmentation);
    connect(segKindBox_, QOverload<int>::of(&QComboBox::currentIndexChanged), this, &MainWindow::startSegmentation);
    connect(opacitySlider_, &QSlider::valueChanged, this, &MainWindow::refreshPanels);
    connect(vfmBox_, QOverload<int>::of(&QComboBox::currentIndexChanged), this, &MainWindow::updateProbeLabel);
    sideLayout->addWidget(seg);

    auto* inspect = new QGroupBox("Clicked pixel");
    auto* inspectLayout = new QVBoxLayout(inspect);
    pixelLabel_ = new WrappedLabel("Click a pixel in any panel.");
    pixelLabel_->setObjectName("pixelLabel");
    attentionLabel_ = new FittedImageLabel(Qt::FastTransformation);  // cells stay sharp when zoomed
    attentionLabel_->setObjectName("attentionLabel");
    similarityLabel_ = new FittedImageLabel(Qt::SmoothTransformation);
    similarityLabel_->setObjectName("similarityLabel");
    attentionCaption_ = new WrappedLabel;
    attentionCaption_->setObjectName("attentionCaption");
    similarityCaption_ = new WrappedLabel;
    similarityCaption_->setObjectName("similarityCaption");

    setInspectionCaptions(std::nullopt);
    inspectLayout->addWidget(pixelLabel_);
    inspectLayout->addWidget(attentionCaption_);
    inspectLayout->addWidget(attentionLabel_, 1);
    inspectLayout->addWidget(similarityCaption_);
    inspectLayout->addWidget(similarityLabel_, 1);
    sideLayout->addWidget(inspect, 1);
    // In a scroll area, so that a small window squeezes the dock instead of refusing to shrink.
    auto* sideScroll = new QScrollArea;
    sideScroll->setWidget(side);
    sideScroll->setWidgetResizable(true);
    sideScroll->setFrameShape(QFrame::NoFrame);
    sideScroll->setHorizontalScrollBarPolicy(Qt::ScrollBarAlwaysOff);
    auto* dock = new QDockWidget("Analysis");
    dock->setObjectName("analysisDock");
    dock->setFeatures(QDockWidget::DockWidgetClosable);  // View > Analysis brings it back
    dock->setWidget(sideScroll);
    addDockWidget(Qt::RightDockWidgetArea, dock);
    QMenu* viewMenu = menuBar()->addMenu("&View");
    viewMenu->addAction(dock->toggleViewAction());

    timingLabel_ = new ElidedLabel;
    timingLabel_->setObjectName("timingLabel");
    deviceLabel_ = new QLabel;
    deviceLabel_->setContentsMargins(12, 0, 0, 0);  // apart from the timings, which elide up to it
    weightsLabel_ = new QLabel;
    weightsLabel_->setObjectName("weightsLabel");
    statusBar()->addWidget(timingLabel_, 1);
    statusBar()->addPermanentWidget(deviceLabel_);
    statusBar()->addPermanentWidget(weightsLabel_);
    updateProbeLabel();
    updateStatus();
}

void MainWindow::showError(const QString& title, const QString& message)
{
    lastError_ = message;
    statusError_ = title + ": " + message.section('\n', 0, 0);
    stageLabel_->setFullText(title);
    updateStatus();
    // Non-blocking: the window stays usable (and tests are not stopped by a modal loop).
    // Long paths have no spaces to wrap at: the shown text may break after '/' and '_'
    // (zero-width spaces); the details keep the message as it is, to copy.
    QString shown = message;
    if (message.size() > 60)
    {
        shown.replace('/', QStringLiteral("/\u200B"));
        shown.replace('_', QStringLiteral("_\u200B"));
    }
    auto* box = new QMessageBox(QMessageBox::Warning, title, shown, QMessageBox::Ok, this);
    if (shown != message) box->setDetailedText(message);
    box->setAttribute(Qt::WA_DeleteOnClose);
    box->setObjectName("errorDialog");
    box->open();
    emit errorShown(message);
}

bool MainWindow::refuseIrregularFile(const QString& path)
{
    // Regular files only: imread on a FIFO blocks its thread forever.
    std::error_code ec;
    if (std::filesystem::exists(path.toStdString(), ec) && !std::filesystem::is_regular_file(path.toStdString(), ec))
    {
        showError("Cannot open image", "'" + path + "' is not a regular file.");
        emit imageOpened(false);
        return true;
    }
    return false;
}

bool MainWindow::openImage(const QString& path)
{
    loadingPath_.clear();  // a pending background decode is superseded
    if (refuseIrregularFile(path)) return false;
    const LoadedImage loaded = decodeImage(path);
    return adoptImage(loaded.path, loaded.image, loaded.warning);
}

void MainWindow::openImageInBackground(const QString& path, bool runWhenOpened)
{
    loadingPath_.clear();
    if (refuseIrregularFile(path)) return;
    loadingPath_ = path;
    runWhenLoaded_ = runWhenOpened;
    stageLabel_->setFullText("loading " + QFileInfo(path).fileName() + "...");
    loadWatcher_.setFuture(QtConcurrent::run([path] { return decodeImage(path); }));
}

void MainWindow::onImageLoaded()
{
    const LoadedImage loaded = loadWatcher_.result();
    if (loaded.path != loadingPath_) return;  // superseded by a newer open
    loadingPath_.clear();
    if (adoptImage(loaded.path, loaded.image, loaded.warning) && runWhenLoaded_) startRun();
}

bool MainWindow::adoptImage(const QString& path, const cv::Mat& image, const QString& warning)
{
    if (image.empty())
    {
        showError("Cannot open image", QFileInfo::exists(path)
                                           ? "'" + path + "' is not a readable image (unknown or corrupt format)."
                                           : "'" + path + "' does not exist.");
        emit imageOpened(false);
        return false;
    }
    if (isRunning()) cancelRun();  // its result belongs to the previous image and is dropped
    imagePath_ = path;
    image_ = image;
    run_ = RunOutput();
    segmentation_ = SegmentationOutput();
    clearInspection();
    legend_->clear();
    // The status bar, progress and stage described the previous image's run.
    statusError_.clear();
    progress_->setValue(0);
    stageLabel_->setFullText("opened");
    updateStatus();
    setWindowTitle("cv::naf viewer - " + QFileInfo(path).fileName());
    addRecent(path);
    refreshPanels();
    sync_->fitAll();
    emit imageOpened(true);
    if (!warning.isEmpty()) showError("Image looks truncated", warning);
    return true;
}

void MainWindow::addRecent(const QString& path)
{
    QSettings settings;
    QStringList recent = settings.value("recentFiles").toStringList();
    const QString absolute = QFileInfo(path).absoluteFilePath();
    recent.removeAll(absolute);
    recent.prepend(absolute);
    while (recent.size() > kMaxRecent) recent.removeLast();
    settings.setValue("recentFiles", recent);
    rebuildRecentMenu();
}

void MainWindow::removeRecent(const QString& path)
{
    QSettings settings;
    QStringList recent = settings.value("recentFiles").toStringList();
    recent.removeAll(path);
    settings.setValue("recentFiles", recent);
    rebuildRecentMenu();
}

void MainWindow::rebuildRecentMenu()
{
    recentMenu_->clear();
    const QStringList recent = QSettings().value("recentFiles").toStringList();
    for (const QString& path : recent)
        recentMenu_->addAction(path, this, [this, path] {
            openImageInBackground(path, true);
            if (!QFileInfo::exists(path)) removeRecent(path);  // deleted since: the dialog will say so once
        });
    recentMenu_->setEnabled(!recent.isEmpty());
}

void MainWindow::dragEnterEvent(QDragEnterEvent* event)
{
    if (event->mimeData()->hasUrls() && event->mimeData()->urls().first().isLocalFile()) event->acceptProposedAction();
}

void MainWindow::dropEvent(QDropEvent* event)
{
    openImageInBackground(event->mimeData()->urls().first().toLocalFile(), true);
}

void MainWindow::setVfm(const QString& name)
{
    const int index = vfmBox_->findData(name);
    if (index >= 0) vfmBox_->setCurrentIndex(index);
    else showError("Unknown model", "'" + name + "' is not in the model registry (" +
                                        QString::fromStdString(cv::naf::VfmRegistry::defaultDirectory()) + ").");
}

void MainWindow::setOutputLongSide(int pixels) { sizeBox_->setValue(pixels); }

void MainWindow::setNafBackend(int backend)
{
    const int index = backendBox_->findData(backend);
    if (index >= 0) backendBox_->setCurrentIndex(index);
    else
        showError("Unknown NAF backend", QString("%1 is not a cv::naf::Backend (auto 0, CPU 1, CUDA 2).").arg(backend));
}

void MainWindow::setGpuPrecision(int precision)
{
    const int index = precisionBox_->findData(precision);
    if (index >= 0) precisionBox_->setCurrentIndex(index);
    else
        showError("Unknown GPU precision",
                  QString("%1 is not a cv::naf::GpuPrecision (FP32 0, TF32 1, FP16 2).").arg(precision));
}

naf_app::PipelineSettings MainWindow::currentSettings() const
{
    naf_app::PipelineSettings s;
    s.vfmName = vfmBox_->currentData().toString().toStdString();
    s.outputLongSide = sizeBox_->value();
    s.methods = viewerMethods();
    s.nafBackend = backendBox_->currentData().toInt();
    s.gpuPrecision = precisionBox_->currentData().toInt();
    return s;
}

bool MainWindow::isRunning() const { return runWatcher_.isRunning(); }

bool MainWindow::startRun()
{
    if (isRunning())
    {
        // A cancelled run still finishing (cv::dnn ends its own layer first): this one starts when
        // it has (onRunFinished). Dropping a file during a run used to cancel it and then lose the
        // new run, depending on timing.
        if (!runWatcher_.isCanceled()) return false;
        runAfterCancel_ = true;
        return true;
    }
    if (image_.empty())
    {
        showError("No image", "Open an image first (File > Open, or drop a file on the window).");
        return false;
    }
    if (vfmBox_->count() == 0)
    {
        showError("No model", "The model registry is empty or unreadable: " + lastError_);
        return false;
    }
    const naf_app::PipelineSettings settings = currentSettings();
    try
    {
        // Refused here rather than in the worker: e.g. CUDA where there is none (the module's message).
        naf_app::Pipeline::validate(settings);
    }
    catch (const std::exception& e)
    {
        showError("Cannot run", errorText(e));
        return false;
    }
    // Sizes whose feature maps cannot fit (one map per method plus scratch) are refused up front.
    try
    {
        naf_app::checkRunFitsInMemory(settings, image_.size());
    }
    catch (const std::exception& e)
    {
        showError("Output size too large", errorText(e));
        return false;
    }

    runButton_->setEnabled(false);
    cancelButton_->setEnabled(true);
    progress_->setValue(0);
    statusError_.clear();
    stageLabel_->setFullText("starting");
    const cv::Mat image = image_;
    naf_app::Pipeline* pipeline = &pipeline_;
    QFuture<RunOutput> future = QtConcurrent::run([image, settings, pipeline](QPromise<RunOutput>& promise) {
        RunOutput out;
        promise.setProgressRange(0, 100);
        try
        {
            auto result = std::make_shared<naf_app::PipelineResult>(pipeline->run(
                image, settings, [&promise](double fraction, const std::string& stage) {
                    promise.setProgressValueAndText(static_cast<int>(fraction * 100), QString::fromStdString(stage));
                    return !promise.isCanceled();
                }));
            out.renders[CONTENT_LOWRES] = naf_app::renderLowResPca(*result);
            for (const auto& [method, features] : result->upsampled)
                out.renders[CONTENT_METHOD + method] = naf_app::renderMethodPca(*result, method);
            out.result = result;
            out.ok = true;
        }
        catch (const naf_app::Cancelled&)
        {
            out.cancelled = true;
        }
        catch (const std::bad_alloc&)
        {
            out.error = "Out of memory: choose a smaller output size.";
        }
        catch (const std::exception& e)
        {
            out.error = errorText(e);
        }
        promise.addResult(out);
    });
    runWatcher_.setFuture(future);
    return true;
}

void MainWindow::cancelRun()
{
    runAfterCancel_ = false;
    if (!isRunning()) return;
    stageLabel_->setFullText("cancelling...");  // NAF stops within its stage; cv::dnn finishes its own
    cancelButton_->setEnabled(false);
    runWatcher_.cancel();
}

void MainWindow::onRunFinished()
{
    runButton_->setEnabled(true);
    cancelButton_->setEnabled(false);
    const QFuture<RunOutput> future = runWatcher_.future();
    RunOutput out;
    if (future.resultCount() > 0) out = future.result();
    const bool stale = out.ok && out.result->image.data != image_.data;  // another image was opened meanwhile
    if (future.isCanceled() || out.cancelled || stale)
    {
        stageLabel_->setFullText("cancelled");
        progress_->setValue(0);
        emit runFinished(false);
        if (runAfterCancel_)
        {
            runAfterCancel_ = false;
            startRun();  // the run asked for while this one was finishing
        }
        return;
    }
    if (!out.ok)
    {
        progress_->setValue(0);
        showError("Computation failed", out.error);
        emit runFinished(false);
        return;
    }
    progress_->setValue(100);
    stageLabel_->setFullText("done");
    run_ = out;
    clearInspection();
    updateProbeLabel();
    updateStatus();
    refreshPanels();
    sync_->fitAll();
    emit runFinished(true);
    startSegmentation();
}

void MainWindow::updateProbeLabel()
{
    probe_.reset();
    const std::string name = vfmBox_->currentData().toString().toStdString();
    if (name.empty()) return;
    const std::string path = naf_app::ProbeHead::expectedPath(name);
    if (!cv::utils::fs::exists(path))
    {
        // Shown relative to the project (the registry is <project>/models/vfm).
        const QString shown = QDir(QString::fromStdString(cv::naf::VfmRegistry::defaultDirectory()) + "/../..")
                                  .relativeFilePath(QString::fromStdString(path));
        probeLabel_->setText(QString("No linear-probe head ships for '%1' yet (expected at %2).")
                                 .arg(QString::fromStdString(name), shown));
        return;
    }
    try
    {
        probe_ = naf_app::ProbeHead::load(path);
        probeLabel_->setText(QString("Linear probe: %1 classes (%2)")
                                 .arg(probe_->classes.size())
                                 .arg(QString::fromStdString(path)));
    }
    catch (const std::exception& e)
    {
        probeLabel_->setText("Linear-probe head unusable: " + errorText(e));
    }
}

void MainWindow::setClusterCount(int k) { clustersBox_->setValue(k); }

void MainWindow::startSegmentation()
{
    // The probe choice is checked at once, with or without a result (before any run it was
    // accepted and refused only when the next run ended). Before a run the head has not been
    // looked for yet.
    const bool useProbe = segKindBox_->currentData().toInt() == 1;
    if (useProbe && !probe_) updateProbeLabel();
    if (useProbe && !probe_)
    {
        showError("No linear probe", probeLabel_->text());
        segKindBox_->setCurrentIndex(0);
        return;
    }
    if (!run_.result) return;
    if (segWatcher_.isRunning())
    {
        segmentationPending_ = true;  // recompute with the latest settings when this one ends
        return;
    }
    const int method = segSourceBox_->currentData().toInt();
    auto features = run_.result->upsampled.find(method);
    if (features == run_.result->upsampled.end()) return;
    const int k = clustersBox_->value();
    const cv::Mat blob = features->second;
    const std::optional<naf_app::ProbeHead> probe = useProbe ? probe_ : std::nullopt;
    std::shared_ptr<const naf_app::PipelineResult> source = run_.result;
    segWatcher_.setFuture(QtConcurrent::run([blob, k, probe, source] {
        SegmentationOutput out;
        out.source = source;
        try
        {
            int classes = k;
            if (probe)
            {
                out.labels = probe->classify(blob);
                classes = static_cast<int>(probe->classes.size());
                for (const std::string& c : probe->classes) out.names << QString::fromStdString(c);
            }
            else
            {
                cv::naf::kmeansSegmentation(blob, k, out.labels);
                for (int i = 0; i < k; ++i) out.names << QString("cluster %1").arg(i);
            }
            out.fractions.assign(classes, 0.0);
            for (int y = 0; y < out.labels.rows; ++y)
                for (int x = 0; x < out.labels.cols; ++x) out.fractions[out.labels.at<int>(y, x)] += 1;
            for (double& f : out.fractions) f /= static_cast<double>(out.labels.total());
        }
        catch (const std::exception& e)
        {
            out.error = errorText(e);
        }
        return out;
    }));
}

void MainWindow::onSegmentationFinished()
{
    SegmentationOutput out = segWatcher_.result();
    if (out.source != run_.result)  // a newer run replaced the features: its own segmentation follows
    {
        segmentationPending_ = false;
        startSegmentation();
        return;
    }
    segmentation_ = out;
    if (!segmentation_.error.isEmpty()) showError("Segmentation failed", segmentation_.error);
    legend_->clear();
    for (int i = 0; i < segmentation_.names.size(); ++i)
    {
        const cv::Vec3b c = cv::naf::labelColor(i);
        QPixmap swatch(14, 14);
        swatch.fill(QColor(c[2], c[1], c[0]));
        legend_->addItem(new QListWidgetItem(QIcon(swatch), QString("%1  (%2%)").arg(segmentation_.names[i]).arg(
                                                                 100.0 * segmentation_.fractions[i], 0, 'f', 1)));
    }
    refreshPanels();
    const bool ok = segmentation_.error.isEmpty();
    emit segmentationFinished(ok);
    if (segmentationPending_)
    {
        segmentationPending_ = false;
        startSegmentation();
    }
}

void MainWindow::inspectPixel(QPoint pixel)
{
    if (!run_.result || isRunning()) return;
    if (inspectWatcher_.isRunning())
    {
        pendingPixel_ = pixel;  // only the latest click matters
        return;
    }
    pixelLabel_->setWrappedText(QString("Pixel (%1, %2): computing...").arg(pixel.x()).arg(pixel.y()));
    try
    {
        if (!inspectNaf_) inspectNaf_ = cv::naf::NAF::create(currentSettings().nafWeightsPath);
        // The attention shown is that of the run's features: same backend and precision.
        naf_app::configureNaf(*inspectNaf_, run_.result->settings);
    }
    catch (const std::exception& e)
    {
        pixelLabel_->setWrappedText("Pixel inspection failed: cannot set up NAF.");
        showError("Cannot set up NAF", errorText(e));
        return;
    }
    const int method = run_.result->upsampled.count(cv::naf::UPSAMPLE_NAF) ? int(cv::naf::UPSAMPLE_NAF)
                                                                           : run_.result->upsampled.begin()->first;
    std::shared_ptr<const naf_app::PipelineResult> result = run_.result;
    cv::Ptr<cv::naf::NAF> naf = inspectNaf_;
    inspectWatcher_.setFuture(QtConcurrent::run([result, naf, pixel, method] {
        InspectionOutput out;
        out.source = result;
        try
        {
            out.inspection = naf_app::inspectPixel(*result, *naf, cv::Point(pixel.x(), pixel.y()), method);
            out.attention = naf_app::renderAttention(*result, out.inspection);
            // The window is a few percent of the image: the side panel shows it zoomed, with 2 cells around.
            out.attentionInset = naf_app::renderAttentionInset(*result, out.inspection, 2, 400);
            out.similarity = naf_app::renderSimilarity(*result, out.inspection);
        }
        catch (const std::exception& e)
        {
            out.error = errorText(e);
        }
        return out;
    }));
}

void MainWindow::onInspectionFinished()
{
    InspectionOutput out = inspectWatcher_.result();
    const bool ok = out.error.isEmpty();
    // When another image or run replaced the result meanwhile (its side panel was reset), neither
    // the attention nor the failure belongs on screen.
    const bool current = out.source == run_.result;
    if (current && !ok)
    {
        pixelLabel_->setWrappedText("Pixel inspection failed: " + out.error.section('\n', 0, 0));  // not "computing..." forever
        showError("Pixel inspection failed", out.error);
    }
    else if (current)
    {
        inspection_ = out;
        attentionImage_ = toQImage(out.attention);
        similarityImage_ = toQImage(out.similarity);
        attentionLabel_->setImage(toQImage(out.attentionInset));
        similarityLabel_->setImage(similarityImage_);
        pixelLabel_->setWrappedText(QString("Pixel (%1, %2): its %3x%4-cell window starts at cell (%5, %6) of the %7x%8 "
                                     "low-res grid; similarity of %9 features")
                                 .arg(out.inspection.pixel.x)
                                 .arg(out.inspection.pixel.y)
                                 .arg(out.inspection.window.width)
                                 .arg(out.inspection.window.height)
                                 .arg(out.inspection.window.x)
                                 .arg(out.inspection.window.y)
                                 .arg(run_.result->lowRes.size[3])
                                 .arg(run_.result->lowRes.size[2])
                                 .arg(methodLabel(out.inspection.similarityMethod)));
        setInspectionCaptions(out.inspection);
        refreshPanels();
    }
    emit inspectionFinished(ok);
    if (pendingPixel_)
    {
        const QPoint next = *pendingPixel_;
        pendingPixel_.reset();
        inspectPixel(next);
    }
}

cv::Mat MainWindow::renderContent(int content) const
{
    if (content == CONTENT_IMAGE) return run_.result ? run_.result->guide : image_;
    if (!run_.result) return cv::Mat();
    if (content == CONTENT_SEGMENTATION)
        return segmentation_.labels.size() != run_.result->outputSize ? cv::Mat()
                                            : naf_app::renderLabels(*run_.result, segmentation_.labels,
                                                                    opacitySlider_->value() / 100.0);
    if (content == CONTENT_ATTENTION) return inspection_ ? inspection_->attention : cv::Mat();
    if (content == CONTENT_SIMILARITY) return inspection_ ? inspection_->similarity : cv::Mat();
    auto it = run_.renders.find(content);
    return it == run_.renders.end() ? cv::Mat() : it->second;
}

void MainWindow::clearInspection()
{
    // The side panel described another image's or run's pixel (an inspection still running for
    // it is dropped when it ends: onInspectionFinished checks its source).
    inspection_.reset();
    attentionImage_ = similarityImage_ = QImage();
    attentionLabel_->clearImage();
    similarityLabel_->clearImage();
    setInspectionCaptions(std::nullopt);
    pixelLabel_->setWrappedText("Click a pixel in any panel.");
}

void MainWindow::setInspectionCaptions(const std::optional<naf_app::PixelInspection>& inspection)
{
    if (!inspection)
    {
        attentionCaption_->setWrappedText("NAF attention over its low-res window (mean of 4 heads, zoomed)");
        similarityCaption_->setWrappedText("Cosine similarity of its feature to every pixel's");
        return;
    }
    double peak = 0;
    cv::minMaxLoc(inspection->attentionGrid, nullptr, &peak);
    const std::pair<double, double> range = naf_app::similarityRange(*inspection);
    // The colour scales are stretched to the values (features of one VFM are mostly similar, so
    // a fixed -1..1 scale left half the palette unused): the captions say what the ends mean.
    attentionCaption_->setWrappedText(QString("NAF attention over its low-res window (mean of 4 heads, zoomed): "
                                       "blue 0 .. red %1 (peak weight)")
                                   .arg(peak, 0, 'f', 3));
    similarityCaption_->setWrappedText(QString("Cosine similarity of its feature to every pixel's: blue %1 .. red %2")
                                    .arg(range.first, 0, 'f', 2)
                                    .arg(range.second, 0, 'f', 2));
}

void MainWindow::refreshPanels()
{
    const bool wipe = wipeBox_->isChecked() && views_.size() >= 2;
    // Panels are fitted to the view when an image is opened and when a run ends; when the panels
    // then show only what comes later (segmentation, attention, similarity), fit when it comes.
    const auto anyShown = [this] {
        return std::any_of(views_.begin(), views_.end(), [](const PanelView* v) { return !v->image().isNull(); });
    };
    const bool shownBefore = anyShown();
    for (size_t i = 0; i < views_.size(); ++i)
    {
        cv::Mat shown = renderContent(panelBoxes_[i]->currentData().toInt());
        if (wipe && i == 0)
        {
            const cv::Mat right = renderContent(panelBoxes_[1]->currentData().toInt());
            if (!shown.empty() && right.size() == shown.size())
            {
                const int split = shown.cols * wipeSlider_->value() / 100;
                shown = shown.clone();
                // At 100 % nothing of panel 2 shows (an empty copyTo into a fixed ROI threw, uncaught).
                if (split < shown.cols)
                    right(cv::Rect(split, 0, shown.cols - split, shown.rows))
                        .copyTo(shown(cv::Rect(split, 0, shown.cols - split, shown.rows)));
                cv::line(shown, cv::Point(split, 0), cv::Point(split, shown.rows - 1), cv::Scalar(255, 255, 255), 2);
            }
        }
        views_[i]->setImage(toQImage(shown));
        views_[i]->parentWidget()->setVisible(!(wipe && i == 1));
    }
    if (!shownBefore && anyShown()) sync_->fitAll();
}

void MainWindow::updateStatus()
{
    if (!run_.result)
    {
        QString hint = "Open an image (File > Open or drop a file) and press Run.";
        if (!image_.empty())
            hint = QString("%1: %2x%3 px; press Run (output long side %4 px).")
                       .arg(QFileInfo(imagePath_).fileName())
                       .arg(image_.cols)
                       .arg(image_.rows)
                       .arg(sizeBox_->value());
        timingLabel_->setFullText(statusError_.isEmpty() ? hint : statusError_);
        deviceLabel_->setText(cv::naf::isCudaAvailable() ? "CUDA available" : "CPU");
        weightsLabel_->clear();
        weightsLabel_->setToolTip(QString());
        return;
    }
    const naf_app::PipelineResult& r = *run_.result;
    timingLabel_->setFullText(QString("%1 %2x%3 -> %4x%5 | %6")
                              .arg(QString::fromStdString(r.vfmName))
                              .arg(r.lowRes.size[3])
                              .arg(r.lowRes.size[2])
                              .arg(r.outputSize.width)
                              .arg(r.outputSize.height)
                              .arg(QString::fromStdString(r.timingSummary())));
    timingLabel_->setToolTip(QString::fromStdString(r.vfmDisplayName) + "\n" + timingLabel_->fullText());
    deviceLabel_->setText(QString::fromStdString(r.device));
    // The weights info starts with the file's whole path, which pushed the per-method timings
    // (NAF's last) out of a 1500-pixel-wide window: the status bar names the file, the tooltip
    // has all of it.
    const std::string weightsPath =
        r.settings.nafWeightsPath.empty() ? cv::naf::getDefaultWeightsPath() : r.settings.nafWeightsPath;
    QString weights = QString::fromStdString(r.weightsInfo);
    if (!weightsPath.empty() && r.weightsInfo.rfind(weightsPath, 0) == 0)
        weights = QFileInfo(QString::fromStdString(weightsPath)).fileName() +
                  QString::fromStdString(r.weightsInfo.substr(weightsPath.size()));
    weightsLabel_->setText(weights);
    weightsLabel_->setToolTip(QString::fromStdString(r.weightsInfo));
}

QString MainWindow::statusText() const
{
    return timingLabel_->fullText() + " | " + deviceLabel_->text() + " | " + weightsLabel_->text();
}

int MainWindow::panelCount() const { return static_cast<int>(views_.size()); }

QImage MainWindow::panelImage(int panel) const { return views_.at(panel)->image(); }

QImage MainWindow::attentionImage() const { return attentionImage_; }
QImage MainWindow::similarityImage() const { return similarityImage_; }

QStringList MainWindow::legendEntries() const
{
    QStringList entries;
    for (int i = 0; i < legend_->count(); ++i) entries << legend_->item(i)->text();
    return entries;
}

void MainWindow::setPanelContent(int panel, int content)
{
    QComboBox* box = panelBoxes_.at(panel);
    const int index = box->findData(content);
    if (index >= 0) box->setCurrentIndex(index);
}

bool MainWindow::exportPanels(const QString& pngPath)
{
    std::vector<cv::Mat> tiles;
    std::vector<cv::String> captions;
    for (size_t i = 0; i < views_.size(); ++i)
    {
        if (!views_[i]->parentWidget()->isVisibleTo(this)) continue;
        const cv::Mat tile = renderContent(panelBoxes_[i]->currentData().toInt());
        if (tile.empty()) continue;
        tiles.push_back(tile);
        captions.push_back(panelBoxes_[i]->currentText().toStdString());
    }
    try
    {
        if (tiles.empty()) CV_Error(cv::Error::StsError, "nothing to export: run the pipeline first");
        for (cv::Mat& t : tiles)
            if (t.size() != tiles[0].size()) cv::resize(t, t, tiles[0].size(), 0, 0, cv::INTER_NEAREST);
        cv::Mat panel;
        cv::naf::makePanel(tiles, captions, panel);
        naf_app::writeImageAtomic(pngPath.toStdString(), panel);
    }
    catch (const std::exception& e)
    {
        showError("Export failed", errorText(e));
        return false;
    }
    stageLabel_->setFullText("exported " + pngPath);
    return true;
}

bool MainWindow::exportFeatures(const QString& basePath)
{
    try
    {
        if (!run_.result) CV_Error(cv::Error::StsError, "nothing to export: run the pipeline first");
        std::string base = basePath.toStdString();
        if (base.size() > 4 && base.substr(base.size() - 4) == ".npy") base.resize(base.size() - 4);
        if (base.empty() || base.back() == '/')
            CV_Error(cv::Error::StsBadArg, "choose a file name for the features (got '" + base + "')");
        // All or nothing: a failure part-way removes the files this export wrote, so that no set
        // mixes new files with older ones of the same name.
        std::vector<std::string> written;
        try
        {
            written.push_back(base + ".lowres.npy");
            naf_app::writeFileAtomic(written.back(), naf_app::encodeNpy(run_.result->lowRes));
            for (const auto& [method, features] : run_.result->upsampled)
            {
                written.push_back(base + "." + cv::naf::upsampleMethodName(method) + ".npy");
                naf_app::writeFileAtomic(written.back(), naf_app::encodeNpy(features));
            }
        }
        catch (...)
        {
            written.pop_back();  // the failed one was not written (writeFileAtomic leaves nothing)
            std::error_code ignored;
            for (const std::string& file : written) std::filesystem::remove(file, ignored);
            throw;
        }
    }
    catch (const std::exception& e)
    {
        showError("Export failed", errorText(e));
        return false;
    }
    stageLabel_->setFullText("features exported to " + basePath + ".*.npy");
    return true;
}
