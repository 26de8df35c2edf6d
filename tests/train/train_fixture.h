// A small synthetic training corpus for the trainer tests (single process
// and MPI): three corpora of regular documents, a tokenizer trained on them
// and a data list, and configs for a tiny Llama on it.
#pragma once

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"
#include "test_util.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/train.h"

namespace borealis {

// Three corpora of short, very regular documents (so that a tiny model beats
// the unigram baseline in a few dozen steps), a tokenizer trained on them,
// and a data list; small files so that runs cross epoch boundaries.
class TrainFixture {
 public:
  // Builds the corpus in a fresh temporary directory.
  TrainFixture() : owned_(std::in_place), dir_(owned_->path()) {
    std::mt19937 rng(7);
    const std::vector<std::string> words = {"alpha", "beta",  "gamma", "delta", "epsilon", "zeta",
                                            "eta",   "theta", "iota",  "kappa", "lambda",  "mu"};
    std::vector<std::vector<std::string>> corpora(3);
    std::vector<std::string> all;
    for (int c = 0; c < 3; ++c) {
      for (int d = 0; d < 12; ++d) {
        // Words in a fixed cycle (corpus c steps by c + 1) from a random start.
        std::string doc;
        std::size_t w = rng() % words.size();
        for (int k = 0; k < 24; ++k, w = (w + c + 1) % words.size()) doc += words[w] + " ";
        corpora[static_cast<std::size_t>(c)].push_back(doc);
        all.push_back(doc);
      }
    }
    BpeTrainOptions opt;
    opt.vocab_size = 300;
    opt.progress = false;
    const Tokenizer tok = train_bpe_documents(all, opt);
    tokenizer_ = dir_ / "tok.json";
    test::write_file(tokenizer_, hf_tokenizer_json(tok));
    const Tokenizer loaded = Tokenizer::load(tokenizer_);
    std::string list;
    for (int c = 0; c < 3; ++c) {
      const std::filesystem::path prefix = dir_ / ("corpus" + std::to_string(c));
      IndexedDatasetWriter w(prefix, token_type_for_vocab(loaded.vocab_size()));
      for (const auto& doc : corpora[static_cast<std::size_t>(c)]) {
        auto ids = loaded.encode(doc);
        ids.push_back(*loaded.eod_id());
        w.add_document(ids);
      }
      w.commit();
      list += fmt::format("{} {} c{}\n", c == 0 ? 2 : 1, prefix.string(), c);
    }
    data_list_ = dir_ / "list.txt";
    test::write_file(data_list_, list);
  }

  // A config for a tiny llama on this corpus.
  std::string config(const std::filesystem::path& run_dir, const std::string& extra = "") const {
    return fmt::format(R"([model]
preset = "llama-tiny"
max_seq = 32
[data]
data_list = "{}"
tokenizer = "{}"
seq_len = 32
split = [80, 20, 0]
[optim]
lr = 3e-3
lr_min = 3e-4
warmup_steps = 2
[train]
run_dir = "{}"
steps = 12
micro_batch = 2
global_batch = 4
[checkpoint]
every = 4
keep = 2
[eval]
every = 4
batches = 2
{})",
                       data_list_.string(), tokenizer_.string(), run_dir.string(), extra);
  }

  std::filesystem::path write_config(const std::string& name, const std::filesystem::path& run_dir,
                                     const std::string& extra = "") const {
    const std::filesystem::path path = dir_ / name;
    test::write_file(path, config(run_dir, extra));
    return path;
  }

  // The corpus another process built in `dir` (its dir()).
  explicit TrainFixture(const std::filesystem::path& dir)
      : dir_(dir), tokenizer_(dir / "tok.json"), data_list_(dir / "list.txt") {}

  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::optional<test::TempDir> owned_;
  std::filesystem::path dir_;
  std::filesystem::path tokenizer_, data_list_;
};

// step -> loss of the "train" records of a run's metrics.jsonl (the last
// record of a step wins).
inline std::map<std::int64_t, double> train_losses(const std::filesystem::path& run_dir) {
  std::map<std::int64_t, double> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["kind"] == "train") out[j["step"].get<std::int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

}  // namespace borealis
