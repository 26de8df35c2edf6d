// Loading a trained model from a checkpoint directory, for generation,
// evaluation and serving.
//
// A checkpoint directory (written by the trainer) holds model.safetensors,
// whose "__metadata__" has "borealis.model" = model_config_to_json(config)
// and whose tensors carry ParamLayout names, and tokenizer.json, the
// tokenizer the model was trained with (state.json and the optimizer
// moments, optimizer.safetensors or one optimizer-rank-R-of-N.safetensors
// per rank of a ZeRO-1 run, are for resuming and not read here). A run
// directory holds checkpoints/step-<N>/ directories; a checkpoint is
// complete once its state.json exists.
#pragma once

#include <filesystem>
#include <vector>

#include "model/config.h"

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

// Reads the config and parameters of the checkpoint directory dir. Errors
// name the file: missing, not safetensors, no or bad model metadata, tensors
// that do not match the config.
LoadedModel load_model_dir(const std::filesystem::path& dir);

}  // namespace borealis
