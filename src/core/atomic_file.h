// Atomic file writing: a file appears under its final name complete or not at
// all.
//
// AtomicFile writes to a temporary file in the destination directory
// (".<name>.tmp.XXXXXX"). commit() flushes it to disk (fsync), renames it over
// the final name and fsyncs the directory so the rename itself survives a
// crash. If the writer is destroyed without commit() — an exception, an early
// return — the temporary file is removed. A process killed before commit()
// leaves at most a stray ".tmp" file, never a partial file under the final
// name.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace borealis {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();

  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  void write(std::string_view text) { write(text.data(), text.size()); }
  void write(std::span<const std::byte> bytes) { write(bytes.data(), bytes.size()); }

  // Bytes written so far.
  std::size_t size() const { return written_; }

  // Makes the file visible under its final name, durably. Call once.
  void commit();

  const std::filesystem::path& path() const { return path_; }
  const std::filesystem::path& temp_path() const { return temp_path_; }

 private:
  void flush_buffer();
  // Starts the disk write-back of the bytes handed to the kernel since the
  // last time, once there are enough of them.
  void start_writeback();

  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  std::size_t written_ = 0;
  std::size_t writeback_from_ = 0;  // bytes already queued for write-back
  std::string buffer_;
};

// Writes `contents` to `path` atomically.
void write_file_atomic(const std::filesystem::path& path, std::string_view contents);

// Fsyncs a directory so that renames and creations inside it are durable.
void fsync_directory(const std::filesystem::path& dir);

}  // namespace borealis
