#include "core/big_array.h"

#include <sys/mman.h>

#include <cstdint>
#include <new>

namespace borealis::detail {

namespace {
constexpr std::size_t kHuge = std::size_t{2} << 20;
// Below this a table is ordinary heap memory: a huge page would hold more
// than the table.
constexpr std::size_t kMinMapped = std::size_t{1} << 20;
}  // namespace

void* big_alloc(std::size_t bytes, std::size_t& mapped) {
  if (bytes < kMinMapped) {
    mapped = 0;
    return ::operator new(bytes);
  }
  const std::size_t size = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p =
      ::mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  // Keep the 2 MiB-aligned part: huge pages need that alignment.
  auto* base = static_cast<char*>(p);
  const auto addr = reinterpret_cast<std::uintptr_t>(base);
  const std::size_t head = (kHuge - addr % kHuge) % kHuge;
  if (head > 0) ::munmap(base, head);
  if (kHuge - head > 0) ::munmap(base + head + size, kHuge - head);
  ::madvise(base + head, size, MADV_HUGEPAGE);  // a hint; without it, 4 KiB pages
  mapped = size;
  return base + head;
}

void big_free(void* p, std::size_t mapped) noexcept {
  if (mapped == 0) {
    ::operator delete(p);
  } else {
    ::munmap(p, mapped);
  }
}

}  // namespace borealis::detail
