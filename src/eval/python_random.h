// CPython's random.Random, bit for bit, and lm-evaluation-harness's
// statistics built on it.
//
// lm-eval draws its few-shot examples with random.Random(seed).sample and its
// bootstrap standard errors with random.Random(i).choices; to report the same
// numbers we replay the same Mersenne Twister and the same algorithms
// (Lib/random.py and Modules/_randommodule.c of CPython 3.11, the Python of
// Debian 12). Populations are ranges: sample(n, k) returns the indices that
// random.Random(seed).sample(range(n), k) returns.
//
// The statistics add left to right in double as Python 3.11's sum() does
// (3.12 compensates its float sums, which changes the last bits), and call
// the same libm functions Python calls, so results match lm-eval to the bit.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace borealis {

class PythonRandom {
 public:
  // random.Random(seed): init_by_array over the 32-bit words of seed, least
  // significant first (seed 0 is the one-word key [0]).
  explicit PythonRandom(std::uint64_t seed);

  // The next 32-bit output of MT19937.
  std::uint32_t genrand();
  // random.random(): a double in [0, 1) from 53 bits of two outputs.
  double random();
  // random.getrandbits(k), 0 <= k <= 64; k > 32 takes the low word first.
  std::uint64_t getrandbits(int k);
  // random._randbelow(n): uniform in [0, n) by rejection, n > 0 (CPython
  // loops forever on 0; here it is a std::invalid_argument).
  std::uint64_t randbelow(std::uint64_t n);

  // random.sample(range(population), k), in selection order. Throws
  // borealis::Error when k > population.
  std::vector<std::size_t> sample(std::size_t population, std::size_t k);
  // random.choices(range(population), k=k): k draws with replacement.
  std::vector<std::size_t> choices(std::size_t population, std::size_t k);

 private:
  void twist();

  std::array<std::uint32_t, 624> mt_{};
  std::size_t next_ = 624;
};

// lm-eval's mean: sum(xs) / len(xs). xs must not be empty.
double mean(std::span<const double> xs);
// lm-eval's sample_stddev: sqrt(sum((x - mean)**2) / (n - 1)); n >= 2.
double sample_stddev(std::span<const double> xs);
// lm-eval's mean_stderr: sample_stddev(xs) / sqrt(n); n >= 2.
double mean_stderr(std::span<const double> xs);

// lm-eval's bootstrap_stderr(statistic, xs, iters): iters // chunk resamples
// (chunk = min(1000, iters)); chunk i draws its resamples with
// random.Random(i).choices(xs, k=len(xs)); the result is the sample_stddev
// of the statistic over all resamples, in chunk order. Chunks run in
// parallel, so `statistic` must be safe to call from several threads.
// Throws borealis::Error when iters < 1.
double bootstrap_stderr(const std::function<double(std::span<const double>)>& statistic,
                        std::span<const double> xs, int iters);

// bootstrap_stderr with lm-eval's perplexity, exp(-mean(resample)), without
// building the resamples: fast enough for 100000 iterations over thousands
// of documents.
double bootstrap_perplexity_stderr(std::span<const double> loglikelihoods, int iters);

}  // namespace borealis
