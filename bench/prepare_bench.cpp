// End-to-end `data prepare` throughput beside the raw tokenizer on the same
// text, measured in the same run.
//
//   build/release/bench/prepare_bench [--mb 500] [--tokenizer data/tokenizers/gpt2.json]
//
// Writes the Brown JSON Lines replicated to ~MB megabytes in $TMPDIR, runs
// the prepare pipeline with 1 worker and with all cores, and prints MB/s and
// tokens/s for each beside the raw tokenizer's throughput on the same
// documents with 1 thread and with all cores. The target: the pipeline with N
// workers delivers at least 90% of (single-thread tokenizer throughput x N);
// the ratio to the tokenizer itself on N threads shows how much of any gap
// is the pipeline's (reading, parsing, writing) and how much is the cores'
// own scaling.
#include <fmt/format.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "data/prepare.h"

namespace {

using namespace borealis;
using bench::Clock;
using bench::seconds_since;

int run(int argc, char** argv) {
  double target_mb = 500;
  std::string tokenizer = "data/tokenizers/gpt2.json";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--mb") target_mb = std::stod(argv[i + 1]);
    if (flag == "--tokenizer") tokenizer = argv[i + 1];
  }
  const int cores = omp_get_max_threads();
  const MappedFile brown("data/brown/brown.jsonl");
  const std::vector<std::string> docs = bench::brown_documents();
  const std::string dir = std::getenv("TMPDIR") != nullptr ? std::getenv("TMPDIR") : "/tmp";
  const std::string input = dir + "/borealis-prepare-bench.jsonl";
  const std::string out = dir + "/borealis-prepare-bench";
  std::size_t copies = 0;
  {
    AtomicFile f(input);
    while (static_cast<double>(f.size()) < target_mb * 1e6) {
      f.write(brown.text());
      ++copies;
    }
    f.commit();
  }
  const Tokenizer tok = Tokenizer::load(tokenizer);

  // Raw tokenizer on the same documents (warm, as in a long run), with one
  // thread and with every core (each thread encodes whole documents).
  std::size_t text_bytes = 0;
  for (const auto& d : docs) text_bytes += d.size();
  auto raw_tokenizer = [&](int threads) {
    const int n = static_cast<int>(docs.size());
    std::size_t tokens = 0;
    double secs = 0;
    for (int pass = 0; pass < 2; ++pass) {  // pass 0 warms every thread's piece cache
      const auto t0 = Clock::now();
      tokens = 0;
#pragma omp parallel num_threads(threads) reduction(+ : tokens)
      {
        std::vector<std::uint32_t> ids;
        for (int rep = 0; rep < (pass == 0 ? 1 : 5); ++rep) {
#pragma omp for schedule(dynamic, 4) nowait
          for (int i = 0; i < n; ++i) {
            ids.clear();
            tok.encode(docs[static_cast<std::size_t>(i)], ids);
            tokens += ids.size();
          }
        }
      }
      secs = seconds_since(t0);
    }
    return std::pair{5 * static_cast<double>(text_bytes) / 1e6 / secs,
                     static_cast<double>(tokens) / secs / 1e6};
  };
  const auto [tok_mbs, tok_mtoks] = raw_tokenizer(1);
  const auto [all_mbs, all_mtoks] = raw_tokenizer(cores);
  fmt::print("input: Brown JSON Lines x {} = {:.0f} MB ({}), tokenizer {}\n", copies,
             static_cast<double>(copies * brown.size()) / 1e6, input, tokenizer);
  fmt::print("raw tokenizer, 1 thread:  {:.1f} MB/s of text, {:.2f} M tokens/s\n", tok_mbs,
             tok_mtoks);
  fmt::print(
      "raw tokenizer, {} threads: {:.1f} MB/s of text, {:.2f} M tokens/s = {:.2f}x 1 thread\n\n",
      cores, all_mbs, all_mtoks, all_mbs / tok_mbs);

  for (const int workers : {1, cores}) {
    PrepareOptions o;
    o.inputs = {input};
    o.out_prefix = out;
    o.workers = workers;
    o.progress = false;
    const PrepareStats s = prepare_dataset(tok, o);
    const double mbs = static_cast<double>(s.text_bytes) / 1e6 / s.seconds;
    fmt::print(
        "prepare, {} worker{}: {:.1f} s, {:.1f} MB/s of text ({:.1f} MB/s of input), {:.2f} M "
        "tokens/s = {:.0f}% of {} x the 1-thread tokenizer, {:.0f}% of the tokenizer on {} "
        "thread{}\n",
        workers, workers > 1 ? "s" : " ", s.seconds, mbs,
        static_cast<double>(s.input_bytes) / 1e6 / s.seconds,
        static_cast<double>(s.tokens) / s.seconds / 1e6, 100 * mbs / (tok_mbs * workers), workers,
        100 * mbs / (workers == 1 ? tok_mbs : all_mbs), workers, workers > 1 ? "s" : "");
    if (workers == cores) break;
  }
  std::remove(input.c_str());
  std::remove((out + ".bin").c_str());
  std::remove((out + ".idx").c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors([&] { return run(argc, argv); });
}
