#include "size_limits.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <limits>

#include <opencv2/core.hpp>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/naf.hpp>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace cv {
namespace naf {
namespace detail {

namespace {

constexpr size_t kGiB = size_t(1) << 30;

// 0 means "not set yet": the default is computed on first use.
std::atomic<size_t>& budgetSlot()
{
    static std::atomic<size_t> slot{0};
    return slot;
}

size_t physicalMemory()
{
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0 && static_cast<unsigned long>(pages) <= std::numeric_limits<size_t>::max() / page)
        return static_cast<size_t>(pages) * static_cast<size_t>(page);
#endif
    return 0;
}

// "123", "512M", "8G", "1.5G" -> bytes; 0 when unparsable.
size_t parseBytes(const std::string& text)
{
    char* end = nullptr;
    const double value = std::strtod(text.c_str(), &end);
    if (end == text.c_str() || !(value > 0)) return 0;
    double scale = 1;
    switch (std::toupper(static_cast<unsigned char>(*end)))
    {
    case 'K': scale = 1024.0; ++end; break;
    case 'M': scale = 1024.0 * 1024; ++end; break;
    case 'G': scale = 1024.0 * 1024 * 1024; ++end; break;
    case 'T': scale = 1024.0 * 1024 * 1024 * 1024; ++end; break;
    default: break;
    }
    if (std::toupper(static_cast<unsigned char>(*end)) == 'B' || (*end == 'i' && std::toupper(static_cast<unsigned char>(end[1])) == 'B'))
        end += *end == 'i' ? 2 : 1;
    if (*end != '\0') return 0;
    const double bytes = value * scale;
    if (bytes >= static_cast<double>(std::numeric_limits<size_t>::max())) return std::numeric_limits<size_t>::max();
    return static_cast<size_t>(bytes);
}

}  // namespace

size_t checkedProduct(std::initializer_list<int64_t> factors, const std::string& what)
{
    size_t result = 1;
    for (int64_t f : factors)
    {
        if (f < 0) CV_Error(Error::StsOutOfRange, "cv::naf: " + what + ": negative size " + std::to_string(f));
        const size_t u = static_cast<size_t>(f);
        if (u != 0 && result > std::numeric_limits<size_t>::max() / u)
            CV_Error(Error::StsOutOfRange, "cv::naf: " + what + ": size overflows 64 bits");
        result *= u;
    }
    return result;
}

size_t checkedSum(size_t a, size_t b, const std::string& what)
{
    if (a > std::numeric_limits<size_t>::max() - b)
        CV_Error(Error::StsOutOfRange, "cv::naf: " + what + ": size overflows 64 bits");
    return a + b;
}

size_t defaultMemoryBudget()
{
    if (const char* env = std::getenv("NAF_MEMORY_BUDGET"))
    {
        const size_t bytes = parseBytes(env);
        if (bytes > 0) return bytes;
        CV_LOG_WARNING(NULL, "cv::naf: ignoring NAF_MEMORY_BUDGET='" << env << "' (expected bytes, e.g. 4G or 512M)");
    }
    const size_t physical = physicalMemory();
    return physical > 0 ? std::min(8 * kGiB, physical / 2) : 8 * kGiB;
}

size_t memoryBudget()
{
    size_t b = budgetSlot().load();
    if (b == 0)
    {
        size_t expected = 0;
        const size_t d = defaultMemoryBudget();
        budgetSlot().compare_exchange_strong(expected, d);
        b = budgetSlot().load();
    }
    return b;
}

void checkMemoryBudget(size_t requested, const std::string& what, const std::function<std::string()>& hint)
{
    const size_t budget = memoryBudget();
    if (requested <= budget) return;
    const std::string advice = hint ? hint() : std::string();
    CV_Error(Error::StsNoMem, "cv::naf: " + what + " needs " + std::to_string(requested) +
                                  " bytes, more than the memory budget of " + std::to_string(budget) +
                                  " bytes (raise it with cv::naf::NAF::setMemoryBudget() or NAF_MEMORY_BUDGET)" +
                                  (advice.empty() ? std::string() : ". " + advice));
}

}  // namespace detail

void NAF::setMemoryBudget(size_t bytes) { detail::budgetSlot().store(bytes); }

size_t NAF::getMemoryBudget() { return detail::memoryBudget(); }

}  // namespace naf
}  // namespace cv
