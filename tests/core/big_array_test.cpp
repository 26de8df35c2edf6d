// BigArray: filled on construction, moved without copying, tables of 1 MiB
// or more mapped at 2 MiB alignment (for huge pages), smaller ones on the heap.
#include "core/big_array.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <utility>

namespace borealis {
namespace {

struct Slot {
  std::uint64_t key;
  std::uint32_t a, b;
};

TEST(BigArray, SmallAndLargeAreFilledAndMove) {
  for (const std::size_t n : {std::size_t{0}, std::size_t{16}, std::size_t{1} << 17,
                              (std::size_t{3} << 20) / sizeof(Slot) + 5}) {
    BigArray<Slot> t(n, Slot{~std::uint64_t{0}, 1, 2});
    ASSERT_EQ(t.size(), n);
    std::size_t seen = 0;
    for (const Slot& s : t) {
      ASSERT_EQ(s.key, ~std::uint64_t{0});
      ASSERT_EQ(s.b, 2u);
      ++seen;
    }
    EXPECT_EQ(seen, n);
    if (n == 0) continue;
    t[n - 1].a = 7;
    const Slot* before = t.begin();
    if (n * sizeof(Slot) >= (std::size_t{1} << 20)) {
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(before) % (std::size_t{2} << 20), 0u) << n;
    }
    BigArray<Slot> moved(std::move(t));
    EXPECT_EQ(moved.begin(), before);  // the memory moves, not the values
    EXPECT_EQ(moved[n - 1].a, 7u);
    EXPECT_TRUE(t.empty());  // NOLINT(bugprone-use-after-move): moved-from is empty
    BigArray<Slot> assigned(4, Slot{});
    assigned = std::move(moved);
    EXPECT_EQ(assigned.size(), n);
    EXPECT_EQ(assigned[n - 1].a, 7u);
  }
}

}  // namespace
}  // namespace borealis
