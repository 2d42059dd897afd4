#!/bin/bash
# GPU check of the CUDA path, for a session that is lent a GPU machine (no OpenCV, GTest or
# Google Benchmark there). Build here, carry the binaries, run this there from the repo root:
#
#   scripts/gpu_check.sh --build            # here: build-gpu/bin-{cudnn,nocudnn}/ (sm_90, kernels only)
#                                           #   and build-gpu/module-bundle.tar.xz (the module's tests)
#   scripts/gpu_check.sh [--quick]          # there: tests, naf_cuda_bench, PyTorch peer on CUDA
#   scripts/gpu_check.sh --first            # there: a session's first call, ~5 min: kernel and module
#                                           #   tests, the attention kernels at paper and x72, every
#                                           #   configuration in TF32 and FP16
#   scripts/gpu_check.sh --second           # there: sanitizers on the attention kernels, an ncu
#                                           #   profile at x72 FP16, the PyTorch peer at paper
#
# Logs and JSON lines go to $OUT (the device tool's result folder) or ./build-gpu/results.
# Carry build-gpu/bin-cudnn, build-gpu/bin-nocudnn and build-gpu/module-bundle.tar.xz.
# NAF_GPU_RACECHECK=1 also runs the attention kernels' tests under compute-sanitizer (memcheck,
# racecheck, synccheck; NAF_GPU_SANITIZE_FILTER picks the tests, NAF_GPU_SANITIZE_KERNELS the
# kernels racecheck instruments, a name substring: by default "AttentionKernel", the attention
# kernels only, since racecheck on every kernel of a test ran past 60 s; set but empty: every
# kernel. memcheck and synccheck instrument every kernel). NAF_GPU_TESTS_ONLY=1 stops after
# the tests (a first call that checks correctness in a few minutes; the timings in a second one).
# NAF_GPU_TEST_FILTER: the gtest filter of the CUDA tests (default Cuda*). NAF_GPU_MODULE=0 skips
# the module's tests (NAF_GPU_MODULE_FILTER: their gtest filter); NAF_GPU_SKIP_TESTS=1 all tests;
# NAF_GPU_SKIP_BENCH=1 the default and builtin timing runs.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

# The module's tests (cv::naf over OpenCV) with the CUDA backend, for a machine without OpenCV:
# build-gpu/module-bundle.tar.xz holds naf_module_tests (sm_90, no ximgproc: its imgcodecs
# dependency chain is ~200 MB), the OpenCV libraries it loads and theirs, except the C/C++ runtime
# and CUDA's (that machine's own), the ONNX graphs of the cv::dnn tests, and the source root whose
# absolute paths the tests were compiled with (run_module_bundle links it to the checkout there).
build_module_bundle()
{
    local build=build-gpu/module bundle=build-gpu/module-bundle
    cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNAF_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
        -DNAF_WITH_XIMGPROC=OFF -DNAF_WITH_APP=OFF -DNAF_BUILD_BENCHMARKS=OFF -DNAF_BUILD_EXAMPLES=OFF \
        -DNAF_BUILD_FUZZERS=OFF >/dev/null
    cmake --build $build --target naf_module_tests
    /usr/bin/python3 tools/make_naf_onnx.py --test-set $build/tests/onnx \
        --weights tests/data/golden/weights_seed0.safetensors >/dev/null
    rm -rf $bundle && mkdir -p $bundle/lib
    cp $build/tests/naf_module_tests $bundle/
    cp -r $build/tests/onnx $bundle/onnx
    echo "$ROOT" > $bundle/source_root
    # Left out: the C/C++ runtime and CUDA's libraries, which the GPU machine has (newer ones).
    local left_out='/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s)\.so|/cuda/'
    ldd $build/tests/naf_module_tests | awk '$3 ~ /^\// {print $3}' | grep -v -E "$left_out" |
        while read -r lib; do cp -L "$lib" $bundle/lib/; done
    # Every library the tests load must now come from the bundle or be one of those left out.
    local outside
    outside=$(LD_LIBRARY_PATH=$bundle/lib ldd $bundle/naf_module_tests | awk '$3 ~ /^\// {print $3}' |
        grep -v -E "^$bundle/lib/|$left_out" || true)
    if [ -n "$outside" ]; then echo "module bundle: not self-contained: $outside"; exit 1; fi
    tar -C build-gpu -cJf build-gpu/module-bundle.tar.xz module-bundle
    du -sh build-gpu/module-bundle.tar.xz
}

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
    build_module_bundle
    exit 0
fi

# The module's tests from build-gpu/module-bundle.tar.xz: with a GPU, BACKEND_AUTO is the CUDA
# engine, so every API test that does not pin the CPU goes through the module's CUDA dispatch.
run_module_bundle()
{
    local tarball=build-gpu/module-bundle.tar.xz dir=/tmp/naf-module-bundle
    if [ ! -f $tarball ]; then
        echo "no $tarball (scripts/gpu_check.sh --build here, then carry it): module tests not run"
        return
    fi
    rm -rf $dir && mkdir -p $dir && tar -C $dir -xJf $tarball
    local b=$dir/module-bundle
    local root
    root=$(cat $b/source_root)
    if [ "$root" != "$ROOT" ]; then
        if [ -e "$root" ] && [ ! -L "$root" ]; then
            echo "module tests: $root (their compiled data paths) exists and is not this checkout"
        else
            mkdir -p "$(dirname "$root")" && ln -sfn "$ROOT" "$root"
        fi
    fi
    mkdir -p build-gpu/module/tests && rm -rf build-gpu/module/tests/onnx && cp -r $b/onnx build-gpu/module/tests/onnx
    local missing
    missing=$(LD_LIBRARY_PATH="$b/lib:$LD_LIBRARY_PATH" ldd $b/naf_module_tests | grep "not found")
    if [ -n "$missing" ]; then
        echo "module tests not run: libraries not found (the bundle is built with cuDNN):"
        echo "$missing"
        return
    fi
    LD_LIBRARY_PATH="$b/lib:$LD_LIBRARY_PATH" timeout 150 $b/naf_module_tests \
        --gtest_filter="${NAF_GPU_MODULE_FILTER:-*}" > "$RESULTS/module_tests.log" 2>&1
    echo "module tests: exit $?"
    grep -E "^\[  (FAILED|SKIPPED|PASSED) |Failure|Expected|Which|actual|error" "$RESULTS/module_tests.log" | head -60
}

QUICK=0; [ "${1:-}" = "--quick" ] && QUICK=1
# Presets for the two calls of a session with 15 minutes of device time (each ~5 min, so that one
# can be rerun): what the caller's environment sets wins.
case "${1:-}" in
    --first)
        export NAF_GPU_CONFIGS="${NAF_GPU_CONFIGS-paper,x32,mobilesam,x72,dinov2}"
        export NAF_GPU_MODES="${NAF_GPU_MODES-tf32,fp16}"
        export NAF_GPU_BUILTIN_CONFIGS="${NAF_GPU_BUILTIN_CONFIGS-}"
        export NAF_GPU_TORCH_CONFIGS="${NAF_GPU_TORCH_CONFIGS-}"
        export NAF_GPU_NCHW_RUNS="${NAF_GPU_NCHW_RUNS-}"
        export NAF_GPU_ATTENTION_RUNS="${NAF_GPU_ATTENTION_RUNS-measured:paper,x72,dinov2:fp16 tiled:paper,x72:fp16 tiled-chunked:paper,x72:fp16}"
        ;;
    --second)
        export NAF_GPU_SKIP_TESTS="${NAF_GPU_SKIP_TESTS-1}" NAF_GPU_RACECHECK="${NAF_GPU_RACECHECK-1}"
        export NAF_GPU_SKIP_BENCH="${NAF_GPU_SKIP_BENCH-1}" NAF_GPU_SANITIZE_TIMEOUT="${NAF_GPU_SANITIZE_TIMEOUT-90}"
        export NAF_GPU_ATTENTION_RUNS="${NAF_GPU_ATTENTION_RUNS-}" NAF_GPU_NCHW_RUNS="${NAF_GPU_NCHW_RUNS-}"
        export NAF_GPU_TORCH_CONFIGS="${NAF_GPU_TORCH_CONFIGS-paper}"
        export NAF_GPU_NCU="${NAF_GPU_NCU-1}" NAF_GPU_NCU_RUNS="${NAF_GPU_NCU_RUNS-x72:fp16}"
        ;;
esac
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

if [ "${NAF_GPU_SKIP_TESTS:-0}" != 1 ]; then
    echo "== tests (CUDA against the CPU path)"
    timeout 200 "$BIN/naf_kernels_tests" --gtest_filter="${NAF_GPU_TEST_FILTER:-Cuda*}" 2>&1 | tee "$RESULTS/tests.log" | grep -E "^\[ cuda|^\[ mismatch|OK|FAIL|PASSED|error|Failure|rel L2|Expected|Which|actual" | head -120
    if [ "${NAF_GPU_MODULE:-1}" = 1 ]; then
        echo "== module tests (cv::naf, BACKEND_AUTO = CUDA)"
        run_module_bundle
    fi
fi

if [ "${NAF_GPU_RACECHECK:-0}" = 1 ]; then
    # The shared-memory kernels under compute-sanitizer (races, barrier misuse): slow, so only
    # their own tests.
    # memcheck: out-of-bounds and misaligned global and shared accesses.
    SANITIZER=$(command -v compute-sanitizer || find /usr/local/cuda* -name compute-sanitizer -type f 2>/dev/null | head -1)
    KERNELS="${NAF_GPU_SANITIZE_KERNELS-AttentionKernel}"
    KERNEL_FILTER=(); [ -n "$KERNELS" ] && KERNEL_FILTER=(--kernel-name "kns=$KERNELS")
    for tool in memcheck racecheck synccheck; do
        FILTER=(); [ $tool = racecheck ] && FILTER=("${KERNEL_FILTER[@]}")
        echo "== compute-sanitizer --tool $tool ${FILTER[*]}"
        [ -z "$SANITIZER" ] && { echo "compute-sanitizer not found"; break; }
        timeout "${NAF_GPU_SANITIZE_TIMEOUT:-150}" "$SANITIZER" --tool $tool "${FILTER[@]}" --print-limit 20 "$BIN/naf_kernels_tests" \
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
BUILTIN_CONFIGS=${NAF_GPU_BUILTIN_CONFIGS-paper,mobilesam}  # set but empty: none; [ $QUICK = 1 ] && BUILTIN_CONFIGS=paper
TORCH_CONFIGS=${NAF_GPU_TORCH_CONFIGS-paper mobilesam x32 x72}  # set but empty: no PyTorch run; [ $QUICK = 1 ] && TORCH_CONFIGS=paper
MODES=${NAF_GPU_MODES:-fp32,tf32,fp16}
touch "$RESULTS/bench.jsonl"
if [ "${NAF_GPU_SKIP_BENCH:-0}" != 1 ]; then
    timeout 260 "$BIN/naf_cuda_bench" --configs "$CONFIGS" --modes "$MODES" --paths auto --reps 20 --warmup 3 \
        --max-seconds 4 --roundtrip-reps 1 | tee -a "$RESULTS/bench.jsonl"
    [ -n "$BUILTIN_CONFIGS" ] && timeout 80 "$BIN/naf_cuda_bench" --configs "$BUILTIN_CONFIGS" --modes "$MODES" \
        --paths builtin --reps 10 --warmup 2 --max-seconds 3 --roundtrip-reps 0 | tee -a "$RESULTS/bench.jsonl"
fi
# The attention kernels one by one (Engine::setAttentionKernel; the default, auto, picks per size and
# device, mostly the tensor-core cell kernel), for the comparison in PERFORMANCE.md: kernel:configs:modes, e.g.
# NAF_GPU_ATTENTION_RUNS="general:paper:tf32"; set but empty: none.
# The default (auto) is the tensor-core cell kernel where it runs (GPU item 31); measured first, so
# that a card where another kernel wins shows it even when the device time runs short.
for run in ${NAF_GPU_ATTENTION_RUNS-measured:paper,x32,mobilesam,x72,dinov2:fp16 tiled:paper,x32,mobilesam,x72,dinov2:tf32,fp16 tiled-chunked:paper,x72,dinov2:fp16 cell:paper,x72,dinov2:fp16}; do
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
[ -n "$TORCH_CONFIGS" ] && python3 -c "import torch; print('torch', torch.__version__, 'cudnn', torch.backends.cudnn.version())"
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
