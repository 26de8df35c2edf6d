#include "tokenizer/bpe.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <limits>
#include <queue>

#include "core/error.h"
#include "core/hash.h"
#include "tokenizer/unicode.h"

namespace borealis {

namespace {

constexpr std::uint32_t kNoRank = std::numeric_limits<std::uint32_t>::max();
// Pieces up to this many bytes use the quadratic scan; longer ones the heap.
constexpr std::size_t kQuadraticMax = 128;
// Pieces longer than this are not cached (rare, and they would crowd the cache).
constexpr std::size_t kCacheMaxPiece = 256;

std::uint64_t pair_key(std::uint32_t left, std::uint32_t right) {
  return (std::uint64_t{left} << 32) | right;
}

std::size_t slot_of(std::uint64_t key, std::size_t mask) {
  return static_cast<std::size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & mask;
}

std::atomic<std::uint64_t> next_cache_id{1};

// Per-thread cache of encoded pieces: open addressing over an arena of keys
// and ids. Cleared when it fills up or when a thread switches models.
class PieceCache {
 public:
  const std::uint32_t* find(std::uint64_t owner, std::string_view piece, std::uint64_t h,
                            std::size_t& count) {
    if (owner != owner_) reset(owner);
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return nullptr;
      if (s.hash == h && s.key_len == piece.size() &&
          std::string_view(keys_.data() + s.key_off, s.key_len) == piece) {
        count = s.id_count;
        return ids_.data() + s.id_off;
      }
    }
  }

  void insert(std::string_view piece, std::uint64_t h, const std::uint32_t* ids,
              std::size_t count) {
    if ((used_ + 1) * 2 > slots_.size()) grow();
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.hash != 0) continue;
      s = {h, static_cast<std::uint32_t>(keys_.size()), static_cast<std::uint32_t>(ids_.size()),
           static_cast<std::uint16_t>(piece.size()), static_cast<std::uint16_t>(count)};
      keys_.append(piece);
      ids_.insert(ids_.end(), ids, ids + count);
      ++used_;
      return;
    }
  }

 private:
  struct Slot {
    std::uint64_t hash;  // 0 = empty (hashes are forced non-zero)
    std::uint32_t key_off;
    std::uint32_t id_off;
    std::uint16_t key_len;
    std::uint16_t id_count;
  };
  // A corpus of a few MB holds tens of thousands of distinct pieces: start
  // at a size that holds them without rehashing, and reserve the arenas so
  // they are not copied as they grow (untouched pages cost nothing).
  static constexpr std::size_t kInitialSlots = 1 << 16;
  static constexpr std::size_t kKeyBytes = 1 << 20;
  static constexpr std::size_t kIds = 1 << 18;
  static constexpr std::size_t kMaxSlots = 1 << 20;

  void reset(std::uint64_t owner) {
    owner_ = owner;
    slots_ = BigArray<Slot>(kInitialSlots, Slot{});
    mask_ = kInitialSlots - 1;
    keys_.clear();
    ids_.clear();
    keys_.reserve(kKeyBytes);
    ids_.reserve(kIds);
    used_ = 0;
  }

  void grow() {
    if (slots_.size() >= kMaxSlots) {
      reset(owner_);
      return;
    }
    BigArray<Slot> old = std::move(slots_);
    slots_ = BigArray<Slot>(old.size() * 2, Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.hash == 0) continue;
      std::size_t i = s.hash & mask_;
      while (slots_[i].hash != 0) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }

  std::uint64_t owner_ = 0;
  BigArray<Slot> slots_;
  std::size_t mask_ = 0;
  std::string keys_;
  std::vector<std::uint32_t> ids_;
  std::size_t used_ = 0;
};

thread_local PieceCache piece_cache;

}  // namespace

BpeModel BpeModel::from_ranks(std::vector<std::string> tokens, const std::string& where) {
  BpeModel m;
  m.tokens_ = std::move(tokens);
  m.whole_piece_lookup_ = true;
  m.index_tokens(where);
  std::size_t pairs = 0;
  for (const auto& t : m.tokens_) pairs += t.size() > 1 ? t.size() - 1 : 0;
  m.reset_pairs(pairs);
  for (std::uint32_t id = 0; id < m.tokens_.size(); ++id) {
    const std::string_view t = m.tokens_[id];
    for (std::size_t k = 1; k < t.size(); ++k) {
      const auto left = m.find(t.substr(0, k));
      const auto right = m.find(t.substr(k));
      if (left && right) m.add_pair(*left, *right, id, id);
    }
  }
  m.merge_count_ = m.tokens_.size() - 256;
  return m;
}

BpeModel BpeModel::from_merges(std::vector<std::string> tokens, const std::vector<Merge>& merges,
                               bool whole_piece_lookup, const std::string& where,
                               const CharLevel* char_level) {
  BpeModel m;
  m.tokens_ = std::move(tokens);
  m.whole_piece_lookup_ = whole_piece_lookup;
  if (char_level != nullptr) {
    m.char_level_ = true;
    m.byte_fallback_ = char_level->byte_fallback;
    m.unk_ = char_level->unk;
  }
  m.index_tokens(where);
  m.reset_pairs(merges.size());
  for (std::uint32_t rank = 0; rank < merges.size(); ++rank) {
    const Merge& mg = merges[rank];
    if (mg.left >= m.tokens_.size() || mg.right >= m.tokens_.size() || m.tokens_[mg.left].empty() ||
        m.tokens_[mg.right].empty()) {
      throw Error(
          fmt::format("merge {} refers to a token id that is not in the vocabulary", rank + 1),
          where);
    }
    const std::string merged = m.tokens_[mg.left] + m.tokens_[mg.right];
    const auto id = m.find(merged);
    if (!id) {
      throw Error(fmt::format("merge {} makes a token that is not in the vocabulary", rank + 1),
                  where);
    }
    if (m.pair(mg.left, mg.right) == nullptr) m.add_pair(mg.left, mg.right, rank, *id);
  }
  m.merge_count_ = merges.size();
  return m;
}

void BpeModel::index_tokens(const std::string& where) {
  by_bytes_ =
      BigArray<std::uint64_t>(std::bit_ceil(std::max<std::size_t>(16, tokens_.size() * 5 / 2)), 0);
  for (std::uint32_t id = 0; id < tokens_.size(); ++id) {
    const std::string& t = tokens_[id];
    if (t.empty()) continue;
    const std::uint64_t h = hash64(t);
    const std::size_t i = byte_slot(t, h);
    if (by_bytes_[i] == 0) by_bytes_[i] = byte_tag(h) | id;  // the first id of equal bytes wins
  }
  for (int b = 0; b < 256; ++b) {
    if (char_level_) {
      if (!byte_fallback_) continue;
      const auto id = find(fmt::format("<0x{:02X}>", b));
      if (!id) throw Error(fmt::format("byte fallback needs the token <0x{:02X}>", b), where);
      byte_id_[b] = *id;
      continue;
    }
    const char c = static_cast<char>(b);
    const auto id = find(std::string_view(&c, 1));
    if (!id)
      throw Error(fmt::format("byte 0x{:02X} has no token; byte-level BPE needs all 256", b),
                  where);
    byte_id_[b] = *id;
  }
  if (char_level_ && !byte_fallback_ && !unk_) {
    throw Error("a character-level BPE model needs byte_fallback or an unk_token", where);
  }
  cache_id_ = next_cache_id.fetch_add(1);
}

std::optional<std::uint32_t> BpeModel::find(std::string_view bytes) const {
  return find_hashed(bytes, hash64(bytes));
}

std::uint64_t BpeModel::byte_tag(std::uint64_t hash) {
  return (hash >> 32 | 1) << 32;
}

std::size_t BpeModel::byte_slot(std::string_view bytes, std::uint64_t hash) const {
  const std::uint64_t tag = byte_tag(hash);
  const std::size_t mask = by_bytes_.size() - 1;
  for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
    const std::uint64_t slot = by_bytes_[i];
    if (slot == 0 ||
        ((slot >> 32 << 32) == tag && tokens_[static_cast<std::uint32_t>(slot)] == bytes)) {
      return i;
    }
  }
}

std::optional<std::uint32_t> BpeModel::find_hashed(std::string_view bytes,
                                                   std::uint64_t hash) const {
  const std::uint64_t slot = by_bytes_[byte_slot(bytes, hash)];
  if (slot == 0) return std::nullopt;
  return static_cast<std::uint32_t>(slot);
}

void BpeModel::reset_pairs(std::size_t pairs) {
  pairs_ =
      BigArray<PairSlot>(std::bit_ceil(std::max<std::size_t>(16, pairs * 2)), {kEmptyPair, {}});
}

void BpeModel::add_pair(std::uint32_t left, std::uint32_t right, std::uint32_t rank,
                        std::uint32_t merged) {
  const std::uint64_t key = pair_key(left, right);
  const std::size_t mask = pairs_.size() - 1;
  std::size_t i = slot_of(key, mask);
  while (pairs_[i].key != kEmptyPair) {
    if (pairs_[i].key == key) return;
    i = (i + 1) & mask;
  }
  pairs_[i] = {key, {rank, merged}};
}

const BpeModel::PairValue* BpeModel::pair(std::uint32_t left, std::uint32_t right) const {
  const std::uint64_t key = pair_key(left, right);
  const std::size_t mask = pairs_.size() - 1;
  for (std::size_t i = slot_of(key, mask);; i = (i + 1) & mask) {
    if (pairs_[i].key == key) return &pairs_[i].value;
    if (pairs_[i].key == kEmptyPair) return nullptr;
  }
}

std::vector<BpeModel::Merge> BpeModel::merges() const {
  std::vector<std::pair<std::uint32_t, Merge>> ranked;
  for (const PairSlot& p : pairs_) {
    if (p.key == kEmptyPair) continue;
    ranked.push_back({p.value.rank, Merge{static_cast<std::uint32_t>(p.key >> 32),
                                          static_cast<std::uint32_t>(p.key)}});
  }
  std::sort(ranked.begin(), ranked.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Merge> out;
  out.reserve(ranked.size());
  for (const auto& r : ranked) out.push_back(r.second);
  return out;
}

void BpeModel::encode(std::string_view piece, std::vector<std::uint32_t>& out) const {
  if (piece.size() == 1 && !char_level_) {
    out.push_back(byte_id_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (piece.empty()) return;
  const std::uint64_t hash = hash64(piece);
  if (piece.size() > kCacheMaxPiece) {
    encode_uncached(piece, hash, out);
    return;
  }
  const std::uint64_t h = hash | 1;  // non-zero: 0 marks empty cache slots
  std::size_t count = 0;
  if (const std::uint32_t* ids = piece_cache.find(cache_id_, piece, h, count)) {
    out.insert(out.end(), ids, ids + count);
    return;
  }
  const std::size_t before = out.size();
  encode_uncached(piece, hash, out);
  piece_cache.insert(piece, h, out.data() + before, out.size() - before);
}

void BpeModel::encode_uncached(std::string_view piece, std::uint64_t hash,
                               std::vector<std::uint32_t>& out) const {
  if (whole_piece_lookup_) {
    if (const auto id = find_hashed(piece, hash)) {
      out.push_back(*id);
      return;
    }
  }
  thread_local std::vector<std::uint32_t> ids;
  initial_symbols(piece, ids);
  if (ids.size() <= kQuadraticMax) {
    merge_quadratic(ids, out);
  } else {
    merge_heap(ids, out);
  }
}

void BpeModel::initial_symbols(std::string_view piece, std::vector<std::uint32_t>& ids) const {
  ids.clear();
  if (!char_level_) {
    for (const char c : piece) ids.push_back(byte_id_[static_cast<unsigned char>(c)]);
    return;
  }
  const auto* s = reinterpret_cast<const unsigned char*>(piece.data());
  for (std::size_t i = 0; i < piece.size();) {
    std::uint32_t cp = 0;
    std::size_t len = unicode::decode_utf8(s + i, piece.size() - i, cp);
    if (len == 0) len = 1;  // an invalid byte stands for itself
    if (const auto id = find(piece.substr(i, len))) {
      ids.push_back(*id);
    } else if (byte_fallback_) {
      for (std::size_t k = 0; k < len; ++k) ids.push_back(byte_id_[s[i + k]]);
    } else if (ids.empty() || ids.back() != *unk_) {
      ids.push_back(*unk_);  // consecutive unknown characters fuse into one
    }
    i += len;
  }
}

void BpeModel::encode_quadratic(std::string_view piece, std::vector<std::uint32_t>& out) const {
  thread_local std::vector<std::uint32_t> ids;
  initial_symbols(piece, ids);
  merge_quadratic(ids, out);
}

void BpeModel::encode_heap(std::string_view piece, std::vector<std::uint32_t>& out) const {
  thread_local std::vector<std::uint32_t> ids;
  initial_symbols(piece, ids);
  merge_heap(ids, out);
}

void BpeModel::merge_quadratic(std::vector<std::uint32_t>& ids,
                               std::vector<std::uint32_t>& out) const {
  // Each adjacent pair's rank and merged id, so a merge needs no second lookup.
  thread_local std::vector<PairValue> pairs;
  const std::size_t n = ids.size();
  auto pair_at = [&](std::size_t i) {
    const PairValue* v = pair(ids[i], ids[i + 1]);
    return v != nullptr ? *v : PairValue{kNoRank, 0};
  };
  pairs.resize(n);
  for (std::size_t i = 0; i + 1 < n; ++i) pairs[i] = pair_at(i);
  std::size_t count = n;
  while (count > 1) {
    std::size_t best = 0;
    std::uint32_t best_rank = kNoRank;
    for (std::size_t i = 0; i + 1 < count; ++i) {
      if (pairs[i].rank < best_rank) {
        best_rank = pairs[i].rank;
        best = i;
      }
    }
    if (best_rank == kNoRank) break;
    ids[best] = pairs[best].merged;
    for (std::size_t i = best + 1; i + 1 < count; ++i) {
      ids[i] = ids[i + 1];
      pairs[i] = pairs[i + 1];
    }
    --count;
    if (best + 1 < count) pairs[best] = pair_at(best);
    if (best > 0) pairs[best - 1] = pair_at(best - 1);
  }
  out.insert(out.end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(count));
}

void BpeModel::merge_heap(const std::vector<std::uint32_t>& start,
                          std::vector<std::uint32_t>& out) const {
  const std::size_t n = start.size();
  if (n == 0) return;
  constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();
  std::vector<std::uint32_t> ids(start), next(n), prev(n);
  for (std::size_t i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? static_cast<std::uint32_t>(i + 1) : kNone;
    prev[i] = i > 0 ? static_cast<std::uint32_t>(i - 1) : kNone;
  }  // (rank, position of the left symbol, left id, right id): min-heap, leftmost first.
  struct Candidate {
    std::uint32_t rank;
    std::uint32_t left;
    std::uint32_t left_id;
    std::uint32_t right_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](std::uint32_t left) {
    if (left == kNone || next[left] == kNone) return;
    if (const PairValue* v = pair(ids[left], ids[next[left]])) {
      heap.push({v->rank, left, ids[left], ids[next[left]]});
    }
  };
  for (std::uint32_t i = 0; i + 1 < n; ++i) push(i);
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const std::uint32_t right = next[c.left];
    if (!alive[c.left] || right == kNone || ids[c.left] != c.left_id || ids[right] != c.right_id) {
      continue;  // stale: one side has merged since
    }
    ids[c.left] = pair(c.left_id, c.right_id)->merged;
    alive[right] = false;
    next[c.left] = next[right];
    if (next[right] != kNone) prev[next[right]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }
  for (std::uint32_t i = 0; i != kNone; i = next[i]) out.push_back(ids[i]);
}

}  // namespace borealis
