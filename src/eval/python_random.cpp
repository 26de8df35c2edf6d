#include "eval/python_random.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <exception>
#include <stdexcept>
#include <unordered_set>

#include "core/error.h"

namespace borealis {

namespace {

constexpr std::size_t kN = 624;
constexpr std::size_t kM = 397;
constexpr std::uint32_t kMatrixA = 0x9908b0dfU;
constexpr std::uint32_t kUpperMask = 0x80000000U;
constexpr std::uint32_t kLowerMask = 0x7fffffffU;

// Python computes x ** 2 with libm's pow and math.log(x, 4) as
// log(x) / log(4.0). GCC would fold pow(x, 2.0) into x * x and log(4.0) into
// a constant, both correctly rounded; glibc's pow and log are not always
// (x**2 != x*x for about 1 double in 1000), so the constants are read at run
// time to keep the library calls.
volatile double g_two = 2.0;
volatile double g_four = 4.0;

// random.choices' floor(random() * n), n already a float as Python makes it.
std::size_t draw_index(PythonRandom& rnd, double n) {
  return static_cast<std::size_t>(std::floor(rnd.random() * n));
}

// Python's sum() over floats in 3.11: plain left-to-right double addition
// (its int start 0 becomes 0.0, and 0.0 + x == x).
double python_sum(std::span<const double> xs) {
  double s = 0.0;
  for (double x : xs) s += x;
  return s;
}

// Runs fn(chunk) for every chunk on OpenMP threads; values land at fixed
// positions, so the result does not depend on the schedule. The first
// exception (by chunk) is rethrown after the loop, as an exception may not
// leave an OpenMP region.
template <typename Fn>
void for_each_chunk(std::size_t chunks, Fn fn) {
  std::vector<std::exception_ptr> errors(chunks);
  const auto n = static_cast<std::ptrdiff_t>(chunks);
#pragma omp parallel for schedule(dynamic, 1)
  for (std::ptrdiff_t c = 0; c < n; ++c) {
    try {
      fn(static_cast<std::size_t>(c));
    } catch (...) {
      errors[static_cast<std::size_t>(c)] = std::current_exception();
    }
  }
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// lm-eval's chunking: min(1000, iters) resamples per chunk, iters // chunk chunks.
std::size_t chunk_size(int iters) {
  if (iters < 1) {
    throw Error(fmt::format("the bootstrap needs at least one iteration, got {}", iters),
                "--bootstrap-iters");
  }
  return static_cast<std::size_t>(std::min(1000, iters));
}

}  // namespace

PythonRandom::PythonRandom(std::uint64_t seed) {
  // init_genrand(19650218) then init_by_array, as Modules/_randommodule.c.
  mt_[0] = 19650218U;
  for (std::size_t i = 1; i < kN; ++i) {
    mt_[i] = 1812433253U * (mt_[i - 1] ^ (mt_[i - 1] >> 30)) + static_cast<std::uint32_t>(i);
  }
  std::vector<std::uint32_t> key{static_cast<std::uint32_t>(seed)};
  if (seed >> 32 != 0) key.push_back(static_cast<std::uint32_t>(seed >> 32));

  std::size_t i = 1, j = 0;
  for (std::size_t k = std::max(kN, key.size()); k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525U)) + key[j] +
             static_cast<std::uint32_t>(j);
    ++i;
    ++j;
    if (i >= kN) {
      mt_[0] = mt_[kN - 1];
      i = 1;
    }
    if (j >= key.size()) j = 0;
  }
  for (std::size_t k = kN - 1; k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941U)) -
             static_cast<std::uint32_t>(i);
    ++i;
    if (i >= kN) {
      mt_[0] = mt_[kN - 1];
      i = 1;
    }
  }
  mt_[0] = 0x80000000U;  // the state is never all zeros
  next_ = kN;
}

void PythonRandom::twist() {
  const auto mix = [this](std::size_t a, std::size_t b, std::size_t far) {
    const std::uint32_t y = (mt_[a] & kUpperMask) | (mt_[b] & kLowerMask);
    mt_[a] = mt_[far] ^ (y >> 1) ^ ((y & 1U) != 0 ? kMatrixA : 0U);
  };
  std::size_t k = 0;
  for (; k < kN - kM; ++k) mix(k, k + 1, k + kM);
  for (; k < kN - 1; ++k) mix(k, k + 1, k + kM - kN);
  mix(kN - 1, 0, kM - 1);
  next_ = 0;
}

std::uint32_t PythonRandom::genrand() {
  if (next_ >= kN) twist();
  std::uint32_t y = mt_[next_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680U;
  y ^= (y << 15) & 0xefc60000U;
  y ^= y >> 18;
  return y;
}

double PythonRandom::random() {
  const std::uint32_t a = genrand() >> 5;
  const std::uint32_t b = genrand() >> 6;
  return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0);
}

std::uint64_t PythonRandom::getrandbits(int k) {
  if (k < 0 || k > 64)
    throw std::invalid_argument(fmt::format("getrandbits({}): k outside 0..64", k));
  if (k == 0) return 0;
  if (k <= 32) return genrand() >> (32 - k);
  // CPython fills the words from the least significant up, dropping the low
  // bits of the last (most significant) one.
  const std::uint64_t low = genrand();
  const std::uint64_t high = genrand() >> (64 - k);
  return low | (high << 32);
}

std::uint64_t PythonRandom::randbelow(std::uint64_t n) {
  if (n == 0) throw std::invalid_argument("randbelow(0): the range is empty");
  const int k = std::bit_width(n);  // not n - 1: n may be 1
  std::uint64_t r = getrandbits(k);
  while (r >= n) r = getrandbits(k);
  return r;
}

std::vector<std::size_t> PythonRandom::sample(std::size_t population, std::size_t k) {
  if (k > population) {
    throw Error(fmt::format("a sample of {} from a population of {}", k, population),
                "random.sample");
  }
  // Python picks whichever of an n-length list and a k-entry set is smaller:
  // setsize = 21 + 4 ** ceil(log(3k, 4)) for k > 5. From 4**32 on, the set
  // would outweigh any population that fits in memory.
  std::uint64_t setsize = 21;
  if (k > 5) {
    const double e = std::ceil(std::log(static_cast<double>(k * 3)) / std::log(g_four));
    setsize = e >= 32 ? UINT64_MAX : setsize + (std::uint64_t{1} << (2 * static_cast<int>(e)));
  }
  std::vector<std::size_t> result(k);
  const std::size_t n = population;
  if (n <= setsize) {
    std::vector<std::size_t> pool(n);
    for (std::size_t i = 0; i < n; ++i) pool[i] = i;
    for (std::size_t i = 0; i < k; ++i) {
      const std::size_t j = randbelow(n - i);
      result[i] = pool[j];
      pool[j] = pool[n - i - 1];  // move the last unselected into the gap
    }
  } else {
    std::unordered_set<std::size_t> selected;
    selected.reserve(k);
    for (std::size_t i = 0; i < k; ++i) {
      std::size_t j = randbelow(n);
      while (selected.contains(j)) j = randbelow(n);
      selected.insert(j);
      result[i] = j;
    }
  }
  return result;
}

std::vector<std::size_t> PythonRandom::choices(std::size_t population, std::size_t k) {
  const auto n = static_cast<double>(population);
  std::vector<std::size_t> out(k);
  for (std::size_t& x : out) x = draw_index(*this, n);
  return out;
}

double mean(std::span<const double> xs) {
  if (xs.empty()) throw std::invalid_argument("the mean of no values");
  return python_sum(xs) / static_cast<double>(xs.size());
}

double sample_stddev(std::span<const double> xs) {
  if (xs.size() < 2) throw std::invalid_argument("a sample stddev needs two values");
  const double mu = mean(xs);
  const double two = g_two;
  double s = 0.0;
  // Python's float ** takes the absolute value of a negative base before pow.
  for (double x : xs) s += std::pow(std::fabs(x - mu), two);
  return std::sqrt(s / static_cast<double>(xs.size() - 1));
}

double mean_stderr(std::span<const double> xs) {
  return sample_stddev(xs) / std::sqrt(static_cast<double>(xs.size()));
}

double bootstrap_stderr(const std::function<double(std::span<const double>)>& statistic,
                        std::span<const double> xs, int iters) {
  const std::size_t chunk = chunk_size(iters);
  const std::size_t chunks = static_cast<std::size_t>(iters) / chunk;
  const auto n = static_cast<double>(xs.size());
  std::vector<double> res(chunks * chunk);
  for_each_chunk(chunks, [&](std::size_t c) {
    PythonRandom rnd(c);
    std::vector<double> resample(xs.size());
    for (std::size_t r = 0; r < chunk; ++r) {
      for (double& x : resample) x = xs[draw_index(rnd, n)];
      res[c * chunk + r] = statistic(resample);
    }
  });
  return sample_stddev(res);
}

double bootstrap_perplexity_stderr(std::span<const double> loglikelihoods, int iters) {
  if (loglikelihoods.empty()) throw std::invalid_argument("the perplexity of no values");
  const std::size_t chunk = chunk_size(iters);
  const std::size_t chunks = static_cast<std::size_t>(iters) / chunk;
  const auto n = static_cast<double>(loglikelihoods.size());
  std::vector<double> res(chunks * chunk);
  for_each_chunk(chunks, [&](std::size_t c) {
    PythonRandom rnd(c);
    for (std::size_t r = 0; r < chunk; ++r) {
      // sum(resample) / len(resample), adding in draw order as Python does.
      double s = 0.0;
      for (std::size_t t = 0; t < loglikelihoods.size(); ++t) {
        s += loglikelihoods[draw_index(rnd, n)];
      }
      res[c * chunk + r] = std::exp(-(s / n));
    }
  });
  return sample_stddev(res);
}

}  // namespace borealis
