#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
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

namespace {

// Worker threads started once and kept for every loop of a threadParallelFor: a forward makes
// hundreds of parallel calls, and the CUDA engine's host copy one per 32 MiB chunk (~190 at a
// 2016x2016 output), so starting threads per call cost tens of microseconds per thread each time
// (GPU review of the fifteenth session). The calling thread takes part in each loop.
class WorkerPool
{
public:
    explicit WorkerPool(int threads)
    {
        for (int t = 1; t < threads; ++t) workers_.emplace_back([this] { workerLoop(); });
    }
    ~WorkerPool()
    {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        for (std::thread& t : workers_) t.join();
    }
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    // body(i, i + 1) for every i in [0, count), on the workers and the calling thread; the first
    // exception is rethrown here after the others stop taking items. A loop started from inside
    // one of this pool's loops (a nested call) runs on its own thread: waiting for the pool there
    // would wait for itself. Loops from other threads take turns.
    void run(int64_t count, const std::function<void(int64_t, int64_t)>& body)
    {
        if (current() == this)
        {
            body(0, count);
            return;
        }
        std::lock_guard<std::mutex> oneLoop(runMutex_);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            body_ = &body;
            count_ = count;
            next_ = 0;
            error_ = nullptr;
            busy_ = static_cast<int>(workers_.size());
            ++generation_;
        }
        wake_.notify_all();
        const WorkerPool* outer = current();
        current() = this;
        work();
        current() = outer;
        std::exception_ptr error;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            done_.wait(lock, [this] { return busy_ == 0; });
            body_ = nullptr;
            error = error_;
        }
        if (error) std::rethrow_exception(error);
    }

private:
    static const WorkerPool*& current()
    {
        thread_local const WorkerPool* pool = nullptr;
        return pool;
    }

    // Dynamic scheduling of unit items: the work partition inside each item never depends on
    // which thread runs it, so results are identical for any thread count.
    void work()
    {
        for (int64_t i = next_++; i < count_; i = next_++)
        {
            try
            {
                (*body_)(i, i + 1);
            }
            catch (...)
            {
                std::lock_guard<std::mutex> lock(errorMutex_);
                if (!error_) error_ = std::current_exception();
                next_ = count_;
            }
        }
    }

    void workerLoop()
    {
        current() = this;
        uint64_t seen = 0;
        for (;;)
        {
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
                if (stop_) return;
                seen = generation_;
            }
            work();
            {
                std::lock_guard<std::mutex> lock(mutex_);
                if (--busy_ == 0) done_.notify_one();
            }
        }
    }

    std::vector<std::thread> workers_;
    std::mutex runMutex_;                 // one loop at a time
    std::mutex mutex_;                    // the fields below, and the wake-ups
    std::condition_variable wake_, done_;
    const std::function<void(int64_t, int64_t)>* body_ = nullptr;
    int64_t count_ = 0;
    std::atomic<int64_t> next_{0};
    int busy_ = 0;                        // workers still in the current loop
    uint64_t generation_ = 0;             // loops started: a worker runs each one once
    bool stop_ = false;
    std::mutex errorMutex_;
    std::exception_ptr error_;
};

}  // namespace

ParallelFor threadParallelFor(int threads)
{
    const int n = std::max(1, threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));
    if (n == 1) return serialParallelFor();
    const std::shared_ptr<WorkerPool> pool = std::make_shared<WorkerPool>(n);
    return [pool](int64_t count, const std::function<void(int64_t, int64_t)>& body) {
        if (count <= 0) return;
        if (count == 1)
        {
            body(0, 1);
            return;
        }
        pool->run(count, body);
    };
}

}  // namespace kernels
}  // namespace naf
