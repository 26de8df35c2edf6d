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
// A ZeRO-1 run on n > 1 ranks writes the moments sharded instead: in place
// of optimizer.safetensors, each rank r writes
//     optimizer-rank-0000r-of-0000n.safetensors
// with tensors "m[B:E]" and "v[B:E]", the moments of its flat elements
// [B, E) (metadata: rank, world_size, begin, end, total), and state.json
// (format 2) has a "manifest" listing every shard with its rank, range,
// size and XXH3-128. No rank ever holds the whole moments: each writes its
// own, and a resuming rank reads only the pieces of the stored ranges that
// overlap its own (load_optimizer_range), whatever the layout of the run
// that wrote them.
//
// A tensor- or pipeline-parallel run (tensor_parallel x pipeline_parallel >
// 1) stores every part where it is (state.json format 3): the data rank 0
// of each part writes its parameters,
//     model-tp0000t-of-0000T-pp0000p-of-0000P.safetensors
// (model/model_parts.h), and the ranks holding its moments write them as
// optimizer-rank-R-of-N.safetensors shards of the part's flat buffer (one
// per rank with ZeRO-1, else one by data rank 0; metadata as above plus
// tensor_rank and stage, total being the part's element count). The
// manifest lists each part with its file and its shards. No rank ever holds
// more than its own part, and load_checkpoint() puts any part of any other
// layout together from them (model/model_parts.h: reshard), exactly.
//
// A checkpoint is written as step-N.tmp-<pid> and renamed when complete, so a
// directory named step-N is always whole; checksums catch later damage.
// latest_checkpoint() takes the newest one that verifies and says why it
// skipped the others.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "model/safetensors.h"
#include "optim/adamw.h"
#include "train/flat_ranges.h"

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

// One file of a sharded optimizer state: rank `rank`'s moments m and v of
// flat elements [begin, end).
struct OptimizerShard {
  int rank = 0;
  std::string file;  // optimizer_shard_name(rank, world size)
  std::int64_t begin = 0, end = 0;
  std::uint64_t bytes = 0;
  std::string xxh3_128;  // 32 hex digits
};

// One part of a checkpoint stored in parts (format 3): tensor rank
// tensor_rank of stage `stage`, its model file, and the shards of its
// moments, which tile [0, total) of the part's flat buffer in order.
struct CheckpointPart {
  int tensor_rank = 0;
  int stage = 0;
  std::string file;  // model_part_name(...)
  std::uint64_t bytes = 0;
  std::string xxh3_128;
  std::int64_t total = 0;  // elements of ParamLayout(model, {tensor_rank, T}, {stage, P})
  std::vector<OptimizerShard> shards;
};
struct CheckpointParts {
  int tensor_parallel = 1;
  int pipeline_parallel = 1;
  int world_size = 1;                 // ranks of the run that wrote it
  std::vector<CheckpointPart> parts;  // stage-major, tensor rank minor; empty: stored whole
};

struct CheckpointInfo {
  std::filesystem::path dir;
  TrainState state;
  ModelConfig model;
  std::int64_t adamw_steps = 0;  // optimizer updates done (skipped steps do none)
  std::string config_toml;       // the resolved config of the run that wrote it
  // The optimizer shards in rank order, tiling [0, total); empty when the
  // moments are whole in optimizer.safetensors.
  std::vector<OptimizerShard> shards;
  // Format 3: the model and moments in parts (shards above empty).
  CheckpointParts parts;
};

// "step-00000100"
std::string checkpoint_name(std::int64_t step);

// "optimizer-rank-00001-of-00002.safetensors"
std::string optimizer_shard_name(int rank, int world_size);

// The AdamW state as whole flat buffers in the parameter layout, and the
// updates made so far.
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

// The steps of a checkpoint written by several processes
// (dist_checkpoint.h), each also used by save_checkpoint:
//   checkpoint_temp_dir: creates checkpoints/step-N.tmp-<pid>, empty;
//   write_replicated_files: model.safetensors and tokenizer.json into it;
//   write_optimizer_shard: one rank's shard file into it, with its record;
//   publish_checkpoint: writes state.json with the records of the files
//     (model.safetensors, tokenizer.json, and optimizer.safetensors when
//     there are no shards) and the shards' manifest, and renames the
//     directory to step-N, replacing one of the same step. Returns the final
//     path.
std::filesystem::path checkpoint_temp_dir(const std::filesystem::path& checkpoints,
                                          std::int64_t step);
// The size and checksum of checkpoint files by name, taken while writing.
using FileRecords = std::map<std::string, FileDigest>;
// Test fault injection only (BOREALIS_TEST_FAULT ...:killsave,
// train/rank_failure.h): called with the path of model.safetensors once
// write_replicated_files has written it, before the checkpoint's other files.
void set_checkpoint_file_hook(std::function<void(const std::filesystem::path&)> hook);

FileRecords write_replicated_files(const std::filesystem::path& tmp, const ModelConfig& model,
                                   const ParamLayout& layout, const float* params,
                                   const std::filesystem::path& tokenizer);
// The shard's metadata gets `extra` besides its range (a part's tensor_rank
// and stage).
OptimizerShard write_optimizer_shard(const std::filesystem::path& tmp, int rank, int world_size,
                                     std::int64_t total, FlatRange range, const float* m,
                                     const float* v,
                                     const std::map<std::string, std::string>& extra = {});
// tokenizer.json alone (rank 0's file of a checkpoint stored in parts),
// with its record.
FileRecords write_tokenizer_file(const std::filesystem::path& tmp,
                                 const std::filesystem::path& tokenizer);
// One part's parameters (`part` is its layout, params its flat buffer) as
// model_part_name(...), the last stage's copy of tied embeddings left out.
FileDigest write_model_part(const std::filesystem::path& tmp, const ModelConfig& model,
                            const ParamLayout& part, const float* params);
std::filesystem::path publish_checkpoint(const std::filesystem::path& checkpoints,
                                         const std::filesystem::path& tmp, const TrainState& state,
                                         const ModelConfig& model, std::int64_t adamw_steps,
                                         const std::string& config_toml, const FileRecords& files,
                                         const std::vector<OptimizerShard>& shards);
// A checkpoint stored in parts (format 3): `files` holds tokenizer.json's
// record, `parts` every part with its shards.
std::filesystem::path publish_checkpoint(const std::filesystem::path& checkpoints,
                                         const std::filesystem::path& tmp, const TrainState& state,
                                         const ModelConfig& model, std::int64_t adamw_steps,
                                         const std::string& config_toml, const FileRecords& files,
                                         const CheckpointParts& parts);

// Reads state.json and checks every file it lists, optimizer shards
// included (size and checksum, and that the shards tile the parameters),
// and the model config. Throws borealis::Error saying what is wrong.
CheckpointInfo verify_checkpoint(const std::filesystem::path& dir);

// The newest checkpoint under `checkpoints` that verifies; the ones passed
// over (newer but damaged) go to `skipped` with the reason.
std::optional<CheckpointInfo> latest_checkpoint(
    const std::filesystem::path& checkpoints,
    std::vector<std::pair<std::filesystem::path, std::string>>& skipped);

// Reads the moments m and v of flat elements [range.begin, range.end) of a
// verified checkpoint into m and v (m[0] is element range.begin), sharded or
// not, in parts or not: only the parts of the stored tensors or shards that
// overlap the range are read, through memory maps. The layout is the
// checkpoint's model, whole or any part of it (TensorSplit, PipelineStage),
// whatever the layout of the run that wrote the checkpoint.
void load_optimizer_range(const CheckpointInfo& info, const ParamLayout& layout, FlatRange range,
                          float* m, float* v);

// Loads parameters and optimizer moments (and its step count) of a verified
// checkpoint into the layout (as above: whole or a part).
void load_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                     AdamW& optimizer);
// The same into whole flat buffers m and v (layout.total() elements each);
// the step count is info.adamw_steps.
void load_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params, float* m,
                     float* v);
// The parameters, and the moments of flat elements `range` only (as
// load_optimizer_range); the step count is info.adamw_steps.
void load_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                     FlatRange range, float* m, float* v);

// Keeps the newest `keep` checkpoints and removes older ones and any
// leftover temporary directories.
void prune_checkpoints(const std::filesystem::path& checkpoints, int keep);

}  // namespace borealis
