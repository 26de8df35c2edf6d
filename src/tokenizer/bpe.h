// Byte-level BPE: turns one pre-tokenized piece of bytes into token ids by
// repeatedly merging the adjacent pair of lowest rank, leftmost first.
//
// Two sources of merges give the same engine:
//  - ranks (tiktoken): token i's bytes have rank i; two adjacent parts merge
//    when their concatenation is a token, with that token's rank;
//  - an explicit merge list (GPT-2 vocab.bpe, Hugging Face): pair (a, b)
//    merges into the token a+b with priority = its position in the list.
// Merges are held in a flat pair table (left id, right id) -> (rank, merged
// id). Short pieces use a quadratic scan (fastest for words); long pieces a
// heap, so a megabyte of one character class stays linear-logarithmic.
// Encoded pieces are cached per thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/big_array.h"

namespace borealis {

class BpeModel {
 public:
  struct Merge {
    std::uint32_t left;
    std::uint32_t right;
  };

  // SentencePiece-style models (Llama 2, Mistral): the initial symbols are
  // Unicode characters, not bytes. A character that is not a token becomes
  // its bytes as "<0xAB>" tokens (byte fallback) or the unknown token.
  struct CharLevel {
    bool byte_fallback = false;
    std::optional<std::uint32_t> unk;
  };

  BpeModel() = default;
  BpeModel(BpeModel&&) = default;
  BpeModel& operator=(BpeModel&&) = default;
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  // Token bytes by rank (= id). Every single byte must be a token. Like
  // tiktoken, a piece that is itself a token encodes to that token directly.
  static BpeModel from_ranks(std::vector<std::string> tokens, const std::string& where);

  // Token bytes by id and merges in priority order. Every single byte must
  // be a token (ids may have gaps: empty strings are unused ids).
  // `whole_piece_lookup` selects tiktoken's (and HF's ignore_merges)
  // shortcut for pieces that are tokens.
  static BpeModel from_merges(std::vector<std::string> tokens, const std::vector<Merge>& merges,
                              bool whole_piece_lookup, const std::string& where,
                              const CharLevel* char_level = nullptr);

  // Appends the ids of one piece.
  void encode(std::string_view piece, std::vector<std::uint32_t>& out) const;

  std::size_t size() const { return tokens_.size(); }
  const std::string& token(std::uint32_t id) const { return tokens_[id]; }
  const std::vector<std::string>& tokens() const { return tokens_; }
  std::optional<std::uint32_t> find(std::string_view bytes) const;
  std::size_t merge_count() const { return merge_count_; }
  bool whole_piece_lookup() const { return whole_piece_lookup_; }
  bool char_level() const { return char_level_; }

  // The merge list in rank order, as pairs of ids (for saving).
  std::vector<Merge> merges() const;

  // Exposed for tests: the two merge algorithms, which must agree.
  void encode_quadratic(std::string_view piece, std::vector<std::uint32_t>& out) const;
  void encode_heap(std::string_view piece, std::vector<std::uint32_t>& out) const;

 private:
  friend struct TokenizerCodec;  // the binary cache (tokenizer/cache.cpp)

  struct PairValue {
    std::uint32_t rank;
    std::uint32_t merged;
  };

  void index_tokens(const std::string& where);
  // The symbols a piece starts from: its bytes, or its characters.
  void initial_symbols(std::string_view piece, std::vector<std::uint32_t>& ids) const;
  void merge_quadratic(std::vector<std::uint32_t>& ids, std::vector<std::uint32_t>& out) const;
  void merge_heap(const std::vector<std::uint32_t>& start, std::vector<std::uint32_t>& out) const;
  void add_pair(std::uint32_t left, std::uint32_t right, std::uint32_t rank, std::uint32_t merged);
  const PairValue* pair(std::uint32_t left, std::uint32_t right) const;
  void encode_uncached(std::string_view piece, std::uint64_t hash,
                       std::vector<std::uint32_t>& out) const;
  // find() with the piece's hash64 given.
  std::optional<std::uint32_t> find_hashed(std::string_view bytes, std::uint64_t hash) const;
  // by_bytes_: the slot holding `bytes`, or the empty slot where they go;
  // a slot's tag (its high half) for a hash.
  std::size_t byte_slot(std::string_view bytes, std::uint64_t hash) const;
  static std::uint64_t byte_tag(std::uint64_t hash);

  std::vector<std::string> tokens_;
  // Token bytes to id, open addressing: each slot is the high 32 bits of
  // the bytes' hash64 (| 1, so 0 marks an empty slot) above the id.
  BigArray<std::uint64_t> by_bytes_;
  std::uint32_t byte_id_[256] = {};  // a byte's token, or its "<0xAB>" fallback token
  bool char_level_ = false;
  bool byte_fallback_ = false;
  std::optional<std::uint32_t> unk_;
  // Open addressing: key (left << 32 | right), empty slots hold kEmpty.
  // (left, right) -> rank and merged id, open addressing; key and value in
  // one slot so a probe reads one cache line.
  struct PairSlot {
    std::uint64_t key;  // left << 32 | right; kEmptyPair: free
    PairValue value;
  };
  static constexpr std::uint64_t kEmptyPair = ~std::uint64_t{0};
  void reset_pairs(std::size_t pairs);  // an empty table for that many pairs
  BigArray<PairSlot> pairs_;
  std::size_t merge_count_ = 0;
  bool whole_piece_lookup_ = true;
  std::uint64_t cache_id_ = 0;  // identifies this model in the per-thread cache
};

}  // namespace borealis
