// The cache file: a fixed header, then a payload of little-endian fields.
//
//   magic "BTOKCACH"  u32 format  u32 0  source hash (16 bytes)
//   u64 payload size  u64 XXH3-64 of the payload  payload
//
// The payload holds everything a Tokenizer is made of: the BPE tokens and its
// pair table as it sits in memory (so restoring copies it instead of
// rebuilding it), the pre-tokenizer (engine and pattern), added tokens,
// normalizer and decoder steps. Restoring checks every length and id against
// the bounds it must lie in; the checksum catches the rest.
#include "tokenizer/cache.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <cstring>
#include <system_error>

#include "core/atomic_file.h"
#include "core/build_info.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/mapped_file.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

static_assert(std::endian::native == std::endian::little, "the cache is little-endian");

constexpr char kMagic[8] = {'B', 'T', 'O', 'K', 'C', 'A', 'C', 'H'};
// Bump when the payload layout or what the loaders produce changes.
constexpr std::uint32_t kFormat = 1;
constexpr std::size_t kHeaderSize = 8 + 4 + 4 + 16 + 8 + 8;

class Writer {
 public:
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u32(std::uint32_t v) { raw(&v, sizeof v); }
  void u64(std::uint64_t v) { raw(&v, sizeof v); }
  void str(std::string_view s) {
    u64(s.size());
    out_.append(s);
  }
  void raw(const void* p, std::size_t n) { out_.append(static_cast<const char*>(p), n); }
  std::string& bytes() { return out_; }

 private:
  std::string out_;
};

class Reader {
 public:
  Reader(std::string_view bytes, const std::string& where) : rest_(bytes), where_(where) {}
  std::uint8_t u8() { return static_cast<std::uint8_t>(take(1)[0]); }
  bool flag() {
    const std::uint8_t v = u8();
    if (v > 1) fail("a flag that is neither 0 nor 1");
    return v == 1;
  }
  std::uint32_t u32() {
    std::uint32_t v = 0;
    std::memcpy(&v, take(sizeof v).data(), sizeof v);
    return v;
  }
  std::uint64_t u64() {
    std::uint64_t v = 0;
    std::memcpy(&v, take(sizeof v).data(), sizeof v);
    return v;
  }
  std::string str() { return std::string(take(u64())); }
  // n elements of `size` bytes, checked against what is left before multiplying.
  std::string_view array(std::uint64_t n, std::size_t size) {
    if (n > rest_.size() / size) fail("an array longer than the file");
    return take(n * size);
  }
  bool done() const { return rest_.empty(); }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error("corrupt tokenizer cache: " + what, where_);
  }

 private:
  std::string_view take(std::uint64_t n) {
    if (n > rest_.size()) fail("truncated");
    const std::string_view out = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return out;
  }

  std::string_view rest_;
  const std::string& where_;
};

// The files a source path may read (see Tokenizer::load), in a fixed order.
std::vector<fs::path> source_files(const fs::path& source) {
  std::vector<fs::path> out;
  std::error_code ec;
  const auto add = [&](const fs::path& p) {
    if (fs::is_regular_file(p, ec)) out.push_back(p);
  };
  if (fs::is_directory(source, ec)) {
    for (const char* name : {"tokenizer.json", "encoder.json", "vocab.bpe"}) add(source / name);
  } else {
    add(source);
    add(source.parent_path() / "encoder.json");
    add(source.parent_path() / "vocab.bpe");
  }
  return out;
}

Hash128 source_hash(const fs::path& source) {
  Hasher h;
  h.add(std::uint64_t{kFormat});
  h.add(build_info().version).add(build_info().git_commit);
  for (const auto& file : source_files(source)) {
    h.add(file.filename().string());
    const Hash128 f = hash_file(file);
    h.add(f.high).add(f.low);
  }
  return h.digest();
}

}  // namespace

struct TokenizerCodec {
  static void write(const Tokenizer& tok, Writer& w) {
    w.str(tok.source_format_);
    const BpeModel& m = tok.model_;
    w.u8(m.whole_piece_lookup_);
    w.u8(m.char_level_);
    w.u8(m.byte_fallback_);
    w.u8(m.unk_.has_value());
    w.u32(m.unk_.value_or(0));
    w.u64(m.merge_count_);
    w.u64(m.tokens_.size());
    for (const auto& t : m.tokens_) w.u32(static_cast<std::uint32_t>(t.size()));
    for (const auto& t : m.tokens_) w.raw(t.data(), t.size());
    // The occupied slots only: the table is mostly empty by design.
    std::vector<std::uint64_t> keys;
    std::vector<BpeModel::PairValue> values;
    for (const BpeModel::PairSlot& p : m.pairs_) {
      if (p.key == BpeModel::kEmptyPair) continue;
      keys.push_back(p.key);
      values.push_back(p.value);
    }
    w.u64(keys.size());
    w.raw(keys.data(), keys.size() * sizeof(std::uint64_t));
    w.raw(values.data(), values.size() * sizeof(BpeModel::PairValue));

    w.str(tok.pre_->engine());
    w.str(tok.pre_->pattern());
    w.u64(tok.added_.size());
    for (const auto& a : tok.added_) {
      w.str(a.text);
      w.u32(a.id);
      w.u8(a.special);
    }
    w.u64(tok.normalize_.size());
    for (const auto& s : tok.normalize_) {
      w.u8(s.kind == NormalizeStep::Kind::Prepend ? 0 : 1);
      w.str(s.text);
      w.str(s.replacement);
      w.u8(s.if_missing);
      w.u8(s.first_only);
    }
    w.u8(!tok.decoded_.empty());  // set_decoder was called
    w.u64(tok.decode_.replace.size());
    for (const auto& [from, to] : tok.decode_.replace) {
      w.str(from);
      w.str(to);
    }
    w.u8(tok.decode_.byte_fallback);
    w.u64(tok.decode_.strip_start);
    w.u8(static_cast<std::uint8_t>(tok.decode_.strip_char));
  }

  static Tokenizer read(Reader& r, const std::string& where) {
    std::string format = r.str();
    BpeModel m;
    m.whole_piece_lookup_ = r.flag();
    m.char_level_ = r.flag();
    m.byte_fallback_ = r.flag();
    const bool has_unk = r.flag();
    const std::uint32_t unk = r.u32();
    if (has_unk) m.unk_ = unk;
    m.merge_count_ = r.u64();
    const std::uint64_t n = r.u64();
    const std::string_view lengths = r.array(n, sizeof(std::uint32_t));
    m.tokens_.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      std::uint32_t len = 0;
      std::memcpy(&len, lengths.data() + i * sizeof len, sizeof len);
      m.tokens_[i] = std::string(r.array(len, 1));
    }
    if (has_unk && unk >= n) r.fail("the unknown token is outside the vocabulary");
    const std::uint64_t pairs = r.u64();
    const std::string_view keys = r.array(pairs, sizeof(std::uint64_t));
    const std::string_view values = r.array(pairs, sizeof(BpeModel::PairValue));
    m.reset_pairs(pairs);
    for (std::size_t i = 0; i < pairs; ++i) {
      std::uint64_t k = 0;
      BpeModel::PairValue v{};
      std::memcpy(&k, keys.data() + i * sizeof k, sizeof k);
      std::memcpy(&v, values.data() + i * sizeof v, sizeof v);
      if ((k >> 32) >= n || (k & 0xFFFFFFFFu) >= n || v.merged >= n) {
        r.fail("a merge that refers to a token outside the vocabulary");
      }
      m.add_pair(static_cast<std::uint32_t>(k >> 32), static_cast<std::uint32_t>(k), v.rank,
                 v.merged);
    }
    m.index_tokens(where);  // rebuilds the byte table and checks every byte has a token

    const std::string engine = r.str();
    const std::string pattern = r.str();
    std::unique_ptr<PreTokenizer> pre;
    if (engine == "none") {
      pre = PreTokenizer::whole_text();
    } else if (engine == "metaspace") {
      pre = PreTokenizer::split_before(pattern);
    } else {
      pre = PreTokenizer::create(pattern, where);
      if (engine != pre->engine()) r.fail("a pre-tokenizer engine that does not match its pattern");
    }
    const std::uint64_t added_count = r.u64();
    std::vector<AddedToken> added;
    for (std::uint64_t i = 0; i < added_count; ++i) {
      AddedToken a;
      a.text = r.str();
      a.id = r.u32();
      a.special = r.flag();
      added.push_back(std::move(a));
    }
    std::vector<NormalizeStep> normalize;
    const std::uint64_t steps = r.u64();
    for (std::uint64_t i = 0; i < steps; ++i) {
      NormalizeStep s{};
      const std::uint8_t kind = r.u8();
      if (kind > 1) r.fail("an unknown normalizer step");
      s.kind = kind == 0 ? NormalizeStep::Kind::Prepend : NormalizeStep::Kind::Replace;
      s.text = r.str();
      s.replacement = r.str();
      s.if_missing = r.flag();
      s.first_only = r.flag();
      normalize.push_back(std::move(s));
    }
    const bool has_decoder = r.flag();
    DecodeSteps decode;
    const std::uint64_t replaces = r.u64();
    for (std::uint64_t i = 0; i < replaces; ++i) {
      std::string from = r.str();
      decode.replace.emplace_back(std::move(from), r.str());
    }
    decode.byte_fallback = r.flag();
    decode.strip_start = r.u64();
    decode.strip_char = static_cast<char>(r.u8());
    if (!r.done()) r.fail("bytes after the end");

    Tokenizer tok(std::move(m), std::move(pre), std::move(added), std::move(format));
    tok.set_normalizer(std::move(normalize));
    if (has_decoder) tok.set_decoder(decode);
    return tok;
  }
};

std::string serialize_tokenizer(const Tokenizer& tok) {
  Writer w;
  TokenizerCodec::write(tok, w);
  return std::move(w.bytes());
}

Tokenizer restore_tokenizer(std::string_view bytes, const std::string& where) {
  Reader r(bytes, where);
  return TokenizerCodec::read(r, where);
}

fs::path default_tokenizer_cache_dir() {
  if (const char* d = std::getenv("BOREALIS_TOKENIZER_CACHE"); d != nullptr && *d != '\0') {
    return std::string_view(d) == "off" ? fs::path() : fs::path(d);
  }
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != '\0') {
    return fs::path(x) / "borealis" / "tokenizers";
  }
  if (const char* h = std::getenv("HOME"); h != nullptr && *h != '\0') {
    return fs::path(h) / ".cache" / "borealis" / "tokenizers";
  }
  return {};
}

fs::path tokenizer_cache_path(const fs::path& source, const fs::path& cache_dir) {
  std::error_code ec;
  fs::path absolute = fs::weakly_canonical(source, ec);
  if (ec) absolute = fs::absolute(source);
  const std::string name = source.filename().empty() ? source.parent_path().filename().string()
                                                     : source.filename().string();
  return cache_dir / (name + "." + hex64(hash64(absolute.string())) + ".btok");
}

namespace {

// The tokenizer in `file` if it is intact and made from `want`; nullopt when
// it is absent or stale; throws Error when it is corrupt.
std::optional<Tokenizer> read_cache(const fs::path& file, const Hash128& want) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) return std::nullopt;
  const MappedFile mapped(file, MappedFile::Access::Whole);
  const std::string where = file.string();
  const std::string_view bytes = mapped.text();
  Reader header(bytes, where);
  const std::string_view magic = header.array(sizeof kMagic, 1);
  if (magic != std::string_view(kMagic, sizeof kMagic)) header.fail("not a tokenizer cache");
  if (header.u32() != kFormat) return std::nullopt;  // another release's cache: rebuild
  header.u32();
  Hash128 have;
  have.high = header.u64();
  have.low = header.u64();
  if (!(have == want)) return std::nullopt;
  const std::uint64_t size = header.u64();
  const std::uint64_t checksum = header.u64();
  if (size != bytes.size() - kHeaderSize) header.fail("truncated or extended");
  const std::string_view payload = bytes.substr(kHeaderSize);
  if (hash64(payload) != checksum) header.fail("checksum mismatch");
  return restore_tokenizer(payload, where);
}

void write_cache(const fs::path& file, const Hash128& source, const Tokenizer& tok) {
  const std::string payload = serialize_tokenizer(tok);
  Writer w;
  w.raw(kMagic, sizeof kMagic);
  w.u32(kFormat);
  w.u32(0);
  w.u64(source.high);
  w.u64(source.low);
  w.u64(payload.size());
  w.u64(hash64(payload));
  w.raw(payload.data(), payload.size());
  fs::create_directories(file.parent_path());
  write_file_atomic(file, w.bytes());
}

}  // namespace

Tokenizer load_tokenizer_cached(const fs::path& source, const fs::path& cache_dir,
                                const std::function<Tokenizer()>& load_source) {
  if (cache_dir.empty()) return load_source();
  const fs::path file = tokenizer_cache_path(source, cache_dir);
  const Hash128 want = source_hash(source);
  try {
    if (auto tok = read_cache(file, want)) return std::move(*tok);
  } catch (const Error& e) {
    spdlog::warn("{} ({}); loading {} instead and rewriting the cache", e.message(), e.where(),
                 source.string());
  }
  Tokenizer tok = load_source();
  try {
    write_cache(file, want, tok);
  } catch (const std::exception& e) {  // a read-only or full cache directory costs only speed
    spdlog::debug("tokenizer cache not written: {}", e.what());
  }
  return tok;
}

}  // namespace borealis
