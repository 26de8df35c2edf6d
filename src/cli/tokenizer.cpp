// borealis tokenizer encode|decode|info: tokenizers from the command line,
// stdin/stdout friendly.
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/train.h"

namespace borealis::cli {

namespace {

struct TrainArgs {
  std::vector<std::string> inputs;
  std::string out;
  std::string pattern = "cl100k";
  std::vector<std::string> special = {"<|endoftext|>"};
  bool no_special = false;
  bool json = false;
  BpeTrainOptions options;
};

void run_train(const TrainArgs& a) {
  BpeTrainOptions o = a.options;
  o.pattern = a.pattern == "cl100k" ? std::string(kCl100kPattern)
              : a.pattern == "gpt2" ? std::string(kGpt2Pattern)
                                    : a.pattern;
  o.special_tokens = a.no_special ? std::vector<std::string>{} : a.special;
  std::vector<std::filesystem::path> inputs(a.inputs.begin(), a.inputs.end());
  BpeTrainStats stats;
  const Tokenizer tok = train_bpe(inputs, o, &stats);
  write_file_atomic(a.out, hf_tokenizer_json(tok));
  if (a.json) {
    const nlohmann::json j = {{"out", a.out},
                              {"vocab_size", tok.vocab_size()},
                              {"requested_vocab_size", o.vocab_size},
                              {"merges", stats.merges},
                              {"special_tokens", o.special_tokens},
                              {"documents", stats.documents},
                              {"bytes", stats.bytes},
                              {"pieces", stats.pieces},
                              {"distinct_pieces", stats.distinct_pieces},
                              {"count_seconds", stats.count_seconds},
                              {"merge_seconds", stats.merge_seconds}};
    std::cout << j.dump(2) << std::endl;
    return;
  }
  std::cout << fmt::format(
      "trained {} tokens ({} merges, {} special) on {} documents, {:.1f} MB: {} pieces, {} "
      "distinct\n"
      "counting {:.2f} s, merging {:.2f} s; wrote {}\n",
      tok.vocab_size(), stats.merges, o.special_tokens.size(), stats.documents,
      static_cast<double>(stats.bytes) / 1e6, stats.pieces, stats.distinct_pieces,
      stats.count_seconds, stats.merge_seconds, a.out);
  if (tok.vocab_size() < o.vocab_size) {
    std::cout << fmt::format("note: stopped at {} tokens: no pair occurs {} or more times\n",
                             tok.vocab_size(), o.min_frequency);
  }
}

struct TokenizerOptions {
  std::string tokenizer;
  std::string input = "-";
  std::string format = "text";
  bool allow_special = false;
  bool lines = false;
  bool json = false;  // info
};

// The input's bytes: a file is mapped (not copied), stdin read whole.
class Input {
 public:
  explicit Input(const std::string& input) {
    if (input == "-") {
      stdin_.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
      text_ = stdin_;
    } else {
      file_ = MappedFile(input, MappedFile::Access::Whole);
      text_ = file_.text();
    }
  }
  std::string_view text() const { return text_; }

 private:
  MappedFile file_;
  std::string stdin_;
  std::string_view text_;
};

void write_ids(const std::vector<std::uint32_t>& ids, const std::string& format,
               std::size_t vocab) {
  if (format == "text") {
    // Digits straight into a buffer written in large blocks: a few MB of
    // input make millions of ids, and formatting them one string at a time
    // cost as much as encoding them.
    std::string line(std::min<std::size_t>(ids.size(), 1 << 16) * 11 + 1, '\0');
    char* p = line.data();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      if (static_cast<std::size_t>(p - line.data()) + 11 > line.size()) {
        std::fwrite(line.data(), 1, static_cast<std::size_t>(p - line.data()), stdout);
        p = line.data();
      }
      if (i > 0) *p++ = ' ';
      p = std::to_chars(p, line.data() + line.size(), ids[i]).ptr;
    }
    *p++ = '\n';
    std::fwrite(line.data(), 1, static_cast<std::size_t>(p - line.data()), stdout);
  } else if (format == "u16") {
    if (vocab > 65536)
      throw Error("the vocabulary does not fit in 16 bits; use --format u32", "--format");
    std::vector<std::uint16_t> narrow(ids.begin(), ids.end());
    std::fwrite(narrow.data(), sizeof(std::uint16_t), narrow.size(), stdout);
  } else {
    std::fwrite(ids.data(), sizeof(std::uint32_t), ids.size(), stdout);
  }
}

std::vector<std::uint32_t> read_ids(std::string_view data, const std::string& format) {
  std::vector<std::uint32_t> ids;
  if (format == "text") {
    std::size_t pos = 0;
    while (true) {
      pos = data.find_first_not_of(" \t\r\n,", pos);
      if (pos == std::string_view::npos) break;
      const std::size_t end = std::min(data.find_first_of(" \t\r\n,", pos), data.size());
      const std::string word(data.substr(pos, end - pos));
      std::size_t used = 0;
      unsigned long value = 0;
      try {
        value = std::stoul(word, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != word.size() || value > 0xFFFFFFFFul) {
        throw Error(fmt::format("'{}' is not a token id", word), fmt::format("input byte {}", pos));
      }
      ids.push_back(static_cast<std::uint32_t>(value));
      pos = end;
    }
  } else {
    const std::size_t width = format == "u16" ? 2 : 4;
    if (data.size() % width != 0) {
      throw Error(fmt::format("binary input of {} bytes is not a whole number of {}-byte ids",
                              data.size(), width),
                  "input");
    }
    for (std::size_t i = 0; i < data.size(); i += width) {
      std::uint32_t v = 0;
      std::memcpy(&v, data.data() + i, width);
      ids.push_back(v);
    }
  }
  return ids;
}

// `tokenizer info`: what the tokenizer is, as aligned lines or one JSON object.
void print_info(const Tokenizer& tok, bool json) {
  const auto eod = tok.eod_id();
  const char* level = tok.model().char_level() ? "character" : "byte";
  if (json) {
    nlohmann::json normalizer = nlohmann::json::array();
    for (const auto& step : tok.normalizer()) {
      if (step.kind == NormalizeStep::Kind::Prepend) {
        normalizer.push_back({{"kind", "prepend"}, {"text", step.text}});
      } else {
        normalizer.push_back(
            {{"kind", "replace"}, {"text", step.text}, {"replacement", step.replacement}});
      }
    }
    nlohmann::json added = nlohmann::json::array();
    for (const auto& a : tok.added_tokens()) {
      added.push_back({{"id", a.id}, {"text", a.text}, {"special", a.special}});
    }
    const nlohmann::json j = {{"format", tok.source_format()},
                              {"vocab_size", tok.vocab_size()},
                              {"bpe_tokens", tok.model().size()},
                              {"merges", tok.model().merge_count()},
                              {"bpe_level", level},
                              {"pre_tokenizer_engine", tok.pre_tokenizer().engine()},
                              {"pattern", tok.pre_tokenizer().pattern()},
                              {"normalizer", normalizer},
                              {"eod_id", eod ? nlohmann::json(*eod) : nlohmann::json(nullptr)},
                              {"added_tokens", added}};
    std::cout << j.dump(2) << '\n';
    return;
  }
  std::cout << fmt::format("format        {}\n", tok.source_format());
  std::cout << fmt::format("vocab size    {} ({} BPE tokens, {} merges, {} added)\n",
                           tok.vocab_size(), tok.model().size(), tok.model().merge_count(),
                           tok.added_tokens().size());
  std::cout << fmt::format("pre-tokenizer {} engine, {}-level BPE\n", tok.pre_tokenizer().engine(),
                           level);
  for (const auto& step : tok.normalizer()) {
    std::cout << fmt::format(
        "normalizer    {} '{}'{}\n",
        step.kind == NormalizeStep::Kind::Prepend ? "prepend" : "replace", step.text,
        step.kind == NormalizeStep::Kind::Replace ? " with '" + step.replacement + "'" : "");
  }
  std::cout << fmt::format("pattern       {}\n", tok.pre_tokenizer().pattern());
  std::cout << fmt::format("end of doc    {}\n",
                           eod ? fmt::format("{}", *eod) : std::string("none"));
  for (const auto& a : tok.added_tokens()) {
    std::cout << fmt::format("added         {:>7}  {}{}\n", a.id, a.text,
                             a.special ? " (special)" : "");
  }
}

CLI::App* add_common(CLI::App* app, TokenizerOptions& o) {
  app->add_option("-t,--tokenizer", o.tokenizer,
                  "Tokenizer: tokenizer.json, tiktoken .json/.tiktoken, or a directory with "
                  "encoder.json + vocab.bpe")
      ->required();
  return app;
}

}  // namespace

Command add_tokenizer(CLI::App& parent) {
  auto o = std::make_shared<TokenizerOptions>();
  CLI::App* app = parent.add_subcommand("tokenizer", "Encode and decode text, inspect tokenizers");
  app->require_subcommand(1);
  const std::vector<std::string> formats = {"text", "u16", "u32"};

  CLI::App* encode = add_common(
      app->add_subcommand("encode", "Text to token ids (stdin to stdout by default)"), *o);
  encode->add_option("-i,--input", o->input, "Input file, '-' for stdin")->capture_default_str();
  encode
      ->add_option("-f,--format", o->format,
                   "Output: text (ids separated by spaces), u16 or u32 (little-endian)")
      ->check(CLI::IsMember(formats))
      ->capture_default_str();
  encode->add_flag("--allow-special", o->allow_special,
                   "Recognise special tokens such as <|endoftext|> in the text");
  encode->add_flag("--lines", o->lines,
                   "Encode each input line on its own; one line of ids per line (text format)");

  CLI::App* decode =
      add_common(app->add_subcommand("decode", "Token ids to text (the exact bytes)"), *o);
  decode->add_option("-i,--input", o->input, "Input file, '-' for stdin")->capture_default_str();
  decode->add_option("-f,--format", o->format, "Input: text (ids separated by spaces), u16 or u32")
      ->check(CLI::IsMember(formats))
      ->capture_default_str();

  CLI::App* info = add_common(app->add_subcommand("info", "Describe a tokenizer"), *o);
  info->add_flag("--json", o->json, "Print one JSON object");

  auto t = std::make_shared<TrainArgs>();
  CLI::App* train = app->add_subcommand(
      "train", "Train a byte-level BPE vocabulary and save it as a Hugging Face tokenizer.json");
  train
      ->add_option("--vocab-size", t->options.vocab_size,
                   "Tokens in all: 256 bytes + merged tokens + special tokens")
      ->required()
      ->check(CLI::PositiveNumber);
  train
      ->add_option("-i,--input", t->inputs,
                   "Input files: *.jsonl (text in --json-key) or plain text")
      ->required()
      ->check(CLI::ExistingFile);
  train->add_option("-o,--out", t->out, "Output tokenizer.json")->required();
  train->add_option("--pattern", t->pattern, "Pre-tokenizer: cl100k, gpt2 or a regular expression")
      ->capture_default_str();
  train->add_option("--special", t->special, "Special tokens, added after the merged tokens")
      ->capture_default_str();
  train->add_flag("--no-special", t->no_special, "Add no special tokens");
  train
      ->add_option("--min-frequency", t->options.min_frequency,
                   "Never merge pairs seen fewer times")
      ->capture_default_str();
  train->add_option("--json-key", t->options.json_key, "Text field of JSON Lines inputs")
      ->capture_default_str();
  train->add_flag("--json", t->json, "Print the report as one JSON object");

  return {app, [o, t, encode, decode, info, train] {
            if (train->parsed()) {
              run_train(*t);
              return;
            }
            const Tokenizer tok = Tokenizer::load(o->tokenizer);
            if (encode->parsed()) {
              const Input input(o->input);
              const std::string_view text = input.text();
              if (o->lines) {
                if (o->format != "text") throw Error("--lines needs --format text", "--lines");
                std::size_t pos = 0;
                while (pos < text.size()) {
                  std::size_t end = text.find('\n', pos);
                  if (end == std::string_view::npos) end = text.size();
                  write_ids(tok.encode(text.substr(pos, end - pos), o->allow_special), "text",
                            tok.vocab_size());
                  pos = end + 1;
                }
              } else {
                write_ids(tok.encode(text, o->allow_special), o->format, tok.vocab_size());
              }
            } else if (decode->parsed()) {
              const Input input(o->input);
              const std::string out = tok.decode(read_ids(input.text(), o->format));
              std::fwrite(out.data(), 1, out.size(), stdout);
            } else if (info->parsed()) {
              print_info(tok, o->json);
            }
            std::fflush(stdout);
          }};
}

}  // namespace borealis::cli
