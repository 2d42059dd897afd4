// Batch visualization export: many images -> PNG panel sets + a JSON manifest.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "naf_app/pipeline.hpp"

namespace naf_app {

struct BatchOptions
{
    std::vector<std::string> inputs;  ///< files, folders, list files (collectImages())
    std::string outDir;
    PipelineSettings settings;
    int kmeansClusters = 6;           ///< k of the k-means panel (0: no k-means panel)
    int jobs = 1;                     ///< images processed at once (one Pipeline each)
    int shardIndex = 0, shardCount = 1;
    bool force = false;               ///< recompute images that are already done
};

/// What happened to one image.
struct BatchItem
{
    std::string input;
    std::string status;               ///< "done" (computed now), "already_done", "skipped" (error)
    std::string reason;               ///< why it was skipped
    std::string warning;              ///< computed, but e.g. the input looks truncated (truncatedJpegWarning)
    std::vector<std::string> outputs; ///< paths written (or found, for already_done)
    std::vector<StageTiming> timings;
};

struct BatchSummary
{
    std::vector<BatchItem> items;     ///< in input order (this shard's)
    int computed = 0, alreadyDone = 0, skipped = 0;
    double seconds = 0;
    std::string manifestPath;
};

/// Progress callback: images finished so far, total, the last item.
using BatchProgressFn = std::function<void(int finished, int total, const BatchItem& last)>;
/// Progress within an image being computed: its input path, the fraction of its run and the
/// stage starting (the pipeline's stages: "loading models", "VFM features", one per method,
/// "done"). Called from the worker threads (`jobs` of them), so it must be thread-safe.
using BatchStageFn = std::function<void(const std::string& input, double fraction, const std::string& stage)>;

/// Output stem of each input: the file stem, made unique with a short hash of the full path when
/// two inputs share a stem (same for every shard, as it is computed on the whole list).
std::vector<std::string> outputStems(const std::vector<std::string>& inputs);

/// The outputs listed by a per-image record (the text of `<stem>.json`) when it was written with
/// these settings for this input stamp (both JSON texts, as runBatch() writes them); empty when the
/// record differs, is malformed or is no record at all. Never throws: records are outside data
/// (fuzzed by fuzz/fuzz_batch_record.cpp).
std::vector<std::string> recordedOutputs(const std::string& recordText, const std::string& settingsJson,
                                         const std::string& inputStampJson);

/// Runs the batch: every image of this shard gets `<out>/<stem>.panel.png` (image, low-res PCA,
/// one PCA tile per method), `<out>/<stem>.kmeans.png` (k-means of every method's map over the
/// image, side by side) and `<out>/<stem>.json` (settings, timings, outputs; written last, so its presence with
/// the same settings marks the image done). A bad image is recorded as skipped with the reason.
/// The manifest `<out>/manifest.json` (or `manifest.shard-<i>-of-<n>.json`) lists everything.
/// The manifest and every record carry the settings, the NAF backend and GPU precision among them.
/// An input listed twice (the same file by any path) is computed once.
/// @throws cv::Exception only for bad options (unknown VFM, method, NAF backend or GPU precision,
/// CUDA asked for where it is unavailable, k-means outside [0, 255], missing model or weights
/// file, a model file that cannot be loaded (when an image is to be computed), missing input path,
/// output folder not writable, a folder where the manifest goes), before any image is computed.
BatchSummary runBatch(const BatchOptions& options, const BatchProgressFn& progress = BatchProgressFn(),
                      const BatchStageFn& stage = BatchStageFn());

}  // namespace naf_app
