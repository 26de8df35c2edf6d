// GGUF export: one file llama.cpp (and everything built on it) loads.
//
// GGUF v3 (ggml's docs/gguf.md): "GGUF", version 3, tensor and key/value
// counts; typed key/value metadata; for each tensor its name, dimensions
// (fastest-varying first), ggml type and data offset; then the tensor data,
// each tensor aligned to general.alignment (32) bytes. Written:
//  - general.architecture ("llama" or "gpt2"), general.name,
//    general.file_type, general.alignment, general.quantization_version;
//  - <arch>.context_length, embedding_length, feed_forward_length,
//    block_count, attention.head_count(_kv), the norm epsilon, and for Llama
//    rope.freq_base, rope.dimension_count and vocab_size;
//  - tokenizer.ggml.model "gpt2" (byte-level BPE), .pre (the pre-tokenizer
//    llama.cpp must use: "gpt-2" or "llama-bpe"), .tokens (byte-level
//    strings as in tokenizer.json), .token_type, .merges, .bos_token_id,
//    .eos_token_id, .add_bos_token false (Borealis never prepends one).
// Tensors are named as llama.cpp's loader expects (token_embd, blk.N.attn_q,
// ..., output_norm, output). llama.cpp's Llama rotates adjacent pairs
// (2i, 2i+1) of each head while Borealis (like transformers) rotates
// (i, i + head_dim/2), so the rows of each q and k head are interleaved:
// row 2i + j of a head is Borealis's row j * head_dim/2 + i.
//
// --type f32 stores every tensor as F32; f16 and q8_0 store the 2-D weight
// matrices as F16 or Q8_0 (blocks of 32: an F16 scale max|x|/127 and 32
// int8 values round(x / scale), llama.cpp's reference quantizer) and keep
// norms and biases F32, as llama.cpp's converter does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/checkpoint_load.h"

namespace borealis {

enum class GgufType { kF32, kF16, kQ8_0 };

struct GgufReport {
  int tensors = 0;
  int metadata = 0;
  std::uint64_t bytes = 0;  // the file's size
};

// Writes model with its tokenizer (a file Tokenizer::load reads) to path,
// atomically, tensor by tensor (releasing the parameters behind). Throws Error for a tokenizer GGUF
// cannot describe (not byte-level BPE, or a pre-tokenizer llama.cpp does not know) and for Q8_0
// rows that are not a multiple of 32 wide.
GgufReport export_gguf(const ModelWeights& model, const std::filesystem::path& tokenizer,
                       const std::filesystem::path& path, GgufType type);

// What a GGUF file holds, read back (for checks and inspection): metadata
// values as JSON (arrays as JSON arrays), tensor names, dimensions, ggml
// types and absolute byte offsets. Throws Error naming the file for a wrong
// magic, another version, a value type it does not know, or anything that
// runs past the end of the file.
struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> dims;  // fastest-varying first
  std::uint32_t type = 0;           // ggml_type: 0 F32, 1 F16, 8 Q8_0
  std::uint64_t offset = 0;         // from the start of the file
};
struct GgufInfo {
  std::uint32_t version = 0;
  nlohmann::json metadata;
  std::vector<GgufTensorInfo> tensors;
};
GgufInfo read_gguf(const std::filesystem::path& path);

}  // namespace borealis
