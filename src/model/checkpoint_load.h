// Loading a trained model from a checkpoint directory, for generation,
// evaluation and serving.
//
// A checkpoint directory (written by the trainer) holds model.safetensors,
// whose "__metadata__" has "borealis.model" = model_config_to_json(config)
// and whose tensors carry ParamLayout names, and tokenizer.json, the
// tokenizer the model was trained with (state.json and the optimizer
// moments, optimizer.safetensors or one optimizer-rank-R-of-N.safetensors
// per rank of a ZeRO-1 run, are for resuming and not read here). A tensor-
// or pipeline-parallel run stores the model in parts instead, one file per
// tensor rank and stage listed in state.json (model/model_parts.h); they are
// read and put together into the whole model. A run
// directory holds checkpoints/step-<N>/ directories; a checkpoint is
// complete once its state.json exists.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace borealis {

struct LoadedModel {
  std::filesystem::path dir;  // the checkpoint directory read
  ModelConfig config;
  std::vector<float> params;  // laid out by ParamLayout(config)
};

// The metadata key holding the model config.
inline constexpr const char* kModelConfigKey = "borealis.model";

// path itself when it holds model.safetensors; else, for a run directory
// with a checkpoints/ subdirectory, the complete step-<N> directory with the
// largest N. Throws borealis::Error naming the path when there is neither.
std::filesystem::path resolve_checkpoint_dir(const std::filesystem::path& path);

// The tokenizer at `path` for a model of `config`: Error naming the file
// when it is missing (hint: --tokenizer) or has more tokens than the model's
// vocabulary (not the tokenizer the model was trained with).
Tokenizer load_model_tokenizer(const std::filesystem::path& path, const ModelConfig& config);

// Reads the config and parameters of the checkpoint directory dir. Errors
// name the file: missing, not safetensors, no or bad model metadata, tensors
// that do not match the config.
LoadedModel load_model_dir(const std::filesystem::path& dir);

class SafetensorsFile;

// A model's parameters where they already are, for readers that go through
// them once (the exports): a LoadedModel's buffer, or a checkpoint's
// model.safetensors mapped in place (map_model_dir), whose data section is
// the flat parameter buffer itself. Cheap to copy; the copies share what
// keeps the parameters alive.
class ModelWeights {
 public:
  // Borrows model, which must outlive this (implicit, so that what takes
  // ModelWeights takes a LoadedModel).
  ModelWeights(const LoadedModel& model);  // NOLINT(google-explicit-constructor)
  // Owns model.
  explicit ModelWeights(std::shared_ptr<const LoadedModel> model);

  const std::filesystem::path& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  // Laid out by ParamLayout(config()).
  const float* params() const { return params_; }
  // Whether params() points into a mapped file.
  bool mapped() const { return file_ != nullptr; }
  // The reader is done with elements [offset, offset + count): a mapped
  // file drops their pages from the process's memory (reading them again
  // maps them back), so that going through a file front to back never holds
  // more than the part in use. Nothing for a buffer.
  void release(std::int64_t offset, std::int64_t count) const;
  // The reader is about to read elements [offset, offset + count) whole: a
  // mapped file maps their pages in one call (MappedFile::populate) rather
  // than a page fault at a time. Nothing for a buffer.
  void populate(std::int64_t offset, std::int64_t count) const;

 private:
  friend ModelWeights map_model_dir(const std::filesystem::path& dir);
  ModelWeights() = default;

  std::filesystem::path dir_;
  ModelConfig config_;
  const float* params_ = nullptr;
  std::shared_ptr<const void> owner_;
  const SafetensorsFile* file_ = nullptr;  // when mapped; owned by owner_
};

// The parameters of the checkpoint directory dir in place, without reading
// them: its model.safetensors mapped, when its data section is the flat
// buffer (F32 tensors in ParamLayout order, back to back, as the trainer and
// import hf write it); otherwise, and for any error, what load_model_dir
// reads or throws.
ModelWeights map_model_dir(const std::filesystem::path& dir);

}  // namespace borealis
