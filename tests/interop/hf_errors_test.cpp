// Bad Hugging Face input: each kind gives one error naming the file and the
// field or tensor, and import writes nothing under the checkpoint's name.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "interop/hf_checkpoint.h"
#include "interop/interop_fixture.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class HfErrors : public ::testing::Test {
 protected:
  // An exported model of `which` family in hf().
  void exported(const std::string& which, HfExportOptions o = {}) {
    const Tokenizer tok = test::interop_tokenizer();
    const ModelConfig c = test::interop_config(which, static_cast<int>(tok.vocab_size()));
    test::write_interop_checkpoint(dir_ / "ckpt", c, test::interop_params(c, 3), tok);
    export_hf(load_model_dir(dir_ / "ckpt"), dir_ / "ckpt" / "tokenizer.json", hf(), o);
  }
  fs::path hf() const { return dir_ / "hf"; }
  void edit_config(const std::function<void(json&)>& edit) {
    json j = json::parse(test::read_file(hf() / "config.json"));
    edit(j);
    test::write_file(hf() / "config.json", j.dump(2));
  }
  void edit_header(const std::function<void(json&)>& edit, const char* file = "model.safetensors") {
    json h = test::read_st_header(hf() / file);
    edit(h);
    test::write_st_header(hf() / file, h);
  }
  // The error of loading hf(); also checks the CLI prints it as one line and
  // import leaves no checkpoint behind.
  std::string load_error() {
    const std::string line = test::error_line([&] { load_hf_model(hf()); });
    const auto r = test::run_borealis({"import", "hf", hf().string(), (dir_ / "out").string()});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.err, line + "\n");
    EXPECT_FALSE(fs::exists(dir_ / "out" / "model.safetensors"));
    return line;
  }
  std::string config_path() const { return (hf() / "config.json").string(); }
  std::string weights_path() const { return (hf() / "model.safetensors").string(); }

  test::TempDir dir_;
};

TEST_F(HfErrors, UnknownModelType) {
  exported("gpt2");
  edit_config([](json& j) { j["model_type"] = "mistral"; });
  EXPECT_EQ(load_error(), fmt::format("error: model_type 'mistral' is not supported (supported: "
                                      "gpt2, llama) ({})",
                                      config_path()));
}

TEST_F(HfErrors, RopeScalingKinds) {
  exported("llama");
  edit_config([](json& j) { j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}}; });
  const std::string line = load_error();
  EXPECT_NE(line.find("field 'rope_scaling'"), std::string::npos) << line;
  EXPECT_NE(line.find("rope scaling kind 'llama3' is not implemented"), std::string::npos) << line;
  EXPECT_NE(line.find(config_path()), std::string::npos) << line;
  // An explicit "default" is plain RoPE.
  edit_config([](json& j) { j["rope_scaling"] = {{"rope_type", "default"}}; });
  EXPECT_NO_THROW(load_hf_model(hf()));
}

TEST_F(HfErrors, UnsupportedFields) {
  exported("llama");
  edit_config([](json& j) { j["attention_bias"] = true; });
  EXPECT_NE(load_error().find("field 'attention_bias' = true"), std::string::npos);
  edit_config([](json& j) {
    j["attention_bias"] = false;
    j["hidden_act"] = "gelu";
  });
  EXPECT_NE(load_error().find("field 'hidden_act' = \"gelu\""), std::string::npos);
  edit_config([](json& j) {
    j["hidden_act"] = "silu";
    j["head_dim"] = 16;
  });
  EXPECT_NE(load_error().find("field 'head_dim' = 16"), std::string::npos);
  edit_config([](json& j) {
    j.erase("head_dim");
    j["num_hidden_layers"] = "two";
  });
  EXPECT_NE(load_error().find("field 'num_hidden_layers' is \"two\", expected a positive integer"),
            std::string::npos);
  edit_config([](json& j) {
    j["num_hidden_layers"] = 2;
    j["num_key_value_heads"] = 3;
  });
  EXPECT_NE(load_error().find("n_head 4 is not a multiple of n_kv_head 3"), std::string::npos);
}

TEST_F(HfErrors, UnexpectedBias) {
  exported("llama");
  edit_header([](json& h) {
    json bias = h.at("model.norm.weight");
    h["model.layers.0.self_attn.q_proj.bias"] = bias;
  });
  EXPECT_EQ(load_error(),
            fmt::format("error: tensor 'model.layers.0.self_attn.q_proj.bias' is not part of a "
                        "llama model as config.json describes it (Borealis's llama has no biases "
                        "and no such tensor) ({})",
                        weights_path()));
}

TEST_F(HfErrors, ShapeDisagreesWithConfig) {
  exported("llama");
  edit_config([](json& j) { j["intermediate_size"] = 49; });
  EXPECT_EQ(load_error(),
            fmt::format("error: tensor 'model.layers.0.mlp.gate_proj.weight' has shape [48, 32] "
                        "but config.json implies [49, 32] ({})",
                        weights_path()));
}

TEST_F(HfErrors, MissingTensorAndOtherDtype) {
  exported("gpt2");
  edit_header([](json& h) { h.erase("transformer.h.1.ln_2.bias"); });
  EXPECT_EQ(load_error(), fmt::format("error: tensor 'transformer.h.1.ln_2.bias' is missing ({})",
                                      weights_path()));
  exported("gpt2");
  edit_header([](json& h) { h["transformer.ln_f.bias"]["dtype"] = "I32"; });
  EXPECT_EQ(load_error(), fmt::format("error: tensor 'transformer.ln_f.bias' has dtype I32; only "
                                      "F32, F16 and BF16 are read ({})",
                                      weights_path()));
}

TEST_F(HfErrors, TruncatedFileAndOffsetsPastTheEnd) {
  exported("gpt2");
  const auto size = fs::file_size(hf() / "model.safetensors");
  fs::resize_file(hf() / "model.safetensors", size - 100);
  std::string line = load_error();
  EXPECT_NE(line.find("tensor 'transformer.ln_f.bias' ends at byte"), std::string::npos) << line;
  EXPECT_NE(line.find("(truncated file?) (" + weights_path() + ")"), std::string::npos) << line;

  exported("gpt2");
  edit_header([](json& h) {
    auto& r = h["transformer.wpe.weight"]["data_offsets"];
    r[1] = r[1].get<std::uint64_t>() + 1'000'000;
  });
  line = load_error();
  EXPECT_NE(line.find("tensor 'transformer.wpe.weight' ends at byte"), std::string::npos) << line;
  EXPECT_NE(line.find(weights_path()), std::string::npos) << line;

  // A header length running past the file.
  exported("gpt2");
  fs::resize_file(hf() / "model.safetensors", 200);
  line = load_error();
  EXPECT_NE(line.find("header length"), std::string::npos) << line;
  EXPECT_NE(line.find(weights_path()), std::string::npos) << line;
}

TEST_F(HfErrors, ShardIndexProblems) {
  HfExportOptions o;
  o.shard_bytes = 20'000;
  exported("llama", o);
  json index = json::parse(test::read_file(hf() / "model.safetensors.index.json"));
  // A tensor the index maps to another shard than the one holding it.
  json moved = index;
  moved["weight_map"]["model.embed_tokens.weight"] = "model-00002-of-00099.safetensors";
  test::write_file(hf() / "model.safetensors.index.json", moved.dump());
  std::string line = load_error();
  EXPECT_NE(line.find("model-00002-of-00099.safetensors"), std::string::npos) << line;
  // A tensor the index does not list.
  json dropped = index;
  dropped["weight_map"].erase("model.norm.weight");
  test::write_file(hf() / "model.safetensors.index.json", dropped.dump());
  line = load_error();
  EXPECT_NE(line.find("tensor 'model.norm.weight' is not mapped to this file"), std::string::npos)
      << line;
  // No weights at all.
  fs::remove(hf() / "model.safetensors.index.json");
  line = test::error_line([&] { load_hf_model(hf()); });
  EXPECT_NE(line.find("no model.safetensors or model.safetensors.index.json"), std::string::npos)
      << line;
  EXPECT_FALSE(is_hf_model_dir(hf()));
}

TEST_F(HfErrors, NotAModelDirectory) {
  fs::create_directories(hf());
  EXPECT_EQ(test::error_line([&] { load_hf_model(hf()); }),
            fmt::format("error: no config.json ({})", hf().string()));
  exported("gpt2");
  test::write_file(hf() / "config.json", "{ not json");
  EXPECT_EQ(load_error(), fmt::format("error: not valid JSON ({})", config_path()));
}

}  // namespace
}  // namespace borealis
