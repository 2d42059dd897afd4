// The Qt-free core of the app: file output, input discovery, shards, probe heads, and the batch
// export on a folder with a corrupt image (real VFM; skipped when its model file is absent).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "naf_app/batch.hpp"
#include "naf_app/io.hpp"
#include "naf_app/pipeline.hpp"
#include "safetensors.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;

namespace {

fs::path freshDir(const std::string& name)
{
    const fs::path dir = fs::temp_directory_path() / ("naf_app_test_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

std::string readAll(const fs::path& p)
{
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

void writeText(const fs::path& p, const std::string& text)
{
    std::ofstream(p, std::ios::binary) << text;
}

// The message of the cv::Exception `f` throws; empty when it throws none.
std::string errorOf(const std::function<void()>& f)
{
    try
    {
        f();
    }
    catch (const cv::Exception& e)
    {
        return e.err;
    }
    return std::string();
}

struct CommandResult
{
    int exitCode = -1;
    std::string output;  ///< stdout and stderr
};

// Runs the naf_batch executable with these arguments (each quoted for the shell).
CommandResult runNafBatch(const std::vector<std::string>& args)
{
    std::string command = std::string("'") + NAF_BATCH_PATH + "'";
    for (const std::string& a : args) command += " '" + a + "'";
    CommandResult result;
    FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
    if (!pipe) return result;
    char buffer[4096];
    for (size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) result.output.append(buffer, n);
    const int status = ::pclose(pipe);
    result.exitCode = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
}

// A safetensors file with the given tensors and metadata (the module's writer).
void writeSafetensors(const fs::path& p, const std::map<std::string, cv::Mat>& tensors,
                      const std::map<std::string, std::string>& metadata)
{
    const std::vector<uint8_t> bytes = cv::naf::detail::serializeSafetensors(tensors, metadata);
    writeText(p, std::string(bytes.begin(), bytes.end()));
}

}  // namespace

TEST(AppIo, AtomicWriteLeavesNoTemporaryAndReplaces)
{
    const fs::path dir = freshDir("atomic");
    const fs::path target = dir / "sub" / "file.txt";
    naf_app::writeFileAtomic(target.string(), "first");
    naf_app::writeFileAtomic(target.string(), "second");
    EXPECT_EQ(readAll(target), "second");
    int files = 0;
    for (const auto& e : fs::recursive_directory_iterator(dir)) files += e.is_regular_file();
    EXPECT_EQ(files, 1) << "a temporary file was left behind";
    // A folder that cannot be created: clear error, nothing written.
    writeText(dir / "blocker", "x");
    EXPECT_THROW(naf_app::writeFileAtomic((dir / "blocker" / "f.txt").string(), "y"), cv::Exception);
    fs::remove_all(dir);
}

// The JPEG decoder only prints "Premature end of JPEG file" and fills in what is missing: a cut
// file is told apart from a whole one, from one with data appended after the image (a camera's
// video), from one whose EXIF thumbnail ends near the cut, and progressive files are walked too.
TEST(AppIo, TruncatedJpegIsToldApartFromAWholeOne)
{
    const fs::path dir = freshDir("truncated");
    const std::string whole = app_test::sampleImage("coco_000000000471_bus.jpg");
    const std::string bytes = readAll(whole);
    auto write = [&](const char* name, const std::string& content) {
        writeText(dir / name, content);
        return (dir / name).string();
    };
    auto warns = [](const std::string& path) { return !naf_app::truncatedJpegWarning(path).empty(); };
    EXPECT_FALSE(warns(whole));
    const std::string cut = write("cut.jpg", bytes.substr(0, 3000));
    EXPECT_TRUE(warns(cut));
    EXPECT_NE(naf_app::truncatedJpegWarning(cut).find(cut), std::string::npos);
    EXPECT_FALSE(warns(write("appended.jpg", bytes + std::string(8000, 'x'))));

    // An EXIF-like APP1 segment holding a small JPEG (its own end marker) right after SOI.
    std::vector<uchar> thumb;
    cv::imencode(".jpg", cv::Mat(8, 8, CV_8UC3, cv::Scalar(10, 200, 30)), thumb);
    const std::string payload = "Exif" + std::string(2, '\0') + std::string(thumb.begin(), thumb.end());
    const size_t length = payload.size() + 2;
    const std::string app1 = std::string("\xFF\xE1") + static_cast<char>(length >> 8) + static_cast<char>(length & 0xFF) + payload;
    const std::string withThumb = bytes.substr(0, 2) + app1 + bytes.substr(2);
    EXPECT_FALSE(warns(write("thumb.jpg", withThumb)));
    EXPECT_TRUE(warns(write("thumb_cut.jpg", withThumb.substr(0, 2 + app1.size() + 3000))));

    std::vector<uchar> progressive;
    cv::imencode(".jpg", cv::imread(whole), progressive, {cv::IMWRITE_JPEG_PROGRESSIVE, 1});
    const std::string prog(progressive.begin(), progressive.end());
    EXPECT_FALSE(warns(write("progressive.jpg", prog)));
    for (double fraction : {0.1, 0.5, 0.8})
        EXPECT_TRUE(warns(write("progressive_cut.jpg", prog.substr(0, static_cast<size_t>(prog.size() * fraction)))))
            << fraction;

    cv::imwrite((dir / "whole.png").string(), cv::imread(whole));
    EXPECT_FALSE(warns((dir / "whole.png").string()));
    EXPECT_FALSE(warns((dir / "missing.jpg").string()));
    fs::remove_all(dir);
}

// IMREAD_COLOR drops alpha and showed the colour stored under transparent pixels (often black or
// junk): images with alpha are composited over white, 8- and 16-bit alike.
TEST(AppIo, ImagesWithAlphaAreCompositedOverWhite)
{
    const fs::path dir = freshDir("alpha");
    cv::Mat rgba(4, 6, CV_8UC4);
    rgba.colRange(0, 2).setTo(cv::Scalar(0, 0, 255, 0));    // red, fully transparent
    rgba.colRange(2, 4).setTo(cv::Scalar(255, 0, 0, 255));  // blue, opaque
    rgba.colRange(4, 6).setTo(cv::Scalar(0, 0, 0, 128));    // black, half transparent
    cv::imwrite((dir / "a8.png").string(), rgba);
    cv::Mat rgba16;
    rgba.convertTo(rgba16, CV_16U, 257.0);
    cv::imwrite((dir / "a16.png").string(), rgba16);
    for (const char* name : {"a8.png", "a16.png"})
    {
        const cv::Mat bgr = naf_app::readImageBgr((dir / name).string());
        ASSERT_EQ(bgr.type(), CV_8UC3) << name;
        ASSERT_EQ(bgr.size(), cv::Size(6, 4)) << name;
        EXPECT_EQ(bgr.at<cv::Vec3b>(1, 0), cv::Vec3b(255, 255, 255)) << name;
        EXPECT_EQ(bgr.at<cv::Vec3b>(1, 3), cv::Vec3b(255, 0, 0)) << name;
        for (int c = 0; c < 3; ++c) EXPECT_NEAR(bgr.at<cv::Vec3b>(1, 5)[c], 127, 1) << name;
    }
    // Alpha is found from the content: an RGBA PNG without extension, or misnamed .jpg.
    fs::copy_file(dir / "a8.png", dir / "a8");
    fs::copy_file(dir / "a16.png", dir / "a16.jpg");
    for (const char* name : {"a8", "a16.jpg"})
    {
        const cv::Mat bgr = naf_app::readImageBgr((dir / name).string());
        ASSERT_EQ(bgr.type(), CV_8UC3) << name;
        EXPECT_EQ(bgr.at<cv::Vec3b>(1, 0), cv::Vec3b(255, 255, 255)) << name;
    }
    // 16-bit grey without alpha: IMREAD_COLOR's 8-bit BGR.
    cv::Mat grey16(4, 6, CV_16U, cv::Scalar(257 * 100));
    cv::imwrite((dir / "g16.png").string(), grey16);
    fs::copy_file(dir / "g16.png", dir / "g16");
    for (const char* name : {"g16.png", "g16"})
    {
        const cv::Mat bgr = naf_app::readImageBgr((dir / name).string());
        ASSERT_EQ(bgr.type(), CV_8UC3) << name;
        EXPECT_EQ(bgr.at<cv::Vec3b>(0, 0), cv::Vec3b(100, 100, 100)) << name;
    }
    // Without alpha: what imread gives.
    const std::string jpg = app_test::sampleImage("coco_000000000285_bear.jpg");
    EXPECT_EQ(cv::norm(naf_app::readImageBgr(jpg), cv::imread(jpg), cv::NORM_INF), 0.0);
    EXPECT_TRUE(naf_app::readImageBgr((dir / "missing.png").string()).empty());
    fs::remove_all(dir);
}

TEST(AppIo, NpyHeaderAndPayload)
{
    const int sizes[4] = {1, 4, 3, 5};
    cv::Mat blob(4, sizes, CV_32F);
    cv::randu(blob, -1, 1);
    const std::string npy = naf_app::encodeNpy(blob);
    ASSERT_EQ(npy.substr(0, 6), "\x93NUMPY");
    const size_t headerLen = static_cast<unsigned char>(npy[8]) | (static_cast<unsigned char>(npy[9]) << 8);
    EXPECT_EQ((10 + headerLen) % 64, 0u);
    const std::string header = npy.substr(10, headerLen);
    EXPECT_NE(header.find("'descr': '<f4'"), std::string::npos) << header;
    EXPECT_NE(header.find("'shape': (1, 4, 3, 5)"), std::string::npos) << header;
    ASSERT_EQ(npy.size(), 10 + headerLen + blob.total() * 4);
    EXPECT_EQ(0, std::memcmp(npy.data() + 10 + headerLen, blob.data, blob.total() * 4));
}

TEST(AppIo, CollectsFoldersListsAndFilesAndShards)
{
    const fs::path dir = freshDir("collect");
    fs::create_directories(dir / "imgs");
    for (const char* n : {"b.jpg", "a.png", "c.JPEG", "notes.md"}) writeText(dir / "imgs" / n, "x");
    writeText(dir / "list.txt", "# comment\nimgs/a.png\n\n/abs/path.jpg\n");
    writeText(dir / "single.bmp", "x");
    const auto found = naf_app::collectImages({(dir / "imgs").string(), (dir / "list.txt").string(),
                                               (dir / "single.bmp").string()});
    const std::vector<std::string> expected = {(dir / "imgs/a.png").string(), (dir / "imgs/b.jpg").string(),
                                               (dir / "imgs/c.JPEG").string(), (dir / "imgs/a.png").string(),
                                               "/abs/path.jpg", (dir / "single.bmp").string()};
    EXPECT_EQ(found, expected);
    EXPECT_THROW(naf_app::collectImages({(dir / "missing").string()}), cv::Exception);

    const std::vector<std::string> items = {"0", "1", "2", "3", "4"};
    EXPECT_EQ(naf_app::selectShard(items, 0, 2), (std::vector<std::string>{"0", "2", "4"}));
    EXPECT_EQ(naf_app::selectShard(items, 1, 2), (std::vector<std::string>{"1", "3"}));
    int i = -1, n = -1;
    naf_app::parseShard("3/8", i, n);
    EXPECT_EQ(i, 3);
    EXPECT_EQ(n, 8);
    for (const char* bad : {"8/8", "1", "a/b", "1/0", "-1/3", "1/2x"}) EXPECT_THROW(naf_app::parseShard(bad, i, n), cv::Exception) << bad;

    // Same stem in two folders: both get distinct, stable names.
    const auto stems = naf_app::outputStems({"x/cat.jpg", "y/cat.jpg", "y/dog.jpg"});
    EXPECT_NE(stems[0], stems[1]);
    EXPECT_EQ(stems[0].substr(0, 4), "cat-");
    EXPECT_EQ(stems[2], "dog");
    EXPECT_EQ(stems, naf_app::outputStems({"x/cat.jpg", "y/cat.jpg", "y/dog.jpg"}));
    fs::remove_all(dir);
}

TEST(AppIo, InputsMustBeFilesOrFoldersAndListsOfAnyCaseExpandFolders)
{
    const fs::path dir = freshDir("collect2");
    fs::create_directories(dir / "imgs");
    writeText(dir / "imgs" / "a.png", "x");
    writeText(dir / "imgs" / "b.jpg", "x");
    // An upper-case list whose lines name a folder (expanded) and a missing file (kept: the batch
    // reports it when its turn comes, instead of aborting the whole run).
    writeText(dir / "LIST.TXT", "imgs\nmissing.jpg\n");
    const auto found = naf_app::collectImages({(dir / "LIST.TXT").string()});
    const std::vector<std::string> expected = {(dir / "imgs/a.png").string(), (dir / "imgs/b.jpg").string(),
                                               (dir / "missing.jpg").string()};
    EXPECT_EQ(found, expected);
    // A FIFO would block the decoder forever: refused by name, before any work.
    const fs::path fifo = dir / "pipe.jpg";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    const std::string error = errorOf([&] { naf_app::collectImages({fifo.string()}); });
    EXPECT_NE(error.find("'" + fifo.string() + "' is neither a regular file nor a folder"), std::string::npos) << error;
    fs::remove_all(dir);
}

TEST(AppIo, TemporariesOfDeadProcessesOnThisHostAreRemoved)
{
    const fs::path dir = freshDir("stale");
    char name[256] = {};
    ASSERT_EQ(::gethostname(name, sizeof name - 1), 0);
    std::string host(name);
    for (char& c : host)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-') c = '_';
    // A pid that is certainly dead: a child that has exited and been reaped.
    const pid_t child = ::fork();
    if (child == 0) ::_exit(0);
    ASSERT_GT(child, 0);
    ASSERT_EQ(::waitpid(child, nullptr, 0), child);
    const std::string dead = std::to_string(child), alive = std::to_string(::getpid());
    const std::string removed = "a.panel.png.tmp-" + host + "-" + dead + "-0";
    const std::vector<std::string> kept = {"b.panel.png.tmp-" + host + "-" + alive + "-3",      // this process
                                           "c.panel.png.tmp-other-host-" + dead + "-0",         // another host's
                                           "d.panel.png.tmp-" + host + "-" + dead + "-x",       // not our pattern
                                           "e.panel.png"};
    writeText(dir / removed, "half");
    for (const std::string& k : kept) writeText(dir / k, "x");
    EXPECT_EQ(naf_app::removeStaleTemporaries(dir.string()), 1);
    EXPECT_FALSE(fs::exists(dir / removed));
    for (const std::string& k : kept) EXPECT_TRUE(fs::exists(dir / k)) << k;
    // writeFileAtomic's own temporary names follow the pattern (so a killed writer's file is found).
    writeText(dir / ("f.json.tmp-" + host + "-" + dead + "-12"), "x");
    EXPECT_EQ(naf_app::removeStaleTemporaries(dir.string()), 1);
    fs::remove_all(dir);
}

TEST(AppProbe, LoadsAndClassifiesAndRejectsBadFiles)
{
    const fs::path dir = freshDir("probe");
    // 2 classes on 3 channels: class 1 wins where channel 2 > channel 0 + 0.5.
    cv::Mat weight = (cv::Mat_<float>(2, 3) << 1, 0, 0, 0, 0, 1);
    cv::Mat bias = (cv::Mat_<float>(2, 1) << 0.5f, 0);
    writeSafetensors(dir / "good.probe.safetensors", {{"weight", weight}, {"bias", bias}},
                     {{"classes", "[\"ground\", \"sky\"]"}, {"vfm", "test"}});
    const naf_app::ProbeHead head = naf_app::ProbeHead::load((dir / "good.probe.safetensors").string());
    EXPECT_EQ(head.classes, (std::vector<std::string>{"ground", "sky"}));
    EXPECT_EQ(head.vfmName, "test");
    const int sizes[4] = {1, 3, 1, 2};
    cv::Mat features(4, sizes, CV_32F, cv::Scalar(0));
    features.ptr<float>(0, 2)[1] = 2.f;  // pixel 1: channel 2 high
    const cv::Mat labels = head.classify(features);
    EXPECT_EQ(labels.at<int>(0, 0), 0);
    EXPECT_EQ(labels.at<int>(0, 1), 1);
    const int wrong[4] = {1, 5, 1, 2};
    EXPECT_THROW(head.classify(cv::Mat(4, wrong, CV_32F, cv::Scalar(0))), cv::Exception);

    writeSafetensors(dir / "noclasses.safetensors", {{"weight", weight}, {"bias", bias}}, {});
    writeSafetensors(dir / "badcount.safetensors", {{"weight", weight}, {"bias", bias}}, {{"classes", "[\"one\"]"}});
    for (const char* bad : {"noclasses.safetensors", "badcount.safetensors", "missing.safetensors"})
        EXPECT_THROW(naf_app::ProbeHead::load((dir / bad).string()), cv::Exception) << bad;
    fs::remove_all(dir);
}

TEST(AppBatch, RecordsAreTrustedOnlyWhenTheyMatchAndAreWellFormed)
{
    const std::string settings = R"({"size": 448, "vfm": "mobilesam"})";
    const std::string stamp = R"({"mtime": 5, "size": 10})";
    const nlohmann::json record = {{"settings", nlohmann::json::parse(settings)},
                                   {"input_stamp", nlohmann::json::parse(stamp)},
                                   {"outputs", {"a.panel.png", "a.kmeans.png"}}};
    EXPECT_EQ(naf_app::recordedOutputs(record.dump(), settings, stamp),
              (std::vector<std::string>{"a.panel.png", "a.kmeans.png"}));
    EXPECT_TRUE(naf_app::recordedOutputs(record.dump(), R"({"size": 512, "vfm": "mobilesam"})", stamp).empty());
    EXPECT_TRUE(naf_app::recordedOutputs(record.dump(), settings, R"({"mtime": 6, "size": 10})").empty());
    nlohmann::json wrongType = record;
    wrongType["outputs"] = {1, 2};
    for (const std::string& bad : {wrongType.dump(), record.dump().substr(0, 40), std::string("[1, 2]"),
                                   std::string(""), std::string("{\"settings\": null}")})
        EXPECT_TRUE(naf_app::recordedOutputs(bad, settings, stamp).empty()) << bad;
}

TEST(AppBatch, OutputStemsAreUtf8AndNeverTheManifestsName)
{
    const std::vector<std::string> inputs = {"d/caf\xe9.jpg", "d/manifest.jpg", "d/manifest.shard-0-of-2.png", "d/ok.jpg"};
    const auto stems = naf_app::outputStems(inputs);
    ASSERT_EQ(stems.size(), 4u);
    // A name that is not UTF-8 (JSON cannot hold it): the bad byte replaced, a hash of the path added.
    EXPECT_EQ(stems[0].substr(0, 5), "caf_-") << stems[0];
    EXPECT_EQ(stems[0].size(), 5u + 8u) << stems[0];
    // The batch's own manifest names are never an image's record.
    EXPECT_EQ(stems[1].substr(0, 9), "manifest-") << stems[1];
    EXPECT_NE(stems[2], "manifest.shard-0-of-2");
    EXPECT_EQ(stems[2].substr(0, 22), "manifest.shard-0-of-2-") << stems[2];
    EXPECT_EQ(stems[3], "ok");
    EXPECT_EQ(stems, naf_app::outputStems(inputs));
}

// Input folder = output folder, with a file name that is not UTF-8: the manifest is still written
// (the name as U+FFFD in the JSON), and a rerun does not take the panels of the first run as new
// images. An image whose run would not fit in memory is skipped before anything is written for it.
TEST(AppBatch, OutputFolderMayBeTheInputFolderAndNamesNeedNotBeUtf8)
{
    const std::string reason = app_test::vfmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    const fs::path dir = freshDir("samefolder");
    fs::copy_file(app_test::sampleImage("coco_000000000285_bear.jpg"), dir / "bear.jpg");
    fs::copy_file(app_test::sampleImage("coco_000000000471_bus.jpg"), dir / "caf\xe9.jpg");
    naf_app::BatchOptions options;
    options.inputs = {dir.string()};
    options.outDir = dir.string();
    options.settings.vfmName = app_test::vfmName();
    options.settings.outputLongSide = 64;
    options.settings.methods = {cv::naf::UPSAMPLE_BILINEAR};
    options.kmeansClusters = 2;
    // The same file twice (once by a path through '..') is one image. Stage reports arrive for
    // each computed image, in order, from 0 to 1.
    options.inputs.push_back((dir / ".." / dir.filename() / "bear.jpg").string());
    std::mutex stagesMutex;
    std::map<std::string, std::vector<std::pair<double, std::string>>> stages;
    const naf_app::BatchSummary first = naf_app::runBatch(
        options, naf_app::BatchProgressFn(), [&](const std::string& input, double fraction, const std::string& stage) {
            std::lock_guard<std::mutex> lock(stagesMutex);
            stages[input].push_back({fraction, stage});
        });
    EXPECT_EQ(first.computed, 2);
    EXPECT_EQ(first.skipped, 0);
    ASSERT_EQ(stages.size(), 2u);
    for (const auto& image : stages)
    {
        const auto& reports = image.second;
        ASSERT_GE(reports.size(), 4u) << image.first;  // models, VFM, bilinear, done
        EXPECT_EQ(reports.front(), std::make_pair(0.0, std::string("loading models"))) << image.first;
        EXPECT_EQ(reports.back(), std::make_pair(1.0, std::string("done"))) << image.first;
        for (size_t i = 1; i < reports.size(); ++i) EXPECT_GE(reports[i].first, reports[i - 1].first) << image.first;
    }
    const nlohmann::json manifest = nlohmann::json::parse(readAll(first.manifestPath));
    ASSERT_EQ(manifest["images"].size(), 2u);
    EXPECT_NE(manifest["images"][1]["input"].get<std::string>().find("caf\xef\xbf\xbd.jpg"), std::string::npos)
        << manifest["images"][1].dump();
    const naf_app::BatchSummary second = naf_app::runBatch(options);
    EXPECT_EQ(second.items.size(), 2u) << "the first run's panels were taken as images";
    EXPECT_EQ(second.alreadyDone, 2);

    options.inputs = {(dir / "bear.jpg").string()};
    options.outDir = (dir / "huge").string();
    options.settings.outputLongSide = 4096;
    options.settings.methods = {cv::naf::UPSAMPLE_BILINEAR, cv::naf::UPSAMPLE_BICUBIC};
    const cv::Size bear = cv::imread((dir / "bear.jpg").string()).size();
    if (naf_app::estimatedRunBytes(options.settings, bear) <= 0.6 * naf_app::physicalMemoryBytes())
        GTEST_SKIP() << "this machine has the memory for a 4096 px run";
    const naf_app::BatchSummary huge = naf_app::runBatch(options);
    ASSERT_EQ(huge.skipped, 1);
    EXPECT_NE(huge.items[0].reason.find("GiB"), std::string::npos) << huge.items[0].reason;
    EXPECT_TRUE(huge.items[0].outputs.empty());
    for (const auto& e : fs::directory_iterator(dir / "huge"))
        EXPECT_NE(e.path().filename().string().rfind("bear", 0), 0u) << "written for a skipped image: " << e.path();
    fs::remove_all(dir);
}

TEST(AppBatch, CorruptImageIsSkippedWithReasonAndSecondRunDoesNoWork)
{
    const std::string reason = app_test::vfmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    const fs::path dir = freshDir("batch");
    fs::create_directories(dir / "in");
    fs::copy_file(app_test::sampleImage("coco_000000000285_bear.jpg"), dir / "in" / "bear.jpg");
    fs::copy_file(app_test::sampleImage("coco_000000000471_bus.jpg"), dir / "in" / "bus.jpg");
    writeText(dir / "in" / "broken.jpg", "\xff\xd8\xff\xe0 this is not a JPEG");

    naf_app::BatchOptions options;
    options.inputs = {(dir / "in").string()};
    options.outDir = (dir / "out").string();
    options.settings.vfmName = app_test::vfmName();
    options.settings.outputLongSide = 192;
    options.settings.methods = {cv::naf::UPSAMPLE_BILINEAR, cv::naf::UPSAMPLE_NAF};
    options.kmeansClusters = 4;
    options.jobs = 2;
    int progressCalls = 0;
    const naf_app::BatchSummary first =
        naf_app::runBatch(options, [&](int finished, int total, const naf_app::BatchItem&) {
            ++progressCalls;
            EXPECT_EQ(total, 3);
            EXPECT_EQ(finished, progressCalls);
        });
    EXPECT_EQ(progressCalls, 3);
    EXPECT_EQ(first.computed, 2);
    EXPECT_EQ(first.skipped, 1);

    for (const char* stem : {"bear", "bus"})
        for (const char* suffix : {".panel.png", ".kmeans.png", ".json"})
            ASSERT_TRUE(fs::exists(dir / "out" / (std::string(stem) + suffix))) << stem << suffix;
    // Panel: image, low-res, 2 methods, each tile the output size, over a caption bar.
    const cv::Size tile = naf_app::outputSizeFor(cv::imread(app_test::sampleImage("coco_000000000285_bear.jpg")).size(), 192);
    const cv::Mat panel = cv::imread((dir / "out" / "bear.panel.png").string());
    const int gap = 4, bar = panel.rows - tile.height;
    EXPECT_EQ(panel.cols, 4 * tile.width + 3 * gap);
    ASSERT_GT(bar, 0);
    // The bilinear and NAF tiles are different pictures.
    const cv::Mat bilinearTile = panel(cv::Rect(2 * (tile.width + gap), bar, tile.width, tile.height));
    const cv::Mat nafTile = panel(cv::Rect(3 * (tile.width + gap), bar, tile.width, tile.height));
    EXPECT_GT(cv::norm(bilinearTile, nafTile, cv::NORM_L1) / bilinearTile.total(), 1.0);

    const nlohmann::json manifest = nlohmann::json::parse(readAll(first.manifestPath));
    EXPECT_EQ(manifest["counts"]["computed"], 2);
    EXPECT_EQ(manifest["settings"]["vfm"], app_test::vfmName());
    bool sawBroken = false;
    for (const auto& item : manifest["images"])
    {
        if (item["input"].get<std::string>().find("broken.jpg") == std::string::npos)
        {
            EXPECT_EQ(item["status"], "done");
            EXPECT_TRUE(item["timings_ms"].contains("vfm"));
            EXPECT_TRUE(item["timings_ms"].contains("naf"));
            continue;
        }
        sawBroken = true;
        EXPECT_EQ(item["status"], "skipped");
        EXPECT_NE(item["reason"].get<std::string>().find("cannot decode"), std::string::npos) << item.dump();
    }
    EXPECT_TRUE(sawBroken);
    for (const auto& e : fs::directory_iterator(dir / "out"))
        EXPECT_EQ(e.path().string().find(".tmp-"), std::string::npos) << "temporary left: " << e.path();

    // Second run: nothing recomputed, nothing rewritten.
    const auto panelTime = fs::last_write_time(dir / "out" / "bear.panel.png");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const auto start = std::chrono::steady_clock::now();
    const naf_app::BatchSummary second = naf_app::runBatch(options);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(second.computed, 0);
    EXPECT_EQ(second.alreadyDone, 2);
    EXPECT_EQ(second.skipped, 1);
    EXPECT_EQ(fs::last_write_time(dir / "out" / "bear.panel.png"), panelTime);
    EXPECT_LT(seconds, 1.0) << "the resumed run loaded a model or computed";

    // A replaced input is due again; shard 2/3 of (bear, broken, bus) is bus alone.
    fs::last_write_time(dir / "in" / "bus.jpg", fs::last_write_time(dir / "in" / "bus.jpg") + std::chrono::seconds(5));
    options.shardIndex = 2;
    options.shardCount = 3;
    const naf_app::BatchSummary shard = naf_app::runBatch(options);
    ASSERT_EQ(shard.items.size(), 1u);
    EXPECT_EQ(shard.items[0].input, (dir / "in" / "bus.jpg").string());
    EXPECT_EQ(shard.computed, 1);
    EXPECT_NE(shard.manifestPath.find("manifest.shard-2-of-3.json"), std::string::npos);

    // Recomputed without k-means (other settings): the earlier run's .kmeans.png goes, since it
    // would pass for this run's.
    options.shardIndex = 0;
    options.shardCount = 1;
    options.kmeansClusters = 0;
    options.jobs = 1;
    options.inputs = {(dir / "in" / "bus.jpg").string()};
    ASSERT_TRUE(fs::exists(dir / "out" / "bus.kmeans.png"));
    EXPECT_EQ(naf_app::runBatch(options).computed, 1);
    EXPECT_FALSE(fs::exists(dir / "out" / "bus.kmeans.png"));
    EXPECT_TRUE(fs::exists(dir / "out" / "bus.panel.png"));
    EXPECT_TRUE(fs::exists(dir / "out" / "bus.json"));

    // An input replaced while it is computed is due again on the next run: its record keeps the
    // stamp taken before it was read, not the new file's.
    options.force = true;
    bool replaced = false;
    EXPECT_EQ(naf_app::runBatch(options, {},
                                [&](const std::string& input, double, const std::string&) {
                                    if (replaced) return;
                                    replaced = true;
                                    fs::last_write_time(input, fs::last_write_time(input) + std::chrono::seconds(7));
                                })
                  .computed,
              1);
    EXPECT_TRUE(replaced);
    options.force = false;
    EXPECT_EQ(naf_app::runBatch(options).computed, 1);
    fs::remove_all(dir);
}

// A cut JPEG decodes (padded by the decoder): it is computed, with a warning in its record and
// the manifest, also when a resumed run finds it done.
TEST(AppBatch, TruncatedInputIsComputedWithAWarningThatStaysOnResume)
{
    const std::string reason = app_test::vfmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    const fs::path dir = freshDir("batch_truncated");
    fs::create_directories(dir / "in");
    writeText(dir / "in" / "cut.jpg", readAll(app_test::sampleImage("coco_000000000471_bus.jpg")).substr(0, 3000));
    naf_app::BatchOptions options;
    options.inputs = {(dir / "in").string()};
    options.outDir = (dir / "out").string();
    options.settings.vfmName = app_test::vfmName();
    options.settings.outputLongSide = 64;
    options.settings.methods = {cv::naf::UPSAMPLE_BILINEAR};
    options.kmeansClusters = 0;
    for (int run = 0; run < 2; ++run)
    {
        const naf_app::BatchSummary summary = naf_app::runBatch(options);
        ASSERT_EQ(summary.items.size(), 1u);
        EXPECT_EQ(summary.items[0].status, run == 0 ? "done" : "already_done");
        EXPECT_NE(summary.items[0].warning.find("looks truncated"), std::string::npos) << run;
        const nlohmann::json manifest = nlohmann::json::parse(readAll(summary.manifestPath));
        EXPECT_NE(manifest["images"][0].value("warning", "").find("looks truncated"), std::string::npos)
            << run << ": " << manifest.dump();
    }
    const nlohmann::json record = nlohmann::json::parse(readAll(dir / "out" / "cut.json"));
    EXPECT_NE(record.value("warning", "").find("looks truncated"), std::string::npos) << record.dump();
    fs::remove_all(dir);
}

// Changes the working directory for a scope (the batch's paths may be relative to it).
struct WorkingDirectory
{
    explicit WorkingDirectory(const fs::path& dir) : previous(fs::current_path()) { fs::current_path(dir); }
    ~WorkingDirectory() { fs::current_path(previous); }
    fs::path previous;
};

// A resumed run takes a record as done only for the same input file, however it is spelled and
// from whatever working directory; it sizes the memory check by the images it computes; a
// skipped image leaves none of its files, not even those of an earlier run.
TEST(AppBatch, ResumeIsByInputFileFromAnyWorkingDirectoryAndSkipsLeaveNoFiles)
{
    const std::string reason = app_test::vfmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    const fs::path dir = freshDir("batch_resume");
    fs::create_directories(dir / "A");
    fs::create_directories(dir / "B");
    // Two different pictures, same name, byte size (BMP: uncompressed) and modification time.
    cv::Mat a(48, 64, CV_8UC3), b(48, 64, CV_8UC3);
    cv::randu(a, 0, 255);
    cv::randu(b, 0, 255);
    cv::imwrite((dir / "A" / "x.bmp").string(), a);
    cv::imwrite((dir / "B" / "x.bmp").string(), b);
    ASSERT_EQ(fs::file_size(dir / "A" / "x.bmp"), fs::file_size(dir / "B" / "x.bmp"));
    fs::last_write_time(dir / "B" / "x.bmp", fs::last_write_time(dir / "A" / "x.bmp"));

    naf_app::BatchOptions options;
    options.inputs = {(dir / "A" / "x.bmp").string()};
    options.outDir = (dir / "out").string();
    options.settings.vfmName = app_test::vfmName();
    options.settings.outputLongSide = 64;
    options.settings.methods = {cv::naf::UPSAMPLE_BILINEAR};
    options.kmeansClusters = 0;
    // More jobs than fit in memory at once, but one image: it is computed (one run in memory).
    const double oneRun = naf_app::estimatedRunBytes(options.settings, a.size());
    options.jobs = static_cast<int>(std::min(1e6, 0.6 * naf_app::physicalMemoryBytes() / oneRun + 2));
    const naf_app::BatchSummary first = naf_app::runBatch(options);
    ASSERT_EQ(first.items.size(), 1u);
    EXPECT_EQ(first.items[0].status, "done") << first.items[0].reason;
    options.jobs = 1;

    // B/x.bmp into the same folder, from the folder above with relative paths: not A's result.
    {
        WorkingDirectory cwd(dir);
        options.inputs = {"B/x.bmp"};
        options.outDir = "out";
        const naf_app::BatchSummary second = naf_app::runBatch(options);
        ASSERT_EQ(second.items.size(), 1u);
        EXPECT_EQ(second.items[0].status, "done") << "another image with the same name, size and time was taken as done";
    }
    // The same file and folder by other spellings, from another working directory: done.
    {
        WorkingDirectory cwd(dir / "B");
        options.inputs = {"x.bmp"};
        options.outDir = "../out";
        const naf_app::BatchSummary third = naf_app::runBatch(options);
        ASSERT_EQ(third.items.size(), 1u);
        EXPECT_EQ(third.items[0].status, "already_done");
        EXPECT_EQ(third.items[0].outputs, (std::vector<std::string>{"../out/x.panel.png", "../out/x.json"}));
    }
    options.inputs = {(dir / "B" / "." / "x.bmp").string()};
    options.outDir = (dir / "B" / ".." / "out").string();
    EXPECT_EQ(naf_app::runBatch(options).alreadyDone, 1);

    // The image becomes unreadable: skipped, and none of the stem's files stay (the k-means panel
    // of some earlier run with other settings included).
    writeText(dir / "out" / "x.kmeans.png", "an earlier run's panel");
    writeText(dir / "B" / "x.bmp", "BM this is no bitmap");
    const naf_app::BatchSummary skipped = naf_app::runBatch(options);
    ASSERT_EQ(skipped.skipped, 1);
    for (const char* suffix : {".panel.png", ".kmeans.png", ".json"})
        EXPECT_FALSE(fs::exists(dir / "out" / (std::string("x") + suffix))) << "left for a skipped image: x" << suffix;
    EXPECT_TRUE(fs::exists(skipped.manifestPath));
    fs::remove_all(dir);
}

// What would fail every image is refused before any (status 2, nothing written): a model file
// that is no network, a manifest name taken by a folder.
TEST(AppBatchCommand, CorruptModelAndBlockedManifestAreRefusedBeforeAnyImage)
{
    const fs::path dir = freshDir("corruptmodel");
    const std::string image = app_test::sampleImage("coco_000000000285_bear.jpg");
    fs::create_directories(dir / "models" / "vfm");
    writeText(dir / "models" / "broken.onnx", "this is not an ONNX graph");
    nlohmann::json entry = nlohmann::json::parse(readAll(std::string(NAF_SOURCE_DIR) + "/models/vfm/mobilesam.json"));
    entry["onnx"] = (dir / "models" / "broken.onnx").string();
    writeText(dir / "models" / "vfm" / "broken.json", entry.dump());
    ::setenv("NAF_VFM_REGISTRY", (dir / "models" / "vfm").string().c_str(), 1);
    const CommandResult corrupt = runNafBatch({image, "--out", (dir / "out").string(), "--vfm", "broken",
                                               "--methods", "bilinear", "--kmeans", "0"});
    ::unsetenv("NAF_VFM_REGISTRY");
    EXPECT_EQ(corrupt.exitCode, 2) << corrupt.output;
    EXPECT_NE(corrupt.output.find((dir / "models" / "broken.onnx").string()), std::string::npos) << corrupt.output;
    EXPECT_EQ(corrupt.output.find("skipped"), std::string::npos) << corrupt.output;
    EXPECT_FALSE(fs::exists(dir / "out")) << "a corrupt model wrote " << dir / "out";

    if (app_test::vfmUnavailableReason().empty())
    {
        fs::create_directories(dir / "blocked" / "manifest.json");
        fs::create_directories(dir / "blocked" / "manifest.shard-1-of-2.json");
        for (const std::vector<std::string>& shard : {std::vector<std::string>{}, {"--shard", "1/2"}})
        {
            std::vector<std::string> args = {image, "--out", (dir / "blocked").string(), "--methods", "bilinear",
                                             "--size", "64", "--kmeans", "0"};
            args.insert(args.end(), shard.begin(), shard.end());
            const CommandResult r = runNafBatch(args);
            EXPECT_EQ(r.exitCode, 2) << r.output;
            EXPECT_NE(r.output.find("manifest"), std::string::npos) << r.output;
            EXPECT_FALSE(fs::exists(dir / "blocked" / "coco_000000000285_bear.json")) << "computed before refusing";
        }
    }
    fs::remove_all(dir);
}

// The bear photo (293 x 320) fills 938 of MobileSAM's 1024 input columns, so its last cell column
// is partly padding: the 59 cells span 944 columns. Upsampled onto the output, every cell must stay
// where it lies in the image, not be stretched over the image's width (3.7 output pixels off at
// the right border before the pipeline upsampled onto the covered area).
TEST(AppPipeline, CellsStayWhereTheyLieInTheImage)
{
    const std::string reason = app_test::vfmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    if (app_test::vfmName() != "mobilesam") GTEST_SKIP() << "geometry of this test is MobileSAM's";
    const cv::Mat bgr = cv::imread(app_test::sampleImage("coco_000000000285_bear.jpg"));
    ASSERT_EQ(bgr.size(), cv::Size(293, 320));
    naf_app::PipelineSettings settings;
    settings.outputLongSide = 640;
    settings.methods = {cv::naf::UPSAMPLE_NEAREST};
    naf_app::Pipeline pipeline;
    const naf_app::PipelineResult r = pipeline.run(bgr, settings);
    const cv::naf::VfmGeometry& g = r.geometry;
    ASSERT_EQ(g.validCells.width, 59);
    EXPECT_GT(r.coveredSize.width, r.outputSize.width);
    EXPECT_EQ(r.coveredSize.height, r.outputSize.height);
    const cv::Mat& up = r.upsampled.at(cv::naf::UPSAMPLE_NEAREST);
    ASSERT_EQ(up.size[2], r.outputSize.height);
    ASSERT_EQ(up.size[3], r.outputSize.width);

    // Ground truth from the geometry alone: the cell under an output pixel's centre.
    const int stride = g.inputSize.width / g.gridSize.width;
    const double inputPerOutX = static_cast<double>(g.imageInInput.width) / r.outputSize.width;
    const double inputPerOutY = static_cast<double>(g.imageInInput.height) / r.outputSize.height;
    int checked = 0, wrong = 0;
    for (int y = 0; y < r.outputSize.height; y += 7)
        for (int x = 0; x < r.outputSize.width; ++x)
        {
            const double inX = (x + 0.5) * inputPerOutX, inY = (y + 0.5) * inputPerOutY;
            // Skip pixels within 1.5 output pixels of a cell border (rounding of the nearest rule).
            const double toBorderX = std::abs(inX - stride * std::round(inX / stride)) / inputPerOutX;
            const double toBorderY = std::abs(inY - stride * std::round(inY / stride)) / inputPerOutY;
            if (toBorderX < 1.5 || toBorderY < 1.5) continue;
            const int cx = static_cast<int>(inX / stride), cy = static_cast<int>(inY / stride);
            ++checked;
            for (int c = 0; c < 3; ++c)
                if (up.at<float>(cv::Vec4i(0, c, y, x)) != r.lowRes.at<float>(cv::Vec4i(0, c, cy, cx)))
                {
                    ++wrong;
                    break;
                }
        }
    EXPECT_GT(checked, 10000);
    EXPECT_EQ(wrong, 0) << "of " << checked << " pixels, " << wrong << " show another cell than the one under them";

    // The low-res rendering puts the cells at the same places (it is the nearest map, in PCA colours).
    const cv::Mat lowPca = naf_app::renderLowResPca(r), nearestPca = naf_app::renderMethodPca(r, cv::naf::UPSAMPLE_NEAREST);
    ASSERT_EQ(lowPca.size(), r.outputSize);
    EXPECT_LT(cv::norm(lowPca, nearestPca, cv::NORM_L1) / lowPca.total(), 1.0);
}

TEST(AppPipeline, PixelInspectionAttentionIsTheWindowsSoftmax)
{
    // A result built directly (no VFM): 8 channels on a 12 x 10 grid, output 96 x 80.
    naf_app::PipelineResult result;
    result.outputSize = cv::Size(96, 80);
    result.guide = cv::Mat(result.outputSize, CV_8UC3);
    cv::randu(result.guide, 0, 255);
    const int sizes[4] = {1, 8, 10, 12};
    result.lowRes.create(4, sizes, CV_32F);
    cv::randu(result.lowRes, -1, 1);
    cv::Ptr<cv::naf::NAF> naf = cv::naf::NAF::createRandom(3);
    naf->upsample(result.guide, result.lowRes, result.upsampled[cv::naf::UPSAMPLE_NAF], result.outputSize);
    result.pca.fit(result.lowRes);

    const cv::Point pixel(50, 41);
    const naf_app::PixelInspection inspection = naf_app::inspectPixel(result, *naf, pixel, cv::naf::UPSAMPLE_NAF);
    EXPECT_EQ(inspection.attentionGrid.size(), cv::Size(12, 10));
    EXPECT_NEAR(cv::sum(inspection.attentionGrid)[0], 1.0, 1e-4);
    EXPECT_EQ(inspection.window.size(), cv::Size(9, 9));
    // Nothing outside the window; the pixel's own cell (x 50/8 = 6, y 41/8 = 5) inside it.
    cv::Mat outside = inspection.attentionGrid.clone();
    outside(inspection.window).setTo(0);
    EXPECT_EQ(cv::countNonZero(outside), 0);
    EXPECT_TRUE(inspection.window.contains(cv::Point(6, 5)));
    // Similarity of the pixel to itself is 1, and the probe is off again.
    EXPECT_NEAR(inspection.similarity.at<float>(pixel), 1.0f, 1e-5);
    EXPECT_EQ(naf->getAttentionProbe(), cv::Point(-1, -1));
    const cv::Mat attention = naf_app::renderAttention(result, inspection);
    EXPECT_EQ(attention.size(), result.outputSize);
    // The zoomed inset: the window with 2 cells around, a whole zoom factor, and the pixel's own
    // cell left visible by the marker (its colour is the heat map's, as in the unzoomed render).
    const cv::Rect crop = naf_app::windowInOutput(result, inspection, 2);
    const cv::Mat inset = naf_app::renderAttentionInset(result, inspection, 2, 400);
    ASSERT_EQ(inset.cols % crop.width, 0);
    const int factor = inset.cols / crop.width;
    EXPECT_GE(factor, 2);
    EXPECT_EQ(inset.size(), crop.size() * factor);
    const cv::Point centre = (pixel - crop.tl()) * factor + cv::Point(factor / 2, factor / 2);
    // Both renders leave the pixel itself to the heat map (ticks at a distance): the same colour.
    EXPECT_EQ(inset.at<cv::Vec3b>(centre), attention.at<cv::Vec3b>(pixel));
    EXPECT_THROW(naf_app::inspectPixel(result, *naf, cv::Point(96, 0), cv::naf::UPSAMPLE_NAF), cv::Exception);
    EXPECT_THROW(naf_app::inspectPixel(result, *naf, pixel, cv::naf::UPSAMPLE_BICUBIC), cv::Exception);
}

TEST(AppPipeline, NafBackendAndGpuPrecisionNamesAndRefusals)
{
    for (int backend : {cv::naf::BACKEND_AUTO, cv::naf::BACKEND_CPU, cv::naf::BACKEND_CUDA})
        EXPECT_EQ(naf_app::nafBackendFromName(naf_app::nafBackendName(backend)), backend);
    for (int precision : {cv::naf::GPU_PRECISION_FP32, cv::naf::GPU_PRECISION_TF32, cv::naf::GPU_PRECISION_FP16})
        EXPECT_EQ(naf_app::gpuPrecisionFromName(naf_app::gpuPrecisionName(precision)), precision);
    EXPECT_EQ(naf_app::nafBackendFromName("cpu"), cv::naf::BACKEND_CPU);
    EXPECT_EQ(naf_app::gpuPrecisionFromName("fp16"), cv::naf::GPU_PRECISION_FP16);

    // Unknown names: the value and the accepted names in the message.
    std::string message = errorOf([] { naf_app::nafBackendFromName("gpu"); });
    EXPECT_NE(message.find("'gpu'"), std::string::npos) << message;
    EXPECT_NE(message.find("auto, cpu, cuda"), std::string::npos) << message;
    message = errorOf([] { naf_app::gpuPrecisionFromName("bf16"); });
    EXPECT_NE(message.find("'bf16'"), std::string::npos) << message;
    EXPECT_NE(message.find("fp32, tf32, fp16"), std::string::npos) << message;

    // Settings built in code are validated too.
    naf_app::PipelineSettings settings;
    settings.nafBackend = 7;
    message = errorOf([&] { naf_app::Pipeline::validate(settings); });
    EXPECT_NE(message.find("NAF backend 7"), std::string::npos) << message;
    settings.nafBackend = cv::naf::BACKEND_CPU;
    settings.gpuPrecision = -1;
    message = errorOf([&] { naf_app::Pipeline::validate(settings); });
    EXPECT_NE(message.find("GPU precision -1"), std::string::npos) << message;

    // CUDA where there is none: the module's own refusal, up front.
    settings.gpuPrecision = cv::naf::GPU_PRECISION_FP16;
    settings.nafBackend = cv::naf::BACKEND_CUDA;
    message = errorOf([&] { naf_app::Pipeline::validate(settings); });
    if (cv::naf::isCudaAvailable())
        EXPECT_EQ(message, "");
    else
        EXPECT_NE(message.find("cv::naf::NAF::setBackend: CUDA requested but not available"), std::string::npos)
            << message;
}

// The CPU backend ignores the GPU precision (float32 always, opencv2/naf.hpp): the pipeline's
// NAF object gets each setting, and the features are the same bits for every one.
TEST(AppPipeline, CpuBackendComputesTheSameBitsForEveryGpuPrecision)
{
    const std::string reason = app_test::vfmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    const cv::Mat bgr = cv::imread(app_test::sampleImage("coco_000000000285_bear.jpg"));
    naf_app::PipelineSettings settings;
    settings.vfmName = app_test::vfmName();
    settings.outputLongSide = 128;
    settings.methods = {cv::naf::UPSAMPLE_NAF};
    settings.nafBackend = cv::naf::BACKEND_CPU;
    naf_app::Pipeline pipeline;
    cv::Mat lowRes32, features32;
    for (int precision : {cv::naf::GPU_PRECISION_FP32, cv::naf::GPU_PRECISION_TF32, cv::naf::GPU_PRECISION_FP16})
    {
        const std::string name = naf_app::gpuPrecisionName(precision);
        settings.gpuPrecision = precision;
        const naf_app::PipelineResult r = pipeline.run(bgr, settings);
        const cv::Ptr<cv::naf::NAF> naf = pipeline.naf(settings.nafWeightsPath);
        EXPECT_EQ(naf->getBackend(), cv::naf::BACKEND_CPU) << name;
        EXPECT_EQ(naf->getGpuPrecision(), precision) << name;
        EXPECT_EQ(naf->getActiveBackend(), cv::naf::BACKEND_CPU) << name;
        EXPECT_EQ(r.settings.gpuPrecision, precision) << name;
        EXPECT_NE(r.device.find("NAF: CPU, "), std::string::npos) << r.device;
        const cv::Mat& features = r.upsampled.at(cv::naf::UPSAMPLE_NAF);
        if (precision == cv::naf::GPU_PRECISION_FP32)
        {
            lowRes32 = r.lowRes;
            features32 = features;
            continue;
        }
        ASSERT_EQ(cv::norm(r.lowRes, lowRes32, cv::NORM_INF), 0.0) << "the VFM's features differ between runs";
        EXPECT_EQ(cv::norm(features, features32, cv::NORM_INF), 0.0) << name << " changed the CPU result";
    }
}

/// The fractions a pipeline reported while `stage` ran, in order.
static std::vector<double> fractionsOfStage(const std::vector<std::pair<double, std::string>>& reports,
                                            const std::string& stage)
{
    std::vector<double> fractions;
    for (const auto& report : reports)
        if (report.second == stage) fractions.push_back(report.first);
    return fractions;
}

// The NAF stage reports its own progress (NAF::setProgressCallback) within the pipeline's
// fraction for that stage, and a cancel there stops the run with Cancelled, not an error. The
// pipeline's NAF object is left without a callback, so later runs are unaffected.
TEST(AppPipeline, NafStageReportsProgressAndStopsWhenCancelled)
{
    const std::string reason = app_test::vfmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    const cv::Mat bgr = cv::imread(app_test::sampleImage("coco_000000000285_bear.jpg"));
    naf_app::PipelineSettings settings;
    settings.vfmName = app_test::vfmName();
    settings.outputLongSide = 160;
    settings.methods = {cv::naf::UPSAMPLE_BILINEAR, cv::naf::UPSAMPLE_NAF};
    settings.nafBackend = cv::naf::BACKEND_CPU;
    const std::string nafStage = cv::naf::upsampleMethodName(cv::naf::UPSAMPLE_NAF);
    naf_app::Pipeline pipeline;
    std::vector<std::pair<double, std::string>> reports;
    const naf_app::PipelineResult first = pipeline.run(bgr, settings, [&](double fraction, const std::string& stage) {
        reports.push_back({fraction, stage});
        return true;
    });
    // 4 steps (models, VFM, bilinear, NAF): NAF's stage is the last quarter, [0.75, 1].
    const std::vector<double> inNaf = fractionsOfStage(reports, nafStage);
    ASSERT_GE(inNaf.size(), 20u) << "NAF's own reports did not reach the pipeline";
    EXPECT_EQ(inNaf.front(), 0.75);
    EXPECT_EQ(inNaf.back(), 1.0);
    EXPECT_TRUE(std::any_of(inNaf.begin(), inNaf.end(), [](double f) { return f > 0.8 && f < 0.95; }));
    for (size_t i = 1; i < reports.size(); ++i) EXPECT_GE(reports[i].first, reports[i - 1].first) << "#" << i;
    EXPECT_FALSE(pipeline.naf(settings.nafWeightsPath)->getProgressCallback());

    // Cancel at NAF's fifth report: Cancelled, within the stage.
    int nafReports = 0;
    EXPECT_THROW(pipeline.run(bgr, settings,
                              [&](double, const std::string& stage) { return !(stage == nafStage && ++nafReports == 5); }),
                 naf_app::Cancelled);
    EXPECT_EQ(nafReports, 5);
    EXPECT_FALSE(pipeline.naf(settings.nafWeightsPath)->getProgressCallback());
    // And the next run gives the first run's features.
    const naf_app::PipelineResult again = pipeline.run(bgr, settings);
    EXPECT_EQ(cv::norm(again.upsampled.at(cv::naf::UPSAMPLE_NAF), first.upsampled.at(cv::naf::UPSAMPLE_NAF),
                       cv::NORM_INF),
              0.0);
}

// The VFM stage reports the model's own progress (VisionFoundationModel::setProgressCallback, one
// report per cv::naf layer of the converted graph) within the pipeline's fraction for that stage,
// and the viewer's Cancel stops cv::dnn's forward there.
TEST(AppPipeline, VfmStageReportsProgressAndStopsWhenCancelled)
{
    const std::string reason = app_test::vfmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    const cv::Mat bgr = cv::imread(app_test::sampleImage("coco_000000000285_bear.jpg"));
    naf_app::PipelineSettings settings;
    settings.vfmName = app_test::vfmName();
    settings.outputLongSide = 96;
    settings.methods = {cv::naf::UPSAMPLE_BILINEAR};
    const std::string vfmStage = "VFM features";
    naf_app::Pipeline pipeline;
    const int steps = pipeline.vfm(settings.vfmName)->getProgressSteps();
    if (steps == 0) GTEST_SKIP() << "the model's graph has no cv::naf layers to report from";
    std::vector<std::pair<double, std::string>> reports;
    const naf_app::PipelineResult first = pipeline.run(bgr, settings, [&](double fraction, const std::string& stage) {
        reports.push_back({fraction, stage});
        return true;
    });
    // 3 steps (models, VFM, bilinear): the VFM's stage is [1/3, 2/3].
    const std::vector<double> inVfm = fractionsOfStage(reports, vfmStage);
    ASSERT_EQ(inVfm.size(), static_cast<size_t>(steps) + 3) << "the stage's start, then the model's 0, layers, 1";
    EXPECT_DOUBLE_EQ(inVfm.front(), 1.0 / 3);
    EXPECT_DOUBLE_EQ(inVfm.back(), 2.0 / 3);
    EXPECT_TRUE(std::any_of(inVfm.begin(), inVfm.end(), [](double f) { return f > 0.4 && f < 0.6; }));
    for (size_t i = 1; i < reports.size(); ++i) EXPECT_GE(reports[i].first, reports[i - 1].first) << "#" << i;
    EXPECT_FALSE(pipeline.vfm(settings.vfmName)->getProgressCallback());

    // Cancel at the VFM's fifth report: Cancelled, inside cv::dnn's forward.
    int vfmReports = 0;
    EXPECT_THROW(pipeline.run(bgr, settings,
                              [&](double, const std::string& stage) { return !(stage == vfmStage && ++vfmReports == 5); }),
                 naf_app::Cancelled);
    EXPECT_EQ(vfmReports, 5);
    EXPECT_FALSE(pipeline.vfm(settings.vfmName)->getProgressCallback());
    // And the next run gives the first run's features.
    const naf_app::PipelineResult again = pipeline.run(bgr, settings);
    EXPECT_EQ(cv::norm(again.lowRes, first.lowRes, cv::NORM_INF), 0.0);
}

TEST(AppBatchCommand, UnknownBackendOrPrecisionIsRefusedBeforeAnyWork)
{
    const CommandResult help = runNafBatch({"--help"});
    EXPECT_EQ(help.exitCode, 0);
    EXPECT_NE(help.output.find("--backend NAME"), std::string::npos) << help.output;
    EXPECT_NE(help.output.find("--gpu-precision P"), std::string::npos) << help.output;

    const fs::path dir = freshDir("badoptions");
    const fs::path out = dir / "out";
    const std::string image = app_test::sampleImage("coco_000000000285_bear.jpg");
    struct Case
    {
        std::vector<std::string> option;
        std::string value, accepted;
    };
    const Case cases[] = {{{"--backend", "gpu"}, "'gpu'", "auto, cpu, cuda"},
                          {{"--backend=CPU"}, "'CPU'", "auto, cpu, cuda"},
                          {{"--gpu-precision", "fp8"}, "'fp8'", "fp32, tf32, fp16"},
                          {{"--gpu-precision="}, "''", "fp32, tf32, fp16"}};
    for (const Case& c : cases)
    {
        std::vector<std::string> args = {image, "--out", out.string()};
        args.insert(args.end(), c.option.begin(), c.option.end());
        const CommandResult r = runNafBatch(args);
        EXPECT_EQ(r.exitCode, 2) << c.option[0] << ": " << r.output;
        EXPECT_NE(r.output.find(c.value), std::string::npos) << r.output;
        EXPECT_NE(r.output.find(c.accepted), std::string::npos) << r.output;
        EXPECT_FALSE(fs::exists(out)) << c.option[0] << " wrote " << out;
    }

    if (!cv::naf::isCudaAvailable())
    {
        const CommandResult r = runNafBatch({image, "--out", out.string(), "--backend", "cuda"});
        EXPECT_EQ(r.exitCode, 2) << r.output;
        EXPECT_NE(r.output.find("CUDA requested but not available"), std::string::npos) << r.output;
        EXPECT_FALSE(fs::exists(out)) << "--backend cuda wrote " << out;
    }
    fs::remove_all(dir);
}

TEST(AppBatchCommand, MalformedNumbersAndBadValuesAreRefusedBeforeAnyWork)
{
    const fs::path dir = freshDir("badvalues");
    const fs::path out = dir / "out";
    const std::string image = app_test::sampleImage("coco_000000000285_bear.jpg");
    struct Case
    {
        std::vector<std::string> option;
        std::string expected;  // in the message
    };
    std::vector<Case> cases = {{{"--size", "abc"}, "--size 'abc': expected a whole number"},
                               {{"--size", "64abc"}, "--size '64abc': expected a whole number"},
                               {{"--size", "99999999999"}, "--size '99999999999': expected a whole number"},
                               {{"--jobs", "two"}, "--jobs 'two': expected a whole number"},
                               {{"--kmeans", "300"}, "is 300"},
                               // below the default VFM's grid (MobileSAM: 1024 / 16), every image would fail
                               {{"--size", "48"}, "output size 48 is smaller than VFM 'mobilesam''s feature grid (64 cells"},
                               {{"--force=no"}, "--force takes no value"}};
    if (app_test::vfmUnavailableReason().empty())  // else the missing model is what is refused
        cases.push_back({{"--weights", (dir / "none.safetensors").string()}, (dir / "none.safetensors").string()});
    for (const Case& c : cases)
    {
        std::vector<std::string> args = {image, "--out", out.string(), "--methods", "bilinear,naf"};
        args.insert(args.end(), c.option.begin(), c.option.end());
        const CommandResult r = runNafBatch(args);
        EXPECT_EQ(r.exitCode, 2) << c.option[0] << ": " << r.output;
        EXPECT_NE(r.output.find(c.expected), std::string::npos) << r.output;
        EXPECT_FALSE(fs::exists(out)) << c.option[0] << " wrote " << out;
    }
    fs::remove_all(dir);
}

TEST(AppBatchCommand, BackendAndPrecisionAreRecordedAndPartOfTheSettings)
{
    const std::string reason = app_test::vfmUnavailableReason();
    if (!reason.empty()) GTEST_SKIP() << reason;
    const fs::path dir = freshDir("backendoptions");
    const fs::path out = dir / "out";
    const std::vector<std::string> args = {app_test::sampleImage("coco_000000000285_bear.jpg"), "--out", out.string(),
                                           "--vfm", app_test::vfmName(), "--methods", "naf", "--size", "128",
                                           "--kmeans", "0", "--backend", "cpu", "--gpu-precision", "fp16"};
    const CommandResult first = runNafBatch(args);
    ASSERT_EQ(first.exitCode, 0) << first.output;
    EXPECT_NE(first.output.find("1 computed"), std::string::npos) << first.output;

    const nlohmann::json manifest = nlohmann::json::parse(readAll(out / "manifest.json"));
    EXPECT_EQ(manifest["settings"]["naf_backend"], "cpu");
    EXPECT_EQ(manifest["settings"]["gpu_precision"], "fp16");
    const std::string recordText = readAll(out / "coco_000000000285_bear.json");
    const nlohmann::json record = nlohmann::json::parse(recordText);
    EXPECT_EQ(record["settings"], manifest["settings"]);
    // The CPU ran it (the precision only applies on CUDA).
    EXPECT_EQ(record["device"].get<std::string>().rfind("NAF: CPU, ", 0), 0u) << record["device"];

    // The same options again: already done. Another precision: due again (on CUDA it changes the output).
    const CommandResult again = runNafBatch(args);
    EXPECT_EQ(again.exitCode, 0) << again.output;
    EXPECT_NE(again.output.find("0 computed, 1 already done"), std::string::npos) << again.output;
    nlohmann::json otherPrecision = record["settings"];
    otherPrecision["gpu_precision"] = "tf32";
    EXPECT_FALSE(naf_app::recordedOutputs(recordText, record["settings"].dump(), record["input_stamp"].dump()).empty());
    EXPECT_TRUE(naf_app::recordedOutputs(recordText, otherPrecision.dump(), record["input_stamp"].dump()).empty());
    fs::remove_all(dir);
}
