// Fuzz target: the per-image record a batch export reads back to skip finished images
// (`<out>/<stem>.json`, naf_app::recordedOutputs). Any text must give a list of outputs or none,
// never an exception or a crash.
#include <cstdint>
#include <string>

#include "naf_app/batch.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    const std::string text(reinterpret_cast<const char*>(data), size);
    const std::string settings = R"({"vfm":"mobilesam","methods":["bilinear","naf"],"size":448})";
    const std::string stamp = R"({"size":1234,"mtime":5678})";
    const auto outputs = naf_app::recordedOutputs(text, settings, stamp);
    for (const std::string& o : outputs) (void)o.size();
    return 0;
}
