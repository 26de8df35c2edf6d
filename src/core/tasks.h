// Independent tasks on a few threads: each thread takes the next task number
// until none are left. The first exception a task throws stops the others
// from starting new tasks and is rethrown by run_tasks once every thread has
// joined. The caller owns ordering (e.g. longest tasks first) and the results.
#pragma once

#include <cstddef>
#include <functional>

namespace borealis {

// Runs task(0), ..., task(count - 1) on `threads` threads (the calling
// thread is one of them).
void run_tasks(unsigned threads, std::size_t count, const std::function<void(std::size_t)>& task);

}  // namespace borealis
