#include "core/tasks.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>
#include <vector>

namespace borealis {

void run_tasks(unsigned threads, std::size_t count, const std::function<void(std::size_t)>& task) {
  std::atomic<std::size_t> next{0};
  std::vector<std::exception_ptr> failed(std::max(1u, threads));
  const auto work = [&](std::size_t id) {
    try {
      for (std::size_t t; (t = next.fetch_add(1)) < count;) task(t);
    } catch (...) {
      failed[id] = std::current_exception();
      next = count;
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < failed.size(); ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& t : pool) t.join();
  for (const auto& e : failed) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace borealis
