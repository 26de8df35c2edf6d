// borealis data mix|sample: blended training mixtures (data lists, the sample
// index and its cache).
#include <fmt/format.h>
#include <sys/resource.h>

#include <cstdlib>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/text.h"
#include "core/threads.h"
#include "data/mixture.h"
#include "tokenizer/tokenizer.h"

namespace borealis::cli {

namespace {

struct MixArgs {
  std::string data_list;
  std::vector<std::string> data_path;
  std::uint64_t seq_len = 0;
  std::uint64_t samples = 0;
  std::uint64_t seed = 1234;
  std::string split = "969,30,1";
  std::string cache_dir;
  bool no_cache = false;
  bool json = false;
  bool build_only = false;
  std::uint64_t sample = 0;
  std::string tokenizer;
  std::string order = "fast";
  bool blend_in_corpus = false;
  bool shuffle_in_corpus = false;
};

std::filesystem::path default_cache_dir() {
  if (const char* d = std::getenv("BOREALIS_CACHE_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) {
    return std::filesystem::path(x) / "borealis" / "mix";
  }
  if (const char* h = std::getenv("HOME"); h && *h) {
    return std::filesystem::path(h) / ".cache" / "borealis" / "mix";
  }
  return ".borealis-cache";
}

std::array<double, 3> parse_split(const std::string& text) {
  const auto parts = split(text, ',');
  std::array<double, 3> out{0, 0, 0};
  if (parts.empty() || parts.size() > 3) {
    throw Error(fmt::format("'{}' is not a split such as 98,1,1", text), "--split");
  }
  for (std::size_t k = 0; k < parts.size(); ++k) {
    const std::string p(trim(parts[k]));
    char* end = nullptr;
    out[k] = std::strtod(p.c_str(), &end);
    if (p.empty() || *end != '\0' || !(out[k] >= 0)) {
      throw Error(fmt::format("'{}' is not a split such as 98,1,1", text), "--split");
    }
  }
  return out;
}

Mixture open_mixture(const MixArgs& a) {
  MixOptions o;
  if (a.data_list.empty() == a.data_path.empty()) {
    throw Error("give either --data-list FILE or --data-path W1 P1 W2 P2 ...", "--data-list");
  }
  o.list = a.data_list.empty() ? data_list_from_args(a.data_path) : read_data_list(a.data_list);
  o.seq_len = a.seq_len;
  o.samples = a.samples;
  o.seed = a.seed;
  o.split = parse_split(a.split);
  if (!a.no_cache)
    o.cache_dir = a.cache_dir.empty() ? default_cache_dir() : std::filesystem::path(a.cache_dir);
  o.threads = static_cast<unsigned>(cpu_threads());
  o.order = a.order == "megatron" ? MixOrder::megatron : MixOrder::fast;
  o.blend_sample_in_corpus = a.blend_in_corpus;
  o.shuffle_sample_in_corpus = a.shuffle_in_corpus;
  return Mixture(std::move(o));
}

std::uint64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_maxrss) * 1024;
}

double epochs(const MixFile& f) {
  return f.samples_per_epoch == 0
             ? 0.0
             : static_cast<double>(f.samples) / static_cast<double>(f.samples_per_epoch);
}

void run_mix(const MixArgs& a) {
  const Mixture m = open_mixture(a);
  m.wait();  // the counts below need the whole blend
  const double n = static_cast<double>(m.size());
  const std::string cache = m.cache_path().empty() ? "none" : m.cache_path().string();
  if (a.json) {
    nlohmann::json j = {{"samples", m.size()},
                        {"seq_len", m.options().seq_len},
                        {"seed", m.options().seed},
                        {"split", m.options().split},
                        {"order", order_name(m.options().order)},
                        {"key", m.key()},
                        {"cache", cache},
                        {"from_cache", m.from_cache()},
                        {"seconds", m.build_seconds()},
                        {"peak_rss_bytes", peak_rss_bytes()}};
    if (!a.build_only) {
      j["corpora"] = nlohmann::json::array();
      for (const auto& c : m.corpora()) {
        nlohmann::json files = nlohmann::json::array();
        for (const std::size_t k : c.files) {
          const MixFile& f = m.files()[k];
          files.push_back({{"prefix", f.entry.prefix.string()},
                           {"weight", f.entry.weight},
                           {"achieved", static_cast<double>(f.samples) / n},
                           {"samples", f.samples},
                           {"documents", f.end_doc - f.first_doc},
                           {"tokens", f.tokens},
                           {"samples_per_epoch", f.samples_per_epoch},
                           {"epochs", epochs(f)}});
          if (const MegatronOrder* mo = m.megatron()) {
            const MegatronFilePlan& p = mo->plan(k);
            files.back()["megatron"] = {{"requested", p.requested},
                                        {"epochs", p.epochs},
                                        {"separate_last_epoch", p.separate_last_epoch},
                                        {"samples", p.samples}};
          }
        }
        j["corpora"].push_back({{"name", c.name},
                                {"weight", c.weight},
                                {"achieved", static_cast<double>(c.samples) / n},
                                {"samples", c.samples},
                                {"files", files}});
      }
    }
    std::cout << j.dump(2) << '\n';
    return;
  }
  std::cout << fmt::format(
      "{} samples of {} tokens from {} files in {} corpora (order {}{}{}, seed {}, split {})\n",
      m.size(), m.options().seq_len + 1, m.files().size(), m.corpora().size(),
      order_name(m.options().order), a.blend_in_corpus ? ", blend in corpus" : "",
      a.shuffle_in_corpus ? ", shuffle in corpus" : "", m.options().seed, a.split);
  std::cout << fmt::format("index {} in {:.3f} s, peak memory {}; cache {}\n",
                           m.from_cache() ? "loaded" : "built", m.build_seconds(),
                           format_bytes(peak_rss_bytes()), cache);
  if (a.build_only) return;
  std::cout << fmt::format("{:<48} {:>10} {:>10} {:>12} {:>8}\n", "corpus / file", "weight",
                           "achieved", "samples", "epochs");
  for (const auto& c : m.corpora()) {
    std::cout << fmt::format("{:<48} {:>10.6f} {:>10.6f} {:>12}\n", c.name, c.weight,
                             static_cast<double>(c.samples) / n, c.samples);
    for (const std::size_t k : c.files) {
      const MixFile& f = m.files()[k];
      std::cout << fmt::format("  {:<46} {:>10.6f} {:>10.6f} {:>12} {:>8.3f}\n",
                               f.entry.prefix.filename().string(), f.entry.weight,
                               static_cast<double>(f.samples) / n, f.samples, epochs(f));
    }
  }
}

void run_sample(const MixArgs& a) {
  const Mixture m = open_mixture(a);
  if (a.sample >= m.size()) {
    throw Error(fmt::format("sample {} is outside the mixture's {} samples", a.sample, m.size()),
                "K");
  }
  const auto pieces = m.sample(a.sample);
  std::string text;
  if (!a.tokenizer.empty()) {
    const Tokenizer tok = Tokenizer::load(a.tokenizer);
    std::vector<std::uint32_t> ids;
    for (const auto& p : pieces) {
      m.dataset(p.file).read(p.document, p.offset, p.length, ids);
    }
    text = tok.decode(ids);
  }
  const auto [file, number] = m.source(a.sample);
  if (a.json) {
    nlohmann::json j = {{"sample", a.sample},
                        {"file", m.files()[file].entry.prefix.string()},
                        {"corpus", m.files()[file].entry.corpus},
                        {"file_sample", number},
                        {"pieces", nlohmann::json::array()}};
    for (const auto& p : pieces) {
      j["pieces"].push_back({{"prefix", m.files()[p.file].entry.prefix.string()},
                             {"document", p.document},
                             {"offset", p.offset},
                             {"length", p.length}});
    }
    if (!a.tokenizer.empty()) j["text"] = text;
    // A sample may start or end inside a multi-byte character.
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    return;
  }
  std::cout << fmt::format("sample {}: {} (corpus {}), sample {} of that file\n", a.sample,
                           m.files()[file].entry.prefix.string(), m.files()[file].entry.corpus,
                           number);
  for (const auto& p : pieces) {
    std::cout << fmt::format("  document {} tokens [{}, {}) ({} tokens)\n", p.document, p.offset,
                             p.offset + p.length, p.length);
  }
  if (!a.tokenizer.empty()) std::cout << "text:\n" << text << '\n';
}

void add_mixture_flags(CLI::App* app, MixArgs& a) {
  app->add_option("--data-list", a.data_list,
                  "Data list file: lines 'weight prefix [corpus]' (Megatron-DeepSpeed form)");
  app->add_option("--data-path", a.data_path, "Weights and prefixes: W1 P1 W2 P2 ...")
      ->expected(2, -1);
  app->add_option("--seq-len", a.seq_len, "Tokens per sample (each sample holds seq_len + 1)")
      ->required();
  app->add_option("--train-samples", a.samples, "Samples to draw from the train split")->required();
  app->add_option("--split", a.split, "Train,valid,test parts of every file's documents")
      ->capture_default_str();
  app->add_option("--seed", a.seed, "Seed of the sample order")->capture_default_str();
  app->add_option("--cache-dir", a.cache_dir,
                  "Index cache folder (default: $BOREALIS_CACHE_DIR, else "
                  "$XDG_CACHE_HOME/borealis/mix, else ~/.cache/borealis/mix)");
  app->add_flag("--no-cache", a.no_cache, "Build in memory; read and write no cache");
  app->add_flag("--json", a.json, "Print one JSON object");
  app->add_option("--order", a.order,
                  "Sample order: fast (Borealis's) or megatron (Megatron-DeepSpeed's, bit for bit)")
      ->check(CLI::IsMember({"fast", "megatron"}))
      ->capture_default_str();
  app->add_flag("--blend-sample-in-corpus", a.blend_in_corpus,
                "Megatron order: blend a corpus's files by weight (default: concatenate them)");
  app->add_flag("--shuffle-sample-in-corpus", a.shuffle_in_corpus,
                "Megatron order: shuffle each corpus's samples");
}

}  // namespace

std::function<void()> add_data_mix(CLI::App& data) {
  auto a = std::make_shared<MixArgs>();
  CLI::App* mix = data.add_subcommand(
      "mix",
      "Build (or load) a blended mixture's sample index; print requested vs achieved weights");
  add_mixture_flags(mix, *a);
  mix->add_flag("--build-only", a->build_only,
                "Only build and cache the index (e.g. on a login node ahead of a run)");
  CLI::App* sample =
      data.add_subcommand("sample", "Which files, documents and tokens make sample K of a mixture");
  sample->add_option("K", a->sample, "Sample number, from 0, in the train split")->required();
  add_mixture_flags(sample, *a);
  sample->add_option("-t,--tokenizer", a->tokenizer, "Also print the sample's text");
  return [a, mix, sample] {
    if (mix->parsed()) run_mix(*a);
    if (sample->parsed()) run_sample(*a);
  };
}

}  // namespace borealis::cli
