// naf_viewer: interactive comparison of feature upsamplers (see README, "Viewer and batch export").
#include <QApplication>
#include <QCoreApplication>
#include <QMainWindow>
#include <QPainter>
#include <QPixmap>
#include <QCommandLineParser>
#include <QScreen>
#include <QTimer>

#include <iostream>
#include <memory>

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

/// Everything the command line asks for, parsed and checked.
struct CommandLine
{
    QString open, vfm, screenshot;
    bool run = false;
    int nafBackend = cv::naf::BACKEND_AUTO, gpuPrecision = cv::naf::GPU_PRECISION_FP32;
    int windowSize[2] = {1500, 820}, click[2] = {-1, -1}, outputLongSide = 0;  // 0: not given
    std::vector<int> panelContents;  // PanelContent per panel, from --panels
};

/// The content named in --panels, or -1 (the message is printed).
int panelContentFromName(const QString& name)
{
    const QString n = name.trimmed();
    if (n == "image") return CONTENT_IMAGE;
    if (n == "lowres") return CONTENT_LOWRES;
    if (n == "segmentation") return CONTENT_SEGMENTATION;
    if (n == "attention") return CONTENT_ATTENTION;
    if (n == "similarity") return CONTENT_SIMILARITY;
    try
    {
        return CONTENT_METHOD + cv::naf::upsampleMethodFromName(n.toStdString());
    }
    catch (const cv::Exception& e)
    {
        std::cerr << "naf_viewer: --panels: " << e.err << "\n";
        return -1;
    }
}

/// Parses and checks the command line (the application object's arguments, Qt's own options
/// already taken out by a QApplication). Returns the exit status when the program ends here, or
/// -1 to go on with `cl`.
int parseCommandLine(const QStringList& arguments, CommandLine& cl)
{
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
    const QCommandLineOption shotOpt("screenshot",
                                     "When everything asked is done, grab the window into this PNG and quit "
                                     "(works without a display too).", "png");
    const QCommandLineOption geometryOpt("window-size", "Window size WxH.", "WxH");
    const QCommandLineOption checkOpt("check-model", "Only check that the --vfm model can run: exit 0, or 77 with the reason.");
    parser.addOptions({openOpt, vfmOpt, sizeOpt, backendOpt, precisionOpt, runOpt, clickOpt, panelsOpt, shotOpt,
                       geometryOpt, checkOpt});
    // parse(), not process(): an unknown option exits 2 like every other bad option (process() exits 1).
    if (!parser.parse(arguments))
    {
        std::cerr << "naf_viewer: " << parser.errorText().toStdString() << "\n";
        return 2;
    }
    if (parser.isSet("help"))
    {
        std::cout << parser.helpText().toStdString();
        return 0;
    }
    // Names are checked before the window opens: a typo ends here with the accepted names.
    const std::string vfmName =
        parser.isSet(vfmOpt) ? parser.value(vfmOpt).toStdString() : naf_app::PipelineSettings().vfmName;
    try
    {
        if (parser.isSet(backendOpt)) cl.nafBackend = naf_app::nafBackendFromName(parser.value(backendOpt).toStdString());
        if (parser.isSet(precisionOpt))
            cl.gpuPrecision = naf_app::gpuPrecisionFromName(parser.value(precisionOpt).toStdString());
        // An unknown --vfm ends here too (the window would fall back to its first model).
        if (parser.isSet(vfmOpt) && !parser.isSet(checkOpt)) cv::naf::VfmRegistry::find(vfmName);
    }
    catch (const cv::Exception& e)
    {
        std::cerr << "naf_viewer: " << e.err << "\n";
        return 2;
    }
    // Numbers too: a malformed value ends here, naming it and the expected form.
    auto refuse = [](const char* option, const QString& value, const char* expected) {
        std::cerr << "naf_viewer: " << option << " '" << value.toStdString() << "': expected " << expected << "\n";
        return 2;
    };
    if (parser.isSet(geometryOpt) && !parseInts(parser.value(geometryOpt), 'x', 2, 1, 16384, cl.windowSize))
        return refuse("--window-size", parser.value(geometryOpt), "WxH, two positive integers (e.g. 1500x820)");
    if (parser.isSet(clickOpt) && !parseInts(parser.value(clickOpt), ',', 2, 0, 1 << 20, cl.click))
        return refuse("--click", parser.value(clickOpt), "x,y, two non-negative integers (e.g. 200,150)");
    if (parser.isSet(sizeOpt) && !parseInts(parser.value(sizeOpt), ',', 1, 16, 4096, &cl.outputLongSide))
        return refuse("--size", parser.value(sizeOpt), "an integer from 16 to 4096 (output long side in pixels)");
    if (parser.isSet(panelsOpt))
        for (const QString& name : parser.value(panelsOpt).split(','))
        {
            const int content = panelContentFromName(name);
            if (content < 0) return 2;
            cl.panelContents.push_back(content);
        }
    // Options that only mean something with others: alone they would silently do nothing.
    auto needs = [](const char* option, const char* other, const char* why) {
        std::cerr << "naf_viewer: " << option << " needs " << other << " (" << why << ")\n";
        return 2;
    };
    if (parser.isSet(runOpt) && !parser.isSet(openOpt)) return needs("--run", "--open IMAGE", "there is nothing to run on");
    if (parser.isSet(clickOpt) && !parser.isSet(runOpt)) return needs("--click", "--run", "a click needs a result");
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
    cl.open = parser.value(openOpt);
    cl.vfm = parser.isSet(vfmOpt) ? parser.value(vfmOpt) : QString();
    cl.screenshot = parser.value(shotOpt);
    cl.run = parser.isSet(runOpt);
    return -1;
}

/// Whether a window can be shown: a platform chosen (QT_QPA_PLATFORM or -platform) or a display.
bool haveDisplayOrPlatform(int argc, char** argv)
{
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "-platform" || std::string(argv[i]) == "--platform") return true;
    return qEnvironmentVariableIsSet("QT_QPA_PLATFORM") || qEnvironmentVariableIsSet("DISPLAY") ||
           qEnvironmentVariableIsSet("WAYLAND_DISPLAY");
}

/// The visible top-level windows (the main window and any dialog over it) as one image, where the
/// screen shows them. Under the offscreen platform the "screen" is a fixed 800x800 that clips a
/// larger window, so the windows are rendered themselves; under X11 (Xvfb) the screen is grabbed.
QPixmap grabWindows()
{
    if (QGuiApplication::platformName() != "offscreen") return QGuiApplication::primaryScreen()->grabWindow(0);
    QRect area;
    QWidgetList windows;
    for (QWidget* w : QApplication::topLevelWidgets())
        if (w->isVisible())
        {
            // The main window first, so that dialogs come on top of it.
            if (qobject_cast<QMainWindow*>(w)) windows.prepend(w);
            else windows.append(w);
            area |= w->geometry();
        }
    if (area.isEmpty()) return QPixmap();
    QPixmap canvas(area.size());
    canvas.fill(Qt::black);
    QPainter painter(&canvas);
    for (QWidget* w : windows) painter.drawPixmap(w->geometry().topLeft() - area.topLeft(), w->grab());
    return canvas;
}

}  // namespace

int main(int argc, char** argv)
{
    CommandLine cl;
    std::unique_ptr<QApplication> app;
    int status = -1;
    if (haveDisplayOrPlatform(argc, argv))
    {
        // QApplication takes Qt's own options (-platform, -style, -reverse...) out of the arguments.
        app = std::make_unique<QApplication>(argc, argv);
        status = parseCommandLine(QCoreApplication::arguments(), cl);
    }
    else
    {
        // Without a display a QApplication aborts (on its xcb plugin) before main() could say
        // anything: parse with a QCoreApplication, so that --help, --check-model and every
        // refusal work on a headless machine.
        {
            QCoreApplication parsing(argc, argv);
            status = parseCommandLine(QCoreApplication::arguments(), cl);
        }
        if (status < 0)
        {
            // A screenshot needs no screen; anything else does.
            if (cl.screenshot.isEmpty())
            {
                std::cerr << "naf_viewer: no display (neither DISPLAY nor WAYLAND_DISPLAY is set): run it on a "
                             "desktop, or grab the window headless with --screenshot out.png\n";
                return 1;
            }
            qputenv("QT_QPA_PLATFORM", "offscreen");
            app = std::make_unique<QApplication>(argc, argv);
        }
    }
    if (status >= 0) return status;
    QCoreApplication::setOrganizationName("cv-naf");
    QCoreApplication::setApplicationName("naf_viewer");

    MainWindow window;
    window.resize(cl.windowSize[0], cl.windowSize[1]);
    if (!cl.vfm.isEmpty()) window.setVfm(cl.vfm);
    if (cl.outputLongSide > 0) window.setOutputLongSide(cl.outputLongSide);
    window.setNafBackend(cl.nafBackend);
    window.setGpuPrecision(cl.gpuPrecision);
    for (int i = 0; i < static_cast<int>(cl.panelContents.size()) && i < window.panelCount(); ++i)
        window.setPanelContent(i, cl.panelContents[i]);
    window.show();
    if (window.width() != cl.windowSize[0] || window.height() != cl.windowSize[1])
        std::cerr << "naf_viewer: --window-size " << cl.windowSize[0] << "x" << cl.windowSize[1]
                  << " is below the window's minimum; it is " << window.width() << "x" << window.height() << "\n";

    const QString shot = cl.screenshot;
    // Something asked for failed (open, run, segmentation, click): the screenshot is still taken
    // (it shows the error), but the exit status is 1, so a script sees it.
    bool failed = false;
    auto grabAndQuit = [&window, &failed, shot] {
        // Let the last repaint reach the screen, then grab.
        QTimer::singleShot(800, &window, [&failed, shot] {
            const QPixmap pixmap = grabWindows();
            const bool ok = !pixmap.isNull() && pixmap.save(shot, "PNG");
            std::cerr << "naf_viewer: screenshot " << (ok ? "saved to " : "FAILED for ") << shot.toStdString() << "\n";
            QCoreApplication::exit(ok && !failed ? 0 : 1);
        });
    };
    const QPoint clickPoint(cl.click[0], cl.click[1]);  // (-1, -1): no click asked

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
    int waiting = cl.run ? 2 + (clickPoint.x() >= 0 ? 1 : 0) : 0;
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

    if (!cl.open.isEmpty())
    {
        const bool opened = window.openImage(cl.open);
        if (!opened) std::cerr << "naf_viewer: cannot open: " << window.lastError().toStdString() << "\n";
        const bool refused = opened && cl.run && !window.startRun();  // e.g. CUDA where there is none
        if (refused) std::cerr << "naf_viewer: run refused: " << window.lastError().toStdString() << "\n";
        failed = !opened || refused;
        // Without --run there is nothing more to wait for: the screenshot shows the opened image.
        if ((failed || !cl.run) && !shot.isEmpty()) grabAndQuit();
    }
    else if (!shot.isEmpty())
        grabAndQuit();
    return app->exec();
}
