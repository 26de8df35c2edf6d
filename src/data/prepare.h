// `borealis data prepare`: raw corpora to indexed datasets.
//
// A pipeline of one reader thread (files in order, decompression, splitting
// into records; a UTF-8 byte-order mark that begins a file is dropped), N
// tokenizer workers (JSON parsing, UTF-8 checks,
// tokenization) and an ordered writer. Chunks carry sequence numbers and are
// written in input order, so the output is the same for any worker count;
// at most a few chunks per worker are in flight, so memory does not grow
// with the corpus. Bad records stop the run with an error naming file and
// line, or with skip_bad are skipped, counted and listed. Outputs appear
// under their final names only when complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"
#include "tokenizer/tokenizer.h"

namespace borealis {

enum class TextDocuments { File, BlankLine };

struct PrepareOptions {
  std::vector<std::filesystem::path> inputs;
  std::filesystem::path out_prefix;
  std::string json_key = "text";
  bool append_eod = false;
  int workers = 0;                        // tokenizer threads; 0: all usable cores
  std::uint64_t max_tokens_per_file = 0;  // 0: one output; else PREFIX_00000, PREFIX_00001, ...
  TextDocuments text_documents = TextDocuments::File;
  bool skip_bad = false;
  bool progress = true;
  std::size_t chunk_bytes = 1 << 20;  // records per chunk, by size
};

struct SkippedRecord {
  std::string where;   // file:line (or file)
  std::string reason;  // "malformed JSON", "missing key 'text'", ...
};

struct PrepareStats {
  std::uint64_t documents_read = 0;
  std::uint64_t documents_written = 0;
  std::uint64_t documents_skipped = 0;
  std::uint64_t tokens = 0;
  std::uint64_t text_bytes = 0;                // bytes of document text (decompressed)
  std::uint64_t input_bytes = 0;               // bytes of input files on disk
  std::vector<SkippedRecord> skipped;          // the first kMaxListedSkips
  std::vector<std::filesystem::path> outputs;  // prefixes written
  TokenType token_type = TokenType::U16;
  double seconds = 0;

  static constexpr std::size_t kMaxListedSkips = 1000;
};

PrepareStats prepare_dataset(const Tokenizer& tokenizer, const PrepareOptions& options);

}  // namespace borealis
