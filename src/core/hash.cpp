#include "core/hash.h"

#include <xxhash.h>

#include <fmt/format.h>
#include <bit>
#include <cstring>
#include <stdexcept>

#include "core/mapped_file.h"

namespace borealis {

static_assert(std::endian::native == std::endian::little, "Borealis assumes a little-endian host");

struct Hasher::State {
  XXH3_state_t* xxh = nullptr;
};

std::string Hash128::hex() const {
  return fmt::format("{:016x}{:016x}", high, low);
}

std::string hex64(std::uint64_t value) {
  return fmt::format("{:016x}", value);
}

std::uint64_t hash64(const void* data, std::size_t size, std::uint64_t seed) {
  return XXH3_64bits_withSeed(data, size, seed);
}

Hash128 hash128(const void* data, std::size_t size) {
  const XXH128_hash_t h = XXH3_128bits(data, size);
  return {h.high64, h.low64};
}

Hasher::Hasher() : state_(std::make_unique<State>()) {
  state_->xxh = XXH3_createState();
  if (state_->xxh == nullptr) throw std::bad_alloc();
  XXH3_128bits_reset(state_->xxh);
}

Hasher::~Hasher() {
  XXH3_freeState(state_->xxh);
}

Hasher& Hasher::update(const void* data, std::size_t size) {
  XXH3_128bits_update(state_->xxh, data, size);
  return *this;
}

Hasher& Hasher::add(std::string_view field) {
  add(static_cast<std::uint64_t>(field.size()));
  return update(field.data(), field.size());
}

Hasher& Hasher::add(std::uint64_t value) {
  return update(&value, sizeof value);
}

Hasher& Hasher::add(double value) {
  return add(std::bit_cast<std::uint64_t>(value));
}

Hash128 Hasher::digest() const {
  const XXH128_hash_t h = XXH3_128bits_digest(state_->xxh);
  return {h.high64, h.low64};
}

Hash128 hash_file(const std::filesystem::path& path) {
  const MappedFile file(path, MappedFile::Access::Sequential);
  return hash128(file.data(), file.size());
}

}  // namespace borealis
