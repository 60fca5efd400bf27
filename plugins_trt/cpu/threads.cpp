// rmeeto_cpu_threads_t: a caller's pool, or std::threads over contiguous ranges of tasks.
#include <algorithm>
#include <thread>
#include <vector>

#include "cpu_common.h"

namespace rmeeto_cpu
{
namespace
{
void runOne(void* task, size_t index)
{
    (*static_cast<const std::function<void(size_t)>*>(task))(index);
}
} // namespace

void parallelFor(const rmeeto_cpu_threads_t* threads, size_t count, const std::function<void(size_t)>& task)
{
    if (threads != nullptr && threads->parallel_for != nullptr)
    {
        threads->parallel_for(threads->pool, runOne, const_cast<std::function<void(size_t)>*>(&task), count);
        return;
    }
    const size_t workers = std::min(count, static_cast<size_t>(std::max(threads ? threads->num_threads : 1, 1)));
    const auto runRange = [&](size_t worker) {
        for (size_t i = count * worker / workers; i < count * (worker + 1) / workers; ++i)
            task(i);
    };
    std::vector<std::thread> helpers;
    for (size_t worker = 1; worker < workers; ++worker)
        helpers.emplace_back(runRange, worker);
    if (workers > 0)
        runRange(0);
    for (std::thread& helper : helpers)
        helper.join();
}

} // namespace rmeeto_cpu
