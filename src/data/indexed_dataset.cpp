#include "data/indexed_dataset.h"

#include <fmt/format.h>

#include <cstring>
#include <limits>

#include "core/error.h"

namespace borealis {

namespace fs = std::filesystem;

std::size_t token_size(TokenType t) {
  switch (t) {
    case TokenType::U8:
    case TokenType::I8:
      return 1;
    case TokenType::I16:
    case TokenType::U16:
      return 2;
    case TokenType::I32:
      return 4;
    case TokenType::I64:
      return 8;
  }
  return 0;
}

const char* token_type_name(TokenType t) {
  switch (t) {
    case TokenType::U8:
      return "uint8";
    case TokenType::I8:
      return "int8";
    case TokenType::I16:
      return "int16";
    case TokenType::I32:
      return "int32";
    case TokenType::I64:
      return "int64";
    case TokenType::U16:
      return "uint16";
  }
  return "unknown";
}

TokenType token_type_for_vocab(std::size_t vocab_size) {
  return vocab_size < 65500 ? TokenType::U16 : TokenType::I32;
}

fs::path IndexedDataset::strip_suffix(const fs::path& prefix) {
  if (prefix.extension() == ".bin" || prefix.extension() == ".idx") {
    fs::path p = prefix;
    return p.replace_extension();
  }
  return prefix;
}

namespace {

fs::path with_suffix(const fs::path& prefix, const char* suffix) {
  return fs::path(prefix.string() + suffix);
}

template <class T>
T read_le(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

IndexedDataset::IndexedDataset(const fs::path& prefix) : prefix_(strip_suffix(prefix)) {
  const fs::path idx_path = with_suffix(prefix_, ".idx");
  const fs::path bin_path = with_suffix(prefix_, ".bin");
  idx_ = MappedFile(idx_path, MappedFile::Access::Random);
  bin_ = MappedFile(bin_path, MappedFile::Access::Random);
  const std::string where = idx_path.string();
  const std::byte* p = idx_.data();
  if (idx_.size() < kIdxHeaderSize || std::memcmp(p, kIdxMagic, sizeof kIdxMagic) != 0) {
    throw Error("not a Megatron .idx file (bad magic)", where);
  }
  const auto version = read_le<std::uint64_t>(p + 9);
  if (version != 1) throw Error(fmt::format("unsupported .idx version {}", version), where);
  const auto code = static_cast<std::uint8_t>(p[17]);
  if (code < 1 || code > 8 || code == 6 || code == 7) {
    throw Error(fmt::format("token dtype code {} is not an integer type", code), where);
  }
  type_ = static_cast<TokenType>(code);
  const auto n = read_le<std::uint64_t>(p + 18);
  const auto d = read_le<std::uint64_t>(p + 26);
  const std::uint64_t expected = kIdxHeaderSize + n * 4 + n * 8 + d * 8;
  if (n > idx_.size() || d > idx_.size() || expected != idx_.size()) {
    throw Error(
        fmt::format(".idx is {} bytes but its header ({} sequences, {} document entries) needs {}",
                    idx_.size(), n, d, expected),
        where);
  }
  sequences_ = n;
  doc_entries_ = d;
  sizes_ = p + kIdxHeaderSize;
  pointers_ = sizes_ + n * 4;
  doc_idx_ = pointers_ + n * 8;
  const std::uint64_t item = token_size(type_);
  std::uint64_t bin_bytes = 0;
  if (n > 0) {
    const auto last_size = size(n - 1);
    const auto last_pointer = pointer(n - 1);
    if (last_size < 0 || last_pointer < 0)
      throw Error(fmt::format("sequence {} has a negative size or pointer", n - 1), where);
    bin_bytes =
        static_cast<std::uint64_t>(last_pointer) + static_cast<std::uint64_t>(last_size) * item;
  }
  if (bin_bytes != bin_.size()) {
    throw Error(
        fmt::format(".bin is {} bytes but the index ends at byte {}", bin_.size(), bin_bytes),
        bin_path.string());
  }
  total_tokens_ = bin_bytes / item;
}

std::span<const std::byte> IndexedDataset::raw(std::size_t i) const {
  const auto item = token_size(type_);
  return {bin_.data() + pointer(i), static_cast<std::size_t>(size(i)) * item};
}

void IndexedDataset::read(std::size_t i, std::size_t offset, std::size_t length,
                          std::vector<std::uint32_t>& out) const {
  if (i >= sequences_ || offset + length > static_cast<std::size_t>(size(i))) {
    throw std::out_of_range(
        fmt::format("tokens [{}, {}) of sequence {} are out of range", offset, offset + length, i));
  }
  const auto item = token_size(type_);
  const std::byte* p = bin_.data() + pointer(i) + offset * item;
  out.reserve(out.size() + length);
  for (std::size_t k = 0; k < length; ++k, p += item) {
    switch (type_) {
      case TokenType::U8:
        out.push_back(static_cast<std::uint8_t>(*p));
        break;
      case TokenType::I8:
        out.push_back(static_cast<std::uint32_t>(read_le<std::int8_t>(p)));
        break;
      case TokenType::I16:
        out.push_back(static_cast<std::uint32_t>(read_le<std::int16_t>(p)));
        break;
      case TokenType::U16:
        out.push_back(read_le<std::uint16_t>(p));
        break;
      case TokenType::I32:
        out.push_back(static_cast<std::uint32_t>(read_le<std::int32_t>(p)));
        break;
      case TokenType::I64:
        out.push_back(static_cast<std::uint32_t>(read_le<std::int64_t>(p)));
        break;
    }
  }
}

std::vector<std::uint32_t> IndexedDataset::sequence(std::size_t i) const {
  std::vector<std::uint32_t> out;
  read(i, 0, static_cast<std::size_t>(size(i)), out);
  return out;
}

void IndexedDataset::verify() const {
  const std::string where = with_suffix(prefix_, ".idx").string();
  const auto item = static_cast<std::int64_t>(token_size(type_));
  std::int64_t expected_pointer = 0;
  for (std::size_t i = 0; i < sequences_; ++i) {
    const std::int32_t s = size(i);
    if (s < 0) throw Error(fmt::format("sequence {}: negative size {}", i, s), where);
    if (pointer(i) != expected_pointer) {
      throw Error(
          fmt::format(
              "sequence {}: pointer {} should be {} (the sum of the sizes before it x {} bytes)", i,
              pointer(i), expected_pointer, item),
          where);
    }
    expected_pointer += s * item;
  }
  if (static_cast<std::uint64_t>(expected_pointer) != bin_.size()) {
    throw Error(
        fmt::format("the sizes add up to {} bytes but .bin has {}", expected_pointer, bin_.size()),
        with_suffix(prefix_, ".bin").string());
  }
  if (doc_entries_ == 0)
    throw Error("the document index is empty (it needs at least the final entry)", where);
  if (doc_index(0) != 0)
    throw Error(fmt::format("document 0 starts at sequence {}, not 0", doc_index(0)), where);
  for (std::size_t k = 1; k < doc_entries_; ++k) {
    if (doc_index(k) < doc_index(k - 1) || doc_index(k) > static_cast<std::int64_t>(sequences_)) {
      throw Error(
          fmt::format("document {}: index entry {} is out of order or past the {} sequences", k,
                      doc_index(k), sequences_),
          where);
    }
  }
  if (doc_index(doc_entries_ - 1) != static_cast<std::int64_t>(sequences_)) {
    throw Error(fmt::format("the last document index entry is {}, not the sequence count {}",
                            doc_index(doc_entries_ - 1), sequences_),
                where);
  }
}

IndexedDatasetWriter::IndexedDatasetWriter(const fs::path& prefix, TokenType type)
    : prefix_(IndexedDataset::strip_suffix(prefix)),
      type_(type),
      bin_(with_suffix(prefix_, ".bin")) {
  if (type != TokenType::U16 && type != TokenType::I32 && type != TokenType::U8 &&
      type != TokenType::I64) {
    throw Error(fmt::format("cannot write tokens as {}", token_type_name(type)), prefix_.string());
  }
}

void IndexedDatasetWriter::add_document(std::span<const std::uint32_t> tokens) {
  const std::size_t item = token_size(type_);
  scratch_.resize(tokens.size() * item);
  std::byte* p = scratch_.data();
  for (const std::uint32_t t : tokens) {
    switch (type_) {
      case TokenType::U8:
        if (t > 0xFF)
          throw Error(fmt::format("token {} does not fit in uint8", t), prefix_.string());
        *p = static_cast<std::byte>(t);
        break;
      case TokenType::U16: {
        if (t > 0xFFFF)
          throw Error(fmt::format("token {} does not fit in uint16", t), prefix_.string());
        const auto v = static_cast<std::uint16_t>(t);
        std::memcpy(p, &v, 2);
        break;
      }
      case TokenType::I32: {
        if (t > static_cast<std::uint32_t>(std::numeric_limits<std::int32_t>::max())) {
          throw Error(fmt::format("token {} does not fit in int32", t), prefix_.string());
        }
        const auto v = static_cast<std::int32_t>(t);
        std::memcpy(p, &v, 4);
        break;
      }
      default: {
        const auto v = static_cast<std::int64_t>(t);
        std::memcpy(p, &v, 8);
      }
    }
    p += item;
  }
  add_raw_document(scratch_);
}

void IndexedDatasetWriter::add_raw_document(std::span<const std::byte> bytes) {
  const std::size_t n = bytes.size() / token_size(type_);
  if (n > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
    throw Error(
        fmt::format("a document of {} tokens is too long for the .idx format (int32 sizes)", n),
        prefix_.string());
  }
  bin_.write(bytes);
  sizes_.push_back(static_cast<std::int32_t>(n));
  tokens_ += n;
}

void IndexedDatasetWriter::commit(const std::vector<std::int64_t>* doc_idx) {
  if (doc_idx != nullptr && (doc_idx->empty() || doc_idx->front() != 0 ||
                             doc_idx->back() != static_cast<std::int64_t>(sizes_.size()))) {
    throw std::logic_error("document index must run from 0 to the sequence count");
  }
  AtomicFile idx(with_suffix(prefix_, ".idx"));
  idx.write(kIdxMagic, sizeof kIdxMagic);
  const std::uint64_t version = 1;
  const auto code = static_cast<std::uint8_t>(type_);
  const std::uint64_t n = sizes_.size();
  const std::uint64_t d = doc_idx != nullptr ? doc_idx->size() : n + 1;
  idx.write(&version, 8);
  idx.write(&code, 1);
  idx.write(&n, 8);
  idx.write(&d, 8);
  idx.write(sizes_.data(), n * 4);
  const std::int64_t item = static_cast<std::int64_t>(token_size(type_));
  std::vector<std::int64_t> buffer;
  buffer.reserve(1 << 16);
  std::int64_t pointer = 0;
  for (std::uint64_t i = 0; i < n; ++i) {  // pointers, in blocks
    buffer.push_back(pointer);
    pointer += sizes_[i] * item;
    if (buffer.size() == buffer.capacity()) {
      idx.write(buffer.data(), buffer.size() * 8);
      buffer.clear();
    }
  }
  idx.write(buffer.data(), buffer.size() * 8);
  buffer.clear();
  for (std::uint64_t k = 0; k < d; ++k) {  // by default one sequence per document
    buffer.push_back(doc_idx != nullptr ? (*doc_idx)[k] : static_cast<std::int64_t>(k));
    if (buffer.size() == buffer.capacity()) {
      idx.write(buffer.data(), buffer.size() * 8);
      buffer.clear();
    }
  }
  idx.write(buffer.data(), buffer.size() * 8);
  bin_.commit();
  idx.commit();
}

}  // namespace borealis
