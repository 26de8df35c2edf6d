#include "eval/python_random.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_util.h"

namespace borealis {
namespace {

// The same draws in Python and here, one line each: integers, and doubles as
// their IEEE bit patterns so that equal lines mean equal to the bit.
constexpr const char* kDrawsScript = R"(
import random, struct
def bits(x): return struct.unpack('<Q', struct.pack('<d', x))[0]
def line(*xs): print(' '.join(str(x) for x in xs))
for seed in [0, 1, 1234, 2**32 - 1, 2**32, 2**40 + 7]:
    r = random.Random(seed)
    line(*[r.getrandbits(32) for _ in range(3)])
    line(r.getrandbits(64), r.getrandbits(33), r.getrandbits(1), r.getrandbits(0), r.getrandbits(63))
    line(*[bits(r.random()) for _ in range(3)])
    line(*[r._randbelow(n) for n in [1, 2, 3, 1000, 2**33 + 1, 2**63 + 5, 2**64 - 1]])
    # Pool and set branches, either side of setsize (85 for k = 6, 277 for k = 22).
    for n, k in [(10, 3), (10, 10), (5, 0), (1, 1), (85, 6), (86, 6), (277, 22), (278, 22),
                 (100, 5), (1000, 40), (10**6, 7), (50, 50), (3000, 1000), (10**9, 300)]:
        line(*r.sample(range(n), k))
    line(*r.choices(range(7), k=20))
    line(*r.choices(range(1000), k=15))
    line(*r.sample(range(20), 5))
)";

std::string join(const std::vector<std::uint64_t>& xs) {
  std::ostringstream s;
  for (std::size_t i = 0; i < xs.size(); ++i) s << (i > 0 ? " " : "") << xs[i];
  return s.str();
}

std::string join_sizes(const std::vector<std::size_t>& xs) {
  return join(std::vector<std::uint64_t>(xs.begin(), xs.end()));
}

std::vector<std::string> our_draws() {
  std::vector<std::string> out;
  for (std::uint64_t seed : {0ULL, 1ULL, 1234ULL, (1ULL << 32) - 1, 1ULL << 32, (1ULL << 40) + 7}) {
    PythonRandom r(seed);
    std::vector<std::uint64_t> v;
    for (int i = 0; i < 3; ++i) v.push_back(r.getrandbits(32));
    out.push_back(join(v));
    v.clear();
    for (int k : {64, 33, 1, 0, 63}) v.push_back(r.getrandbits(k));
    out.push_back(join(v));
    v.clear();
    for (int i = 0; i < 3; ++i) v.push_back(std::bit_cast<std::uint64_t>(r.random()));
    out.push_back(join(v));
    v.clear();
    for (std::uint64_t n : {1ULL, 2ULL, 3ULL, 1000ULL, (1ULL << 33) + 1, (1ULL << 63) + 5, ~0ULL}) {
      v.push_back(r.randbelow(n));
    }
    out.push_back(join(v));
    const std::vector<std::pair<std::size_t, std::size_t>> samples = {
        {10, 3},   {10, 10}, {5, 0},     {1, 1},       {85, 6},  {86, 6},      {277, 22},
        {278, 22}, {100, 5}, {1000, 40}, {1000000, 7}, {50, 50}, {3000, 1000}, {1000000000, 300}};
    for (const auto& [n, k] : samples) out.push_back(join_sizes(r.sample(n, k)));
    out.push_back(join_sizes(r.choices(7, 20)));
    out.push_back(join_sizes(r.choices(1000, 15)));
    out.push_back(join_sizes(r.sample(20, 5)));
  }
  return out;
}

// Runs a Python script; nullopt (with the reason printed) when python3 is missing.
std::optional<std::vector<std::string>> run_python(const std::string& script) {
  const test::RunResult r = test::run_program("/usr/bin/env", {"python3", "-c", script});
  if (r.exit_code == 127) return std::nullopt;
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> lines;
  std::istringstream in(r.out);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}

#define PYTHON_OR_SKIP(lines, script)                                 \
  const auto lines = run_python(script);                              \
  if (!lines) {                                                       \
    std::printf("python3 is not on PATH; skipping the comparison\n"); \
    GTEST_SKIP() << "python3 is not on PATH";                         \
  }

TEST(PythonRandom, DrawsMatchCPython) {
  PYTHON_OR_SKIP(py, kDrawsScript);
  const std::vector<std::string> ours = our_draws();
  ASSERT_EQ(py->size(), ours.size());
  for (std::size_t i = 0; i < ours.size(); ++i) EXPECT_EQ(ours[i], (*py)[i]) << "line " << i;
}

// lm-eval's statistics written out in plain Python (not lm-eval itself),
// over 37 values drawn by Random(99). Prints bit patterns of: mean,
// sample_stddev, mean_stderr, then the perplexity bootstrap for 2000, 2500
// and 300 iterations, then the bootstrap of the mean for 2000.
constexpr const char* kStatsScript = R"(
import math, random, struct
def bits(x): return struct.unpack('<Q', struct.pack('<d', x))[0]
r = random.Random(99)
xs = [-(r.random() * 5.0) for _ in range(37)]
def mean(a): return sum(a) / len(a)
def sample_stddev(a):
    mu = mean(a)
    return math.sqrt(sum([(x - mu) ** 2 for x in a]) / (len(a) - 1))
def perplexity(a): return math.exp(-mean(a))
def boot(f, xs, iters):
    res = []
    chunk = min(1000, iters)
    for i in range(iters // chunk):
        rnd = random.Random(i)
        for _ in range(chunk):
            res.append(f(rnd.choices(xs, k=len(xs))))
    return sample_stddev(res)
out = [mean(xs), sample_stddev(xs), sample_stddev(xs) / math.sqrt(len(xs))]
out += [boot(perplexity, xs, n) for n in [2000, 2500, 300]]
out += [boot(mean, xs, 2000)]
for x in out: print(bits(x))
)";

std::vector<double> stats_values() {
  PythonRandom r(99);
  std::vector<double> xs(37);
  for (double& x : xs) x = -(r.random() * 5.0);
  return xs;
}

TEST(PythonRandom, StatisticsMatchPython) {
  PYTHON_OR_SKIP(py, kStatsScript);
  ASSERT_EQ(py->size(), 7u);
  std::vector<double> want;
  for (const std::string& l : *py) want.push_back(std::bit_cast<double>(std::stoull(l)));
  const std::vector<double> xs = stats_values();
  const std::vector<double> got = {
      mean(xs),
      sample_stddev(xs),
      mean_stderr(xs),
      bootstrap_perplexity_stderr(xs, 2000),
      bootstrap_perplexity_stderr(xs, 2500),
      bootstrap_perplexity_stderr(xs, 300),
      bootstrap_stderr([](std::span<const double> s) { return mean(s); }, xs, 2000),
  };
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-12 * std::fabs(want[i])) << "value " << i;
    // Same operations in the same order: expected to agree to the bit.
    EXPECT_EQ(std::bit_cast<std::uint64_t>(got[i]), std::bit_cast<std::uint64_t>(want[i]))
        << "value " << i << ": " << got[i] << " vs " << want[i];
  }
}

TEST(PythonRandom, GenericBootstrapAgreesWithThePerplexityOne) {
  const std::vector<double> xs = stats_values();
  const auto ppl = [](std::span<const double> s) { return std::exp(-mean(s)); };
  EXPECT_EQ(bootstrap_stderr(ppl, xs, 3000), bootstrap_perplexity_stderr(xs, 3000));
}

TEST(PythonRandom, Errors) {
  PythonRandom r(1);
  EXPECT_EQ(test::error_line([&] { r.sample(3, 4); }),
            "error: a sample of 4 from a population of 3 (random.sample)");
  EXPECT_THROW(r.randbelow(0), std::invalid_argument);
  EXPECT_THROW(r.getrandbits(65), std::invalid_argument);
  const std::vector<double> xs = {-1.0, -2.0};
  EXPECT_THROW(bootstrap_perplexity_stderr(xs, 0), Error);
  EXPECT_THROW(sample_stddev(std::span<const double>(xs).first(1)), std::invalid_argument);
  // A statistic's exception leaves the parallel loop and reaches the caller.
  EXPECT_THROW(
      bootstrap_stderr([](std::span<const double>) -> double { throw std::runtime_error("boom"); },
                       xs, 2000),
      std::runtime_error);
}

}  // namespace
}  // namespace borealis
