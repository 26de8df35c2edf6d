// Megatron's indexed datasets (MMapIndexedDataset): PREFIX.bin holds the
// tokens of all documents back to back; PREFIX.idx describes them. Files are
// byte-compatible with Megatron-LM, Megatron-DeepSpeed and datatrove.
//
// .idx layout, little endian:
//   "MMIDIDX\0\0"   9-byte magic
//   u64 version     1
//   u8  dtype       token type code (1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 8 u16)
//   u64 N           number of sequences
//   u64 D           length of the document index (documents + 1)
//   i32 sizes[N]    tokens per sequence
//   i64 pointers[N] byte offset of each sequence in .bin
//   i64 doc_idx[D]  first sequence of each document, then N
//
// Borealis writes one sequence per document (doc_idx = 0..N), as Megatron's
// preprocess_data.py does without --split-sentences, and reads either.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/mapped_file.h"

namespace borealis {

enum class TokenType : std::uint8_t { U8 = 1, I8 = 2, I16 = 3, I32 = 4, I64 = 5, U16 = 8 };

std::size_t token_size(TokenType t);
const char* token_type_name(TokenType t);
// The type Megatron picks for a vocabulary: uint16 below 65500 tokens, else int32.
TokenType token_type_for_vocab(std::size_t vocab_size);

inline constexpr char kIdxMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
inline constexpr std::size_t kIdxHeaderSize = 9 + 8 + 1 + 8 + 8;

// Read access: both files memory-mapped, nothing copied. Opening checks the
// header and that the arrays and the .bin have the sizes the header implies;
// verify() checks every record.
class IndexedDataset {
 public:
  // PREFIX may end in .bin or .idx. Throws Error naming the file.
  explicit IndexedDataset(const std::filesystem::path& prefix);

  const std::filesystem::path& prefix() const { return prefix_; }
  TokenType token_type() const { return type_; }
  std::size_t sequences() const { return sequences_; }
  std::size_t documents() const { return doc_entries_ == 0 ? 0 : doc_entries_ - 1; }
  std::uint64_t tokens() const { return total_tokens_; }

  // The arrays sit unaligned in the mapped .idx (sizes start at byte 34), so
  // they are read through these accessors, never as typed pointers.
  std::int32_t size(std::size_t i) const { return load<std::int32_t>(sizes_, i); }
  std::int64_t pointer(std::size_t i) const { return load<std::int64_t>(pointers_, i); }
  std::int64_t doc_index(std::size_t i) const { return load<std::int64_t>(doc_idx_, i); }
  std::size_t doc_idx_size() const { return doc_entries_; }

  // Tokens [offset, offset + length) of sequence i, widened to u32.
  void read(std::size_t i, std::size_t offset, std::size_t length,
            std::vector<std::uint32_t>& out) const;
  std::vector<std::uint32_t> sequence(std::size_t i) const;
  // Raw bytes of sequence i in .bin (zero-copy).
  std::span<const std::byte> raw(std::size_t i) const;

  // Checks every size, pointer and document index against each other and the
  // .bin size; throws Error naming the first bad record.
  void verify() const;

  static std::filesystem::path strip_suffix(const std::filesystem::path& prefix);

 private:
  template <class T>
  static T load(const std::byte* base, std::size_t i) {
    T v;
    std::memcpy(&v, base + i * sizeof(T), sizeof(T));
    return v;
  }

  std::filesystem::path prefix_;
  MappedFile idx_;
  MappedFile bin_;
  TokenType type_ = TokenType::U16;
  std::size_t sequences_ = 0;
  std::size_t doc_entries_ = 0;
  const std::byte* sizes_ = nullptr;
  const std::byte* pointers_ = nullptr;
  const std::byte* doc_idx_ = nullptr;
  std::uint64_t total_tokens_ = 0;
};

// Streaming writer: tokens go to PREFIX.bin as documents arrive; PREFIX.idx
// is written by commit(). Both are written under temporary names and renamed
// only when complete (.bin first, so a visible .idx always has its .bin).
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::filesystem::path& prefix, TokenType type);

  // Appends one document (one sequence). Throws Error if a token does not fit the type.
  void add_document(std::span<const std::uint32_t> tokens);
  // Appends a document already encoded in this writer's token type.
  void add_raw_document(std::span<const std::byte> bytes);
  // Writes the .idx and publishes both files. `doc_idx` overrides the
  // one-sequence-per-document index (for merging datasets that group several
  // sequences per document); it must end with the sequence count.
  void commit(const std::vector<std::int64_t>* doc_idx = nullptr);

  std::size_t documents() const { return sizes_.size(); }
  std::uint64_t tokens() const { return tokens_; }
  TokenType token_type() const { return type_; }

 private:
  std::filesystem::path prefix_;
  TokenType type_;
  AtomicFile bin_;
  std::vector<std::int32_t> sizes_;
  std::uint64_t tokens_ = 0;
  std::vector<std::byte> scratch_;
};

}  // namespace borealis
