#include "interop/gguf.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string_view>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/half.h"
#include "core/mapped_file.h"
#include "model/checkpoint_load.h"
#include "model/params.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

constexpr std::uint32_t kVersion = 3;
constexpr std::uint64_t kAlignment = 32;
constexpr std::int64_t kQ8Block = 32;

// gguf_metadata_value_type
enum : std::uint32_t {
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
};
// ggml_type and llama_ftype of each export type.
std::uint32_t ggml_type(GgufType t) {
  return t == GgufType::kF32 ? 0 : t == GgufType::kF16 ? 1 : 8;
}
std::uint32_t file_type(GgufType t) {
  return t == GgufType::kF32 ? 0 : t == GgufType::kF16 ? 1 : 7;
}
// llama.cpp's token types.
enum : std::int32_t { kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5 };

// Little-endian serialisation into a byte string.
class Bytes {
 public:
  template <typename T>
  void put(T v) {
    buf_.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  void str(std::string_view s) {
    put<std::uint64_t>(s.size());
    buf_.append(s);
  }
  std::string& data() { return buf_; }

 private:
  std::string buf_;
};

// The metadata section, counting its pairs.
class Metadata {
 public:
  void u32(std::string_view key, std::uint32_t v) { head(key, kU32).put(v); }
  void f32(std::string_view key, float v) { head(key, kF32).put(v); }
  void boolean(std::string_view key, bool v) { head(key, kBool).put<std::uint8_t>(v ? 1 : 0); }
  void str(std::string_view key, std::string_view v) { head(key, kString).str(v); }
  void strings(std::string_view key, const std::vector<std::string>& v) {
    Bytes& b = head(key, kArray);
    b.put(kString);
    b.put<std::uint64_t>(v.size());
    for (const auto& s : v) b.str(s);
  }
  void i32s(std::string_view key, const std::vector<std::int32_t>& v) {
    Bytes& b = head(key, kArray);
    b.put(kI32);
    b.put<std::uint64_t>(v.size());
    for (const auto x : v) b.put(x);
  }
  int count() const { return count_; }
  std::string& data() { return bytes_.data(); }

 private:
  Bytes& head(std::string_view key, std::uint32_t type) {
    ++count_;
    bytes_.str(key);
    bytes_.put(type);
    return bytes_;
  }
  Bytes bytes_;
  int count_ = 0;
};

struct Tensor {
  std::string name;
  std::int64_t rows = 1, cols = 0;  // cols is GGUF's first (fastest) dimension
  const float* data = nullptr;
  bool matrix = false;  // stored in the export type; vectors stay F32
  int rope_heads = 0;   // > 0: interleave the rotary pairs of this many heads
  int head_dim = 0;
  std::uint64_t offset = 0;
};

GgufType stored_type(const Tensor& t, GgufType type) {
  return t.matrix ? type : GgufType::kF32;
}

std::uint64_t data_bytes(const Tensor& t, GgufType type) {
  const auto n = static_cast<std::uint64_t>(t.rows * t.cols);
  switch (stored_type(t, type)) {
    case GgufType::kF32:
      return 4 * n;
    case GgufType::kF16:
      return 2 * n;
    case GgufType::kQ8_0:
      return n / kQ8Block * (2 + kQ8Block);
  }
  return 0;
}

std::vector<Tensor> gguf_tensors(const ModelConfig& c, const float* p) {
  const ParamLayout L(c);
  const std::int64_t C = c.d_model, F = c.d_ff, V = c.vocab_size, HD = c.head_dim();
  const std::int64_t Q = c.n_head * HD, KV = c.n_kv_head * HD;
  std::vector<Tensor> t;
  const auto mat = [&](std::string name, std::int64_t off, std::int64_t rows, std::int64_t cols,
                       int rope_heads = 0) {
    t.push_back({std::move(name), rows, cols, p + off, true, rope_heads, static_cast<int>(HD)});
  };
  const auto vec = [&](std::string name, std::int64_t off, std::int64_t n) {
    t.push_back({std::move(name), 1, n, p + off, false, 0, 0});
  };
  const bool gpt2 = c.family == ModelFamily::kGpt2;
  mat("token_embd.weight", L.wte(), V, C);
  if (gpt2) mat("position_embd.weight", L.wpe(), c.max_seq, C);
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerOffsets& o = L.layer(l);
    const std::string b = fmt::format("blk.{}.", l);
    vec(b + "attn_norm.weight", o.ln1_w, C);
    if (gpt2) {
      vec(b + "attn_norm.bias", o.ln1_b, C);
      mat(b + "attn_qkv.weight", o.qkv_w, c.qkv_width(), C);
      vec(b + "attn_qkv.bias", o.qkv_b, c.qkv_width());
      mat(b + "attn_output.weight", o.proj_w, C, C);
      vec(b + "attn_output.bias", o.proj_b, C);
      vec(b + "ffn_norm.weight", o.ln2_w, C);
      vec(b + "ffn_norm.bias", o.ln2_b, C);
      mat(b + "ffn_up.weight", o.fc_w, F, C);
      vec(b + "ffn_up.bias", o.fc_b, F);
      mat(b + "ffn_down.weight", o.fcproj_w, C, F);
      vec(b + "ffn_down.bias", o.fcproj_b, C);
      continue;
    }
    mat(b + "attn_q.weight", o.qkv_w, Q, C, c.n_head);
    mat(b + "attn_k.weight", o.qkv_w + Q * C, KV, C, c.n_kv_head);
    mat(b + "attn_v.weight", o.qkv_w + (Q + KV) * C, KV, C);
    mat(b + "attn_output.weight", o.proj_w, C, C);
    vec(b + "ffn_norm.weight", o.ln2_w, C);
    mat(b + "ffn_gate.weight", o.fc_w, F, C);
    mat(b + "ffn_up.weight", o.fc_w + F * C, F, C);
    mat(b + "ffn_down.weight", o.fcproj_w, C, F);
  }
  vec("output_norm.weight", L.lnf_w(), C);
  if (gpt2) vec("output_norm.bias", L.lnf_b(), C);
  // llama.cpp uses token_embd for a missing output; GPT-2 converters write
  // the tied head out, so do the same there.
  if (gpt2 || !c.tied_embeddings) mat("output.weight", L.lm_head(), V, C);
  return t;
}

// Row r of the tensor as stored (with the rotary interleave applied).
const float* source_row(const Tensor& t, std::int64_t r) {
  if (t.rope_heads == 0) return t.data + r * t.cols;
  const std::int64_t hd = t.head_dim, half = hd / 2;
  const std::int64_t head = r / hd, k = r % hd;  // stored row k = 2i + j
  return t.data + (head * hd + (k % 2) * half + k / 2) * t.cols;
}

void quantize_q8_0(const float* x, std::int64_t n, std::string& out) {
  for (std::int64_t b = 0; b < n; b += kQ8Block) {
    float amax = 0;
    for (std::int64_t i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::abs(x[b + i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const std::uint16_t dh = float_to_f16(d);
    out.append(reinterpret_cast<const char*>(&dh), 2);
    for (std::int64_t i = 0; i < kQ8Block; ++i) {
      out.push_back(static_cast<char>(static_cast<std::int8_t>(std::round(x[b + i] * id))));
    }
  }
}

void write_tensor(AtomicFile& out, const Tensor& t, GgufType type) {
  const GgufType st = stored_type(t, type);
  if (st == GgufType::kF32 && t.rope_heads == 0) {
    out.write(t.data, static_cast<std::size_t>(t.rows * t.cols) * sizeof(float));
    return;
  }
  std::string row;
  for (std::int64_t r = 0; r < t.rows; ++r) {
    const float* x = source_row(t, r);
    row.clear();
    if (st == GgufType::kF32) {
      row.append(reinterpret_cast<const char*>(x), static_cast<std::size_t>(t.cols) * 4);
    } else if (st == GgufType::kF16) {
      for (std::int64_t i = 0; i < t.cols; ++i) {
        const std::uint16_t h = float_to_f16(x[i]);
        row.append(reinterpret_cast<const char*>(&h), 2);
      }
    } else {
      quantize_q8_0(x, t.cols, row);
    }
    out.write(row);
  }
}

// The pre-tokenizer name llama.cpp knows for a Borealis pattern.
std::string pre_tokenizer_name(const Tokenizer& tok, const std::string& where) {
  const std::string& pattern = tok.pre_tokenizer().pattern();
  if (pattern == kGpt2Pattern) return "gpt-2";
  // Llama 3's pattern is cl100k's; llama.cpp calls it "llama-bpe".
  if (pattern == kCl100kPattern) return "llama-bpe";
  throw Error(fmt::format("GGUF cannot describe this pre-tokenizer pattern (llama.cpp knows "
                          "GPT-2's and cl100k / Llama 3's): {}",
                          pattern),
              where);
}

void tokenizer_metadata(Metadata& m, const Tokenizer& tok, int vocab, const std::string& where) {
  const BpeModel& bpe = tok.model();
  if (bpe.char_level() || !tok.normalizer().empty()) {
    throw Error(
        "GGUF export handles byte-level BPE tokenizers only (this one is "
        "SentencePiece-style)",
        where);
  }
  std::vector<std::string> tokens(static_cast<std::size_t>(vocab));
  std::vector<std::int32_t> types(static_cast<std::size_t>(vocab), kUnused);
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    if (id < bpe.size() && !bpe.token(static_cast<std::uint32_t>(id)).empty()) {
      tokens[id] = byte_level_encode(bpe.token(static_cast<std::uint32_t>(id)));
      types[id] = kNormal;
    } else {
      tokens[id] = fmt::format("[PAD{}]", id);  // ids without a token, as llama.cpp's converter
    }
  }
  for (const AddedToken& a : tok.added_tokens()) {
    if (a.id >= static_cast<std::uint32_t>(vocab)) continue;
    tokens[a.id] = a.text;
    types[a.id] = a.special ? kControl : kUserDefined;
  }
  std::vector<std::string> merges;
  for (const auto& mg : bpe.merges()) {
    merges.push_back(byte_level_encode(bpe.token(mg.left)) + " " +
                     byte_level_encode(bpe.token(mg.right)));
  }
  m.str("tokenizer.ggml.model", "gpt2");
  m.str("tokenizer.ggml.pre", pre_tokenizer_name(tok, where));
  m.strings("tokenizer.ggml.tokens", tokens);
  m.i32s("tokenizer.ggml.token_type", types);
  m.strings("tokenizer.ggml.merges", merges);
  if (const auto eod = tok.eod_id()) {
    m.u32("tokenizer.ggml.bos_token_id", *eod);
    m.u32("tokenizer.ggml.eos_token_id", *eod);
  }
  m.boolean("tokenizer.ggml.add_bos_token", false);
  m.boolean("tokenizer.ggml.add_eos_token", false);
}

void model_metadata(Metadata& m, const ModelConfig& c, GgufType type) {
  const std::string arch(family_name(c.family));
  m.str("general.architecture", arch);
  m.str("general.name", c.name);
  m.u32("general.file_type", file_type(type));
  m.u32("general.alignment", kAlignment);
  if (type == GgufType::kQ8_0) m.u32("general.quantization_version", 2);
  const auto u = [](int v) { return static_cast<std::uint32_t>(v); };
  m.u32(arch + ".context_length", u(c.max_seq));
  m.u32(arch + ".embedding_length", u(c.d_model));
  m.u32(arch + ".feed_forward_length", u(c.d_ff));
  m.u32(arch + ".block_count", u(c.n_layer));
  m.u32(arch + ".attention.head_count", u(c.n_head));
  m.u32(arch + ".attention.head_count_kv", u(c.n_kv_head));
  if (c.family == ModelFamily::kGpt2) {
    m.f32(arch + ".attention.layer_norm_epsilon", c.norm_eps);
    return;
  }
  m.f32(arch + ".attention.layer_norm_rms_epsilon", c.norm_eps);
  m.f32(arch + ".rope.freq_base", c.rope_theta);
  m.u32(arch + ".rope.dimension_count", u(c.head_dim()));
  m.u32(arch + ".vocab_size", u(c.vocab_size));
}

std::uint64_t align(std::uint64_t n) {
  return (n + kAlignment - 1) / kAlignment * kAlignment;
}

}  // namespace

GgufReport export_gguf(const ModelWeights& model, const fs::path& tokenizer, const fs::path& path,
                       GgufType type) {
  const ModelConfig& c = model.config();
  const Tokenizer tok = load_model_tokenizer(tokenizer, c);
  Metadata meta;
  model_metadata(meta, c, type);
  tokenizer_metadata(meta, tok, c.vocab_size, tokenizer.string());

  std::vector<Tensor> tensors = gguf_tensors(c, model.params());
  Bytes infos;
  std::uint64_t offset = 0;
  for (Tensor& t : tensors) {
    if (stored_type(t, type) == GgufType::kQ8_0 && t.cols % kQ8Block != 0) {
      throw Error(fmt::format("q8_0 needs rows that are a multiple of {} wide; tensor '{}' has "
                              "{} (use --type f16 or f32)",
                              kQ8Block, t.name, t.cols),
                  "--type");
    }
    t.offset = offset;
    offset = align(offset + data_bytes(t, type));
    infos.str(t.name);
    const bool matrix = t.rows > 1 || t.matrix;
    infos.put<std::uint32_t>(matrix ? 2 : 1);
    infos.put<std::uint64_t>(static_cast<std::uint64_t>(t.cols));
    if (matrix) infos.put<std::uint64_t>(static_cast<std::uint64_t>(t.rows));
    infos.put(ggml_type(stored_type(t, type)));
    infos.put<std::uint64_t>(t.offset);
  }

  Bytes head;
  head.data() = "GGUF";
  head.put(kVersion);
  head.put<std::uint64_t>(tensors.size());
  head.put<std::uint64_t>(static_cast<std::uint64_t>(meta.count()));
  std::string header = head.data() + meta.data() + infos.data();
  header.resize(align(header.size()), '\0');

  AtomicFile out(path);
  out.write(header);
  std::uint64_t at = 0;
  const std::string zeros(kAlignment, '\0');
  for (const Tensor& t : tensors) {
    out.write(zeros.data(), static_cast<std::size_t>(t.offset - at));
    model.populate(t.data - model.params(), t.rows * t.cols);
    write_tensor(out, t, type);
    // Tensor by tensor: a mapped checkpoint's pages are dropped behind.
    model.release(t.data - model.params(), t.rows * t.cols);
    at = t.offset + data_bytes(t, type);
  }
  out.write(zeros.data(), static_cast<std::size_t>(align(at) - at));
  GgufReport report{static_cast<int>(tensors.size()), meta.count(), out.size()};
  out.commit();
  return report;
}

namespace {

// Bounds-checked little-endian reads from a mapped GGUF file.
class Reader {
 public:
  Reader(const MappedFile& file, std::string where) : file_(file), where_(std::move(where)) {}
  template <typename T>
  T get() {
    T v;
    std::memcpy(&v, take(sizeof(T)), sizeof(T));
    return v;
  }
  std::string str() {
    const auto n = get<std::uint64_t>();
    return std::string(reinterpret_cast<const char*>(take(n)), n);
  }
  nlohmann::json value(std::uint32_t type) {
    switch (type) {
      case 0:
        return get<std::uint8_t>();
      case 1:
        return get<std::int8_t>();
      case 2:
        return get<std::uint16_t>();
      case 3:
        return get<std::int16_t>();
      case kU32:
        return get<std::uint32_t>();
      case kI32:
        return get<std::int32_t>();
      case kF32:
        return get<float>();
      case kBool:
        return get<std::uint8_t>() != 0;
      case kString:
        return str();
      case 10:
        return get<std::uint64_t>();
      case 11:
        return get<std::int64_t>();
      case 12:
        return get<double>();
      case kArray: {
        const auto inner = get<std::uint32_t>();
        const auto n = get<std::uint64_t>();
        nlohmann::json a = nlohmann::json::array();
        for (std::uint64_t i = 0; i < n; ++i) a.push_back(value(inner));
        return a;
      }
    }
    throw Error(fmt::format("unknown metadata value type {} at byte {}", type, at_ - 4), where_);
  }
  std::uint64_t at() const { return at_; }

 private:
  const std::byte* take(std::uint64_t n) {
    if (n > file_.size() - at_) {
      throw Error(fmt::format("cut short: {} bytes wanted at byte {} of {}", n, at_, file_.size()),
                  where_);
    }
    const std::byte* p = file_.data() + at_;
    at_ += n;
    return p;
  }
  const MappedFile& file_;
  std::string where_;
  std::uint64_t at_ = 0;
};

}  // namespace

GgufInfo read_gguf(const fs::path& path) {
  const MappedFile file(path, MappedFile::Access::Sequential);
  const std::string where = path.string();
  if (file.size() < 4 || std::memcmp(file.data(), "GGUF", 4) != 0) {
    throw Error("not a GGUF file: wrong magic (expected \"GGUF\")", where);
  }
  Reader r(file, where);
  r.get<std::uint32_t>();
  GgufInfo info;
  info.version = r.get<std::uint32_t>();
  if (info.version != kVersion) {
    throw Error(fmt::format("GGUF version {} (only version {} is read)", info.version, kVersion),
                where);
  }
  const auto n_tensors = r.get<std::uint64_t>();
  const auto n_meta = r.get<std::uint64_t>();
  info.metadata = nlohmann::json::object();
  for (std::uint64_t i = 0; i < n_meta; ++i) {
    std::string key = r.str();
    info.metadata[key] = r.value(r.get<std::uint32_t>());
  }
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = r.str();
    const auto dims = r.get<std::uint32_t>();
    for (std::uint32_t d = 0; d < dims; ++d) t.dims.push_back(r.get<std::uint64_t>());
    t.type = r.get<std::uint32_t>();
    t.offset = r.get<std::uint64_t>();
    info.tensors.push_back(std::move(t));
  }
  const std::uint64_t alignment = info.metadata.value("general.alignment", kAlignment);
  const std::uint64_t data = (r.at() + alignment - 1) / alignment * alignment;
  for (auto& t : info.tensors) {
    t.offset += data;
    if (t.offset > file.size()) {
      throw Error(fmt::format("tensor '{}' starts past the end of the file", t.name), where);
    }
  }
  return info;
}

}  // namespace borealis
