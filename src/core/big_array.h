// A fixed-size array of trivially copyable values for large tables filled
// at once (hash tables of a tokenizer): anonymous memory aligned to 2 MiB
// and marked for transparent huge pages, so filling a table of a few MiB
// takes a few page faults instead of one per 4 KiB. Where huge pages are
// off it is plain memory. Move-only; the size is fixed at construction.
#pragma once

#include <cstddef>
#include <type_traits>
#include <utility>

namespace borealis {

namespace detail {
void* big_alloc(std::size_t bytes, std::size_t& mapped);  // throws std::bad_alloc
void big_free(void* p, std::size_t mapped) noexcept;
}  // namespace detail

template <typename T>
class BigArray {
  static_assert(std::is_trivially_copyable_v<T>);

 public:
  BigArray() = default;
  // n copies of fill.
  BigArray(std::size_t n, const T& fill) : size_(n) {
    if (n == 0) return;
    data_ = static_cast<T*>(detail::big_alloc(n * sizeof(T), mapped_));
    for (std::size_t i = 0; i < n; ++i) data_[i] = fill;
  }
  ~BigArray() { reset(); }
  BigArray(BigArray&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)),
        mapped_(std::exchange(o.mapped_, 0)) {}
  BigArray& operator=(BigArray&& o) noexcept {
    if (this != &o) {
      reset();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
      mapped_ = std::exchange(o.mapped_, 0);
    }
    return *this;
  }
  BigArray(const BigArray&) = delete;
  BigArray& operator=(const BigArray&) = delete;

  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T& operator[](std::size_t i) { return data_[i]; }
  const T& operator[](std::size_t i) const { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + size_; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }

 private:
  void reset() {
    if (data_ != nullptr) detail::big_free(data_, mapped_);
    data_ = nullptr;
    size_ = 0;
    mapped_ = 0;
  }

  T* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t mapped_ = 0;
};

}  // namespace borealis
