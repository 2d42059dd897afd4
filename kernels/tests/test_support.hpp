// Test support for the standalone kernel tests: seeded random weights/tensors and error metrics.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "naf_kernels/naf_kernels.hpp"

namespace naf {
namespace kernels {
namespace testing {

/// Deterministic uniform floats in [lo, hi) (mt19937 with our own mapping, portable).
inline std::vector<float> randomUniform(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f)
{
    std::mt19937 rng(seed);
    std::vector<float> v(n);
    for (auto& x : v) x = lo + (hi - lo) * static_cast<float>(rng() >> 8) * (1.0f / 16777216.0f);
    return v;
}

/// NAF weights with owned host storage, random but reproducible (PyTorch-like fan-in scale).
struct RandomNafWeights
{
    NafConfig cfg;
    std::vector<std::vector<float>> storage;
    NafWeights view;

    explicit RandomNafWeights(uint32_t seed, const NafConfig& config = NafConfig())
        : cfg(config)
    {
        uint32_t s = seed;
        auto take = [&](size_t n, float lo, float hi) -> const float* {
            storage.push_back(randomUniform(n, s++, lo, hi));
            return storage.back().data();
        };
        auto conv = [&](int cout, int cin, int k) {
            ConvWeights c;
            const float bound = 1.0f / std::sqrt(static_cast<float>(cin * k * k));
            c.weight = take(static_cast<size_t>(cout) * cin * k * k, -bound, bound);
            c.bias = take(cout, -bound, bound);
            c.cout = cout;
            c.cin = cin;
            c.k = k;
            return c;
        };
        auto branch = [&](int k) {
            EncoderBranchWeights b;
            const int hidden = cfg.dim / 2;
            b.stem = conv(hidden, 3, k);
            for (int l = 0; l < cfg.imgLayers; ++l)
            {
                EncBlockWeights blk;
                blk.norm1Gamma = take(hidden, 0.5f, 1.5f);
                blk.norm1Beta = take(hidden, -0.2f, 0.2f);
                blk.conv1 = conv(hidden, hidden, k);
                blk.norm2Gamma = take(hidden, 0.5f, 1.5f);
                blk.norm2Beta = take(hidden, -0.2f, 0.2f);
                blk.conv2 = conv(hidden, hidden, k);
                b.blocks.push_back(blk);
            }
            return b;
        };
        storage.reserve(64);
        view.pointBranch = branch(1);
        view.contextBranch = branch(3);
        const int nPeriods = cfg.dim / cfg.headsRope / 4;
        std::vector<float> periods(nPeriods);
        for (int j = 0; j < nPeriods; ++j)
            periods[j] = std::pow(100.0f, static_cast<float>(2 * j) / static_cast<float>(2 * nPeriods));
        storage.push_back(periods);
        view.ropePeriods = storage.back().data();
    }
};

/// ||a - b|| / ||b||.
inline double relativeL2(const float* a, const float* b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; ++i)
    {
        const double d = static_cast<double>(a[i]) - b[i];
        num += d * d;
        den += static_cast<double>(b[i]) * b[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

/// A forward shape from its sizes (kernel 9 unless given).
inline ForwardShape makeShape(int imageH, int imageW, int channels, int lowH, int lowW, int outH, int outW,
                              int kernel = 9)
{
    ForwardShape s;
    s.imageH = imageH;
    s.imageW = imageW;
    s.channels = channels;
    s.lowH = lowH;
    s.lowW = lowW;
    s.outH = outH;
    s.outW = outW;
    s.kernelSize = kernel;
    return s;
}

}  // namespace testing
}  // namespace kernels
}  // namespace naf
