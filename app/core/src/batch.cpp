// Batch visualization export, see naf_app/batch.hpp.
#include "naf_app/batch.hpp"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iterator>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "naf_app/io.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace naf_app {

namespace {

json settingsJson(const BatchOptions& options)
{
    json methods = json::array();
    for (int m : options.settings.methods) methods.push_back(cv::naf::upsampleMethodName(m));
    return {{"vfm", options.settings.vfmName},
            {"output_long_side", options.settings.outputLongSide},
            {"methods", methods},
            {"naf_weights", options.settings.nafWeightsPath},
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

// Size and modification time of the input: a replaced image is computed again.
json inputStamp(const std::string& input)
{
    std::error_code ec;
    const auto size = fs::file_size(input, ec);
    const auto time = fs::last_write_time(input, ec);
    return {{"size", ec ? 0 : size}, {"mtime", ec ? 0 : static_cast<long long>(time.time_since_epoch().count())}};
}

// True when `sidecar` records the same settings and input, and every output it lists exists.
bool alreadyDone(const std::string& sidecar, const json& settings, const std::string& input, BatchItem& item)
{
    std::ifstream in(sidecar);
    if (!in) return false;
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::vector<std::string> outputs = recordedOutputs(text, settings.dump(), inputStamp(input).dump());
    if (outputs.empty()) return false;
    for (const std::string& o : outputs)
        if (!fs::exists(o)) return false;
    item.outputs = outputs;
    item.outputs.push_back(sidecar);
    return true;
}

BatchItem processImage(Pipeline& pipeline, const BatchOptions& options, const json& settings, const std::string& input,
                       const std::string& stem)
{
    BatchItem item;
    item.input = input;
    const std::string base = (fs::path(options.outDir) / stem).string();
    const std::string sidecar = base + ".json";
    if (!options.force && alreadyDone(sidecar, settings, input, item))
    {
        item.status = "already_done";
        return item;
    }
    try
    {
        const cv::Mat image = cv::imread(input, cv::IMREAD_COLOR);
        if (image.empty()) CV_Error(cv::Error::StsError, "cannot decode '" + input + "' as an image");
        PipelineResult result = pipeline.run(image, options.settings);

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
        const json record = {{"input", input},
                             {"input_stamp", inputStamp(input)},
                             {"settings", settings},
                             {"outputs", item.outputs},
                             {"timings_ms", timingsJson(result.timings)},
                             {"device", result.device},
                             {"naf_weights_info", result.weightsInfo},
                             {"feature_grid", {result.lowRes.size[1], result.lowRes.size[2], result.lowRes.size[3]}}};
        // Written last: its presence marks the image done for a resumed run.
        writeFileAtomic(sidecar, record.dump(2) + "\n");
        item.outputs.push_back(sidecar);
        item.status = "done";
    }
    catch (const std::exception& e)
    {
        item.status = "skipped";
        item.reason = e.what();
        // cv::Exception texts carry file:line and a trailing newline; keep the message itself.
        if (auto* cvErr = dynamic_cast<const cv::Exception*>(&e)) item.reason = cvErr->err;
    }
    return item;
}

}  // namespace

std::vector<std::string> outputStems(const std::vector<std::string>& inputs)
{
    std::unordered_map<std::string, int> count;
    for (const std::string& in : inputs) ++count[fs::path(in).stem().string()];
    std::vector<std::string> stems;
    for (const std::string& in : inputs)
    {
        const std::string stem = fs::path(in).stem().string();
        stems.push_back(count[stem] > 1 ? stem + "-" + hex8(fs::absolute(in).lexically_normal().string()) : stem);
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

BatchSummary runBatch(const BatchOptions& options, const BatchProgressFn& progress)
{
    if (options.outDir.empty()) CV_Error(cv::Error::StsBadArg, "no output folder (--out)");
    CV_CheckGE(options.jobs, 1, "--jobs");
    CV_CheckGE(options.kmeansClusters, 0, "k-means clusters");
    Pipeline::validate(options.settings);
    const auto started = std::chrono::steady_clock::now();

    const std::vector<std::string> all = collectImages(options.inputs);
    const std::vector<std::string> allStems = outputStems(all);
    std::unordered_map<std::string, std::string> stemOf;
    for (size_t k = 0; k < all.size(); ++k) stemOf[all[k]] = allStems[k];
    const std::vector<std::string> inputs = selectShard(all, options.shardIndex, options.shardCount);
    std::vector<std::string> stems;
    for (const std::string& in : inputs) stems.push_back(stemOf[in]);
    fs::create_directories(options.outDir);

    const json settings = settingsJson(options);
    BatchSummary summary;
    summary.items.resize(inputs.size());
    std::atomic<size_t> next{0};
    std::mutex progressMutex;
    int finished = 0;
    auto worker = [&] {
        Pipeline pipeline;  // per thread: cv::dnn nets and NAF objects are not shared
        for (size_t k = next++; k < inputs.size(); k = next++)
        {
            summary.items[k] = processImage(pipeline, options, settings, inputs[k], stems[k]);
            std::lock_guard<std::mutex> lock(progressMutex);
            ++finished;
            if (progress) progress(finished, static_cast<int>(inputs.size()), summary.items[k]);
        }
    };
    const int threads = std::max(1, std::min<int>(options.jobs, static_cast<int>(inputs.size())));
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    for (std::thread& t : pool) t.join();

    json items = json::array();
    for (const BatchItem& item : summary.items)
    {
        summary.computed += item.status == "done";
        summary.alreadyDone += item.status == "already_done";
        summary.skipped += item.status == "skipped";
        json entry = {{"input", item.input}, {"status", item.status}, {"outputs", item.outputs}};
        if (!item.reason.empty()) entry["reason"] = item.reason;
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
    const std::string name = options.shardCount == 1 ? "manifest.json"
                                                     : "manifest.shard-" + std::to_string(options.shardIndex) + "-of-" +
                                                           std::to_string(options.shardCount) + ".json";
    summary.manifestPath = (fs::path(options.outDir) / name).string();
    writeFileAtomic(summary.manifestPath, manifest.dump(2) + "\n");
    return summary;
}

}  // namespace naf_app
