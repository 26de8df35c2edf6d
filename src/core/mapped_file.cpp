#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "core/error.h"

namespace borealis {

MappedFile::MappedFile(const std::filesystem::path& path, Access access) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot open file", path.string(), errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw_errno("cannot stat file", path.string(), err);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw Error("expected a file, found a directory", path.string());
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    const int flags = MAP_SHARED | (access == Access::Whole ? MAP_POPULATE : 0);
    void* p = ::mmap(nullptr, size_, PROT_READ, flags, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      size_ = 0;
      throw_errno("cannot map file", path.string(), err);
    }
    data_ = static_cast<std::byte*>(p);
    const int advice = access == Access::Sequential || access == Access::Whole ? MADV_SEQUENTIAL
                       : access == Access::Random                              ? MADV_RANDOM
                                                                               : MADV_NORMAL;
    ::madvise(data_, size_, advice);  // a hint; failure changes nothing
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() {
  reset();
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    reset();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void MappedFile::reset() noexcept {
  if (data_ != nullptr) ::munmap(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

void MappedFile::prefetch(std::size_t offset, std::size_t length) const {
  if (offset >= size_ || length == 0) return;
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t begin = offset / page * page;
  const std::size_t end = std::min(size_, offset + length);
  ::madvise(data_ + begin, end - begin, MADV_WILLNEED);
}

void MappedFile::populate(std::size_t offset, std::size_t length) const {
  if (offset >= size_ || length == 0) return;
#ifdef MADV_POPULATE_READ
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t begin = offset / page * page;
  const std::size_t end = std::min(size_, offset + length);
  ::madvise(data_ + begin, end - begin, MADV_POPULATE_READ);  // Linux 5.14 and later
#endif
}

void MappedFile::release(std::size_t offset, std::size_t length) const {
  if (offset >= size_ || length == 0) return;
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t begin = (offset + page - 1) / page * page;
  // The last page of the file may be partial; it is wholly released with it.
  const std::size_t end = offset + length >= size_ ? size_ : (offset + length) / page * page;
  if (end <= begin) return;
  // A read-only shared mapping of a file: its pages stay in the page cache
  // and the next access maps them again. Only a hint; failure changes nothing.
  ::madvise(data_ + begin, end - begin, MADV_DONTNEED);
}

}  // namespace borealis
