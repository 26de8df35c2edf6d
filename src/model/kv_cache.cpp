#include "model/kv_cache.h"

#include <fmt/format.h>

#include <stdexcept>

#include "core/error.h"

namespace borealis {

template <typename T>
KvCache<T>::KvCache(const ModelConfig& config, int num_blocks, int block_size)
    : num_blocks_(num_blocks), block_size_(block_size) {
  if (num_blocks <= 0 || block_size <= 0) {
    throw Error(fmt::format("key/value cache of {} blocks of {} tokens: both must be positive",
                            num_blocks, block_size),
                "kv cache");
  }
  layer_ = static_cast<std::size_t>(num_blocks) * block_size * config.n_kv_head * config.head_dim();
  pool_.assign(2 * static_cast<std::size_t>(config.n_layer) * layer_, T(0));
  free_.reserve(static_cast<std::size_t>(num_blocks));
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
  used_.assign(static_cast<std::size_t>(num_blocks), false);
}

template <typename T>
std::int32_t KvCache<T>::allocate() {
  if (free_.empty()) return -1;
  const std::int32_t b = free_.back();
  free_.pop_back();
  used_[static_cast<std::size_t>(b)] = true;
  return b;
}

template <typename T>
void KvCache<T>::release(std::int32_t block) {
  if (block < 0 || block >= num_blocks_ || !used_[static_cast<std::size_t>(block)]) {
    throw std::logic_error(fmt::format("KvCache::release of block {}, which is not in use", block));
  }
  used_[static_cast<std::size_t>(block)] = false;
  // Keep the stack ordered (lowest id on top): the blocks a sequence gets
  // depend only on which are free, not on the order they were returned.
  auto it = free_.begin();
  while (it != free_.end() && *it > block) ++it;
  free_.insert(it, block);
}

template class KvCache<float>;
template class KvCache<double>;

}  // namespace borealis
