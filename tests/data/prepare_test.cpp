#include "data/prepare.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <csignal>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"

namespace borealis {
namespace {

using test::read_file;
using test::TempDir;
using test::write_file;

const Tokenizer& gpt2() {
  static const Tokenizer t =
      Tokenizer::load(std::filesystem::path(BOREALIS_DATA_DIR) / "tokenizers" / "gpt2.json");
  return t;
}

PrepareOptions options(const std::vector<std::filesystem::path>& inputs,
                       const std::filesystem::path& out) {
  PrepareOptions o;
  o.inputs = inputs;
  o.out_prefix = out;
  o.progress = false;
  o.workers = 2;
  return o;
}

std::string jsonl(const std::vector<std::string>& texts) {
  std::string s;
  for (const auto& t : texts) s += nlohmann::json{{"text", t}, {"id", s.size()}}.dump() + "\n";
  return s;
}

void write_gzip(const std::filesystem::path& path, const std::string& data) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, data.data(), static_cast<unsigned>(data.size()));
  gzclose(f);
}

std::string zstd_bytes(const std::string& data) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  out.resize(ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3));
  return out;
}

std::vector<std::string> sample_texts() {
  return {"First document.\nWith two lines.", "Second: naïve café, 3.14 and \"quotes\"", "x",
          std::string(5000, 'a') + " long", "Last one <|endoftext|> has a special string"};
}

TEST(Prepare, RoundTripFromPlainGzipAndZstd) {
  TempDir dir;
  const auto texts = sample_texts();
  write_file(dir / "a.jsonl", jsonl({texts[0], texts[1]}));
  write_gzip(dir / "b.jsonl.gz", jsonl({texts[2], texts[3]}));
  write_file(dir / "c.jsonl.zst", zstd_bytes(jsonl({texts[4]})));
  auto o = options({dir / "a.jsonl", dir / "b.jsonl.gz", dir / "c.jsonl.zst"}, dir / "out");
  o.append_eod = true;
  const PrepareStats s = prepare_dataset(gpt2(), o);
  EXPECT_EQ(s.documents_read, 5u);
  EXPECT_EQ(s.documents_written, 5u);
  EXPECT_EQ(s.documents_skipped, 0u);
  const IndexedDataset ds(dir / "out");
  ds.verify();
  ASSERT_EQ(ds.sequences(), texts.size());
  EXPECT_EQ(ds.tokens(), s.tokens);
  for (std::size_t i = 0; i < texts.size(); ++i) {
    auto ids = ds.sequence(i);
    ASSERT_EQ(ids.back(), 50256u);  // --append-eod
    ids.pop_back();
    EXPECT_EQ(gpt2().decode(ids), texts[i]);
    EXPECT_EQ(ids, gpt2().encode(texts[i]));  // special strings in data are ordinary text
  }
}

// Windows editors and exporters begin files with a UTF-8 byte-order mark: it
// is dropped at the start of a file (plain, gzip or zstd), and nowhere else.
TEST(Prepare, ByteOrderMarkAtTheStartOfAFileIsSkipped) {
  TempDir dir;
  const std::string bom = "\xEF\xBB\xBF";
  const auto texts = sample_texts();
  write_file(dir / "a.jsonl", bom + jsonl({texts[0], texts[1]}));
  write_gzip(dir / "b.jsonl.gz", bom + jsonl({texts[2]}));
  write_file(dir / "c.jsonl.zst", zstd_bytes(bom + jsonl({texts[3], texts[4]})));
  write_file(dir / "d.txt", bom + "Plain text.");
  const auto s = prepare_dataset(
      gpt2(), options({dir / "a.jsonl", dir / "b.jsonl.gz", dir / "c.jsonl.zst", dir / "d.txt"},
                      dir / "out"));
  EXPECT_EQ(s.documents_read, 6u);
  EXPECT_EQ(s.documents_written, 6u);
  const IndexedDataset ds(dir / "out");
  ASSERT_EQ(ds.sequences(), 6u);
  for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(gpt2().decode(ds.sequence(i)), texts[i]);
  EXPECT_EQ(gpt2().decode(ds.sequence(5)), "Plain text.");

  // A file that is nothing but a mark has no documents; one inside a file is
  // data, and in JSON Lines not JSON.
  for (const auto& [name, bytes] : {std::pair<std::string, std::string>{"e.jsonl", bom},
                                    {"e.jsonl.gz", bom},
                                    {"e.jsonl.zst", zstd_bytes(bom)}}) {
    if (name.ends_with(".gz")) {
      write_gzip(dir / name, bytes);
    } else {
      write_file(dir / name, bytes);
    }
    EXPECT_EQ(prepare_dataset(gpt2(), options({dir / name}, dir / ("o-" + name))).documents_read,
              0u)
        << name;
  }
  for (const std::string name : {"f.jsonl", "f.jsonl.gz", "f.jsonl.zst"}) {
    const std::string data = jsonl({texts[0]}) + bom + jsonl({texts[1]});
    if (name.ends_with(".gz")) {
      write_gzip(dir / name, data);
    } else {
      write_file(dir / name, name.ends_with(".zst") ? zstd_bytes(data) : data);
    }
    try {
      prepare_dataset(gpt2(), options({dir / name}, dir / "x"));
      ADD_FAILURE() << "no error for a mark on line 2 of " << name;
    } catch (const Error& e) {
      EXPECT_TRUE(e.message().starts_with("malformed JSON")) << e.line();
      EXPECT_EQ(e.where(), (dir / name).string() + ":2");
    }
  }
}

TEST(Prepare, OutputDoesNotDependOnWorkers) {
  TempDir dir;
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i)
    texts.push_back("Document " + std::to_string(i) + " " + std::string(i % 97, 'z'));
  write_file(dir / "in.jsonl", jsonl(texts));
  std::string reference;
  for (const int workers : {1, 2, 5}) {
    auto o = options({dir / "in.jsonl"}, dir / ("w" + std::to_string(workers)));
    o.workers = workers;
    o.chunk_bytes = 700;  // many small chunks, finished out of order
    prepare_dataset(gpt2(), o);
    const std::string bytes = read_file(dir / ("w" + std::to_string(workers) + ".bin")) +
                              read_file(dir / ("w" + std::to_string(workers) + ".idx"));
    if (reference.empty()) reference = bytes;
    EXPECT_EQ(bytes, reference) << workers << " workers";
  }
}

TEST(Prepare, TextFilesAndDirectories) {
  TempDir dir;
  std::filesystem::create_directories(dir / "corpus" / "sub");
  write_file(dir / "corpus" / "b.txt", "Beta text.\n");
  write_file(dir / "corpus" / "sub" / "a.txt", "Alpha.");
  write_file(dir / "corpus" / "a.txt", "First para\nline two\n\n\n  \nSecond para\n");
  // One document per file, files in sorted path order.
  prepare_dataset(gpt2(), options({dir / "corpus"}, dir / "files"));
  const IndexedDataset files(dir / "files");
  ASSERT_EQ(files.sequences(), 3u);
  EXPECT_EQ(gpt2().decode(files.sequence(0)), "First para\nline two\n\n\n  \nSecond para\n");
  EXPECT_EQ(gpt2().decode(files.sequence(1)), "Beta text.\n");
  EXPECT_EQ(gpt2().decode(files.sequence(2)), "Alpha.");
  // Documents separated by blank lines.
  auto o = options({dir / "corpus" / "a.txt"}, dir / "paras");
  o.text_documents = TextDocuments::BlankLine;
  prepare_dataset(gpt2(), o);
  const IndexedDataset paras(dir / "paras");
  ASSERT_EQ(paras.sequences(), 2u);
  EXPECT_EQ(gpt2().decode(paras.sequence(0)), "First para\nline two");
  EXPECT_EQ(gpt2().decode(paras.sequence(1)), "Second para");
}

TEST(Prepare, SplitsOutputByTokenCount) {
  TempDir dir;
  std::vector<std::string> texts(10, "one two three four five");  // 5 tokens each
  write_file(dir / "in.jsonl", jsonl(texts));
  auto o = options({dir / "in.jsonl"}, dir / "shard");
  o.max_tokens_per_file = 12;
  const PrepareStats s = prepare_dataset(gpt2(), o);
  ASSERT_EQ(s.outputs.size(), 5u);
  EXPECT_EQ(s.outputs[0], dir / "shard_00000");
  EXPECT_EQ(IndexedDataset(dir / "shard_00004").sequences(), 2u);
}

// Each bad record: an error naming file and line, or skipped and listed.
TEST(Prepare, BadRecordsAreErrorsOrSkipped) {
  TempDir dir;
  const std::string good = nlohmann::json{{"text", "fine"}}.dump() + "\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"text\": \"unterminated}\n", "malformed JSON"},
      {"{\"body\": \"no text key\"}\n", "missing key 'text'"},
      {"{\"text\": 42}\n", "'text' is not a string"},
      {"{\"text\": \"bad \xFF byte\"}\n", "invalid UTF-8"},
      {"{\"text\": \"lone \\ud800 surrogate\"}\n", "malformed JSON"},
      {"{\"text\": \"\"}\n", "empty document"},
      {"[\"not an object\"]\n", "the line is not a JSON object"},
  };
  for (const auto& [line, reason] : cases) {
    write_file(dir / "in.jsonl", good + line + good);
    const auto where = (dir / "in.jsonl").string() + ":2";
    try {
      prepare_dataset(gpt2(), options({dir / "in.jsonl"}, dir / "out"));
      ADD_FAILURE() << "no error for " << line;
    } catch (const Error& e) {
      EXPECT_TRUE(e.message().starts_with(reason)) << e.line();
      EXPECT_EQ(e.where(), where);
    }
    EXPECT_FALSE(std::filesystem::exists(dir / "out.bin")) << line;
    EXPECT_FALSE(std::filesystem::exists(dir / "out.idx")) << line;
    EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"in.jsonl"})
        << "temporary files left";
    auto o = options({dir / "in.jsonl"}, dir / "out");
    o.skip_bad = true;
    const PrepareStats s = prepare_dataset(gpt2(), o);
    EXPECT_EQ(s.documents_read, 3u);
    EXPECT_EQ(s.documents_written, 2u);
    EXPECT_EQ(s.documents_skipped, 1u);
    EXPECT_EQ(s.documents_read, s.documents_written + s.documents_skipped);
    ASSERT_EQ(s.skipped.size(), 1u);
    EXPECT_EQ(s.skipped[0].where, where);
    EXPECT_TRUE(s.skipped[0].reason.starts_with(reason));
    std::filesystem::remove(dir / "out.bin");
    std::filesystem::remove(dir / "out.idx");
  }
}

TEST(Prepare, TruncatedCompressedInputsAreErrors) {
  TempDir dir;
  std::string big;
  for (int i = 0; i < 2000; ++i)
    big += nlohmann::json{{"text", "document number " + std::to_string(i)}}.dump() + "\n";
  write_gzip(dir / "full.jsonl.gz", big);
  const std::string gz = read_file(dir / "full.jsonl.gz");
  write_file(dir / "cut.jsonl.gz", gz.substr(0, gz.size() / 2));
  EXPECT_EQ(prepare_dataset(gpt2(), options({dir / "full.jsonl.gz"}, dir / "ok")).documents_written,
            2000u);
  try {
    prepare_dataset(gpt2(), options({dir / "cut.jsonl.gz"}, dir / "out"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.line(), "error: truncated gzip stream (" + (dir / "cut.jsonl.gz").string() + ")");
  }
  const std::string zst = zstd_bytes(big);
  write_file(dir / "cut.jsonl.zst", zst.substr(0, zst.size() - 10));
  try {
    prepare_dataset(gpt2(), options({dir / "cut.jsonl.zst"}, dir / "out"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.line(), "error: truncated zstd stream (" + (dir / "cut.jsonl.zst").string() + ")");
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "out.bin"));
  EXPECT_THROW(prepare_dataset(gpt2(), options({dir / "missing.jsonl"}, dir / "out")), Error);
}

// A run killed half-way (a batch scheduler's SIGKILL) leaves no file under
// its final name: the test kills the writer as soon as its temporary .bin
// has data.
TEST(Prepare, InterruptedRunLeavesNoFinalFile) {
  TempDir dir;
  std::string big;
  for (int i = 0; i < 200000; ++i) {
    big += nlohmann::json{{"text", "A sentence about particle " + std::to_string(i)}}.dump() + "\n";
  }
  write_file(dir / "in.jsonl", big);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto o = options({dir / "in.jsonl"}, dir / "out");
    o.workers = 1;
    o.chunk_bytes = 4096;
    prepare_dataset(gpt2(), o);
    ::_exit(0);
  }
  bool killed = false;
  for (int polls = 0; polls < 20000 && !killed; ++polls) {
    for (const auto& name : test::list_dir(dir.path())) {
      if (name.starts_with(".out.bin.tmp.") && std::filesystem::file_size(dir / name) > 0) {
        ::kill(pid, SIGKILL);
        killed = true;
      }
    }
    ::usleep(500);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(killed && WIFSIGNALED(status)) << "the run ended before it could be killed";
  EXPECT_FALSE(std::filesystem::exists(dir / "out.bin"));
  EXPECT_FALSE(std::filesystem::exists(dir / "out.idx"));
}

}  // namespace
}  // namespace borealis
