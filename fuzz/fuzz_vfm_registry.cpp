// Fuzz target: a model-registry entry (models/vfm/<name>.json, parsed by VfmRegistry::loadFile with
// nlohmann/json and validated field by field). Every input must be accepted as a VfmSpec or
// refused with cv::Exception; an accepted spec must satisfy what the loader promises.
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>

#include <unistd.h>

#include "fuzz_support.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    naf_fuzz::setUpOnce();
    // loadFile reads a path: the registry is files on disk. One scratch file per process.
    static const std::string path = "/tmp/naf_fuzz_registry_" + std::to_string(getpid()) + ".json";
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    }
    try
    {
        const cv::naf::VfmSpec spec = cv::naf::VfmRegistry::loadFile(path);
        if (spec.inputSize <= 0 || spec.stride <= 0 || spec.channels <= 0 || spec.onnxPath.empty())
            __builtin_trap();  // the loader accepted a spec it promises to refuse
    }
    catch (const cv::Exception&)
    {
    }
    std::remove(path.c_str());
    return 0;
}
