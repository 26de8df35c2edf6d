// Hugging Face checkpoint directories in and out.
//
// export_hf writes what transformers' save_pretrained writes for
// GPT2LMHeadModel / LlamaForCausalLM: model.safetensors (or, past the shard
// size, model-0000i-of-0000n.safetensors + model.safetensors.index.json),
// config.json, generation_config.json, tokenizer.json and
// tokenizer_config.json. Tensor names and layouts: interop/hf_tensors.h;
// config fields: interop/hf_config.h.
//
// load_hf_model reads such a directory (one file or shards by their index;
// F32, BF16 or F16 tensors) into a LoadedModel, so generation, evaluation
// and serving take a Hugging Face directory wherever they take a
// checkpoint; import_hf stores it as a Borealis checkpoint. In F32, export
// then import gives back the same bits.
//
// Every file is written atomically; the index of a sharded export is written
// after its shards, and weight files of an earlier export in the same
// directory that the new one does not use are removed last, so a reader
// never sees an index naming a missing shard.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "model/checkpoint_load.h"
#include "model/safetensors.h"

namespace borealis {

struct HfExportOptions {
  TensorDtype dtype = TensorDtype::kF32;
  // Largest shard, in bytes of tensor data (transformers' max_shard_size,
  // default "5GB"). A tensor larger than this gets a shard of its own.
  std::uint64_t shard_bytes = 5'000'000'000;
};

struct HfExportReport {
  int tensors = 0;
  int shards = 0;
  std::uint64_t tensor_bytes = 0;  // tensor data written (the index's total_size)
};

// Exports model (its tokenizer: `tokenizer`, any format Tokenizer::load
// reads; a Hugging Face tokenizer.json is copied as it is, others are
// converted) to out_dir, created if needed. The parameters are read once,
// tensor by tensor, and released behind (ModelWeights::release).
HfExportReport export_hf(const ModelWeights& model, const std::filesystem::path& tokenizer,
                         const std::filesystem::path& out_dir, const HfExportOptions& options);

// Whether dir looks like a Hugging Face model directory (config.json and
// model.safetensors or model.safetensors.index.json).
bool is_hf_model_dir(const std::filesystem::path& dir);

// Reads a Hugging Face model directory. Errors name the file and the field or
// tensor: unsupported config fields (hf_config.h), a missing tensor, a tensor
// the model does not have (e.g. biases on Llama), a shape that disagrees with
// config.json, a dtype other than F32/BF16/F16, a truncated file or byte
// offsets past its end.
LoadedModel load_hf_model(const std::filesystem::path& dir);

// A Hugging Face directory, a checkpoint directory or a run directory (its
// newest complete checkpoint): what commands taking --checkpoint accept.
// The tokenizer is dir / "tokenizer.json" of the result.
LoadedModel load_any_model(const std::filesystem::path& path);

// The same, for the exports: a checkpoint's parameters are mapped in place
// (map_model_dir) rather than read, a Hugging Face directory's read.
ModelWeights open_any_model(const std::filesystem::path& path);

struct HfImportReport {
  ModelConfig config;
  bool tokenizer = false;  // whether tokenizer.json was copied
};

// Reads hf_dir and writes the checkpoint directory ckpt_dir (created if
// needed): model.safetensors with the config in its metadata, and
// tokenizer.json when hf_dir has one (it must load). Everything is checked
// before anything is written; then the weights go tensor by tensor from the
// mapped Hugging Face files to the checkpoint, so memory holds one tensor of
// the model, not all of it.
HfImportReport import_hf(const std::filesystem::path& hf_dir,
                         const std::filesystem::path& ckpt_dir);

}  // namespace borealis
