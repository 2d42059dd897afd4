// naf_viewer: interactive comparison of feature upsamplers (see README, "Viewer and batch export").
#include <QApplication>
#include <QCommandLineParser>
#include <QScreen>
#include <QTimer>

#include <iostream>

#include <opencv2/core.hpp>
#include <opencv2/core/utils/filesystem.hpp>

#include "main_window.hpp"

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
    parser.process(app);
    // Names are checked before the window opens: a typo ends here with the accepted names.
    int nafBackend = cv::naf::BACKEND_AUTO, gpuPrecision = cv::naf::GPU_PRECISION_FP32;
    try
    {
        if (parser.isSet(backendOpt)) nafBackend = naf_app::nafBackendFromName(parser.value(backendOpt).toStdString());
        if (parser.isSet(precisionOpt))
            gpuPrecision = naf_app::gpuPrecisionFromName(parser.value(precisionOpt).toStdString());
    }
    catch (const cv::Exception& e)
    {
        std::cerr << "naf_viewer: " << e.err << "\n";
        return 2;
    }
    if (parser.isSet(checkOpt))
    {
        const std::string name = parser.value(vfmOpt).toStdString();
        try
        {
            const cv::naf::VfmSpec spec = cv::naf::VfmRegistry::find(name);
            if (!spec.onnxPath.empty() && !cv::utils::fs::exists(spec.onnxPath))
            {
                std::cerr << "naf_viewer: model file " << spec.onnxPath << " is absent; get it with: " << spec.fetchCommand
                          << "\n";
                return 77;
            }
            return 0;
        }
        catch (const cv::Exception& e)
        {
            std::cerr << "naf_viewer: " << e.err << "\n";
            return 77;
        }
    }

    MainWindow window;
    if (parser.isSet(geometryOpt))
    {
        const QStringList wh = parser.value(geometryOpt).split('x');
        if (wh.size() == 2) window.resize(wh[0].toInt(), wh[1].toInt());
    }
    else
        window.resize(1500, 820);
    if (parser.isSet(vfmOpt)) window.setVfm(parser.value(vfmOpt));
    if (parser.isSet(sizeOpt)) window.setOutputLongSide(parser.value(sizeOpt).toInt());
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
    auto grabAndQuit = [&window, shot] {
        // Let the last repaint reach the screen, then grab the whole screen (a real X11 grab under Xvfb).
        QTimer::singleShot(800, &window, [shot] {
            const QPixmap pixmap = QGuiApplication::primaryScreen()->grabWindow(0);
            const bool ok = !pixmap.isNull() && pixmap.save(shot, "PNG");
            std::cerr << "naf_viewer: screenshot " << (ok ? "saved to " : "FAILED for ") << shot.toStdString() << "\n";
            QCoreApplication::exit(ok ? 0 : 1);
        });
    };
    QPoint click(-1, -1);
    if (parser.isSet(clickOpt))
    {
        const QStringList xy = parser.value(clickOpt).split(',');
        if (xy.size() == 2) click = QPoint(xy[0].toInt(), xy[1].toInt());
    }
    QObject::connect(&window, &MainWindow::runFinished, &window, [&](bool ok) {
        if (!ok && !shot.isEmpty())
        {
            std::cerr << "naf_viewer: run failed: " << window.lastError().toStdString() << "\n";
            grabAndQuit();
            return;
        }
        if (click.x() >= 0) window.inspectPixel(click);
    });
    // The screenshot waits for everything asked: the run, its segmentation, the click.
    int waiting = parser.isSet(runOpt) ? 2 + (click.x() >= 0 ? 1 : 0) : 0;
    auto oneDone = [&, shot](bool) {
        if (shot.isEmpty() || waiting <= 0) return;
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
        const bool refused = opened && parser.isSet(runOpt) && !window.startRun();  // e.g. CUDA where there is none
        if (refused) std::cerr << "naf_viewer: run refused: " << window.lastError().toStdString() << "\n";
        if ((!opened || refused) && !shot.isEmpty()) grabAndQuit();
    }
    else if (!shot.isEmpty())
        grabAndQuit();
    return app.exec();
}
