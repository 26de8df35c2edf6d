// borealis data prepare|merge|inspect|verify: token datasets in Megatron's
// .bin/.idx format. data mix|sample live in mix.cpp.
#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/text.h"
#include "core/threads.h"
#include "data/dataset_tools.h"
#include "data/prepare.h"
#include "tokenizer/tokenizer.h"

namespace borealis::cli {

namespace {

struct DataArgs {
  // prepare
  std::vector<std::string> inputs;
  std::string tokenizer;
  std::string out;
  std::string text_documents = "file";
  PrepareOptions prepare;
  // inspect / verify
  std::string prefix;
  std::size_t doc = 0;
  bool json = false;
  bool no_sample = false;
};

void run_prepare(DataArgs& a) {
  PrepareOptions& o = a.prepare;
  o.inputs.assign(a.inputs.begin(), a.inputs.end());
  o.out_prefix = a.out;
  o.text_documents =
      a.text_documents == "blank-line" ? TextDocuments::BlankLine : TextDocuments::File;
  if (o.workers == 0) o.workers = cpu_threads();
  const Tokenizer tok = Tokenizer::load(a.tokenizer);
  const PrepareStats s = prepare_dataset(tok, o);
  if (a.json) {
    nlohmann::json j = {{"documents_read", s.documents_read},
                        {"documents_written", s.documents_written},
                        {"documents_skipped", s.documents_skipped},
                        {"tokens", s.tokens},
                        {"dtype", token_type_name(s.token_type)},
                        {"text_bytes", s.text_bytes},
                        {"seconds", s.seconds},
                        {"threads", o.workers},
                        {"outputs", nlohmann::json::array()},
                        {"skipped", nlohmann::json::array()}};
    for (const auto& p : s.outputs) j["outputs"].push_back(p.string());
    for (const auto& k : s.skipped)
      j["skipped"].push_back({{"where", k.where}, {"reason", k.reason}});
    std::cout << j.dump(2) << '\n';
    return;
  }
  std::cout << fmt::format("read {} documents: wrote {}, skipped {}\n", s.documents_read,
                           s.documents_written, s.documents_skipped);
  std::cout << fmt::format(
      "{} tokens ({}), {:.1f} MB of text in {:.2f} s: {:.1f} MB/s, {:.2f} M tokens/s, {} threads\n",
      s.tokens, token_type_name(s.token_type), static_cast<double>(s.text_bytes) / 1e6, s.seconds,
      static_cast<double>(s.text_bytes) / 1e6 / s.seconds,
      static_cast<double>(s.tokens) / 1e6 / s.seconds, o.workers);
  for (const auto& p : s.outputs)
    std::cout << fmt::format("wrote {}.bin and {}.idx\n", p.string(), p.string());
  if (!s.skipped.empty()) {
    std::cout << fmt::format(
        "skipped documents{}:\n",
        s.documents_skipped > s.skipped.size()
            ? fmt::format(" (first {} of {})", s.skipped.size(), s.documents_skipped)
            : "");
    for (const auto& k : s.skipped) std::cout << fmt::format("  {}: {}\n", k.where, k.reason);
  }
}

void run_inspect(const DataArgs& a) {
  const IndexedDataset ds(a.prefix);
  const LengthStats st = length_stats(ds);
  std::string sample;
  if (!a.tokenizer.empty() && !a.no_sample && ds.sequences() > 0) {
    if (a.doc >= ds.sequences()) {
      throw Error(fmt::format("the dataset has {} sequences", ds.sequences()), "--doc");
    }
    sample = Tokenizer::load(a.tokenizer).decode(ds.sequence(a.doc));
  }
  if (a.json) {
    nlohmann::json j = {{"prefix", ds.prefix().string()},
                        {"documents", ds.documents()},
                        {"sequences", ds.sequences()},
                        {"tokens", ds.tokens()},
                        {"dtype", token_type_name(ds.token_type())},
                        {"mean_length", st.mean},
                        {"log2_histogram", st.log2_histogram}};
    for (const auto& [p, v] : st.percentiles) j["percentiles"][fmt::format("p{:g}", p)] = v;
    if (!sample.empty()) j["sample"] = {{"sequence", a.doc}, {"text", sample}};
    std::cout << j.dump(2) << '\n';
    return;
  }
  std::cout << fmt::format("dataset     {}\n", ds.prefix().string());
  std::cout << fmt::format("documents   {} ({} sequences)\n", ds.documents(), ds.sequences());
  std::cout << fmt::format("tokens      {} ({}, {})\n", ds.tokens(),
                           token_type_name(ds.token_type()),
                           format_bytes(ds.tokens() * token_size(ds.token_type())));
  std::cout << fmt::format("length      mean {:.1f};", st.mean);
  for (const auto& [p, v] : st.percentiles) std::cout << fmt::format(" p{:g} {}", p, v);
  std::cout << "\nhistogram of sequence lengths:\n";
  std::uint64_t peak = 1;
  for (const auto c : st.log2_histogram) peak = std::max(peak, c);
  std::size_t first = 0;
  while (first + 1 < st.log2_histogram.size() && st.log2_histogram[first] == 0) ++first;
  for (std::size_t k = first; k < st.log2_histogram.size(); ++k) {
    const auto c = st.log2_histogram[k];
    std::cout << fmt::format("  {:>9} - {:<9} {:>10}  {}\n", k == 0 ? 0 : (1ull << k),
                             (2ull << k) - 1, c,
                             std::string(static_cast<std::size_t>(40 * c / peak), '#'));
  }
  if (!sample.empty()) {
    std::cout << fmt::format("sequence {} decoded:\n{}\n", a.doc, sample);
  }
}

void run_verify(const DataArgs& a) {
  const IndexedDataset ds(a.prefix);
  ds.verify();
  if (!a.tokenizer.empty()) {
    const std::size_t vocab = Tokenizer::load(a.tokenizer).vocab_size();
    std::vector<std::uint32_t> ids;
    for (std::size_t i = 0; i < ds.sequences(); ++i) {
      ids.clear();
      ds.read(i, 0, static_cast<std::size_t>(ds.size(i)), ids);
      for (std::size_t k = 0; k < ids.size(); ++k) {
        if (ids[k] >= vocab) {
          throw Error(fmt::format("sequence {}, token {}: id {} is outside the vocabulary of {}", i,
                                  k, ids[k], vocab),
                      ds.prefix().string() + ".bin");
        }
      }
    }
  }
  if (a.json) {
    std::cout << nlohmann::json{{"ok", true},
                                {"documents", ds.documents()},
                                {"sequences", ds.sequences()},
                                {"tokens", ds.tokens()},
                                {"dtype", token_type_name(ds.token_type())},
                                {"vocabulary_checked", !a.tokenizer.empty()}}
                     .dump(2)
              << '\n';
    return;
  }
  std::cout << fmt::format("ok: {} documents, {} sequences, {} tokens ({}){}\n", ds.documents(),
                           ds.sequences(), ds.tokens(), token_type_name(ds.token_type()),
                           a.tokenizer.empty() ? "" : ", every id inside the vocabulary");
}

}  // namespace

Command add_data(CLI::App& parent) {
  auto a = std::make_shared<DataArgs>();
  CLI::App* app = parent.add_subcommand(
      "data",
      "Token datasets: prepare, merge, inspect, verify (Megatron .bin/.idx); mix, sample "
      "(blended mixtures)");
  app->require_subcommand(1);

  CLI::App* prepare = app->add_subcommand("prepare", "Tokenize corpora into a .bin/.idx dataset");
  prepare
      ->add_option(
          "-i,--input", a->inputs,
          "Files or directories (recursive, sorted): JSON Lines (.jsonl/.json/.ndjson) or text; "
          "plain, .gz or .zst")
      ->required();
  prepare
      ->add_option("-t,--tokenizer", a->tokenizer,
                   "Tokenizer (see 'borealis tokenizer info --help')")
      ->required();
  prepare->add_option("-o,--out", a->out, "Output prefix: writes PREFIX.bin and PREFIX.idx")
      ->required();
  prepare->add_option("--json-key", a->prepare.json_key, "Text field of JSON Lines records")
      ->capture_default_str();
  prepare->add_flag("--append-eod", a->prepare.append_eod,
                    "End every document with the end-of-document token");
  // Tokenizer threads come from the global --threads (which may follow the
  // command); --workers was this command's own spelling.
  add_old_spelling(*prepare, "--workers", a->prepare.workers, "--threads")
      ->check(CLI::PositiveNumber);
  prepare->add_option(
      "--max-tokens-per-file", a->prepare.max_tokens_per_file,
      "Split the output into PREFIX_00000, PREFIX_00001, ... of at most this many tokens");
  prepare
      ->add_option("--text-documents", a->text_documents,
                   "Text inputs: one document per 'file', or documents separated by 'blank-line's")
      ->check(CLI::IsMember({"file", "blank-line"}))
      ->capture_default_str();
  prepare->add_flag("--skip-bad", a->prepare.skip_bad,
                    "Skip bad records (malformed JSON, missing or non-string text, invalid UTF-8, "
                    "empty) and list "
                    "them, instead of stopping at the first");
  prepare->add_flag("--json", a->json, "Print the counts as one JSON object");

  CLI::App* merge = app->add_subcommand("merge", "Concatenate datasets of one token type");
  merge->add_option("-i,--input", a->inputs, "Dataset prefixes, in order")->required();
  merge->add_option("-o,--out", a->out, "Output prefix")->required();
  merge->add_flag("--json", a->json, "Print the counts as one JSON object");

  CLI::App* inspect =
      app->add_subcommand("inspect", "Documents, tokens, length percentiles and histogram");
  inspect->add_option("prefix", a->prefix, "Dataset prefix (PREFIX, PREFIX.bin or PREFIX.idx)")
      ->required();
  inspect->add_option("-t,--tokenizer", a->tokenizer,
                      "Decode a sample sequence with this tokenizer");
  inspect->add_option("--doc", a->doc, "Which sequence to decode")->capture_default_str();
  inspect->add_flag("--json", a->json, "Print one JSON object");

  CLI::App* verify = app->add_subcommand(
      "verify",
      "Check every size, pointer and document index (exit 1 naming the first bad record)");
  verify->add_option("prefix", a->prefix, "Dataset prefix")->required();
  verify->add_option("-t,--tokenizer", a->tokenizer,
                     "Also check that every token id is inside its vocabulary");
  verify->add_flag("--json", a->json, "Print the counts as one JSON object");

  auto run_mix = add_data_mix(*app);
  const Command contamination = add_data_contamination(*app);

  return {app, [a, prepare, merge, inspect, verify, run_mix, contamination] {
            if (prepare->parsed()) {
              run_prepare(*a);
            } else if (merge->parsed()) {
              std::vector<std::filesystem::path> inputs(a->inputs.begin(), a->inputs.end());
              const auto docs = merge_datasets(inputs, a->out);
              if (a->json) {
                std::cout << nlohmann::json{{"datasets", inputs.size()},
                                            {"documents", docs},
                                            {"out", a->out}}
                                 .dump(2)
                          << '\n';
              } else {
                std::cout << fmt::format("merged {} datasets: {} documents into {}\n",
                                         inputs.size(), docs, a->out);
              }
            } else if (inspect->parsed()) {
              run_inspect(*a);
            } else if (verify->parsed()) {
              run_verify(*a);
            } else if (contamination.app->parsed()) {
              contamination.run();
            } else {
              run_mix();
            }
          }};
}

}  // namespace borealis::cli
