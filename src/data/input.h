// Reading raw corpora: the list of input files (directories expanded
// recursively, in sorted order), and a streaming byte source per file that
// decompresses gzip (.gz) and zstd (.zst) on the fly. A truncated or corrupt
// compressed stream is an Error naming the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace borealis {

enum class InputFormat { JsonLines, Text };

struct InputFile {
  std::filesystem::path path;
  InputFormat format;
  std::uint64_t size;  // on disk (compressed size for .gz/.zst)
};

// Files under `paths`: files as given, directories recursively in sorted
// order. *.jsonl, *.json and *.ndjson (optionally .gz/.zst) are JSON Lines;
// everything else is text. Throws Error for a missing path or no files.
std::vector<InputFile> list_inputs(const std::vector<std::filesystem::path>& paths);

class ByteSource {
 public:
  static std::unique_ptr<ByteSource> open(const std::filesystem::path& path);
  virtual ~ByteSource() = default;

  // Appends up to `max` decompressed bytes to `out`; returns false at the end.
  virtual bool read(std::string& out, std::size_t max) = 0;
  // Bytes of the file consumed so far (for progress).
  virtual std::uint64_t consumed() const = 0;
};

}  // namespace borealis
