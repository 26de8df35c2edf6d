// BPE training speed: an 8,000-token vocabulary on the Brown corpus beside
// SentencePiece's spm_train (BPE, same thread count) in the same run, and a
// 32,000-token vocabulary on ~100 MB (Brown replicated).
//
//   build/release/bench/tokenizer_train_bench [--threads N] [--mb 100]
//
// Needs scripts/get-brown.sh; spm_train comes from Debian's sentencepiece
// package (apt-get install sentencepiece) and is skipped when absent.
#include <fmt/format.h>
#include <omp.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "tokenizer/train.h"

namespace {

using namespace borealis;
using bench::Clock;
using bench::seconds_since;

double max_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

int run(int argc, char** argv) {
  int threads = omp_get_max_threads();
  double target_mb = 100;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--threads") threads = std::stoi(argv[i + 1]);
    if (flag == "--mb") target_mb = std::stod(argv[i + 1]);
  }
  const std::vector<std::string> docs = bench::brown_documents();
  std::size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();

  BpeTrainOptions o;
  o.vocab_size = 8000;
  o.threads = threads;
  o.progress = false;
  BpeTrainStats stats;
  auto t0 = Clock::now();
  train_bpe_documents(docs, o, &stats);
  const double ours = seconds_since(t0);
  fmt::print(
      "8,000 tokens on Brown ({:.1f} MB, {} threads): borealis {:.2f} s (counting {:.2f} s, "
      "merging {:.2f} s), "
      "{} distinct pieces\n",
      static_cast<double>(bytes) / 1e6, threads, ours, stats.count_seconds, stats.merge_seconds,
      stats.distinct_pieces);

  // spm_train reads sentences, one per line.
  const std::string dir = std::getenv("TMPDIR") != nullptr ? std::getenv("TMPDIR") : "/tmp";
  const std::string text_path = dir + "/borealis-bench-brown.txt";
  std::string text;
  for (const auto& d : docs) text += d + "\n";
  write_file_atomic(text_path, text);
  if (std::system("command -v spm_train >/dev/null 2>&1") == 0) {
    const std::string cmd = fmt::format(
        "spm_train --input={} --model_prefix={}/borealis-bench-spm --vocab_size=8000 "
        "--model_type=bpe "
        "--num_threads={} --minloglevel=2 >/dev/null 2>&1",
        text_path, dir, threads);
    t0 = Clock::now();
    const int rc = std::system(cmd.c_str());
    const double spm = seconds_since(t0);
    if (rc == 0) {
      fmt::print(
          "                                          spm_train --model_type=bpe {:.2f} s  -> "
          "borealis is {:.1f}x "
          "faster\n",
          spm, spm / ours);
    } else {
      fmt::print("spm_train failed (exit {})\n", rc);
    }
  } else {
    fmt::print("spm_train not found: apt-get install sentencepiece to compare\n");
  }
  std::remove(text_path.c_str());

  // ~100 MB: the corpus replicated.
  std::vector<std::string> big;
  std::size_t big_bytes = 0;
  while (static_cast<double>(big_bytes) < target_mb * 1e6) {
    for (const auto& d : docs) {
      big.push_back(d);
      big_bytes += d.size();
    }
  }
  o.vocab_size = 32000;
  t0 = Clock::now();
  train_bpe_documents(big, o, &stats);
  fmt::print(
      "32,000 tokens on {:.0f} MB ({} threads): {:.1f} s (counting {:.1f} s, merging {:.1f} s), "
      "{} merges, {} distinct pieces, peak RSS {:.0f} MB (the corpus itself: {:.0f} MB)\n",
      static_cast<double>(big_bytes) / 1e6, threads, seconds_since(t0), stats.count_seconds,
      stats.merge_seconds, stats.merges, stats.distinct_pieces, max_rss_mb(),
      static_cast<double>(big_bytes) / 1048576.0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors([&] { return run(argc, argv); });
}
