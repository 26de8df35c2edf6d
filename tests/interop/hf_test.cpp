// Hugging Face export and import: files and fields as transformers writes
// them, the tensor layout (Conv1D transposes, split q/k/v and gate/up, no
// rotary permutation), bit-identical F32 round trips, shards, BF16/F16, and
// an error naming the file and field or tensor for each kind of bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/half.h"
#include "interop/gguf.h"
#include "interop/hf_checkpoint.h"
#include "interop/hf_tensors.h"
#include "interop/interop_fixture.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class HfInterop : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    tok_ = std::make_unique<Tokenizer>(test::interop_tokenizer());
    config_ = test::interop_config(GetParam(), static_cast<int>(tok_->vocab_size()) + 3);
    params_ = test::interop_params(config_, 5);
    test::write_interop_checkpoint(ckpt(), config_, params_, *tok_);
  }
  fs::path ckpt() const { return dir_ / "ckpt"; }
  fs::path hf() const { return dir_ / "hf"; }
  HfExportReport export_to(const fs::path& out, HfExportOptions o = {}) {
    return export_hf(load_any_model(ckpt()), ckpt() / "tokenizer.json", out, o);
  }

  test::TempDir dir_;
  std::unique_ptr<Tokenizer> tok_;
  ModelConfig config_;
  std::vector<float> params_;
};

void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.family, b.family);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.padded_vocab, b.padded_vocab);
  EXPECT_EQ(a.max_seq, b.max_seq);
  EXPECT_EQ(a.n_layer, b.n_layer);
  EXPECT_EQ(a.n_head, b.n_head);
  EXPECT_EQ(a.n_kv_head, b.n_kv_head);
  EXPECT_EQ(a.d_model, b.d_model);
  EXPECT_EQ(a.d_ff, b.d_ff);
  EXPECT_EQ(a.tied_embeddings, b.tied_embeddings);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
}

TEST_P(HfInterop, F32RoundTripIsBitIdentical) {
  const HfExportReport r = export_to(hf());
  EXPECT_EQ(r.shards, 1);
  for (const char* f : {"model.safetensors", "config.json", "generation_config.json",
                        "tokenizer.json", "tokenizer_config.json"}) {
    EXPECT_TRUE(fs::exists(hf() / f)) << f;
  }
  EXPECT_FALSE(fs::exists(hf() / "model.safetensors.index.json"));
  const LoadedModel back = load_hf_model(hf());
  expect_same_config(back.config, config_);
  EXPECT_EQ(back.config.name, "hf");
  ASSERT_EQ(back.params.size(), params_.size());
  EXPECT_EQ(std::memcmp(back.params.data(), params_.data(), params_.size() * sizeof(float)), 0);

  // import hf writes a checkpoint that reads back the same, with the tokenizer.
  const HfImportReport imported = import_hf(hf(), dir_ / "imported");
  EXPECT_TRUE(imported.tokenizer);
  const LoadedModel again = load_model_dir(dir_ / "imported");
  expect_same_config(again.config, config_);
  EXPECT_EQ(std::memcmp(again.params.data(), params_.data(), params_.size() * sizeof(float)), 0);
  EXPECT_EQ(Tokenizer::load(dir_ / "imported" / "tokenizer.json").encode("northern lights"),
            tok_->encode("northern lights"));
  // Exporting the import again gives the same weights file.
  export_hf(again, dir_ / "imported" / "tokenizer.json", dir_ / "hf2", {});
  EXPECT_EQ(test::read_file(hf() / "model.safetensors"),
            test::read_file(dir_ / "hf2" / "model.safetensors"));
}

TEST_P(HfInterop, TensorsAreLaidOutAsTransformersExpects) {
  export_to(hf());
  const json header = test::read_st_header(hf() / "model.safetensors");
  EXPECT_EQ(header.at("__metadata__").at("format"), "pt");
  const SafetensorsFile file(hf() / "model.safetensors");
  const ParamLayout layout(config_);
  const std::int64_t C = config_.d_model, V = config_.vocab_size;
  std::vector<std::string> expected;
  for (const HfTensor& t : hf_tensors(config_)) expected.push_back(t.name);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(file.names(), expected);
  const auto read = [&](const std::string& name, const std::vector<std::int64_t>& shape) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> out(static_cast<std::size_t>(n));
    file.read_float(name, shape, out.data());
    return out;
  };
  const float* qkv = params_.data() + layout.layer(1).qkv_w;
  if (config_.family == ModelFamily::kGpt2) {
    EXPECT_FALSE(file.contains("lm_head.weight"));
    const std::int64_t W = config_.qkv_width();
    // Conv1D: stored [in, out]; element [i][j] is Borealis's [j][i].
    const auto c_attn = read("transformer.h.1.attn.c_attn.weight", {C, W});
    for (std::int64_t i = 0; i < C; ++i) {
      for (std::int64_t j = 0; j < W; ++j) ASSERT_EQ(c_attn[i * W + j], qkv[j * C + i]);
    }
    const auto fc = read("transformer.h.0.mlp.c_fc.weight", {C, config_.d_ff});
    EXPECT_EQ(fc[1 * config_.d_ff + 2], params_[layout.layer(0).fc_w + 2 * C + 1]);
    const auto wte = read("transformer.wte.weight", {V, C});
    EXPECT_TRUE(std::equal(wte.begin(), wte.end(), params_.begin() + layout.wte()));
    return;
  }
  const std::int64_t HD = config_.head_dim(), Q = config_.n_head * HD, KV = config_.n_kv_head * HD;
  const auto q = read("model.layers.1.self_attn.q_proj.weight", {Q, C});
  const auto k = read("model.layers.1.self_attn.k_proj.weight", {KV, C});
  const auto v = read("model.layers.1.self_attn.v_proj.weight", {KV, C});
  // Row blocks of the packed qkv, rows in Borealis's order ("rotate half"
  // pairs, the order of transformers' Llama: no permutation).
  EXPECT_TRUE(std::equal(q.begin(), q.end(), qkv));
  EXPECT_TRUE(std::equal(k.begin(), k.end(), qkv + Q * C));
  EXPECT_TRUE(std::equal(v.begin(), v.end(), qkv + (Q + KV) * C));
  const float* fc = params_.data() + layout.layer(0).fc_w;
  const auto up = read("model.layers.0.mlp.up_proj.weight", {config_.d_ff, C});
  EXPECT_TRUE(std::equal(up.begin(), up.end(), fc + config_.d_ff * C));
  EXPECT_EQ(file.contains("lm_head.weight"), !config_.tied_embeddings);
}

TEST_P(HfInterop, ConfigJsonHasTransformersFields) {
  export_to(hf());
  const std::string text = test::read_file(hf() / "config.json");
  const json j = json::parse(text);
  const auto eod = *tok_->eod_id();
  EXPECT_EQ(j.at("vocab_size"), config_.vocab_size);
  EXPECT_EQ(j.at("eos_token_id"), eod);
  EXPECT_EQ(j.at("torch_dtype"), "float32");
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(text.substr(0, 4), "{\n  ");  // indent 2
  if (config_.family == ModelFamily::kGpt2) {
    EXPECT_EQ(j.at("architectures"), json::array({"GPT2LMHeadModel"}));
    EXPECT_EQ(j.at("model_type"), "gpt2");
    EXPECT_EQ(j.at("n_embd"), config_.d_model);
    EXPECT_EQ(j.at("n_positions"), config_.max_seq);
    EXPECT_EQ(j.at("n_inner"), config_.d_ff);
    EXPECT_EQ(j.at("activation_function"), "gelu_new");
    EXPECT_NE(text.find("\"layer_norm_epsilon\": 1e-05,"), std::string::npos) << text;
  } else {
    EXPECT_EQ(j.at("architectures"), json::array({"LlamaForCausalLM"}));
    EXPECT_EQ(j.at("num_key_value_heads"), config_.n_kv_head);
    EXPECT_EQ(j.at("num_attention_heads"), config_.n_head);
    EXPECT_EQ(j.at("intermediate_size"), config_.d_ff);
    EXPECT_EQ(j.at("tie_word_embeddings"), config_.tied_embeddings);
    EXPECT_TRUE(j.at("rope_scaling").is_null());
    EXPECT_NE(text.find("\"rms_norm_eps\": 1e-05,"), std::string::npos) << text;
    EXPECT_NE(text.find("\"rope_theta\": 500000.0,"), std::string::npos) << text;
  }
  // Keys sorted in the text, as json.dumps(sort_keys=True) writes them.
  std::vector<std::string> keys;
  std::size_t at = 0;
  while ((at = text.find("\n  \"", at)) != std::string::npos) {
    at += 4;
    keys.push_back(text.substr(at, text.find('"', at) - at));
  }
  EXPECT_EQ(keys.size(), j.size());
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end()));
  const json gen = json::parse(test::read_file(hf() / "generation_config.json"));
  EXPECT_EQ(gen.at("_from_model_config"), true);
  EXPECT_EQ(gen.at("eos_token_id"), eod);
  const json tc = json::parse(test::read_file(hf() / "tokenizer_config.json"));
  EXPECT_EQ(tc.at("eos_token"), "<|endoftext|>");
  EXPECT_EQ(tc.at("add_bos_token"), false);
}

TEST_P(HfInterop, ShardsFollowTheIndex) {
  HfExportOptions o;
  o.shard_bytes = 40'000;
  const HfExportReport r = export_to(hf(), o);
  ASSERT_GT(r.shards, 2);
  EXPECT_FALSE(fs::exists(hf() / "model.safetensors"));
  const json index = json::parse(test::read_file(hf() / "model.safetensors.index.json"));
  EXPECT_EQ(index.at("metadata").at("total_size"), r.tensor_bytes);
  EXPECT_EQ(index.at("weight_map").size(), static_cast<std::size_t>(r.tensors));
  std::uint64_t total = 0;
  for (int i = 1; i <= r.shards; ++i) {
    const fs::path shard = hf() / fmt::format("model-{:05d}-of-{:05d}.safetensors", i, r.shards);
    ASSERT_TRUE(fs::exists(shard)) << shard;
    const json h = test::read_st_header(shard);
    std::uint64_t bytes = 0;
    for (const auto& [name, e] : h.items()) {
      if (name == "__metadata__") continue;
      EXPECT_EQ(index.at("weight_map").at(name), shard.filename().string());
      bytes += e.at("data_offsets")[1].get<std::uint64_t>() -
               e.at("data_offsets")[0].get<std::uint64_t>();
    }
    // A shard past the limit holds a single tensor bigger than the limit.
    EXPECT_TRUE(bytes <= o.shard_bytes || h.size() == 2) << shard;
    total += bytes;
  }
  EXPECT_EQ(total, r.tensor_bytes);
  const LoadedModel back = load_hf_model(hf());
  EXPECT_EQ(std::memcmp(back.params.data(), params_.data(), params_.size() * sizeof(float)), 0);
  // A later unsharded export into the same directory leaves no stale shards.
  export_to(hf());
  EXPECT_EQ(test::list_dir(hf()),
            (std::vector<std::string>{"config.json", "generation_config.json", "model.safetensors",
                                      "tokenizer.json", "tokenizer_config.json"}));
}

TEST_P(HfInterop, HalfPrecisionExportsRoundToNearest) {
  for (const TensorDtype dtype : {TensorDtype::kBF16, TensorDtype::kF16}) {
    HfExportOptions o;
    o.dtype = dtype;
    const fs::path out = dir_ / std::string(dtype_name(dtype));
    const HfExportReport r = export_to(out, o);
    const json header = test::read_st_header(out / "model.safetensors");
    for (const auto& [name, e] : header.items()) {
      if (name != "__metadata__") {
        EXPECT_EQ(e.at("dtype"), dtype_name(dtype)) << name;
      }
    }
    EXPECT_EQ(json::parse(test::read_file(out / "config.json")).at("torch_dtype"),
              dtype == TensorDtype::kBF16 ? "bfloat16" : "float16");
    const LoadedModel back = load_hf_model(out);
    std::int64_t exported = 0;
    for (const HfTensor& t : hf_tensors(config_)) {
      std::int64_t n = 1;
      for (auto d : t.shape) n *= d;
      exported += n;
      for (std::int64_t i = 0; i < n; ++i) {
        const float x = params_[static_cast<std::size_t>(t.offset + i)];
        const float want = dtype == TensorDtype::kBF16 ? bf16_to_float(float_to_bf16(x))
                                                       : f16_to_float(float_to_f16(x));
        ASSERT_EQ(back.params[static_cast<std::size_t>(t.offset + i)], want) << t.name << i;
      }
    }
    EXPECT_EQ(r.tensor_bytes, static_cast<std::uint64_t>(exported) * 2);
    // The import converts the same values a block at a time (GPT-2's
    // Conv1D weights transposed back, padding rows zero).
    import_hf(out, dir_ / (std::string(dtype_name(dtype)) + "-imported"));
    EXPECT_EQ(load_model_dir(dir_ / (std::string(dtype_name(dtype)) + "-imported")).params,
              back.params);
  }
}

// The commands end to end: export hf, then generate reading the Hugging
// Face directory directly gives the checkpoint's greedy text.
TEST_P(HfInterop, CommandsExportAndGenerateFromTheDirectory) {
  const auto e = test::run_borealis({"export", "hf", ckpt().string(), hf().string()});
  ASSERT_EQ(e.exit_code, 0) << e.err;
  EXPECT_NE(e.out.find("1 safetensors file,"), std::string::npos) << e.out;
  const auto generate = [](const fs::path& from) {
    return test::run_borealis({"generate", "--checkpoint", from.string(), "--prompt",
                               "The northern", "--max-tokens", "20", "--temperature", "0",
                               "--no-stop-at-eod"});
  };
  const auto a = generate(ckpt());
  const auto b = generate(hf());
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_GT(a.out.size(), std::string("The northern").size());

  const auto i = test::run_borealis({"import", "hf", hf().string(), (dir_ / "imp").string()});
  ASSERT_EQ(i.exit_code, 0) << i.err;
  EXPECT_NE(i.out.find("with its tokenizer.json"), std::string::npos) << i.out;
  EXPECT_EQ(generate(dir_ / "imp").out, a.out);

  // The same reports as JSON.
  const auto ej = test::run_borealis(
      {"export", "hf", ckpt().string(), (dir_ / "hf2").string(), "--dtype", "bfloat16", "--json"});
  ASSERT_EQ(ej.exit_code, 0) << ej.err;
  const auto e_json = nlohmann::json::parse(ej.out);
  EXPECT_EQ(e_json["dtype"], "bfloat16");
  EXPECT_EQ(e_json["shards"], 1);
  EXPECT_GT(e_json["tensors"].get<int>(), 0);
  EXPECT_EQ(e_json["out"], (dir_ / "hf2").string());
  const auto ij = test::run_borealis(
      {"import", "hf", (dir_ / "hf2").string(), (dir_ / "imp2").string(), "--json"});
  ASSERT_EQ(ij.exit_code, 0) << ij.err;
  const auto i_json = nlohmann::json::parse(ij.out);
  EXPECT_EQ(i_json["tokenizer"], true);
  EXPECT_EQ(i_json["n_layer"], e_json["n_layer"]);
  EXPECT_EQ(i_json["vocab_size"], e_json["vocab_size"]);

  const auto bad =
      test::run_borealis({"export", "hf", ckpt().string(), hf().string(), "--shard-size", "lots"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("(--shard-size)"), std::string::npos) << bad.err;
}

// Exports read a trainer's checkpoint in place (mapped, each tensor's pages
// released once written); a model.safetensors whose tensors are stored in
// another order is read through a copy instead. Every way writes the bytes
// of an export from the parameters in memory, and a mapping read twice (its
// released pages mapped again) gives them again.
TEST_P(HfInterop, ExportsInPlaceAndThroughACopyWriteTheSameBytes) {
  const ModelWeights mapped = map_model_dir(ckpt());
  EXPECT_TRUE(mapped.mapped());
  const fs::path reordered = dir_ / "reordered";
  fs::create_directories(reordered);
  fs::copy_file(ckpt() / "tokenizer.json", reordered / "tokenizer.json");
  const ParamLayout layout(config_);
  std::vector<NamedTensor> last_first;
  for (const ParamView& v : layout.views()) {
    last_first.insert(last_first.begin(), {v.name, v.shape, params_.data() + v.offset});
  }
  save_safetensors(reordered / "model.safetensors", last_first,
                   {{kModelConfigKey, model_config_to_json(config_)}});
  const ModelWeights copied = map_model_dir(reordered);
  EXPECT_FALSE(copied.mapped());
  LoadedModel memory;
  memory.config = config_;
  memory.params = params_;

  HfExportOptions bf16;
  bf16.dtype = TensorDtype::kBF16;
  bf16.shard_bytes = 40'000;
  const auto export_all = [&](const ModelWeights& w, const std::string& name) {
    export_hf(w, ckpt() / "tokenizer.json", dir_ / (name + "-f32"), {});
    export_hf(w, ckpt() / "tokenizer.json", dir_ / (name + "-bf16"), bf16);
    export_gguf(w, ckpt() / "tokenizer.json", dir_ / (name + ".gguf"), GgufType::kF32);
  };
  export_all(memory, "memory");
  export_all(mapped, "mapped");
  export_all(mapped, "again");
  export_all(copied, "copied");
  const std::vector<std::string> files = test::list_dir(dir_ / "memory-bf16");
  ASSERT_GT(files.size(), 6u);  // sharded
  for (const std::string way : {"mapped", "again", "copied"}) {
    EXPECT_EQ(test::read_file(dir_ / (way + "-f32") / "model.safetensors"),
              test::read_file(dir_ / "memory-f32" / "model.safetensors"))
        << way;
    EXPECT_EQ(test::list_dir(dir_ / (way + "-bf16")), files) << way;
    for (const std::string& f : files) {
      EXPECT_EQ(test::read_file(dir_ / (way + "-bf16") / f),
                test::read_file(dir_ / "memory-bf16" / f))
          << way << " " << f;
    }
    EXPECT_EQ(test::read_file(dir_ / (way + ".gguf")), test::read_file(dir_ / "memory.gguf"))
        << way;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, HfInterop, ::testing::Values("gpt2", "llama", "llama-tied"));

TEST(Half, ConversionsRoundToNearestEven) {
  EXPECT_EQ(float_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(float_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);  // rounds up to infinity
  EXPECT_EQ(float_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.0f, -24));             // smallest subnormal
  EXPECT_EQ(float_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie to even (down)
  EXPECT_EQ(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie to even (up)
  EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie to even (down)
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie to even (up)
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // overflows to infinity
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(-std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(bf16_to_float(0xc040), -3.0f);
}

}  // namespace
}  // namespace borealis
