#include "train/loader.h"

#include <fmt/format.h>

#include "core/error.h"

namespace borealis {

void read_sample(const Mixture& mixture, std::uint64_t i, Batch& batch, int row) {
  const int L = batch.seq;
  std::int32_t* in = batch.inputs.data() + static_cast<std::size_t>(row) * L;
  std::int32_t* tg = batch.targets.data() + static_cast<std::size_t>(row) * L;
  thread_local std::vector<std::uint32_t> tokens;
  std::size_t t = 0;
  for (const SamplePiece& p : mixture.sample(i)) {
    const IndexedDataset& ds = mixture.dataset(p.file);
    tokens.clear();  // read() appends
    ds.read(p.document, p.offset, p.length, tokens);
    for (const std::uint32_t tok : tokens) {
      if (t > static_cast<std::size_t>(L)) break;
      if (tok > static_cast<std::uint32_t>(INT32_MAX)) {
        throw Error(fmt::format("token {} of document {} does not fit int32", tok, p.document),
                    ds.prefix().string());
      }
      if (t < static_cast<std::size_t>(L)) in[t] = static_cast<std::int32_t>(tok);
      if (t > 0) tg[t - 1] = static_cast<std::int32_t>(tok);
      ++t;
    }
  }
  if (t != static_cast<std::size_t>(L) + 1) {
    throw std::logic_error(fmt::format("sample {} has {} tokens, expected {}", i, t, L + 1));
  }
}

BatchLoader::BatchLoader(const Mixture& mixture, int batch, std::uint64_t first, int prefetch,
                         std::uint64_t take, std::uint64_t every)
    : mixture_(mixture),
      batch_(batch),
      next_sample_(first),
      take_(take),
      skip_(every - take),
      capacity_(static_cast<std::size_t>(std::max(prefetch, 1))) {
  if (take > 0 && (every < take || take % static_cast<std::uint64_t>(batch) != 0)) {
    throw std::logic_error(fmt::format(
        "loader slices of {} every {} samples do not fit batches of {}", take, every, batch));
  }
  thread_ = std::thread([this] { run(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void BatchLoader::run() {
  const int L = static_cast<int>(mixture_.options().seq_len);
  try {
    while (true) {
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return stop_ || ready_.size() < capacity_; });
        if (stop_) return;
      }
      if (next_sample_ + static_cast<std::uint64_t>(batch_) > mixture_.size()) break;
      Batch b;
      b.batch = batch_;
      b.seq = L;
      b.inputs.resize(static_cast<std::size_t>(batch_) * L);
      b.targets.resize(static_cast<std::size_t>(batch_) * L);
      for (int r = 0; r < batch_; ++r) read_sample(mixture_, next_sample_ + r, b, r);
      next_sample_ += static_cast<std::uint64_t>(batch_);
      if (take_ > 0 && (taken_ += static_cast<std::uint64_t>(batch_)) == take_) {
        next_sample_ += skip_;
        taken_ = 0;
      }
      {
        std::lock_guard lock(mutex_);
        ready_.push_back(std::move(b));
      }
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard lock(mutex_);
    error_ = std::current_exception();
  }
  {
    std::lock_guard lock(mutex_);
    done_ = true;
  }
  cv_.notify_all();
}

Batch BatchLoader::next() {
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return !ready_.empty() || done_; });
  if (ready_.empty()) {
    if (error_) std::rethrow_exception(error_);
    throw std::logic_error("the loader ran past the end of the mixture");
  }
  Batch b = std::move(ready_.front());
  ready_.pop_front();
  lock.unlock();
  cv_.notify_all();
  return b;
}

}  // namespace borealis
