// Read-only memory-mapped files.
//
// MappedFile maps a whole file read-only and unmaps it when destroyed. It is
// how datasets and checkpoints are read: zero-copy, paged in by the kernel on
// demand, shared between processes on one node. An empty file maps to an
// empty span. Opening a missing or unreadable file throws Error naming it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace borealis {

class MappedFile {
 public:
  // Whole: every page is read now (MAP_POPULATE), for a file used from end
  // to end at once; one call instead of a page fault per 4 KiB.
  enum class Access { Normal, Sequential, Random, Whole };

  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path, Access access = Access::Normal);
  ~MappedFile();

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  std::string_view text() const { return {reinterpret_cast<const char*>(data_), size_}; }
  const std::filesystem::path& path() const { return path_; }

  // Asks the kernel to start reading [offset, offset + length) ahead of use.
  void prefetch(std::size_t offset, std::size_t length) const;
  // Maps the pages of [offset, offset + length) into this process now
  // (reading them from disk if they are not cached), in one call instead
  // of a page fault per few pages, for a range about to be read whole.
  // Only a hint: where the kernel cannot, the pages fault in as before.
  void populate(std::size_t offset, std::size_t length) const;
  // Drops the pages wholly inside [offset, offset + length) from this
  // process's memory (its resident set), for readers that go through a file
  // once: a large file read front to back then never occupies more than the
  // part in use. Reading them again maps them back from the page cache or
  // the disk.
  void release(std::size_t offset, std::size_t length) const;

 private:
  void reset() noexcept;

  std::filesystem::path path_;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace borealis
