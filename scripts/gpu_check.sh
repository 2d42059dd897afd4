#!/bin/bash
# GPU check of the CUDA path, for a session that is lent a GPU machine (no OpenCV, GTest or
# Google Benchmark there). Build here, carry the binaries, run this there from the repo root:
#
#   scripts/gpu_check.sh --build            # here: build-gpu/{cudnn,nocudnn}/ (sm_90, kernels only)
#   scripts/gpu_check.sh [--quick]          # there: tests, naf_cuda_bench, PyTorch peer on CUDA
#
# Logs and JSON lines go to $OUT (the device tool's result folder) or ./build-gpu/results.
# NAF_GPU_RACECHECK=1 also runs the attention kernels' tests under compute-sanitizer (memcheck,
# racecheck, synccheck; NAF_GPU_SANITIZE_FILTER picks the tests). NAF_GPU_TESTS_ONLY=1 stops after
# the tests (a first call that checks correctness in a few minutes; the timings in a second one).
# NAF_GPU_TEST_FILTER: the gtest filter of the CUDA tests (default Cuda*).
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

if [ "${1:-}" = "--build" ]; then
    set -e
    for variant in cudnn nocudnn; do
        flag=ON; [ "$variant" = nocudnn ] && flag=OFF
        cmake -S kernels -B "build-gpu/$variant" -G Ninja -DCMAKE_BUILD_TYPE=Release \
            -DCMAKE_CUDA_ARCHITECTURES=90 -DNAF_WITH_CUDNN=$flag -DNAF_BUILD_TESTS=ON >/dev/null
        cmake --build "build-gpu/$variant" --target naf_kernels_tests naf_cuda_bench
    done
    # Only the executables travel (the carry limit is 64 MiB).
    for variant in cudnn nocudnn; do
        mkdir -p "build-gpu/bin-$variant"
        cp "build-gpu/$variant/naf_kernels_tests" "build-gpu/$variant/naf_cuda_bench" "build-gpu/bin-$variant/"
    done
    du -sh build-gpu/bin-*
    exit 0
fi

QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
RESULTS="${OUT:-$ROOT/build-gpu/results}"
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/gpu_check.log") 2>&1
echo "== $(date -u) on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true

# cuDNN: the toolkit's, else the one PyTorch ships.
CUDNN_DIRS=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib; do
    [ -e "$d/libcudnn.so.9" ] && CUDNN_DIRS="$CUDNN_DIRS:$d"
done
TORCH_CUDNN=$(python3 -c "import os, nvidia.cudnn as c; print(os.path.join(list(c.__path__)[0], 'lib'))" 2>/dev/null)
[ -n "$TORCH_CUDNN" ] && [ -d "$TORCH_CUDNN" ] && CUDNN_DIRS="$CUDNN_DIRS:$TORCH_CUDNN"
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}$CUDNN_DIRS:/usr/local/cuda/lib64"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
BIN=build-gpu/bin-cudnn
if ! ldd "$BIN/naf_kernels_tests" | grep -q "libcudnn.so.9 => /"; then
    echo "libcudnn.so.9 not found: using the build without cuDNN"
    BIN=build-gpu/bin-nocudnn
fi
ldd "$BIN/naf_kernels_tests" | grep -E "cud|not found"

echo "== tests (CUDA against the CPU path)"
timeout 200 "$BIN/naf_kernels_tests" --gtest_filter="${NAF_GPU_TEST_FILTER:-Cuda*}" 2>&1 | tee "$RESULTS/tests.log" | grep -E "^\[ cuda|^\[ mismatch|OK|FAIL|PASSED|error|Failure|rel L2|Expected|Which|actual" | head -120

if [ "${NAF_GPU_RACECHECK:-0}" = 1 ]; then
    # The shared-memory kernels under compute-sanitizer (races, barrier misuse): slow, so only
    # their own tests.
    # memcheck: out-of-bounds and misaligned global and shared accesses.
    SANITIZER=$(command -v compute-sanitizer || find /usr/local/cuda* -name compute-sanitizer -type f 2>/dev/null | head -1)
    for tool in memcheck racecheck synccheck; do
        echo "== compute-sanitizer --tool $tool"
        [ -z "$SANITIZER" ] && { echo "compute-sanitizer not found"; break; }
        timeout 150 "$SANITIZER" --tool $tool --print-limit 20 "$BIN/naf_kernels_tests" \
            --gtest_filter="${NAF_GPU_SANITIZE_FILTER:-Cuda.CellTensorCore*:Cuda.TiledChunked*:Cuda.CellAttention*:Cuda.Measured*}" \
            2>&1 | tail -15
    done
fi
if [ "${NAF_GPU_TESTS_ONLY:-0}" = 1 ]; then
    echo "== done (tests only) $(date -u)"
    exit 0
fi

echo "== naf_cuda_bench"
# Environment overrides: NAF_GPU_CONFIGS, NAF_GPU_BUILTIN_CONFIGS, NAF_GPU_TORCH_CONFIGS.
CONFIGS=${NAF_GPU_CONFIGS:-paper,x32,mobilesam,x72,dinov2}; [ $QUICK = 1 ] && CONFIGS=paper
BUILTIN_CONFIGS=${NAF_GPU_BUILTIN_CONFIGS:-paper,mobilesam}; [ $QUICK = 1 ] && BUILTIN_CONFIGS=paper
TORCH_CONFIGS=${NAF_GPU_TORCH_CONFIGS-paper mobilesam x32 x72}  # set but empty: no PyTorch run; [ $QUICK = 1 ] && TORCH_CONFIGS=paper
MODES=${NAF_GPU_MODES:-fp32,tf32,fp16}
timeout 260 "$BIN/naf_cuda_bench" --configs "$CONFIGS" --modes "$MODES" --paths auto --reps 20 --warmup 3 \
    --max-seconds 4 --roundtrip-reps 1 | tee "$RESULTS/bench.jsonl"
timeout 80 "$BIN/naf_cuda_bench" --configs "$BUILTIN_CONFIGS" --modes "$MODES" --paths builtin --reps 10 \
    --warmup 2 --max-seconds 3 --roundtrip-reps 0 | tee -a "$RESULTS/bench.jsonl"
# The attention kernels one by one (Engine::setAttentionKernel; the default, auto, picks tiled or
# cell per size), for the comparison in PERFORMANCE.md: kernel:configs:modes, e.g.
# NAF_GPU_ATTENTION_RUNS="general:paper:tf32"; set but empty: none.
# cell-mma, tiled-chunked and measured were written without a GPU: first in line, so that they are
# measured even when the device time runs short.
for run in ${NAF_GPU_ATTENTION_RUNS-cell-mma:paper,x32,mobilesam,x72,dinov2:tf32,fp16 tiled-chunked:paper,x32,mobilesam,x72,dinov2:tf32,fp16 measured:paper,x72,dinov2:fp16 tiled:paper,x72,dinov2:fp16 cell:paper,x72,dinov2:fp16}; do
    IFS=: read -r kernel configs modes <<< "$run"
    timeout 90 "$BIN/naf_cuda_bench" --configs "$configs" --modes "$modes" --paths auto \
        --reps 10 --warmup 2 --max-seconds 3 --roundtrip-reps 0 --attention $kernel | tee -a "$RESULTS/bench.jsonl"
done
echo "== attention kernels side by side"
python3 scripts/attention_summary.py "$RESULTS/bench.jsonl" || true

# The usual channel-major tail (Engine::setNhwcTail(false); the channels-last one is the default),
# against the default lines above: configs:modes, e.g. NAF_GPU_NCHW_RUNS="x72:fp16"; set but
# empty: none.
[ -n "${NAF_GPU_NHWC_RUNS+set}" ] && echo "NAF_GPU_NHWC_RUNS is gone (the channels-last tail is the default): use NAF_GPU_NCHW_RUNS"
for run in ${NAF_GPU_NCHW_RUNS-paper,x72:tf32,fp16}; do
    IFS=: read -r configs modes <<< "$run"
    timeout 90 "$BIN/naf_cuda_bench" --configs "$configs" --modes "$modes" --paths auto \
        --reps 10 --warmup 2 --max-seconds 3 --roundtrip-reps 0 --no-nhwc-tail | tee -a "$RESULTS/bench.jsonl"
done

echo "== PyTorch reference on CUDA"
python3 -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())"
for cfg in $TORCH_CONFIGS; do
    for tf32 in off on; do
        timeout 60 python3 benchmarks/bench_reference.py $cfg --device cuda --tf32 $tf32 --reps 5 \
            | tee -a "$RESULTS/torch.jsonl"
    done
done
if [ "${NAF_GPU_NCU:-0}" = 1 ]; then
    # Per-kernel device time and DRAM traffic of our own kernels in one forward: the first one the
    # bench runs, in the mode named (--no-reference: no FP32 forward before it). TF32 runs our
    # kernels on float tensors like FP32; FP16 on float16 ones. cuDNN's kernels are left out by the
    # name filter (ours end in "Kernel"). Summary: scripts/ncu_summary.py.
    # NAF_GPU_NCU_ARGS: more naf_cuda_bench flags for the profiled forward (e.g. "--no-nhwc-tail").
    NCU=$(command -v ncu || find /opt/nvidia /usr/local/cuda* -name ncu -type f 2>/dev/null | head -1)
    for run in ${NAF_GPU_NCU_RUNS:-paper:tf32 x72:tf32 x72:fp16}; do
        cfg=${run%%:*}; mode=${run##*:}
        echo "== ncu ($NCU): our kernels at $cfg, $mode"
        if [ -z "$NCU" ]; then echo "ncu not found: no profile"; continue; fi
        timeout 150 "$NCU" --clock-control none --csv \
            --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum -k regex:Kernel -c 40 \
            "$BIN/naf_cuda_bench" --configs "$cfg" --modes "$mode" --paths auto --reps 1 --warmup 0 \
            --max-seconds 1 --roundtrip-reps 0 --no-reference ${NAF_GPU_NCU_ARGS:-} > "$RESULTS/ncu_${cfg}_$mode.csv" 2>&1
        python3 scripts/ncu_summary.py "$RESULTS/ncu_${cfg}_$mode.csv" || tail -5 "$RESULTS/ncu_${cfg}_$mode.csv"
    done
fi
echo "== done $(date -u)"
