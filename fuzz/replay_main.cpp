// Runs a fuzz target's LLVMFuzzerTestOneInput() on files, without libFuzzer: used by ctest to
// replay the seed corpus and every regression input (fuzz/regressions/<target>/) in the normal
// and sanitizer builds. Arguments: files or directories (missing directories are skipped).
#include <cstdint>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>


extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv)
{
    std::vector<std::string> files;
    for (int i = 1; i < argc; ++i)
    {
        const std::filesystem::path arg = argv[i];
        if (std::filesystem::is_directory(arg))
        {
            for (const auto& entry : std::filesystem::directory_iterator(arg))
                if (entry.is_regular_file()) files.push_back(entry.path().string());
        }
        else if (std::filesystem::is_regular_file(arg))
            files.push_back(arg.string());
    }
    std::sort(files.begin(), files.end());
    if (files.empty())
    {
        std::fprintf(stderr, "replay: no input files\n");
        return 1;
    }
    for (const std::string& f : files)
    {
        std::ifstream in(f, std::ios::binary);
        const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::printf("replay %s (%zu bytes)\n", f.c_str(), bytes.size());
        std::fflush(stdout);
        LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
    }
    std::printf("replayed %zu inputs without a crash\n", files.size());
    return 0;
}
