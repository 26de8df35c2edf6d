// numpy's legacy RandomState: raw draws, bounded integers, shuffle,
// permutation and np.sum against fixtures written by numpy itself
// (fixtures/make_numpy_fixtures.py, Debian python3-numpy).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "data/numpy_random.h"

namespace borealis {
namespace {

const std::string kFixture = BOREALIS_SOURCE_DIR "/tests/data/fixtures/numpy_random.txt";

std::vector<std::vector<std::string>> fixture_lines(const std::string& kind) {
  std::ifstream in(kFixture);
  EXPECT_TRUE(in.good()) << kFixture;
  std::vector<std::vector<std::string>> out;
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::vector<std::string> w;
    for (std::string x; words >> x;) w.push_back(x);
    if (!w.empty() && w[0] == kind) out.push_back(std::vector<std::string>(w.begin() + 1, w.end()));
  }
  EXPECT_FALSE(out.empty()) << "no '" << kind << "' lines in " << kFixture;
  return out;
}

std::uint64_t u64(const std::string& s) {
  return std::stoull(s);
}

template <class T>
std::uint64_t check(const std::vector<T>& a) {
  std::uint64_t s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += (i + 1) * static_cast<std::uint64_t>(a[i]);
  return s;
}

TEST(NumpyRandom, RawDrawsMatchNumpy) {
  for (const auto& w : fixture_lines("raw")) {
    NumpyRandomState rs(static_cast<std::uint32_t>(u64(w[0])));
    for (std::size_t i = 1; i < w.size(); ++i) {
      ASSERT_EQ(rs.next32(), u64(w[i])) << "seed " << w[0] << " draw " << i - 1;
    }
  }
}

TEST(NumpyRandom, BoundedIntegersMatchNumpyOn32And64BitPaths) {
  std::size_t wide = 0;
  for (const auto& w : fixture_lines("interval")) {
    NumpyRandomState rs(static_cast<std::uint32_t>(u64(w[0])));
    for (std::size_t i = 1; i + 1 < w.size(); i += 2) {
      const std::uint64_t max = u64(w[i]);
      wide += max > 0xffffffffu;
      ASSERT_EQ(rs.interval(max), u64(w[i + 1])) << "seed " << w[0] << " max " << max;
    }
  }
  EXPECT_GT(wide, 50u);  // the 64-bit path was exercised
}

template <class T>
void check_shuffles(const std::vector<std::vector<std::string>>& lines) {
  std::uint64_t seed = ~0ull;
  std::unique_ptr<NumpyRandomState> rs;
  for (const auto& w : lines) {
    if (u64(w[0]) != seed || u64(w[1]) == 0) {  // each run of sizes starts at n = 0
      seed = u64(w[0]);
      rs = std::make_unique<NumpyRandomState>(static_cast<std::uint32_t>(seed));
    }
    std::vector<T> a(u64(w[1]));
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<T>(i);
    rs->shuffle(a);
    ASSERT_EQ(check(a), u64(w[2])) << "seed " << seed << " n " << a.size();
    for (std::size_t i = 3; i < w.size(); ++i) {
      ASSERT_EQ(static_cast<std::uint64_t>(a[i - 3]), u64(w[i]));
    }
  }
}

TEST(NumpyRandom, ShuffleMatchesNumpyForEveryElementType) {
  // The fixture lists, per seed, uint32 then int32 then int64 runs of sizes;
  // the draws do not depend on the element type, so one checker serves all.
  const auto lines = fixture_lines("shuffle");
  check_shuffles<std::uint32_t>(lines);
  check_shuffles<std::int32_t>(lines);
  check_shuffles<std::int64_t>(lines);
}

TEST(NumpyRandom, PermutationMatchesNumpy) {
  std::map<std::uint64_t, std::unique_ptr<NumpyRandomState>> states;
  for (const auto& w : fixture_lines("perm")) {
    auto& rs = states[u64(w[0])];
    if (!rs) rs = std::make_unique<NumpyRandomState>(static_cast<std::uint32_t>(u64(w[0])));
    const auto p = rs->permutation(u64(w[1]));
    ASSERT_EQ(check(p), u64(w[2])) << "seed " << w[0] << " n " << w[1];
    for (std::size_t i = 3; i < w.size(); ++i) ASSERT_EQ(p[i - 3], std::stoll(w[i]));
  }
}

TEST(NumpyRandom, SumAddsAsNumpyDoes) {
  for (const auto& w : fixture_lines("sum")) {
    const std::size_t n = u64(w[0]);
    std::vector<double> x;
    for (std::size_t i = 2; i < w.size(); ++i) x.push_back(std::strtod(w[i].c_str(), nullptr));
    ASSERT_EQ(x.size(), n);
    EXPECT_EQ(numpy_sum(x.data(), n), std::strtod(w[1].c_str(), nullptr)) << "n " << n;
  }
}

}  // namespace
}  // namespace borealis
