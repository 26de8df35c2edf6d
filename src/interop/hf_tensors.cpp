#include "interop/hf_tensors.h"

#include <fmt/format.h>

#include "model/params.h"

namespace borealis {

namespace {

// Rows [row0, row0 + rows) of a [*, cols] tensor at `offset`.
HfTensor rows_of(std::string name, std::int64_t offset, std::int64_t row0, std::int64_t rows,
                 std::int64_t cols) {
  return {std::move(name), {rows, cols}, offset + row0 * cols, false};
}

// A whole [out, in] linear weight, stored [in, out] (Conv1D).
HfTensor conv1d(std::string name, std::int64_t offset, std::int64_t out, std::int64_t in) {
  return {std::move(name), {in, out}, offset, true};
}

HfTensor vec(std::string name, std::int64_t offset, std::int64_t n) {
  return {std::move(name), {n}, offset, false};
}

std::vector<HfTensor> gpt2_tensors(const ModelConfig& c, const ParamLayout& p) {
  const std::int64_t C = c.d_model, F = c.d_ff, QKV = c.qkv_width();
  std::vector<HfTensor> t;
  t.push_back(rows_of("transformer.wte.weight", p.wte(), 0, c.vocab_size, C));
  t.push_back(rows_of("transformer.wpe.weight", p.wpe(), 0, c.max_seq, C));
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerOffsets& o = p.layer(l);
    const std::string h = fmt::format("transformer.h.{}.", l);
    t.push_back(vec(h + "ln_1.weight", o.ln1_w, C));
    t.push_back(vec(h + "ln_1.bias", o.ln1_b, C));
    t.push_back(conv1d(h + "attn.c_attn.weight", o.qkv_w, QKV, C));
    t.push_back(vec(h + "attn.c_attn.bias", o.qkv_b, QKV));
    t.push_back(conv1d(h + "attn.c_proj.weight", o.proj_w, C, C));
    t.push_back(vec(h + "attn.c_proj.bias", o.proj_b, C));
    t.push_back(vec(h + "ln_2.weight", o.ln2_w, C));
    t.push_back(vec(h + "ln_2.bias", o.ln2_b, C));
    t.push_back(conv1d(h + "mlp.c_fc.weight", o.fc_w, F, C));
    t.push_back(vec(h + "mlp.c_fc.bias", o.fc_b, F));
    t.push_back(conv1d(h + "mlp.c_proj.weight", o.fcproj_w, C, F));
    t.push_back(vec(h + "mlp.c_proj.bias", o.fcproj_b, C));
  }
  t.push_back(vec("transformer.ln_f.weight", p.lnf_w(), C));
  t.push_back(vec("transformer.ln_f.bias", p.lnf_b(), C));
  return t;
}

std::vector<HfTensor> llama_tensors(const ModelConfig& c, const ParamLayout& p) {
  const std::int64_t C = c.d_model, F = c.d_ff, HD = c.head_dim();
  const std::int64_t Q = c.n_head * HD, KV = c.n_kv_head * HD;
  std::vector<HfTensor> t;
  t.push_back(rows_of("model.embed_tokens.weight", p.wte(), 0, c.vocab_size, C));
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerOffsets& o = p.layer(l);
    const std::string h = fmt::format("model.layers.{}.", l);
    t.push_back(vec(h + "input_layernorm.weight", o.ln1_w, C));
    t.push_back(rows_of(h + "self_attn.q_proj.weight", o.qkv_w, 0, Q, C));
    t.push_back(rows_of(h + "self_attn.k_proj.weight", o.qkv_w, Q, KV, C));
    t.push_back(rows_of(h + "self_attn.v_proj.weight", o.qkv_w, Q + KV, KV, C));
    t.push_back(rows_of(h + "self_attn.o_proj.weight", o.proj_w, 0, C, C));
    t.push_back(vec(h + "post_attention_layernorm.weight", o.ln2_w, C));
    // SwiGLU's packed rows are [gate | up] (Backend::swiglu_forward).
    t.push_back(rows_of(h + "mlp.gate_proj.weight", o.fc_w, 0, F, C));
    t.push_back(rows_of(h + "mlp.up_proj.weight", o.fc_w, F, F, C));
    t.push_back(rows_of(h + "mlp.down_proj.weight", o.fcproj_w, 0, C, F));
  }
  t.push_back(vec("model.norm.weight", p.lnf_w(), C));
  if (!c.tied_embeddings) t.push_back(rows_of("lm_head.weight", p.lm_head(), 0, c.vocab_size, C));
  return t;
}

}  // namespace

std::vector<HfTensor> hf_tensors(const ModelConfig& config) {
  const ParamLayout layout(config);
  return config.family == ModelFamily::kGpt2 ? gpt2_tensors(config, layout)
                                             : llama_tensors(config, layout);
}

bool hf_ignored_tensor(const ModelConfig& config, const std::string& name) {
  if (config.tied_embeddings && name == "lm_head.weight") return true;
  if (config.family == ModelFamily::kGpt2) {
    return name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias");
  }
  return name.ends_with(".self_attn.rotary_emb.inv_freq");
}

}  // namespace borealis
