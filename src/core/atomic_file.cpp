#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace borealis {

namespace {

constexpr std::size_t kBufferSize = 1 << 20;
// Large files: start the disk write-back of every this many bytes while the
// file is still being written, so that commit()'s fsync has little left to
// wait for instead of the whole file.
constexpr std::size_t kWritebackBytes = 32u << 20;

// Permissions a plain open(O_CREAT, 0666) would give, honouring the umask.
// The umask is read from /proc because umask(2) can only be read by setting
// it, which races with other threads creating files.
mode_t default_file_mode() {
  mode_t mask = 022;
  if (std::FILE* f = std::fopen("/proc/self/status", "re")) {
    char line[256];
    while (std::fgets(line, sizeof line, f) != nullptr) {
      if (std::strncmp(line, "Umask:", 6) == 0) {
        mask = static_cast<mode_t>(std::strtoul(line + 6, nullptr, 8));
        break;
      }
    }
    std::fclose(f);
  }
  return static_cast<mode_t>(0666 & ~mask);
}

void write_all(int fd, const char* data, std::size_t size, const std::filesystem::path& path) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot write file", path.string(), errno);
    }
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path path) : path_(std::move(path)) {
  std::filesystem::path dir = path_.parent_path();
  if (dir.empty()) dir = ".";
  if (!path_.has_filename()) throw Error("not a file name", path_.string());
  std::string pattern = (dir / ("." + path_.filename().string() + ".tmp.XXXXXX")).string();
  fd_ = ::mkostemp(pattern.data(), O_CLOEXEC);
  if (fd_ < 0) throw_errno("cannot create file", path_.string(), errno);
  temp_path_ = pattern;
  ::fchmod(fd_, default_file_mode());  // mkstemp creates 0600
  buffer_.reserve(kBufferSize);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_path_.c_str());
  }
}

void AtomicFile::write(const void* data, std::size_t size) {
  if (fd_ < 0) throw std::logic_error("AtomicFile::write after commit");
  const char* p = static_cast<const char*>(data);
  written_ += size;
  if (buffer_.size() + size <= kBufferSize) {
    buffer_.append(p, size);
    return;
  }
  flush_buffer();
  if (size >= kBufferSize) {
    write_all(fd_, p, size, temp_path_);
    start_writeback();
  } else {
    buffer_.append(p, size);
  }
}

void AtomicFile::flush_buffer() {
  write_all(fd_, buffer_.data(), buffer_.size(), temp_path_);
  buffer_.clear();
  start_writeback();
}

void AtomicFile::start_writeback() {
  const std::size_t on_disk = written_ - buffer_.size();
  if (on_disk - writeback_from_ < kWritebackBytes) return;
#ifdef __linux__
  // Asynchronous: queues the range for writing and returns. Only a hint, so
  // a failure (e.g. a file system without it) is ignored; fsync decides.
  ::sync_file_range(fd_, static_cast<off_t>(writeback_from_),
                    static_cast<off_t>(on_disk - writeback_from_), SYNC_FILE_RANGE_WRITE);
#endif
  writeback_from_ = on_disk;
}

void AtomicFile::commit() {
  if (fd_ < 0) throw std::logic_error("AtomicFile::commit called twice");
  flush_buffer();
  if (::fsync(fd_) != 0) throw_errno("cannot sync file", temp_path_.string(), errno);
  if (::close(fd_) != 0) {
    fd_ = -1;
    const int err = errno;
    ::unlink(temp_path_.c_str());
    throw_errno("cannot close file", temp_path_.string(), err);
  }
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    throw_errno("cannot rename " + temp_path_.string() + " to final name", path_.string(), err);
  }
  std::filesystem::path dir = path_.parent_path();
  fsync_directory(dir.empty() ? std::filesystem::path(".") : dir);
}

void fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot open directory", dir.string(), errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems (e.g. certain network mounts) do not support fsync on
  // directories; the rename has still happened, so only real I/O errors count.
  if (rc != 0 && err != EINVAL && err != ENOTSUP)
    throw_errno("cannot sync directory", dir.string(), err);
}

void write_file_atomic(const std::filesystem::path& path, std::string_view contents) {
  AtomicFile file(path);
  file.write(contents);
  file.commit();
}

}  // namespace borealis
