// Size arithmetic that cannot overflow silently, and the process-wide memory budget
// (NAF::setMemoryBudget): requests that would need more are refused with cv::Exception before
// anything is allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>

namespace cv {
namespace naf {
namespace detail {

/// Product of the factors; cv::Exception (StsOutOfRange, naming `what`) when it does not fit in
/// size_t or a factor is negative.
size_t checkedProduct(std::initializer_list<int64_t> factors, const std::string& what);
/// a + b; cv::Exception (StsOutOfRange, naming `what`) on overflow.
size_t checkedSum(size_t a, size_t b, const std::string& what);

/// The current budget in bytes (NAF::getMemoryBudget()).
size_t memoryBudget();
/// Default: $NAF_MEMORY_BUDGET when set (bytes, or with a K/M/G/T suffix), else
/// min(8 GiB, half the physical memory).
size_t defaultMemoryBudget();
/// Throws cv::Exception (StsNoMem) stating `requested`, the budget and `what` when
/// requested > memoryBudget(); `hint`, when given, is called only then and its text, if any,
/// ends the message (what the caller could do instead).
void checkMemoryBudget(size_t requested, const std::string& what,
                       const std::function<std::string()>& hint = std::function<std::string()>());

}  // namespace detail
}  // namespace naf
}  // namespace cv
