// Training batches from a blended mixture, prepared ahead on a background
// thread.
//
// Batch k holds samples first + k*B ... first + k*B + B - 1 of the mixture;
// each sample is L + 1 tokens, split into inputs (tokens 0..L-1) and
// targets (tokens 1..L). The batches do not depend on timing or on how far
// ahead the loader runs, so a run that starts at sample `first` sees exactly
// what an uninterrupted run would.
//
// A data-parallel rank reads a slice of every global batch: given `take`
// and `every`, it reads `take` consecutive samples from `first` on, skips to
// `first + every`, reads `take` more, and so on (batches never straddle a
// skip: `take` is a multiple of the batch size).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "data/mixture.h"

namespace borealis {

struct Batch {
  int batch = 0, seq = 0;
  std::vector<std::int32_t> inputs;   // batch * seq
  std::vector<std::int32_t> targets;  // batch * seq
};

// Reads sample i of the mixture into batch row `row` (L + 1 tokens).
void read_sample(const Mixture& mixture, std::uint64_t i, Batch& batch, int row);

class BatchLoader {
 public:
  // Batches of `batch` samples from sample `first` on, up to `prefetch` ahead;
  // with take > 0, only the first `take` samples of every `every`.
  BatchLoader(const Mixture& mixture, int batch, std::uint64_t first, int prefetch,
              std::uint64_t take = 0, std::uint64_t every = 0);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The next batch; blocks until it is ready. Rethrows what failed in the
  // background (a damaged dataset, a token out of range).
  Batch next();

 private:
  void run();

  const Mixture& mixture_;
  int batch_;
  std::uint64_t next_sample_;
  std::uint64_t take_, skip_;
  std::uint64_t taken_ = 0;  // samples read of the current slice
  std::size_t capacity_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Batch> ready_;
  std::exception_ptr error_;
  bool stop_ = false;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace borealis
