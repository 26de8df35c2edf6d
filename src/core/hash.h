// Hashing for cache keys and checksums: XXH3, 64 and 128 bits.
//
// Not cryptographic. Use it to name caches (e.g. a blended index keyed by its
// inputs) and to detect corrupt or changed files (checkpoint tensors). Results
// are stable across platforms and releases of xxHash, so they may be stored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

namespace borealis {

struct Hash128 {
  std::uint64_t high = 0;
  std::uint64_t low = 0;

  std::string hex() const;  // 32 lowercase hex digits, high word first
  bool operator==(const Hash128&) const = default;
};

std::uint64_t hash64(const void* data, std::size_t size, std::uint64_t seed = 0);
inline std::uint64_t hash64(std::string_view text, std::uint64_t seed = 0) {
  return hash64(text.data(), text.size(), seed);
}
Hash128 hash128(const void* data, std::size_t size);
inline Hash128 hash128(std::string_view text) {
  return hash128(text.data(), text.size());
}

// 16 lowercase hex digits.
std::string hex64(std::uint64_t value);

// Incremental XXH3-128 over many pieces; equal to hash128 of their
// concatenation. Typed helpers make cache keys from mixed fields
// unambiguous: strings are length-prefixed.
class Hasher {
 public:
  Hasher();
  ~Hasher();
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;

  Hasher& update(const void* data, std::size_t size);
  Hasher& add(std::string_view field);  // length-prefixed
  Hasher& add(std::uint64_t value);     // 8 bytes, little endian
  Hasher& add(double value);            // the IEEE-754 bits
  Hash128 digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Hash of a whole file's contents (read through a memory map).
Hash128 hash_file(const std::filesystem::path& path);

}  // namespace borealis
