// naf_viewer: interactive comparison of feature upsamplers (see README, "Viewer and batch export").
#include <QApplication>
#include <QCommandLineParser>
#include <QScreen>
#include <QTimer>

#include <iostream>

#include <opencv2/core.hpp>

#include "main_window.hpp"

namespace {

/// Integers of `text` separated by `separator` ("1500x820", "200,150"), each in [lo, hi]; false
/// when there are not `count` of them or one is not a number in range.
bool parseInts(const QString& text, QChar separator, int count, int lo, int hi, int* values)
{
    const QStringList parts = text.split(separator);
    if (parts.size() != count) return false;
    for (int i = 0; i < count; ++i)
    {
        bool ok = false;
        values[i] = parts[i].trimmed().toInt(&ok);
        if (!ok || values[i] < lo || values[i] > hi) return false;
    }
    return true;
}

}  // namespace

int main(int argc, char** argv)
{
    QApplication app(argc, argv);
    QCoreApplication::setOrganizationName("cv-naf");
    QCoreApplication::setApplicationName("naf_viewer");

    QCommandLineParser parser;
    parser.setApplicationDescription("cv::naf viewer: VFM features upsampled by NAF and baselines, side by side");
    parser.addHelpOption();
    const QCommandLineOption openOpt("open", "Image to open.", "file");
    const QCommandLineOption vfmOpt("vfm", "Registry model to select.", "name");
    const QCommandLineOption sizeOpt("size", "Output long side in pixels.", "pixels");
    const QCommandLineOption backendOpt("backend", "Where NAF runs: auto (CUDA when available, else CPU), cpu, cuda.",
                                        "name");
    const QCommandLineOption precisionOpt("gpu-precision",
                                          "NAF's image encoder on CUDA: fp32, tf32, fp16 (the CPU backend ignores it).",
                                          "precision");
    const QCommandLineOption runOpt("run", "Run as soon as the image is open.");
    const QCommandLineOption clickOpt("click", "After the run, inspect this output pixel.", "x,y");
    const QCommandLineOption panelsOpt("panels", "Panel contents, e.g. image,naf,attention (image, lowres, <method>, "
                                                 "segmentation, attention, similarity).", "list");
    const QCommandLineOption shotOpt("screenshot", "When everything asked is done, grab the screen into this PNG and quit.",
                                     "png");
    const QCommandLineOption geometryOpt("window-size", "Window size WxH.", "WxH");
    const QCommandLineOption checkOpt("check-model", "Only check that the --vfm model can run: exit 0, or 77 with the reason.");
    parser.addOptions({openOpt, vfmOpt, sizeOpt, backendOpt, precisionOpt, runOpt, clickOpt, panelsOpt, shotOpt,
                       geometryOpt, checkOpt});
    // parse(), not process(): an unknown option exits 2 like every other bad option (process() exits 1).
    if (!parser.parse(QCoreApplication::arguments()))
    {
        std::cerr << "naf_viewer: " << parser.errorText().toStdString() << "\n";
        return 2;
    }
    if (parser.isSet("help")) parser.showHelp(0);
    // Names are checked before the window opens: a typo ends here with the accepted names.
    int nafBackend = cv::naf::BACKEND_AUTO, gpuPrecision = cv::naf::GPU_PRECISION_FP32;
    const std::string vfmName =
        parser.isSet(vfmOpt) ? parser.value(vfmOpt).toStdString() : naf_app::PipelineSettings().vfmName;
    try
    {
        if (parser.isSet(backendOpt)) nafBackend = naf_app::nafBackendFromName(parser.value(backendOpt).toStdString());
        if (parser.isSet(precisionOpt))
            gpuPrecision = naf_app::gpuPrecisionFromName(parser.value(precisionOpt).toStdString());
        // An unknown --vfm ends here too (the window would fall back to its first model).
        if (parser.isSet(vfmOpt) && !parser.isSet(checkOpt)) cv::naf::VfmRegistry::find(vfmName);
    }
    catch (const cv::Exception& e)
    {
        std::cerr << "naf_viewer: " << e.err << "\n";
        return 2;
    }
    // Numbers too: a malformed value ends here, naming it and the expected form.
    int windowSize[2] = {1500, 820}, click[2] = {-1, -1}, outputLongSide = 0;
    auto refuse = [](const char* option, const QString& value, const char* expected) {
        std::cerr << "naf_viewer: " << option << " '" << value.toStdString() << "': expected " << expected << "\n";
        return 2;
    };
    if (parser.isSet(geometryOpt) && !parseInts(parser.value(geometryOpt), 'x', 2, 1, 16384, windowSize))
        return refuse("--window-size", parser.value(geometryOpt), "WxH, two positive integers (e.g. 1500x820)");
    if (parser.isSet(clickOpt) && !parseInts(parser.value(clickOpt), ',', 2, 0, 1 << 20, click))
        return refuse("--click", parser.value(clickOpt), "x,y, two non-negative integers (e.g. 200,150)");
    if (parser.isSet(sizeOpt) && !parseInts(parser.value(sizeOpt), ',', 1, 16, 4096, &outputLongSide))
        return refuse("--size", parser.value(sizeOpt), "an integer from 16 to 4096 (output long side in pixels)");
    if (parser.isSet(checkOpt))
    {
        try
        {
            // The default model without --vfm; a missing model file says how to fetch it.
            naf_app::Pipeline::checkModelFile(cv::naf::VfmRegistry::find(vfmName));
            return 0;
        }
        catch (const cv::Exception& e)
        {
            std::cerr << "naf_viewer: " << e.err << "\n";
            return 77;
        }
    }

    MainWindow window;
    window.resize(windowSize[0], windowSize[1]);
    if (parser.isSet(vfmOpt)) window.setVfm(parser.value(vfmOpt));
    if (parser.isSet(sizeOpt)) window.setOutputLongSide(outputLongSide);
    window.setNafBackend(nafBackend);
    window.setGpuPrecision(gpuPrecision);
    if (parser.isSet(panelsOpt))
    {
        const QStringList names = parser.value(panelsOpt).split(',');
        for (int i = 0; i < names.size() && i < window.panelCount(); ++i)
        {
            const QString n = names[i].trimmed();
            int content = n == "image" ? CONTENT_IMAGE : n == "lowres" ? CONTENT_LOWRES
                                                       : n == "segmentation" ? CONTENT_SEGMENTATION
                                                       : n == "attention" ? CONTENT_ATTENTION
                                                       : n == "similarity" ? CONTENT_SIMILARITY : -1;
            if (content < 0)
            {
                try
                {
                    content = CONTENT_METHOD + cv::naf::upsampleMethodFromName(n.toStdString());
                }
                catch (const cv::Exception& e)
                {
                    std::cerr << "naf_viewer: --panels: " << e.err << "\n";
                    return 2;
                }
            }
            window.setPanelContent(i, content);
        }
    }
    window.show();

    const QString shot = parser.value(shotOpt);
    // Something asked for failed (open, run, segmentation, click): the screenshot is still taken
    // (it shows the error), but the exit status is 1, so a script sees it.
    bool failed = false;
    auto grabAndQuit = [&window, &failed, shot] {
        // Let the last repaint reach the screen, then grab the whole screen (a real X11 grab under Xvfb).
        QTimer::singleShot(800, &window, [&failed, shot] {
            const QPixmap pixmap = QGuiApplication::primaryScreen()->grabWindow(0);
            const bool ok = !pixmap.isNull() && pixmap.save(shot, "PNG");
            std::cerr << "naf_viewer: screenshot " << (ok ? "saved to " : "FAILED for ") << shot.toStdString() << "\n";
            QCoreApplication::exit(ok && !failed ? 0 : 1);
        });
    };
    const QPoint clickPoint(click[0], click[1]);  // (-1, -1): no click asked
    QObject::connect(&window, &MainWindow::runFinished, &window, [&](bool ok) {
        if (!ok && !shot.isEmpty())
        {
            std::cerr << "naf_viewer: run failed: " << window.lastError().toStdString() << "\n";
            failed = true;
            grabAndQuit();
            return;
        }
        if (clickPoint.x() >= 0) window.inspectPixel(clickPoint);
    });
    // The screenshot waits for everything asked: the run, its segmentation, the click.
    int waiting = parser.isSet(runOpt) ? 2 + (clickPoint.x() >= 0 ? 1 : 0) : 0;
    auto oneDone = [&, shot](bool ok) {
        if (shot.isEmpty() || waiting <= 0) return;
        if (!ok)
        {
            std::cerr << "naf_viewer: failed: " << window.lastError().toStdString() << "\n";
            failed = true;
        }
        if (--waiting == 0) grabAndQuit();
    };
    QObject::connect(&window, &MainWindow::segmentationFinished, &window, oneDone);
    QObject::connect(&window, &MainWindow::inspectionFinished, &window, oneDone);
    QObject::connect(&window, &MainWindow::runFinished, &window, [&](bool ok) {
        if (ok) oneDone(ok);
    });

    if (parser.isSet(openOpt))
    {
        const bool opened = window.openImage(parser.value(openOpt));
        if (!opened) std::cerr << "naf_viewer: cannot open: " << window.lastError().toStdString() << "\n";
        const bool refused = opened && parser.isSet(runOpt) && !window.startRun();  // e.g. CUDA where there is none
        if (refused) std::cerr << "naf_viewer: run refused: " << window.lastError().toStdString() << "\n";
        failed = !opened || refused;
        // Without --run there is nothing more to wait for: the screenshot shows the opened image.
        if ((failed || !parser.isSet(runOpt)) && !shot.isEmpty()) grabAndQuit();
    }
    else if (!shot.isEmpty())
        grabAndQuit();
    return app.exec();
}
