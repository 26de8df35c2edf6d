// A paged key/value cache: one pool of fixed-size blocks per layer, shared by
// all sequences. A sequence holds a list of block ids (its block table);
// position p of the sequence lives in block table[p / block_size]. Memory is
// sized once, by the number of blocks, and does not depend on the longest
// request a server may see; a finished sequence gives its blocks back.
//
// Allocation is a free list, lowest id first, so a run with the same
// requests in the same order uses the same blocks.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace borealis {

template <typename T>
class KvCache {
 public:
  // Throws Error for a non-positive count or size.
  KvCache(const ModelConfig& config, int num_blocks, int block_size);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  int free_blocks() const { return static_cast<int>(free_.size()); }
  int used_blocks() const { return num_blocks_ - free_blocks(); }
  std::size_t bytes() const { return pool_.size() * sizeof(T); }
  // Blocks needed to hold `tokens` positions.
  int blocks_for(int tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // A free block's id, or -1 when none is left.
  std::int32_t allocate();
  // Returns a block taken by allocate(). Throws std::logic_error for a block
  // that is not in use.
  void release(std::int32_t block);

  // Pools of layer l: [num_blocks * block_size, n_kv_head * head_dim] each.
  T* keys(int layer) { return pool_.data() + static_cast<std::size_t>(2 * layer) * layer_; }
  T* values(int layer) { return keys(layer) + layer_; }

 private:
  int num_blocks_;
  int block_size_;
  std::size_t layer_;  // elements of one layer's key (or value) pool
  std::vector<T> pool_;
  std::vector<std::int32_t> free_;  // a stack: the lowest id on top
  std::vector<bool> used_;
};

extern template class KvCache<float>;
extern template class KvCache<double>;

}  // namespace borealis
