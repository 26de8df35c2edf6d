// End-to-end `data prepare` throughput beside the raw tokenizer on the same
// text, measured in the same run.
//
//   build/release/bench/prepare_bench [--mb 500] [--tokenizer data/tokenizers/gpt2.json]
//
// Writes the Brown JSON Lines replicated to ~MB megabytes in $TMPDIR, runs
// the prepare pipeline with 1 worker and with all cores, and prints MB/s and
// tokens/s for each beside the single-thread tokenizer throughput on the
// same documents. The target: the pipeline with N workers delivers at least
// 90% of (single-thread tokenizer throughput x N).
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

  // Raw tokenizer, one thread, the same documents (warm, as in a long run).
  std::size_t text_bytes = 0;
  for (const auto& d : docs) text_bytes += d.size();
  std::vector<std::uint32_t> ids;
  for (const auto& d : docs) tok.encode(d, ids);  // warm-up
  auto t0 = Clock::now();
  std::size_t tokens = 0;
  for (int rep = 0; rep < 5; ++rep) {
    for (const auto& d : docs) {
      ids.clear();
      tok.encode(d, ids);
      tokens += ids.size();
    }
  }
  const double tok_secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const double tok_mbs = 5 * static_cast<double>(text_bytes) / 1e6 / tok_secs;
  fmt::print("input: Brown JSON Lines x {} = {:.0f} MB ({}), tokenizer {}\n", copies,
             static_cast<double>(copies * brown.size()) / 1e6, input, tokenizer);
  fmt::print("raw tokenizer, 1 thread: {:.1f} MB/s of text, {:.2f} M tokens/s\n\n", tok_mbs,
             static_cast<double>(tokens) / tok_secs / 1e6);

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
        "tokens/s = {:.0f}% "
        "of {} x the raw tokenizer\n",
        workers, workers > 1 ? "s" : " ", s.seconds, mbs,
        static_cast<double>(s.input_bytes) / 1e6 / s.seconds,
        static_cast<double>(s.tokens) / s.seconds / 1e6, 100 * mbs / (tok_mbs * workers), workers);
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
