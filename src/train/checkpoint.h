// Checkpoints of a training run, one directory per step:
//
//   RUN_DIR/checkpoints/step-00000100/
//     model.safetensors      parameters; __metadata__ "borealis.model" is the
//                            model config as JSON (model_config_to_json)
//     optimizer.safetensors  AdamW moments: tensors "m.<name>" and "v.<name>"
//     tokenizer.json         the run's tokenizer, copied: the directory alone is
//                            enough to sample from the model
//     state.json             where the run stands (TrainState), the resolved
//                            config, and the size and XXH3-128 of every other file
//
// A checkpoint is written as step-N.tmp-<pid> and renamed when complete, so a
// directory named step-N is always whole; checksums catch later damage.
// latest_checkpoint() takes the newest one that verifies and says why it
// skipped the others.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "optim/adamw.h"

namespace borealis {

// Everything besides the tensors that makes a resumed run continue exactly.
struct TrainState {
  std::int64_t step = 0;          // completed optimizer steps
  std::uint64_t tokens = 0;       // tokens trained on so far
  std::uint64_t next_sample = 0;  // the next train sample of the mixture
  std::int64_t skipped_steps = 0;
  std::vector<double> recent_losses;  // the loss-spike window, oldest first
  double elapsed_s = 0;               // training time before this checkpoint
};

struct CheckpointInfo {
  std::filesystem::path dir;
  TrainState state;
  ModelConfig model;
  std::int64_t adamw_steps = 0;  // optimizer updates done (skipped steps do none)
  std::string config_toml;       // the resolved config of the run that wrote it
};

// "step-00000100"
std::string checkpoint_name(std::int64_t step);

// The AdamW state as whole flat buffers in the parameter layout (a ZeRO run
// gathers its shards first), and the updates made so far.
struct OptimizerState {
  const float* m = nullptr;
  const float* v = nullptr;
  std::int64_t steps = 0;
};

// Writes checkpoint_name(state.step) under `checkpoints` (replacing one of the
// same step) and returns its path.
std::filesystem::path save_checkpoint(const std::filesystem::path& checkpoints,
                                      const TrainState& state, const ModelConfig& model,
                                      const ParamLayout& layout, const float* params,
                                      const OptimizerState& optimizer,
                                      const std::filesystem::path& tokenizer,
                                      const std::string& config_toml);
std::filesystem::path save_checkpoint(const std::filesystem::path& checkpoints,
                                      const TrainState& state, const ModelConfig& model,
                                      const ParamLayout& layout, const float* params,
                                      const AdamW& optimizer,
                                      const std::filesystem::path& tokenizer,
                                      const std::string& config_toml);

// Reads state.json and checks every file it lists (size and checksum) and
// the model config. Throws borealis::Error saying what is wrong.
CheckpointInfo verify_checkpoint(const std::filesystem::path& dir);

// The newest checkpoint under `checkpoints` that verifies; the ones passed
// over (newer but damaged) go to `skipped` with the reason.
std::optional<CheckpointInfo> latest_checkpoint(
    const std::filesystem::path& checkpoints,
    std::vector<std::pair<std::filesystem::path, std::string>>& skipped);

// Loads parameters and optimizer moments (and its step count) of a verified
// checkpoint. The layout must be the checkpoint's model's.
void load_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                     AdamW& optimizer);
// The same into whole flat buffers m and v (layout.total() elements each);
// the step count is info.adamw_steps.
void load_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params, float* m,
                     float* v);

// Keeps the newest `keep` checkpoints and removes older ones and any
// leftover temporary directories.
void prune_checkpoints(const std::filesystem::path& checkpoints, int keep);

}  // namespace borealis
