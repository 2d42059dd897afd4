// Cross-scale neighborhood attention on the CPU. Keys and values stay at low resolution: each
// output pixel reads its kh x kw window through per-axis index tables built from window.hpp.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "naf_kernels/naf_kernels.hpp"
#include "simd_dispatch.hpp"
#include "simd_vec.hpp"

namespace naf {
namespace kernels {

namespace {

struct AttentionGeometry
{
    int dim, channels, heads, headDim, headValues;
    int lowH, lowW, outH, outW, kh, kw;
    float scale;
    // Output planes below this one may be streamed (non-temporal stores); the planes from here on
    // hold the queries when these lie in the output: their lines were just read into the cache
    // for this run's queries, so a plain store is cheaper than a streaming one, which would evict
    // them.
    int streamedPlanes;
    std::vector<int> rowIndex;  // [outH * kh]
    std::vector<int> colIndex;  // [outW * kw]
};

std::vector<int> axisTable(int outLen, int lowLen, int kernel)
{
    std::vector<int> table(static_cast<size_t>(outLen) * kernel);
    for (int i = 0; i < outLen; ++i)
        for (int t = 0; t < kernel; ++t) table[static_cast<size_t>(i) * kernel + t] = neighborLowIndex(i, t, outLen, lowLen, kernel);
    return table;
}

// Softmax attention of one output pixel for one head; writes probabilities to `weights`.
NAF_ALWAYS_INLINE inline void pixelHeadWeights(const AttentionGeometry& g, const float* query, const float* keysT,
                                               const int* rows, const int* cols, float* weights)
{
    float maxLogit = -INFINITY;
    for (int a = 0; a < g.kh; ++a)
    {
        const float* keyRow = keysT + static_cast<size_t>(rows[a]) * g.lowW * g.dim;
        for (int b = 0; b < g.kw; ++b)
        {
            const float* key = keyRow + static_cast<size_t>(cols[b]) * g.dim;
            float dot = 0.f;
            for (int c = 0; c < g.headDim; ++c) dot += query[c] * key[c];
            const float logit = dot * g.scale;
            weights[a * g.kw + b] = logit;
            maxLogit = std::max(maxLogit, logit);
        }
    }
    const int n = g.kh * g.kw;
    float sum = 0.f;
    for (int t = 0; t < n; ++t)
    {
        weights[t] = std::exp(weights[t] - maxLogit);
        sum += weights[t];
    }
    const float inv = 1.f / sum;
    for (int t = 0; t < n; ++t) weights[t] *= inv;
}

// 64-byte aligned vectors (std::vector<Vec16> does not guarantee the alignment of Vec16).
class VecBuffer
{
public:
    template <class V>
    V* resize(size_t n)
    {
        storage_.resize((n + 1) * 16);
        const uintptr_t p = reinterpret_cast<uintptr_t>(storage_.data());
        return reinterpret_cast<V*>((p + 63) & ~static_cast<uintptr_t>(63));
    }

private:
    std::vector<float> storage_;
};

struct RowScratch
{
    VecBuffer queryBlock;      // [headDim]: the run's queries of one head, lane = pixel
    VecBuffer logits;          // [kh * kw]: logits, then probabilities, lane = pixel
    std::vector<int> keyPixel; // [kh * kw]: low-res pixel of each window entry
};

// A run is the pixels computed together, one vector lane each: 16 with AVX-512 (Vec16), 8 with
// AVX2 (Vec8), 4 on the baseline (Vec4). A Vec16 outside AVX-512 functions is kept in memory by
// GCC: the AVX2 attention took 11x the AVX-512 one before it ran on Vec8 (PERFORMANCE item 47).
template <class V>
constexpr int runLength()
{
    return static_cast<int>(sizeof(V) / sizeof(float));
}

// len floats of a run to or from lanes 0..len-1: one vector load or store for a full run, one
// masked load or store for a partial run with AVX-512 (kAvx512). A variable-length memcpy
// compiles to `rep movs`: it took 40 % of the attention at 896x896 when runs were split, and
// 518x518 (14-pixel cells, so every run partial) spent 1/3 of its time in it (PERFORMANCE item 32).
template <bool kAvx512, class V>
NAF_ALWAYS_INLINE inline void loadRun(V& v, const float* p, int len)
{
    if (len == runLength<V>())
    {
        std::memcpy(&v, p, sizeof v);
        return;
    }
#if NAF_X86_SIMD
    if constexpr (kAvx512)
    {
        loadPartialAvx512(v, p, len);
        return;
    }
#endif
    v = V{};
    std::memcpy(&v, p, sizeof(float) * len);
}

template <bool kAvx512, class V>
NAF_ALWAYS_INLINE inline void storeRun(float* p, const V& v, int len)
{
    if (len == runLength<V>())
        std::memcpy(p, &v, sizeof v);
#if NAF_X86_SIMD
    else if constexpr (kAvx512)
        storePartialAvx512(p, v, len);
#endif
    else
        std::memcpy(p, &v, sizeof(float) * len);
}

// An output run: the output is written once and read by no later step of the forward, so with
// AVX-512 a full run that is one whole cache line skips the read for ownership (the caller fences
// at the end of its rows). Other runs are stored as before: split across two lines, they would go
// out as two partial copies.
template <bool kAvx512, class V>
NAF_ALWAYS_INLINE inline void storeOutputRun(float* p, const V& v, int len, bool stream)
{
#if NAF_X86_SIMD
    if constexpr (kAvx512)
        if (stream && len == runLength<V>() && (reinterpret_cast<uintptr_t>(p) & 63) == 0)
        {
            streamLineAvx512(p, v);
            return;
        }
#endif
    storeRun<kAvx512>(p, v, len);
}

// Register blocking per ISA: KG window entries (logits) and VG value channels per step for R
// sub-runs (R x KG and R x VG independent FMA chains). kWideRuns: a run may be RX = 2 vectors wide
// (16 pixels, a whole cache line, with AVX2's 8-pixel vectors).
struct Avx512Blocking
{
    static constexpr bool kAvx512 = true, kWideRuns = false;
    static constexpr int group(int) { return 8; }  // 32 zmm registers: 2 rows x 8
};
// 16 ymm registers: 8 chains for one sub-run, 6 x 2 or 3 x 4 for more, with the operands and the
// broadcast (AVX2 pairs: 8 loads per 12 FMAs instead of 9 per 8, PERFORMANCE item 48).
struct Avx2Blocking
{
    static constexpr bool kAvx512 = false, kWideRuns = true;
    static constexpr int group(int subRuns) { return subRuns == 1 ? 8 : (subRuns == 2 ? 6 : 3); }
};
struct GenericBlocking
{
    static constexpr bool kAvx512 = false, kWideRuns = false;
    static constexpr int group(int) { return 8; }
};

// The logits of KG window entries for R sub-runs: per channel, one broadcast of each key feeds
// every sub-run (R x KG independent FMA chains).
template <int R, int KG, class V>
NAF_ALWAYS_INLINE inline void logitGroup(const AttentionGeometry& g, const float* keysT, const int* keyPixel, int h,
                                         const V* queryBlock, V* logits, int n)
{
    const float* k[KG];
    for (int i = 0; i < KG; ++i) k[i] = keysT + static_cast<size_t>(keyPixel[i]) * g.dim + h * g.headDim;
    // Zeroed one by one: `= {}` on the array became a `rep stos` on the stack in every call, 6 % of
    // the AVX2 attention's samples (item 49).
    V d[R][KG];
    for (int r = 0; r < R; ++r)
        for (int i = 0; i < KG; ++i) d[r][i] = V{};
    for (int c = 0; c < g.headDim; ++c)
        for (int i = 0; i < KG; ++i)
        {
            const float kc = k[i][c];
            for (int r = 0; r < R; ++r) d[r][i] += queryBlock[r * g.headDim + c] * kc;
        }
    for (int r = 0; r < R; ++r)
        for (int i = 0; i < KG; ++i) logits[r * n + i] = d[r][i] * g.scale;
}

// The weighted sum of VG value channels from cv for RY rows x RX runs (sub-run r = ry RX + rx),
// in window order, stored channel-major (R x VG independent FMA chains; each value broadcast
// feeds every sub-run). An AVX2 wide run (RX = 2) whose two halves are full and make one whole
// line goes out with non-temporal stores, as AVX-512's full runs do.
template <int RY, int RX, int VG, class B, class V>
NAF_ALWAYS_INLINE inline void valueBlock(const AttentionGeometry& g, const float* vHead, const int* keyPixel,
                                         const V* logits, int n, float* outHead, int h, int cv, const int* lens)
{
    constexpr int R = RY * RX, kRun = runLength<V>();
    const size_t outPlane = static_cast<size_t>(g.outH) * g.outW;
    V acc[R][VG];
    for (int r = 0; r < R; ++r)
        for (int i = 0; i < VG; ++i) acc[r][i] = V{};
    for (int t = 0; t < n; ++t)
    {
        const float* v = vHead + static_cast<size_t>(keyPixel[t]) * g.channels + cv;
        for (int i = 0; i < VG; ++i)
        {
            const float vi = v[i];
            for (int r = 0; r < R; ++r) acc[r][i] += logits[r * n + t] * vi;
        }
    }
    for (int ry = 0; ry < RY; ++ry)
        for (int i = 0; i < VG; ++i)
        {
            float* p = outHead + (cv + i) * outPlane + static_cast<size_t>(ry) * g.outW;
            const bool stream = h * g.headValues + cv + i < g.streamedPlanes;
#if NAF_X86_SIMD
            if constexpr (RX == 2 && sizeof(V) == 32)
                if (stream && lens[1] == kRun && (reinterpret_cast<uintptr_t>(p) & 63) == 0)
                {
                    streamLineAvx2(p, acc[ry * RX][i], acc[ry * RX + 1][i]);
                    continue;
                }
#endif
            for (int rx = 0; rx < RX; ++rx)
                storeOutputRun<B::kAvx512>(p + rx * kRun, acc[ry * RX + rx][i], lens[rx], stream);
        }
}

// One run of RY rows x RX vectors of pixels from x0 (lens[rx] pixels in vector rx; all of them
// share one window, whose low-res pixels are s.keyPixel).
template <int RY, int RX, class B, class V>
NAF_ALWAYS_INLINE inline void attentionRun(const AttentionGeometry& g, const float* queries, const float* keysT,
                                           const float* valuesT, float* out, int y, int x0, const int* lens,
                                           RowScratch& s)
{
    constexpr int R = RY * RX, KG = B::group(R), VG = B::group(R), kRun = runLength<V>();
    const size_t outPlane = static_cast<size_t>(g.outH) * g.outW;
    const int n = g.kh * g.kw;
    // Sized for the row's widest runs, so that narrow and wide runs in turn do not grow the buffers
    // again (each growth would zero the new part).
    constexpr int kMaxSubRuns = RY * (B::kWideRuns ? 2 : 1);
    V* const queryBlock = s.queryBlock.resize<V>(static_cast<size_t>(kMaxSubRuns) * g.headDim);  // [R][headDim]
    V* const logits = s.logits.resize<V>(static_cast<size_t>(kMaxSubRuns) * n);                 // [R][n]
    // Each head reads its queries before it writes its output planes: when the queries lie in
    // the output's last dim planes (forward() with channels >= dim), the planes written by
    // heads 0..h, [0, (h + 1) * headValues), stay below head h + 1's queries, which start at
    // channels - dim + (h + 1) * headDim, as headValues >= headDim.
    for (int h = 0; h < g.heads; ++h)
    {
        for (int ry = 0; ry < RY; ++ry)
            for (int rx = 0; rx < RX; ++rx)
            {
                const size_t pixel0 = static_cast<size_t>(y + ry) * g.outW + x0 + rx * kRun;
                const int r = ry * RX + rx;
                for (int c = 0; c < g.headDim; ++c)
                    loadRun<B::kAvx512>(queryBlock[r * g.headDim + c],
                                        queries + (static_cast<size_t>(h) * g.headDim + c) * outPlane + pixel0,
                                        lens[rx]);
            }
        // Logits, KG window entries at a time (KG independent FMA chains per sub-run), then one.
        int j = 0;
        for (; j + KG <= n; j += KG) logitGroup<R, KG>(g, keysT, s.keyPixel.data() + j, h, queryBlock, logits + j, n);
        for (; j < n; ++j) logitGroup<R, 1>(g, keysT, s.keyPixel.data() + j, h, queryBlock, logits + j, n);
        // Softmax per lane, in the order of the scalar code.
        for (int r = 0; r < R; ++r)
        {
            V* lr = logits + r * n;
            V maxLogit = lr[0];
            for (int t = 1; t < n; ++t) maxLogit = lr[t] > maxLogit ? lr[t] : maxLogit;
            V sum = {};
            // exp(x) for x < -60 is set to 0: its weight (< 1e-26 of the largest) cannot
            // change a float sum, while tiny and subnormal weights make every later FMA slow.
            for (int t = 0; t < n; ++t)
            {
                const V x = lr[t] - maxLogit;
                V e;
                expVec(e, x);
                e = x < -60.f ? V{} : e;
                lr[t] = e;
                sum += e;
            }
            const int len = lens[r % RX];
            V inv;
            for (int lane = 0; lane < kRun; ++lane) inv[lane] = lane < len ? 1.f / sum[lane] : 0.f;
            for (int t = 0; t < n; ++t) lr[t] *= inv;
        }
        // Weighted sum of the values, stored channel-major.
        const float* vHead = valuesT + static_cast<size_t>(h) * g.headValues;
        float* outHead = out + static_cast<size_t>(h) * g.headValues * outPlane + static_cast<size_t>(y) * g.outW + x0;
        // VG value channels at a time (R x VG accumulators), then 4, then one.
        int cv = 0;
        for (; cv + VG <= g.headValues; cv += VG)
            valueBlock<RY, RX, VG, B>(g, vHead, s.keyPixel.data(), logits, n, outHead, h, cv, lens);
        if constexpr (VG > 4)
            for (; cv + 4 <= g.headValues; cv += 4)
                valueBlock<RY, RX, 4, B>(g, vHead, s.keyPixel.data(), logits, n, outHead, h, cv, lens);
        for (; cv < g.headValues; ++cv)
            valueBlock<RY, RX, 1, B>(g, vHead, s.keyPixel.data(), logits, n, outHead, h, cv, lens);
    }
}

// RY consecutive output rows that share their row table (RY = 1, or 2 when the rows fall in the
// same low-res cell row). Consecutive pixels of a row that share the same window (the same column
// table) form a run of up to 16; a run is computed with one vector lane per pixel, so the keys and
// values of the window are loaded once per run and broadcast, and with RY = 2 each broadcast feeds
// both rows' runs (half the loads per FMA). With AVX2 (kWideRuns) a run of 9 to 16 pixels is two
// 8-pixel vectors, so that a whole 64-byte line of the output goes out at once. Each lane performs
// exactly the scalar sequence of operations of one pixel (dot products as sequential FMA chains
// over channels, softmax, weighted sum in window order), so results do not depend on how pixels
// or rows are grouped, nor on the thread count.
template <int RY, class B, class V>
NAF_ALWAYS_INLINE inline void attentionRowsImpl(const AttentionGeometry& g, const float* queries, const float* keysT,
                                                const float* valuesT, float* out, int y, RowScratch& s)
{
    const int n = g.kh * g.kw;
    constexpr int kRun = runLength<V>();
    constexpr int kMaxRun = B::kWideRuns ? 2 * kRun : kRun;   // pixels of one run
    constexpr bool kLineRuns = B::kAvx512 || B::kWideRuns;    // a full run is one 64-byte line
    const size_t outPlane = static_cast<size_t>(g.outH) * g.outW;
    s.keyPixel.resize(n);
    const int* rows = g.rowIndex.data() + static_cast<size_t>(y) * g.kh;
    for (int x0 = 0; x0 < g.outW;)
    {
        const int* cols = g.colIndex.data() + static_cast<size_t>(x0) * g.kw;
        int span = 1;  // pixels from x0 with this window, up to three runs' worth
        while (span < 3 * kMaxRun && x0 + span < g.outW &&
               std::equal(cols, cols + g.kw, g.colIndex.data() + static_cast<size_t>(x0 + span) * g.kw))
            ++span;
        int len = std::min(span, kMaxRun);
        // A run that starts inside a 64-byte line of the output and would run into the next line
        // stops at that line's end when two whole runs of the same window follow it: those runs
        // are then whole lines, streamed, instead of two partial lines each (read for ownership,
        // no streaming store). Cells whose width is not a multiple of 16 pixels (72 at x72) start
        // mid-line every other cell. With one whole run after it, the split only traded a
        // misaligned full run for a partial one: 10 % slower at 1000x1000 from 28x28 (item 37).
        if constexpr (kLineRuns)
        {
            const int intoLine = static_cast<int>(
                (reinterpret_cast<uintptr_t>(out + static_cast<size_t>(y) * g.outW + x0) >> 2) & (kMaxRun - 1));
            if (intoLine != 0 && len > kMaxRun - intoLine && span >= 3 * kMaxRun - intoLine) len = kMaxRun - intoLine;
        }
        for (int a = 0; a < g.kh; ++a)
            for (int b = 0; b < g.kw; ++b) s.keyPixel[a * g.kw + b] = rows[a] * g.lowW + cols[b];
        // The next run's queries (dim planes per row, one or two cache lines each) are read from
        // DRAM: ask for them now, while this run computes (its query loads were 18 % of the time).
        // Into L2, not L1: planes a multiple of 4 KB apart share L1 sets, so 2 x 256 prefetched
        // lines evicted each other there (x32 -5 %, PERFORMANCE item 26).
        if (x0 + len < g.outW)
        {
            const int last = std::min(g.outW, x0 + len + kMaxRun) - 1;
            for (int r = 0; r < RY; ++r)
            {
                const float* next = queries + static_cast<size_t>(y + r) * g.outW;
                for (int c = 0; c < g.dim; ++c)
                {
                    const float* plane = next + static_cast<size_t>(c) * outPlane;
                    __builtin_prefetch(plane + x0 + len, 0, 2);
                    __builtin_prefetch(plane + last, 0, 2);
                }
            }
        }
        if (len > kRun)
        {
            if constexpr (B::kWideRuns)
            {
                const int lens[2] = {kRun, len - kRun};
                attentionRun<RY, 2, B, V>(g, queries, keysT, valuesT, out, y, x0, lens, s);
            }
        }
        else
        {
            const int lens[1] = {len};
            attentionRun<RY, 1, B, V>(g, queries, keysT, valuesT, out, y, x0, lens, s);
        }
        x0 += len;
    }
}

// AVX-512 and AVX2 take two rows at a time where they share a row table, the portable path one.
// AVX-512: 32 vector registers hold 8 x 2 accumulators; flatten: the masked loads and stores of
// partial runs (simd_vec.hpp) are inlined here, not called.
NAF_TARGET_AVX512 __attribute__((flatten)) void attentionRowsAvx512(const AttentionGeometry& g, const float* q, const float* kT,
                                           const float* vT, float* out, int y, int rows, RowScratch& s)
{
    if (rows == 2)
        attentionRowsImpl<2, Avx512Blocking, Vec16>(g, q, kT, vT, out, y, s);
    else
        attentionRowsImpl<1, Avx512Blocking, Vec16>(g, q, kT, vT, out, y, s);
}

// Pairs of rows and wide runs (Avx2Blocking): up to 2 x 2 sub-runs of 8 pixels.
NAF_TARGET_AVX2 void attentionRowsAvx2(const AttentionGeometry& g, const float* q, const float* kT, const float* vT,
                                       float* out, int y, int rows, RowScratch& s)
{
    if (rows == 2)
        attentionRowsImpl<2, Avx2Blocking, Vec8>(g, q, kT, vT, out, y, s);
    else
        attentionRowsImpl<1, Avx2Blocking, Vec8>(g, q, kT, vT, out, y, s);
}

void attentionRowGeneric(const AttentionGeometry& g, const float* q, const float* kT, const float* vT, float* out,
                         int y, RowScratch& s)
{
    attentionRowsImpl<1, GenericBlocking, Vec4>(g, q, kT, vT, out, y, s);
}

// [c, n] -> [n, c]
std::vector<float> toPixelMajor(const float* src, int c, size_t n)
{
    std::vector<float> dst(static_cast<size_t>(c) * n);
    for (int ch = 0; ch < c; ++ch)
        for (size_t i = 0; i < n; ++i) dst[i * c + ch] = src[static_cast<size_t>(ch) * n + i];
    return dst;
}

}  // namespace

void neighborhoodAttention(const float* queries, const float* keys, const float* values, float* out, int dim,
                           int channels, int heads, int lowH, int lowW, int outH, int outW, int kernelSize,
                           float scale, const ParallelFor& parallel, AttentionProbe* probe)
{
    if (heads <= 0 || dim % heads != 0 || channels % heads != 0)
        throw std::invalid_argument("neighborhoodAttention: dim " + std::to_string(dim) + " and channels " +
                                    std::to_string(channels) + " must be divisible by heads " +
                                    std::to_string(heads));
    if (lowH <= 0 || lowW <= 0 || outH < lowH || outW < lowW)
        throw std::invalid_argument("neighborhoodAttention: output " + std::to_string(outH) + "x" +
                                    std::to_string(outW) + " must be at least the low-res grid " +
                                    std::to_string(lowH) + "x" + std::to_string(lowW));
    if (kernelSize < 1 || kernelSize % 2 == 0)
        throw std::invalid_argument("neighborhoodAttention: kernel size must be odd and >= 1, got " +
                                    std::to_string(kernelSize));
    AttentionGeometry g;
    g.dim = dim;
    g.channels = channels;
    g.heads = heads;
    g.headDim = dim / heads;
    g.headValues = channels / heads;
    g.lowH = lowH;
    g.lowW = lowW;
    g.outH = outH;
    g.outW = outW;
    g.kh = effectiveKernel(kernelSize, lowH);
    g.kw = effectiveKernel(kernelSize, lowW);
    g.scale = scale;
    const size_t outPlane = static_cast<size_t>(outH) * outW;
    const uintptr_t q = reinterpret_cast<uintptr_t>(queries), o = reinterpret_cast<uintptr_t>(out);
    const bool queriesInOut = q >= o && q < o + sizeof(float) * channels * outPlane;
    g.streamedPlanes = queriesInOut ? static_cast<int>((q - o) / (sizeof(float) * outPlane)) : channels;
    g.rowIndex = axisTable(outH, lowH, g.kh);
    g.colIndex = axisTable(outW, lowW, g.kw);

    const size_t lowPlane = static_cast<size_t>(lowH) * lowW;
    const std::vector<float> keysT = toPixelMajor(keys, dim, lowPlane);
    const std::vector<float> valuesT = toPixelMajor(values, channels, lowPlane);
    const bool avx512 = cpuHasAvx512f(), avx2 = cpuHasAvx2Fma();
    if (probe && (probe->y < 0 || probe->y >= outH || probe->x < 0 || probe->x >= outW))
        throw std::invalid_argument("neighborhoodAttention: probe pixel (x=" + std::to_string(probe->x) + ", y=" +
                                    std::to_string(probe->y) + ") outside the " + std::to_string(outW) + "x" +
                                    std::to_string(outH) + " output");

    // Work items: single rows, or with AVX-512 or AVX2 pairs of consecutive rows with the same row
    // table.
    std::vector<int> firstRow;
    firstRow.reserve(outH);
    for (int y = 0; y < outH;)
    {
        firstRow.push_back(y);
        const bool pair = (avx512 || avx2) && y + 1 < outH &&
                          std::equal(g.rowIndex.begin() + static_cast<size_t>(y) * g.kh,
                                     g.rowIndex.begin() + static_cast<size_t>(y + 1) * g.kh,
                                     g.rowIndex.begin() + static_cast<size_t>(y + 1) * g.kh);
        y += pair ? 2 : 1;
    }
    firstRow.push_back(outH);
    // The probe pixel's query, read before the output is written: the queries may lie in it.
    std::vector<float> probeQuery;
    if (probe)
    {
        probeQuery.resize(dim);
        for (int c = 0; c < dim; ++c)
            probeQuery[c] = queries[c * outPlane + static_cast<size_t>(probe->y) * outW + probe->x];
    }
    parallel(static_cast<int64_t>(firstRow.size()) - 1, [&](int64_t begin, int64_t end) {
        RowScratch scratch;
        for (int64_t item = begin; item < end; ++item)
        {
            const int y = firstRow[item], rows = firstRow[item + 1] - y;
            if (avx512)
                attentionRowsAvx512(g, queries, keysT.data(), valuesT.data(), out, y, rows, scratch);
            else if (avx2)
                attentionRowsAvx2(g, queries, keysT.data(), valuesT.data(), out, y, rows, scratch);
            else
                attentionRowGeneric(g, queries, keysT.data(), valuesT.data(), out, y, scratch);
        }
        if (avx512 || avx2) storeFence();  // the output's non-temporal stores
    });

    if (probe)
    {
        probe->heads = heads;
        probe->kh = g.kh;
        probe->kw = g.kw;
        probe->lowY.assign(g.rowIndex.begin() + static_cast<size_t>(probe->y) * g.kh,
                           g.rowIndex.begin() + static_cast<size_t>(probe->y + 1) * g.kh);
        probe->lowX.assign(g.colIndex.begin() + static_cast<size_t>(probe->x) * g.kw,
                           g.colIndex.begin() + static_cast<size_t>(probe->x + 1) * g.kw);
        probe->weights.assign(static_cast<size_t>(heads) * g.kh * g.kw, 0.f);
        for (int h = 0; h < heads; ++h)
            pixelHeadWeights(g, probeQuery.data() + h * g.headDim, keysT.data() + h * g.headDim, probe->lowY.data(),
                             probe->lowX.data(), probe->weights.data() + static_cast<size_t>(h) * g.kh * g.kw);
    }
}

}  // namespace kernels
}  // namespace naf
