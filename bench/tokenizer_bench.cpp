// Tokenizer throughput on the Brown corpus, beside tiktoken measured in the
// same run.
//
//   build/release/bench/tokenizer_bench [--threads N] [--repeat R]
//
// Needs scripts/get-brown.sh and scripts/get-tokenizers.sh; runs the npm
// reference encoders (bench/tiktoken-reference.mjs) when node and the
// packages are there (tiktoken@1.0.22 in data/npm; @anysphere/tiktoken-node@0.2.1
// in data/npm or NODE_PATH).
//
// The headline is cold: every pass starts from a freshly loaded tokenizer,
// so its per-thread piece cache is empty and every document is text it has
// not seen; each document is encoded once (the cache fills only with what
// the pass itself meets, as on a real corpus). tiktoken keeps no piece
// cache, so this is the same footing as its figure. Best of R passes, each
// from a fresh load. "one text" encodes the documents joined by blank lines
// as a single input (the shape `borealis tokenizer encode` sees for one big
// file). "warm" re-encodes the same documents with a filled cache, an upper
// bound no real corpus reaches, printed only for comparison.
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "tokenizer/tokenizer.h"

namespace {

using namespace borealis;
using bench::Clock;
using bench::seconds_since;

struct Pass {
  double seconds;
  std::size_t tokens;
};

Pass encode_all(const Tokenizer& tok, const std::vector<std::string>& docs, int threads) {
  std::size_t tokens = 0;
  const auto start = Clock::now();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4) reduction(+ : tokens)
  for (std::size_t i = 0; i < docs.size(); ++i) tokens += tok.encode(docs[i]).size();
  return {seconds_since(start), tokens};
}

// tiktoken's figures from bench/tiktoken-reference.mjs: (impl, encoding) -> MB/s.
std::map<std::pair<std::string, std::string>, double> reference_figures() {
  std::map<std::pair<std::string, std::string>, double> out;
  FILE* p = popen("node bench/tiktoken-reference.mjs 2>/dev/null", "r");
  if (p == nullptr) return out;
  char line[4096];
  while (std::fgets(line, sizeof line, p) != nullptr) {
    try {
      const auto j = nlohmann::json::parse(line);
      out[{j["impl"], j["encoding"]}] = j["bytes"].get<double>() / 1e6 / j["seconds"].get<double>();
    } catch (const std::exception&) {
    }
  }
  pclose(p);
  return out;
}

int run(int argc, char** argv) {
  int max_threads = omp_get_max_threads();
  int repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--threads") max_threads = std::stoi(argv[i + 1]);
    if (flag == "--repeat") repeat = std::stoi(argv[i + 1]);
  }
  const std::vector<std::string> docs = bench::brown_documents();
  std::size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  const double mb = static_cast<double>(bytes) / 1e6;
  fmt::print("Brown corpus: {} documents, {:.2f} MB; best of {} runs\n\n", docs.size(), mb, repeat);

  std::string joined;
  for (const auto& d : docs) joined += (joined.empty() ? "" : "\n\n") + d;
  std::map<std::string, double> single;  // encoding -> cold single-thread MB/s
  for (const std::string name : {"gpt2", "cl100k_base"}) {
    const std::string path = "data/tokenizers/" + name + ".json";
    auto t0 = Clock::now();
    Tokenizer tok = Tokenizer::load(path, {});  // from the source, not the binary cache
    const double load_source = seconds_since(t0);
    t0 = Clock::now();
    tok = Tokenizer::load(path);  // through the binary cache (written now if missing)
    fmt::print("{:<12} load {:.2f} s from JSON, {:.3f} s through the cache\n", name, load_source,
               seconds_since(t0));
    for (int threads = 1; threads <= max_threads; threads *= 2) {
      double best = 1e30;
      std::size_t tokens = 0;
      for (int r = 0; r < repeat; ++r) {
        const Tokenizer fresh = Tokenizer::load(path);  // empty piece caches
        const Pass p = encode_all(fresh, docs, threads);
        best = std::min(best, p.seconds);
        tokens = p.tokens;
      }
      fmt::print("  {} thread{}, cold cache, unseen text  {:7.1f} MB/s  ({:.1f} M tokens/s)\n",
                 threads, threads > 1 ? "s" : " ", mb / best,
                 static_cast<double>(tokens) / best / 1e6);
      if (threads == 1) single[name] = mb / best;
      if (threads * 2 > max_threads && threads != max_threads) threads = max_threads / 2;
    }
    double best_one = 1e30;
    for (int r = 0; r < repeat; ++r) {
      const Tokenizer fresh = Tokenizer::load(path);
      const auto start = Clock::now();
      const std::size_t n = fresh.encode(joined).size();
      best_one = std::min(best_one, seconds_since(start));
      if (n == 0) fmt::print("(no tokens)\n");
    }
    fmt::print("  1 thread,  cold cache, one text     {:7.1f} MB/s\n",
               static_cast<double>(joined.size()) / 1e6 / best_one);
    encode_all(tok, docs, 1);  // fills the piece cache
    double warm = 1e30;
    for (int r = 0; r < repeat; ++r) warm = std::min(warm, encode_all(tok, docs, 1).seconds);
    fmt::print("  1 thread,  warm (same text again)   {:7.1f} MB/s  (not a real-corpus figure)\n",
               mb / warm);
  }

  const auto ref = reference_figures();
  fmt::print(
      "\nReference (same documents, one call each, same run; tiktoken has no piece cache):\n");
  if (ref.empty()) {
    fmt::print(
        "  node or the npm packages are missing: run scripts/fetch-npm.sh tiktoken@1.0.22 "
        "@anysphere/tiktoken-node@0.2.1 (or put the latter in NODE_PATH)\n");
    return 0;
  }
  for (const auto& [key, mbs] : ref) {
    const auto ours = single.find(key.second);
    fmt::print("  {:<16} {:<12} {:6.1f} MB/s   borealis 1 thread, cold, is {:.1f}x\n", key.first,
               key.second, mbs, ours != single.end() ? ours->second / mbs : 0.0);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors([&] { return run(argc, argv); });
}
