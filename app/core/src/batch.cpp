// Batch visualization export, see naf_app/batch.hpp.
#include "naf_app/batch.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iterator>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include <unistd.h>

#include "naf_app/io.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace naf_app {

namespace {

// JSON text of records and manifests. File names need not be UTF-8 (Linux allows any bytes but
// '/' and NUL): invalid bytes are written as U+FFFD instead of failing the whole dump.
std::string jsonText(const json& value)
{
    return value.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

bool usesNaf(const PipelineSettings& settings)
{
    return std::find(settings.methods.begin(), settings.methods.end(), static_cast<int>(cv::naf::UPSAMPLE_NAF)) !=
           settings.methods.end();
}

// The weights file NAF will load: --weights, else the module's default ($NAF_WEIGHTS, then the
// project's default file); "" = random weights.
std::string resolvedWeightsPath(const PipelineSettings& settings)
{
    return settings.nafWeightsPath.empty() ? std::string(cv::naf::getDefaultWeightsPath()) : settings.nafWeightsPath;
}

// Size and modification time of the input: a replaced image is computed again.
json inputStamp(const std::string& input)
{
    std::error_code ec;
    const auto size = fs::file_size(input, ec);
    const auto time = fs::last_write_time(input, ec);
    return {{"size", ec ? 0 : size}, {"mtime", ec ? 0 : static_cast<long long>(time.time_since_epoch().count())}};
}

json settingsJson(const BatchOptions& options)
{
    json methods = json::array();
    for (int m : options.settings.methods) methods.push_back(cv::naf::upsampleMethodName(m));
    // The resolved weights file and its stamp: a rerun under another $NAF_WEIGHTS, or with the
    // file replaced, computes again.
    const std::string weights = usesNaf(options.settings) ? resolvedWeightsPath(options.settings) : std::string();
    return {{"vfm", options.settings.vfmName},
            {"output_long_side", options.settings.outputLongSide},
            {"methods", methods},
            {"naf_weights", weights},
            {"naf_weights_stamp", weights.empty() ? json() : inputStamp(weights)},
            // Part of the settings a rerun compares: on CUDA the precision changes the output.
            {"naf_backend", nafBackendName(options.settings.nafBackend)},
            {"gpu_precision", gpuPrecisionName(options.settings.gpuPrecision)},
            {"kmeans_clusters", options.kmeansClusters}};
}

json timingsJson(const std::vector<StageTiming>& timings)
{
    json out = json::object();
    for (const StageTiming& t : timings) out[t.stage] = std::round(t.milliseconds * 10) / 10;
    return out;
}

std::string hex8(const std::string& text)
{
    uint32_t h = 2166136261u;  // FNV-1a: stable across runs and machines, unlike std::hash
    for (unsigned char c : text) h = (h ^ c) * 16777619u;
    std::ostringstream out;
    out << std::hex << std::setw(8) << std::setfill('0') << h;
    return out.str();
}

// The input as one spelling for every working directory and path form (A/x.bmp, ./A/x.bmp,
// /abs/A/x.bmp): what a record is compared by.
std::string absoluteInput(const std::string& input)
{
    std::error_code ec;
    // Made absolute first: a relative path none of whose parts exists would stay relative.
    const fs::path canonical = fs::weakly_canonical(fs::absolute(input), ec);
    return ec ? fs::absolute(input).lexically_normal().string() : canonical.string();
}

// The files an image's run writes into the output folder, the record last.
std::vector<std::string> expectedOutputs(const BatchOptions& options, const std::string& stem)
{
    const std::string base = (fs::path(options.outDir) / stem).string();
    std::vector<std::string> outputs = {base + ".panel.png"};
    if (options.kmeansClusters > 0) outputs.push_back(base + ".kmeans.png");
    outputs.push_back(base + ".json");
    return outputs;
}

// Every file an image's stem can have (whatever the settings of the run that wrote them).
std::vector<std::string> allOutputsOfStem(const std::string& outDir, const std::string& stem)
{
    const std::string base = (fs::path(outDir) / stem).string();
    return {base + ".json", base + ".panel.png", base + ".kmeans.png"};  // the record first: it marks "done"
}

// True when the record `<out>/<stem>.json` was written for this input (the same file, however
// it was spelled, from whatever working directory) with the same settings and input stamp, and
// every file this run would write exists in the output folder. The record's own output paths are
// not used: they are spelled as on the command line of the run that wrote them, relative to its
// working directory.
bool alreadyDone(const BatchOptions& options, const json& settings, const std::string& input, const std::string& stem,
                 BatchItem& item)
{
    const std::vector<std::string> outputs = expectedOutputs(options, stem);
    const std::string& sidecar = outputs.back();
    std::ifstream in(sidecar);
    if (!in) return false;
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (recordedOutputs(text, settings.dump(-1, ' ', false, json::error_handler_t::replace), inputStamp(input).dump())
            .empty())
        return false;
    json record;
    try
    {
        record = json::parse(text);
        // Records of older runs lack "input_absolute": their "input" is resolved from here.
        const std::string recorded = record.contains("input_absolute")
                                         ? record.at("input_absolute").get<std::string>()
                                         : absoluteInput(record.at("input").get<std::string>());
        // Another image with the same stem, size and time (A/x.bmp after B/x.bmp) is not done.
        // Compared as the record holds it: bytes that are not UTF-8 are U+FFFD there.
        if (recorded != json::parse(json(absoluteInput(input)).dump(-1, ' ', false, json::error_handler_t::replace))
                            .get<std::string>())
            return false;
    }
    catch (const json::exception&)
    {
        return false;
    }
    for (const std::string& o : outputs)
        if (!fs::exists(o)) return false;
    item.outputs = outputs;
    // The record's warning (a truncated input) stays in the manifest of a resumed run too.
    if (record.contains("warning") && record["warning"].is_string()) item.warning = record["warning"].get<std::string>();
    return true;
}

// Computes one image that is not already done; `concurrentRuns` images are computed at once.
BatchItem processImage(Pipeline& pipeline, const BatchOptions& options, const json& settings, const std::string& input,
                       const std::string& stem, int concurrentRuns, const BatchStageFn& stage)
{
    BatchItem item;
    item.input = input;
    const std::string base = (fs::path(options.outDir) / stem).string();
    const std::string sidecar = base + ".json";
    // Taken before the image is read: an image replaced while it is computed must not be
    // recorded as done with the new file's stamp.
    const json stamp = inputStamp(input);
    try
    {
        std::error_code ec;
        if (!fs::exists(input, ec)) CV_Error(cv::Error::StsObjectNotFound, "'" + input + "' does not exist");
        // A FIFO or device would block imread (or read forever).
        if (!fs::is_regular_file(input, ec)) CV_Error(cv::Error::StsBadArg, "'" + input + "' is not a regular file");
        const cv::Mat image = readImageBgr(input);
        if (image.empty()) CV_Error(cv::Error::StsError, "cannot decode '" + input + "' as an image");
        item.warning = truncatedJpegWarning(input);
        // Before the VFM runs: the feature maps of the images computed at once must fit in memory.
        checkRunFitsInMemory(options.settings, image.size(), concurrentRuns);
        ProgressFn progress;
        if (stage)
            progress = [&](double fraction, const std::string& name) {
                stage(input, fraction, name);
                return true;
            };
        PipelineResult result = pipeline.run(image, options.settings, progress);

        std::vector<cv::Mat> tiles = {result.guide, renderLowResPca(result)};
        std::vector<cv::String> captions = {"image", "low-res " + std::to_string(result.lowRes.size[3]) + "x" +
                                                         std::to_string(result.lowRes.size[2])};
        for (int m : options.settings.methods)
        {
            tiles.push_back(renderMethodPca(result, m));
            captions.push_back(cv::naf::upsampleMethodName(m));
        }
        cv::Mat panel;
        cv::naf::makePanel(tiles, captions, panel);
        item.outputs.push_back(base + ".panel.png");
        writeImageAtomic(item.outputs.back(), panel);

        if (options.kmeansClusters > 0)
        {
            const auto start = std::chrono::steady_clock::now();
            std::vector<cv::Mat> segTiles;
            std::vector<cv::String> segCaptions;
            for (int m : options.settings.methods)
            {
                cv::Mat labels;
                cv::naf::kmeansSegmentation(result.upsampled.at(m), options.kmeansClusters, labels);
                segTiles.push_back(renderLabels(result, labels, 0.6));
                segCaptions.push_back(cv::naf::upsampleMethodName(m) + " k-means " + std::to_string(options.kmeansClusters));
            }
            cv::naf::makePanel(segTiles, segCaptions, panel);
            item.outputs.push_back(base + ".kmeans.png");
            writeImageAtomic(item.outputs.back(), panel);
            result.timings.push_back(
                {"kmeans", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count()});
        }
        item.timings = result.timings;
        json record = {{"input", input},
                             {"input_absolute", absoluteInput(input)},
                             {"input_stamp", stamp},
                             {"settings", settings},
                             {"outputs", item.outputs},
                             {"timings_ms", timingsJson(result.timings)},
                             {"device", result.device},
                             {"naf_weights_info", result.weightsInfo},
                             {"feature_grid", {result.lowRes.size[1], result.lowRes.size[2], result.lowRes.size[3]}}};
        if (!item.warning.empty()) record["warning"] = item.warning;
        // Written last: its presence marks the image done for a resumed run.
        writeFileAtomic(sidecar, jsonText(record));
        item.outputs.push_back(sidecar);
        item.status = "done";
        // Files of an earlier run with other settings (a .kmeans.png when this run has none)
        // would pass for this run's.
        std::error_code ignored;
        for (const std::string& old : allOutputsOfStem(options.outDir, stem))
            if (std::find(item.outputs.begin(), item.outputs.end(), old) == item.outputs.end()) fs::remove(old, ignored);
    }
    catch (const std::exception& e)
    {
        item.status = "skipped";
        item.reason = e.what();
        // cv::Exception texts carry file:line and a trailing newline; keep the message itself.
        if (auto* cvErr = dynamic_cast<const cv::Exception*>(&e)) item.reason = cvErr->err;
        // A skipped image leaves none of its files, also those of an earlier run (a stale panel
        // next to a new failure would look like this input's result).
        std::error_code ignored;
        for (const std::string& old : allOutputsOfStem(options.outDir, stem)) fs::remove(old, ignored);
        item.outputs.clear();
    }
    return item;
}

}  // namespace

namespace {

// Bytes of `text` that are not well-formed UTF-8 become '_'.
std::string utf8Safe(const std::string& text, bool* changed)
{
    std::string out;
    *changed = false;
    for (size_t i = 0; i < text.size();)
    {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        const int length = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        bool valid = length > 0 && i + length <= text.size();
        for (int k = 1; valid && k < length; ++k) valid = (static_cast<unsigned char>(text[i + k]) >> 6) == 0x2;
        if (valid)
        {
            out.append(text, i, length);
            i += length;
        }
        else
        {
            out.push_back('_');
            *changed = true;
            ++i;
        }
    }
    return out;
}

// Stems of our own files: an image named like them gets a hashed stem instead.
bool isReservedStem(const std::string& stem)
{
    return stem.rfind("manifest", 0) == 0;
}

}  // namespace

std::vector<std::string> outputStems(const std::vector<std::string>& inputs)
{
    std::unordered_map<std::string, int> count;
    std::vector<std::string> plain;
    std::vector<bool> mustHash;
    for (const std::string& in : inputs)
    {
        bool changed = false;
        plain.push_back(utf8Safe(fs::path(in).stem().string(), &changed));
        mustHash.push_back(changed || isReservedStem(plain.back()));
        ++count[plain.back()];
    }
    std::vector<std::string> stems;
    for (size_t k = 0; k < inputs.size(); ++k)
    {
        // Shared, reserved or not UTF-8 (a name the JSON records could not hold): made unique with
        // a hash of the full path.
        const bool hash = count[plain[k]] > 1 || mustHash[k];
        stems.push_back(hash ? plain[k] + "-" + hex8(fs::absolute(inputs[k]).lexically_normal().string()) : plain[k]);
    }
    return stems;
}

std::vector<std::string> recordedOutputs(const std::string& recordText, const std::string& settingsJson,
                                         const std::string& inputStampJson)
{
    try
    {
        const json record = json::parse(recordText);
        if (!record.is_object() || record.at("settings") != json::parse(settingsJson) ||
            record.at("input_stamp") != json::parse(inputStampJson))
            return {};
        return record.at("outputs").get<std::vector<std::string>>();
    }
    catch (const std::exception&)
    {
        return {};  // unreadable record: compute again
    }
}

namespace {

bool endsWith(const std::string& text, const std::string& suffix)
{
    return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The images to compute: each file once (the same file by two paths would be computed twice under
// two hashed stems), without this tool's own panels in the output folder (input folder = output
// folder: a rerun would otherwise take last run's panels as new images).
std::vector<std::string> batchInputs(const std::vector<std::string>& images, const std::string& outDir)
{
    std::error_code outError;
    const fs::path out = fs::weakly_canonical(outDir, outError);
    std::vector<std::string> kept;
    std::set<std::string> seen;
    for (const std::string& image : images)
    {
        const fs::path p(image);
        const std::string name = p.filename().string();
        bool ours = false;
        if (!outError && (endsWith(name, ".panel.png") || endsWith(name, ".kmeans.png")))
        {
            std::error_code parentError;
            const fs::path parent =
                fs::weakly_canonical(p.has_parent_path() ? p.parent_path() : fs::path("."), parentError);
            ours = !parentError && parent == out;
        }
        if (!ours && seen.insert(absoluteInput(image)).second) kept.push_back(image);
    }
    return kept;
}

// `text` on one line: each line break with OpenCV's "> " continuation marks becomes one space.
std::string oneLine(const std::string& text)
{
    std::string out;
    for (size_t i = 0; i < text.size(); ++i)
    {
        if (text[i] != '\n')
        {
            out += text[i];
            continue;
        }
        while (i + 1 < text.size() && (text[i + 1] == '>' || text[i + 1] == ' ')) ++i;
        out += ' ';
    }
    const size_t first = out.find_first_not_of("> "), last = out.find_last_not_of(' ');
    return first == std::string::npos ? std::string() : out.substr(first, last - first + 1);
}

// The manifest's file name in the output folder.
std::string manifestName(const BatchOptions& options)
{
    return options.shardCount == 1 ? "manifest.json"
                                   : "manifest.shard-" + std::to_string(options.shardIndex) + "-of-" +
                                         std::to_string(options.shardCount) + ".json";
}

// Creates the output folder and checks that files can be written there, the manifest among them,
// before any image is computed; removes temporary files that an interrupted run (a process no
// longer alive) left.
void prepareOutputFolder(const std::string& outDir, const std::string& manifest)
{
    std::error_code ec;
    fs::create_directories(outDir, ec);
    if (ec || !fs::is_directory(outDir))
        CV_Error(cv::Error::StsError, "cannot create the output folder '" + outDir + "'" +
                                          (ec ? ": " + ec.message() : std::string(": not a folder")));
    const std::string probe = (fs::path(outDir) / (".naf_batch-write-test-" + std::to_string(::getpid()))).string();
    try
    {
        writeFileAtomic(probe, "");
    }
    catch (const cv::Exception& e)
    {
        CV_Error(cv::Error::StsError, "the output folder '" + outDir + "' is not writable (" + e.err + ")");
    }
    fs::remove(probe, ec);
    // The manifest replaces its file by a rename, which a folder of that name would refuse only
    // after every image was computed.
    const fs::path manifestPath = fs::path(outDir) / manifest;
    if (fs::is_directory(fs::symlink_status(manifestPath, ec)))
        CV_Error(cv::Error::StsError, "cannot write the manifest '" + manifestPath.string() +
                                          "': a folder of that name is in the way");
    removeStaleTemporaries(outDir);
}

}  // namespace

BatchSummary runBatch(const BatchOptions& options, const BatchProgressFn& progress, const BatchStageFn& stage)
{
    if (options.outDir.empty()) CV_Error(cv::Error::StsBadArg, "no output folder (--out)");
    CV_CheckGE(options.jobs, 1, "--jobs");
    CV_CheckGE(options.kmeansClusters, 0, "k-means clusters");
    CV_CheckLE(options.kmeansClusters, 255, "k-means clusters (labels are 8-bit)");
    Pipeline::validate(options.settings);
    // A missing network or weights file is a bad option, found before anything is written, not a
    // skip for every image. The weights are read once now (a corrupt file fails here too).
    Pipeline::checkModelFile(cv::naf::VfmRegistry::find(options.settings.vfmName));
    if (usesNaf(options.settings)) cv::naf::NAF::create(resolvedWeightsPath(options.settings));
    const auto started = std::chrono::steady_clock::now();

    const std::vector<std::string> all = batchInputs(collectImages(options.inputs), options.outDir);
    const std::vector<std::string> allStems = outputStems(all);
    std::unordered_map<std::string, std::string> stemOf;
    for (size_t k = 0; k < all.size(); ++k) stemOf[all[k]] = allStems[k];
    const std::vector<std::string> inputs = selectShard(all, options.shardIndex, options.shardCount);
    std::vector<std::string> stems;
    for (const std::string& in : inputs) stems.push_back(stemOf[in]);

    // Images already done are found first (only their records are read): a resumed run loads no
    // model, and the others are what the threads and the memory check are sized by.
    const json settings = settingsJson(options);
    BatchSummary summary;
    summary.items.resize(inputs.size());
    std::vector<size_t> pending;
    for (size_t k = 0; k < inputs.size(); ++k)
    {
        summary.items[k].input = inputs[k];
        if (!options.force && alreadyDone(options, settings, inputs[k], stems[k], summary.items[k]))
            summary.items[k].status = "already_done";
        else
            pending.push_back(k);
    }
    // The network is loaded once before any image (as the weights above): a corrupt model file is
    // a bad option, not a skip of every image after a load attempt for each. This thread's
    // pipeline keeps it for the images it computes.
    Pipeline firstPipeline;
    if (!pending.empty())
    {
        try
        {
            firstPipeline.vfm(options.settings.vfmName);
        }
        catch (const cv::Exception& e)
        {
            const cv::naf::VfmSpec spec = cv::naf::VfmRegistry::find(options.settings.vfmName);
            CV_Error(cv::Error::StsError,
                     "VFM '" + spec.name + "': the model file '" + spec.onnxPath + "' cannot be loaded" +
                         (spec.fetchCommand.empty() ? std::string() : " (corrupt? get it again with: " + spec.fetchCommand + ")") +
                         ": " + oneLine(e.err));
        }
    }
    prepareOutputFolder(options.outDir, manifestName(options));

    std::mutex progressMutex;
    int finished = 0;
    for (size_t k = 0; k < inputs.size(); ++k)
    {
        if (summary.items[k].status != "already_done") continue;
        ++finished;
        if (progress) progress(finished, static_cast<int>(inputs.size()), summary.items[k]);
    }
    // Only as many threads (and images in memory at once) as there are images to compute.
    const int threads = std::max(1, std::min<int>(options.jobs, static_cast<int>(pending.size())));
    std::atomic<size_t> next{0};
    auto worker = [&](Pipeline& pipeline) {
        for (size_t p = next++; p < pending.size(); p = next++)
        {
            const size_t k = pending[p];
            summary.items[k] = processImage(pipeline, options, settings, inputs[k], stems[k], threads, stage);
            std::lock_guard<std::mutex> lock(progressMutex);
            ++finished;
            if (progress) progress(finished, static_cast<int>(inputs.size()), summary.items[k]);
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t)
        pool.emplace_back([&] {
            Pipeline pipeline;  // per thread: cv::dnn nets and NAF objects are not shared
            worker(pipeline);
        });
    worker(firstPipeline);
    for (std::thread& t : pool) t.join();

    json items = json::array();
    for (const BatchItem& item : summary.items)
    {
        summary.computed += item.status == "done";
        summary.alreadyDone += item.status == "already_done";
        summary.skipped += item.status == "skipped";
        json entry = {{"input", item.input}, {"status", item.status}, {"outputs", item.outputs}};
        if (!item.reason.empty()) entry["reason"] = item.reason;
        if (!item.warning.empty()) entry["warning"] = item.warning;
        if (!item.timings.empty()) entry["timings_ms"] = timingsJson(item.timings);
        items.push_back(entry);
    }
    summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const json manifest = {{"tool", "naf_batch"},
                           {"settings", settings},
                           {"shard", {{"index", options.shardIndex}, {"count", options.shardCount}}},
                           {"counts",
                            {{"images", inputs.size()},
                             {"computed", summary.computed},
                             {"already_done", summary.alreadyDone},
                             {"skipped", summary.skipped}}},
                           {"seconds", std::round(summary.seconds * 100) / 100},
                           {"images", items}};
    summary.manifestPath = (fs::path(options.outDir) / manifestName(options)).string();
    writeFileAtomic(summary.manifestPath, jsonText(manifest));
    return summary;
}

}  // namespace naf_app
