#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "naf_kernels/naf_kernels.hpp"

namespace naf {
namespace kernels {

ParallelFor serialParallelFor()
{
    return [](int64_t count, const std::function<void(int64_t, int64_t)>& body) {
        if (count > 0) body(0, count);
    };
}

ParallelFor threadParallelFor(int threads)
{
    int n = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
    n = std::max(1, n);
    return [n](int64_t count, const std::function<void(int64_t, int64_t)>& body) {
        if (count <= 0) return;
        const int workers = static_cast<int>(std::min<int64_t>(n, count));
        if (workers == 1)
        {
            body(0, count);
            return;
        }
        // Dynamic scheduling of unit items: the work partition inside each item never depends
        // on which thread runs it, so results are identical for any thread count.
        std::atomic<int64_t> next(0);
        std::exception_ptr error;
        std::mutex errorMutex;
        auto run = [&]() {
            try
            {
                for (int64_t i = next++; i < count; i = next++) body(i, i + 1);
            }
            catch (...)
            {
                std::lock_guard<std::mutex> lock(errorMutex);
                if (!error) error = std::current_exception();
                next = count;
            }
        };
        std::vector<std::thread> pool;
        for (int t = 1; t < workers; ++t) pool.emplace_back(run);
        run();
        for (auto& th : pool) th.join();
        if (error) std::rethrow_exception(error);
    };
}

}  // namespace kernels
}  // namespace naf
