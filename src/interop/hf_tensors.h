// Where each tensor of a Hugging Face checkpoint lives in Borealis's flat
// parameter buffer (ParamLayout), for GPT2LMHeadModel and LlamaForCausalLM.
//
// Every Hugging Face tensor is one contiguous range of the flat buffer:
//  - GPT-2: transformer.wte/wpe, transformer.h.N.{ln_1, attn.c_attn,
//    attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}, transformer.ln_f. The
//    attention and MLP weights are Conv1D modules, stored [in, out]: the
//    transpose of Borealis's [out, in]. c_attn's output columns are q | k | v
//    as in Borealis's packed qkv.
//  - Llama: model.embed_tokens, model.layers.N.{input_layernorm,
//    self_attn.{q,k,v,o}_proj, post_attention_layernorm,
//    mlp.{gate,up,down}_proj}, model.norm, lm_head when untied. q, k and v
//    are the row blocks of the packed qkv weight, gate and up the two row
//    blocks of the packed fc weight. No rotary permutation is needed:
//    Borealis rotates the pairs (i, i + head_dim/2) of each head, the
//    "rotate half" convention of transformers' Llama, so q_proj and k_proj
//    rows are in the order transformers expects (the permutation in
//    transformers' convert_llama_weights_to_hf.py turns Meta's interleaved
//    pairs into exactly this order).
// The embedding (and an untied head) keep only the vocab_size real rows;
// Borealis's padding rows up to padded_vocab are zero and not exported.
// A tied head is not stored (transformers ties lm_head.weight to the
// embedding when it loads the model).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace borealis {

struct HfTensor {
  std::string name;                 // e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<std::int64_t> shape;  // as stored in the Hugging Face file
  std::int64_t offset = 0;          // its first element in the flat buffer
  bool transposed = false;          // stored as the transpose of the buffer's [out, in]
};

// The tensors of the model's Hugging Face checkpoint, in the order
// transformers' state dict lists them.
std::vector<HfTensor> hf_tensors(const ModelConfig& config);

// Tensors that a Hugging Face file may hold and Borealis rightly ignores:
// GPT-2's causal-mask buffers (".attn.bias", ".attn.masked_bias" of old
// checkpoints), Llama's "rotary_emb.inv_freq" buffers, and a tied lm_head.
bool hf_ignored_tensor(const ModelConfig& config, const std::string& name);

}  // namespace borealis
