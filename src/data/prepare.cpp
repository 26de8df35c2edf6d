#include "data/prepare.h"

#include <fmt/format.h>
#include <omp.h>
#include <simdjson.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "core/text.h"
#include "data/input.h"

namespace borealis {

namespace {

namespace fs = std::filesystem;

struct Record {
  std::size_t offset;  // in the chunk's mapping, or in its data
  std::size_t length;
  std::uint32_t file;
  std::uint64_t line;  // 0 for whole-file documents
};

struct Chunk {
  std::uint64_t seq = 0;
  // Records point into a memory-mapped input file (no copy), or, for
  // decompressed input, into `data`.
  std::shared_ptr<const MappedFile> mapping;
  std::string data;
  std::vector<Record> records;
  std::uint64_t input_position = 0;  // input bytes consumed when the chunk was cut
  // Filled by a worker: tokens already in the output's token type.
  std::vector<std::byte> tokens;
  std::vector<std::uint32_t> sizes;                         // per written record
  std::vector<std::pair<std::size_t, std::string>> errors;  // (record, reason), in record order

  const char* base() const {
    return mapping ? reinterpret_cast<const char*>(mapping->data()) : data.data();
  }
};

// A queue with a bound on the chunks in flight between reader and writer.
class ChunkQueue {
 public:
  void push(Chunk c) {
    std::lock_guard lock(m_);
    q_.push_back(std::move(c));
    cv_.notify_one();
  }
  std::optional<Chunk> pop() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return std::nullopt;
    Chunk c = std::move(q_.front());
    q_.pop_front();
    return c;
  }
  void close() {
    std::lock_guard lock(m_);
    closed_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Chunk> q_;
  bool closed_ = false;
};

std::string where_of(const std::vector<InputFile>& files, const Record& r) {
  return r.line == 0 ? files[r.file].path.string()
                     : fmt::format("{}:{}", files[r.file].path.string(), r.line);
}

class Pipeline {
 public:
  Pipeline(const Tokenizer& tok, const PrepareOptions& o, std::vector<InputFile> files)
      : tok_(tok), o_(o), files_(std::move(files)) {
    workers_ = o.workers > 0 ? o.workers : omp_get_max_threads();
    max_in_flight_ = static_cast<std::size_t>(workers_) * 3 + 2;
    if (o.append_eod) {
      const auto eod = tok.eod_id();
      if (!eod) throw Error("the tokenizer has no end-of-document token", "--append-eod");
      eod_ = *eod;
    }
    for (const auto& f : files_) total_input_ += f.size;
    type_ = token_type_for_vocab(tok.vocab_size());
  }

  ~Pipeline() { stop(); }
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  PrepareStats run() {
    const auto start = std::chrono::steady_clock::now();
    PrepareStats stats;
    stats.input_bytes = total_input_;
    stats.token_type = type_;
    reader_ = std::thread([this] { guard([this] { read_all(); }); });
    for (int w = 0; w < workers_; ++w) {
      pool_.emplace_back([this] { guard([this] { work(); }); });
    }
    Progress progress("prepare", total_input_, "input bytes", o_.progress);
    std::optional<IndexedDatasetWriter> writer;
    std::size_t shard = 0;
    auto open_shard = [&] {
      const fs::path prefix =
          o_.max_tokens_per_file == 0
              ? o_.out_prefix
              : fs::path(fmt::format("{}_{:05}", o_.out_prefix.string(), shard++));
      writer.emplace(prefix, stats.token_type);
      stats.outputs.push_back(prefix);
    };
    open_shard();
    for (std::uint64_t seq = 0;; ++seq) {
      std::optional<Chunk> chunk = next_done(seq);
      if (!chunk) break;
      const Chunk& c = *chunk;
      std::size_t byte_pos = 0;
      const std::size_t item = token_size(type_);
      std::size_t error_pos = 0;
      std::size_t size_pos = 0;
      for (std::size_t r = 0; r < c.records.size(); ++r) {
        ++stats.documents_read;
        if (error_pos < c.errors.size() && c.errors[error_pos].first == r) {
          const std::string where = where_of(files_, c.records[r]);
          if (!o_.skip_bad) throw Error(c.errors[error_pos].second, where);
          ++stats.documents_skipped;
          if (stats.skipped.size() < PrepareStats::kMaxListedSkips) {
            stats.skipped.push_back({where, c.errors[error_pos].second});
          }
          ++error_pos;
          continue;
        }
        const std::uint32_t n = c.sizes[size_pos++];
        if (o_.max_tokens_per_file > 0 && writer->documents() > 0 &&
            writer->tokens() + n > o_.max_tokens_per_file) {
          writer->commit();
          open_shard();
        }
        writer->add_raw_document(std::span(c.tokens).subspan(byte_pos, n * item));
        byte_pos += n * item;
        ++stats.documents_written;
        stats.tokens += n;
        stats.text_bytes += c.records[r].length;
      }
      release_slot();
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      progress.update(
          c.input_position,
          fmt::format("{} docs, {} tokens, {:.1f} MB/s", stats.documents_written, stats.tokens,
                      secs > 0 ? static_cast<double>(stats.text_bytes) / 1e6 / secs : 0.0));
    }
    rethrow_failure();
    writer->commit();
    progress.update(total_input_);
    progress.finish();
    stop();
    stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return stats;
  }

 private:
  // Runs a thread body; the first exception stops the whole pipeline.
  template <class F>
  void guard(F&& body) {
    try {
      body();
    } catch (...) {
      std::lock_guard lock(m_);
      if (!failure_) failure_ = std::current_exception();
      aborted_ = true;
      cv_.notify_all();
      work_.close();
    }
  }

  void rethrow_failure() {
    std::lock_guard lock(m_);
    if (failure_) std::rethrow_exception(failure_);
  }

  void stop() {
    {
      std::lock_guard lock(m_);
      aborted_ = true;
      cv_.notify_all();
    }
    work_.close();
    if (reader_.joinable()) reader_.join();
    for (auto& t : pool_) {
      if (t.joinable()) t.join();
    }
    pool_.clear();
  }

  // Blocks until a slot is free (bounds memory); false when aborted.
  bool take_slot() {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return in_flight_ < max_in_flight_ || aborted_; });
    if (aborted_) return false;
    ++in_flight_;
    return true;
  }

  void release_slot() {
    std::lock_guard lock(m_);
    --in_flight_;
    cv_.notify_all();
  }

  void emit(Chunk& chunk, std::uint64_t position) {
    if (chunk.records.empty()) return;
    if (!take_slot()) throw std::runtime_error("aborted");
    chunk.seq = next_seq_++;
    chunk.input_position = position;
    auto mapping = chunk.mapping;
    work_.push(std::move(chunk));
    chunk = Chunk{};
    chunk.mapping = std::move(mapping);
  }

  void read_all() {
    Chunk chunk;
    std::uint64_t done_before = 0;  // input bytes of finished files
    for (std::uint32_t f = 0; f < files_.size(); ++f) {
      const InputFile& file = files_[f];
      const bool whole_file =
          file.format == InputFormat::Text && o_.text_documents == TextDocuments::File;
      const std::string ext = file.path.extension().string();
      if (ext != ".gz" && ext != ".zst") {
        // Uncompressed: records are views into the mapped file.
        emit(chunk, done_before);
        chunk.mapping =
            std::make_shared<const MappedFile>(file.path, MappedFile::Access::Sequential);
        // A UTF-8 byte-order mark at the start of a file is not content.
        const std::string_view text = chunk.mapping->text();
        const std::size_t bom = utf8_bom_length(text);
        split_records(chunk, f, file.format, whole_file, text.substr(bom), 0, true,
                      [&](std::size_t pos) { return done_before + bom + pos; });
        emit(chunk, done_before + file.size);
        chunk.mapping.reset();
      } else {
        // Compressed: decompressed blocks are copied into the chunks.
        auto source = ByteSource::open(file.path);
        std::string buffer;
        std::uint64_t line = 0;
        bool more = true;
        bool at_start = true;
        while (more) {
          more = source->read(buffer, 1 << 20);
          if (at_start) {
            // Drop a byte-order mark, once the file's first three bytes (or all
            // of a shorter file) are in.
            if (more && buffer.size() < 3) continue;
            buffer.erase(0, utf8_bom_length(buffer));
            at_start = false;
          }
          // Hand over what ends in a complete record; keep the rest.
          std::size_t cut = buffer.size();
          if (more) {
            const std::size_t boundary = whole_file ? std::string::npos
                                         : file.format == InputFormat::JsonLines
                                             ? buffer.rfind('\n')
                                             : buffer.rfind("\n\n");
            if (boundary == std::string::npos) continue;
            cut = boundary + 1;
          }
          line = split_records(chunk, f, file.format, whole_file,
                               std::string_view(buffer).substr(0, cut), line, false,
                               [&](std::size_t) { return done_before + source->consumed(); });
          buffer.erase(0, cut);
        }
      }
      done_before += file.size;
    }
    emit(chunk, done_before);
    work_.close();
    std::lock_guard lock(m_);
    total_chunks_ = next_seq_;
    reader_done_ = true;
    cv_.notify_all();
  }

  // Cuts `text` (whole records only) into records: JSON lines, blank-line
  // separated paragraphs, or one whole-file document. Returns the last line
  // number used. `mapped`: offsets refer to the mapping, else the text is
  // copied into the chunk.
  template <class Position>
  std::uint64_t split_records(Chunk& chunk, std::uint32_t f, InputFormat format, bool whole_file,
                              std::string_view text, std::uint64_t line, bool mapped,
                              Position position) {
    const char* base = mapped ? reinterpret_cast<const char*>(chunk.mapping->data()) : nullptr;
    auto add = [&](std::size_t begin, std::size_t end, std::uint64_t at_line) {
      const std::string_view bytes = text.substr(begin, end - begin);
      if (mapped) {
        chunk.records.push_back(
            {static_cast<std::size_t>(bytes.data() - base), bytes.size(), f, at_line});
      } else {
        chunk.records.push_back({chunk.data.size(), bytes.size(), f, at_line});
        chunk.data.append(bytes);
      }
      if (chunk.records.size() >= 1 && bytes_in(chunk) >= o_.chunk_bytes)
        emit(chunk, position(end));
    };
    if (whole_file) {
      add(0, text.size(), 0);
      return line;
    }
    std::size_t para_begin = std::string::npos;
    std::size_t para_end = 0;
    std::uint64_t para_line = 0;
    std::size_t start = 0;
    while (start < text.size()) {
      std::size_t nl = text.find('\n', start);
      if (nl == std::string_view::npos) nl = text.size();
      ++line;
      std::size_t end = nl;
      if (end > start && text[end - 1] == '\r') --end;
      const bool blank = trim(text.substr(start, end - start)).empty();
      if (format == InputFormat::JsonLines) {
        if (!blank) add(start, end, line);
      } else if (blank) {
        if (para_begin != std::string::npos) add(para_begin, para_end, para_line);
        para_begin = std::string::npos;
      } else {
        if (para_begin == std::string::npos) {
          para_begin = start;
          para_line = line;
        }
        para_end = end;
      }
      start = nl + 1;
    }
    if (para_begin != std::string::npos) add(para_begin, para_end, para_line);
    return line;
  }

  static std::size_t bytes_in(const Chunk& c) {
    return c.records.empty()
               ? 0
               : c.records.back().offset + c.records.back().length - c.records.front().offset;
  }

  void work() {
    simdjson::dom::parser parser;
    while (auto chunk = work_.pop()) {
      process(*chunk, parser);
      std::lock_guard lock(m_);
      done_.emplace(chunk->seq, std::move(*chunk));
      cv_.notify_all();
    }
  }

  void process(Chunk& c, simdjson::dom::parser& parser) const {
    thread_local std::string padded;  // simdjson reads a little past the end of its input
    thread_local std::vector<std::uint32_t> ids;
    const std::size_t item = token_size(type_);
    const char* base = c.base();
    for (std::size_t r = 0; r < c.records.size(); ++r) {
      const Record& rec = c.records[r];
      std::string_view text(base + rec.offset, rec.length);
      if (files_[rec.file].format == InputFormat::JsonLines) {
        // A record inside a mapped file is followed by readable bytes (the
        // rest of the file): parse it in place unless it ends too close to
        // the end of the mapping.
        const char* json = text.data();
        if (!c.mapping ||
            rec.offset + rec.length + simdjson::SIMDJSON_PADDING > c.mapping->size()) {
          padded.assign(text);
          padded.append(simdjson::SIMDJSON_PADDING, '\0');
          json = padded.data();
        }
        simdjson::dom::element doc;
        const auto err = parser.parse(json, rec.length, false).get(doc);
        if (err == simdjson::UTF8_ERROR) {
          c.errors.emplace_back(r, "invalid UTF-8");
          continue;
        }
        if (err) {
          c.errors.emplace_back(r,
                                fmt::format("malformed JSON ({})", simdjson::error_message(err)));
          continue;
        }
        simdjson::dom::object obj;
        if (doc.get_object().get(obj)) {
          c.errors.emplace_back(r, "the line is not a JSON object");
          continue;
        }
        simdjson::dom::element field;
        if (obj.at_key(o_.json_key).get(field)) {
          c.errors.emplace_back(r, fmt::format("missing key '{}'", o_.json_key));
          continue;
        }
        if (field.get_string().get(text)) {
          c.errors.emplace_back(r, fmt::format("'{}' is not a string", o_.json_key));
          continue;
        }
        if (!simdjson::validate_utf8(text.data(), text.size())) {  // e.g. from \ud800 escapes
          c.errors.emplace_back(r, "invalid UTF-8");
          continue;
        }
      } else if (!simdjson::validate_utf8(text.data(), text.size())) {
        c.errors.emplace_back(r, "invalid UTF-8");
        continue;
      }
      if (text.empty()) {
        c.errors.emplace_back(r, "empty document");
        continue;
      }
      ids.clear();
      tok_.encode(text, ids);
      if (o_.append_eod) ids.push_back(eod_);
      const std::size_t at = c.tokens.size();
      c.tokens.resize(at + ids.size() * item);
      std::byte* out = c.tokens.data() + at;
      if (type_ == TokenType::U16) {
        for (const std::uint32_t id : ids) {
          const auto v =
              static_cast<std::uint16_t>(id);  // the vocabulary fits: see token_type_for_vocab
          std::memcpy(out, &v, 2);
          out += 2;
        }
      } else {
        std::memcpy(out, ids.data(), ids.size() * 4);  // int32 ids below 2^31
      }
      c.sizes.push_back(static_cast<std::uint32_t>(ids.size()));
    }
    std::string().swap(c.data);  // the text is no longer needed
    c.mapping.reset();
  }

  // The chunk with sequence number seq, or nothing once all are written.
  std::optional<Chunk> next_done(std::uint64_t seq) {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] {
      return done_.count(seq) > 0 || aborted_ || (reader_done_ && seq >= total_chunks_);
    });
    if (done_.count(seq) > 0) {
      Chunk c = std::move(done_.at(seq));
      done_.erase(seq);
      return c;
    }
    if (failure_) std::rethrow_exception(failure_);
    return std::nullopt;
  }

  const Tokenizer& tok_;
  const PrepareOptions& o_;
  std::vector<InputFile> files_;
  int workers_ = 1;
  std::size_t max_in_flight_ = 4;
  std::uint32_t eod_ = 0;
  TokenType type_ = TokenType::U16;
  std::uint64_t total_input_ = 0;

  std::thread reader_;
  std::vector<std::thread> pool_;
  ChunkQueue work_;
  std::mutex m_;
  std::condition_variable cv_;
  std::map<std::uint64_t, Chunk> done_;
  std::size_t in_flight_ = 0;
  std::uint64_t next_seq_ = 0;  // reader thread only
  std::uint64_t total_chunks_ = 0;
  bool reader_done_ = false;
  bool aborted_ = false;
  std::exception_ptr failure_;
};

}  // namespace

PrepareStats prepare_dataset(const Tokenizer& tokenizer, const PrepareOptions& options) {
  if (options.out_prefix.empty()) throw Error("no output prefix", "--out");
  const fs::path dir = options.out_prefix.parent_path();
  if (!dir.empty() && !fs::is_directory(dir))
    throw Error("output directory does not exist", dir.string());
  Pipeline pipeline(tokenizer, options, list_inputs(options.inputs));
  return pipeline.run();
}

}  // namespace borealis
