// Building a blended mixture's sample index at scale (issue 5's settings).
//
//   build/release/bench/mix_bench --data-list /tmp/mix/2e11/data-list.txt
//       [--seq-len 4096] [--seed 1234] [--threads 2] [--lookups 1000000]
//       [--order fast|megatron] [--blend-sample-in-corpus] [--shuffle-sample-in-corpus]
//       [--samples N]
//
// Train samples = the list's total tokens / seq_len (or --samples N: e.g.
// 2e12 tokens' worth of samples from a smaller mixture's files, where only
// the blend's size matters), split 100,0,0. Prints:
// the time to open the files; the time to the first sample with no cache
// (a large fast-order blend builds in the background); the full build (no
// cache) and its peak memory;
// the time to the first sample from a cached index in a fresh Mixture; the
// mean time of random-access lookups (sample i -> pieces). Figures only, no
// pass/fail. In the megatron order it also times building every file's
// Megatron index (doc_idx, sample starts, shuffle_idx), which a Mixture does
// per file on first use. Make the mixture with ../shared/bench/gen_mixture.py.
#include <fmt/format.h>
#include <sys/resource.h>

#include <unistd.h>
#include <chrono>

#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>

#include "bench_util.h"
#include "core/error.h"
#include "core/text.h"
#include "data/mixture.h"

namespace {

using namespace borealis;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// CPU seconds of the process (all threads): on a loaded machine this says
// more about the work than the wall clock.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

std::uint64_t peak_rss() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_maxrss) * 1024;
}

int run(int argc, char** argv) {
  std::string list_path;
  std::uint64_t seq_len = 4096, seed = 1234, lookups = 1000000, samples = 0;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::string order = "fast";
  bool blend_in_corpus = false, shuffle_in_corpus = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--blend-sample-in-corpus") {
      blend_in_corpus = true;
      continue;
    }
    if (flag == "--shuffle-sample-in-corpus") {
      shuffle_in_corpus = true;
      continue;
    }
    if (i + 1 >= argc) throw Error("needs a value", flag);
    const std::string value = argv[++i];
    if (flag == "--data-list")
      list_path = value;
    else if (flag == "--seq-len")
      seq_len = std::stoull(value);
    else if (flag == "--seed")
      seed = std::stoull(value);
    else if (flag == "--threads")
      threads = static_cast<unsigned>(std::stoul(value));
    else if (flag == "--lookups")
      lookups = std::stoull(value);
    else if (flag == "--order")
      order = value;
    else if (flag == "--samples")
      samples = std::stoull(value);
    else
      throw Error("unknown flag", flag);
  }
  if (list_path.empty()) throw Error("required", "--data-list");
  if (order != "fast" && order != "megatron") throw Error("fast or megatron", "--order");

  MixOptions o;
  o.list = read_data_list(list_path);
  o.seq_len = seq_len;
  o.seed = seed;
  o.split = {100, 0, 0};
  o.threads = threads;
  // Count the tokens (this also warms the page cache for the headers the
  // build reads).
  auto t = Clock::now();
  std::uint64_t tokens = 0;
  {
    MixOptions probe = o;  // one sample: opens every file, builds next to nothing
    probe.samples = 1;
    const Mixture m(probe);
    for (const auto& f : m.files()) tokens += f.tokens;
  }
  const double count_s = since(t);
  o.samples = samples != 0 ? samples : tokens / seq_len;
  o.order = order == "megatron" ? MixOrder::megatron : MixOrder::fast;
  o.blend_sample_in_corpus = blend_in_corpus;
  o.shuffle_sample_in_corpus = shuffle_in_corpus;
  fmt::print(
      "mixture: {} files, {} tokens -> {} samples of {} tokens, seed {}, {} threads, "
      "order {}{}{}\n",
      o.list.size(), tokens, o.samples, seq_len + 1, seed, threads, order,
      blend_in_corpus ? ", blend in corpus" : "", shuffle_in_corpus ? ", shuffle in corpus" : "");
  fmt::print("read every file's header: {:.3f} s\n", count_s);

  t = Clock::now();
  const double cpu0 = cpu_seconds();
  {  // freed before the cached run below
    const Mixture built(o);
    const double ready_s = since(t);
    const auto sample0 = built.sample(0);
    const double first_s = since(t);
    built.wait();
    const double build_s = since(t);
    fmt::print(
        "first sample, no cache (read headers, start the build, sample 0): {:.3f} s ({} {:.3f} "
        "s)\n",
        first_s,
        built.options().samples >= o.background_from && !built.megatron()
            ? "the build runs in the background; constructor"
            : "the build is done first; constructor",
        ready_s);
    fmt::print("full build ({} order, no cache): {:.3f} s wall, {:.3f} s CPU, peak memory {}\n",
               order, build_s, cpu_seconds() - cpu0, format_bytes(peak_rss()));
    (void)sample0;
    if (built.megatron()) {
      t = Clock::now();
      const double cpu1 = cpu_seconds();
      built.prepare(threads);
      const double prepare_s = since(t);
      fmt::print(
          "every file's Megatron index (doc_idx, sample starts, shuffle_idx): {:.3f} s wall, "
          "{:.3f} s CPU, peak memory {}\n",
          prepare_s, cpu_seconds() - cpu1, format_bytes(peak_rss()));
      fmt::print("build + every file's index: {:.3f} s wall\n", build_s + prepare_s);
    }
  }

  const auto cache = std::filesystem::temp_directory_path() /
                     fmt::format("borealis-mix-bench-{}", static_cast<long>(::getpid()));
  o.cache_dir = cache;
  t = Clock::now();
  {
    const Mixture write_once(o);
    write_once.wait();
  }
  fmt::print("build + write the cache: {:.3f} s\n", since(t));
  t = Clock::now();
  const Mixture cached(o);
  const auto first = cached.sample(0);
  fmt::print("first sample from the cache (open files, map the index, sample 0): {:.3f} s\n",
             since(t));

  std::mt19937_64 rng(seed);
  std::vector<std::uint64_t> picks(lookups);
  for (auto& p : picks) p = rng() % cached.size();
  // Cold: files are mapped on first use and .idx pages fault in; warm: the
  // same lookups again.
  for (const char* pass : {"cold", "warm"}) {
    std::uint64_t pieces = 0;
    t = Clock::now();
    for (const auto i : picks) pieces += cached.sample(i).size();
    const double per = since(t) / static_cast<double>(lookups);
    fmt::print("random access ({}): {:.2f} us per sample ({} lookups, {:.2f} pieces per sample)\n",
               pass, per * 1e6, lookups,
               static_cast<double>(pieces) / static_cast<double>(lookups));
  }
  std::filesystem::remove_all(cache);
  fmt::print("peak memory of the whole run: {}\n", format_bytes(peak_rss()));
  fmt::print(
      "reproduce: {} --data-list {} --seq-len {} --seed {} --threads {} --lookups {} "
      "--order {}{}{}{}\n",
      argv[0], list_path, seq_len, seed, threads, lookups, order,
      blend_in_corpus ? " --blend-sample-in-corpus" : "",
      shuffle_in_corpus ? " --shuffle-sample-in-corpus" : "",
      samples != 0 ? fmt::format(" --samples {}", samples) : "");
  (void)first;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors(
      [&] { return run(argc, argv); },
      "make a mixture first with ../shared/bench/gen_mixture.py; see docs/mixtures.md");
}
