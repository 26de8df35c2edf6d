// A model stored in parts, one file per tensor rank and pipeline stage, and
// any other part read back out of them ("resharding").
//
// A tensor- or pipeline-parallel run writes one model file per part it
// holds (ParamLayout(config, TensorSplit{t, T}, PipelineStage{p, P})), with
// the part's tensors under their whole-model names and part shapes (the
// last stage's copy of tied embeddings is not stored: the first stage's wte
// is the same):
//
//   model-tp00000-of-00002-pp00001-of-00002.safetensors
//
// The checkpoint's state.json lists them under "manifest"."parts"
// (train/checkpoint.h). reshard() fills any part of any other layout of the
// same model (the whole model, or another TensorSplit and PipelineStage)
// from such stored parts: each of its tensors is put together from the
// pieces of the stored parts that overlap it (ParamView::runs), element for
// element, so that a run resumes exactly in another layout.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"

namespace borealis {

// "model-tp00000-of-00002-pp00001-of-00002.safetensors"
std::string model_part_name(int tensor_rank, int tensor_parallel, int stage, int pipeline_parallel);

// The metadata of a model part file besides the model config: tensor_rank,
// tensor_parallel, stage, pipeline_parallel (decimal strings).
std::map<std::string, std::string> model_part_metadata(const ParamLayout& part);

// The model files of a checkpoint stored in parts: one per (tensor rank,
// stage) of a tensor_parallel x pipeline_parallel grid.
struct ModelPartFile {
  int tensor_rank = 0;
  int stage = 0;
  std::string file;  // model_part_name(...), in the checkpoint directory
};
struct ModelParts {
  int tensor_parallel = 1;
  int pipeline_parallel = 1;
  std::vector<ModelPartFile> files;  // stage-major, tensor rank minor
};

// The parts listed in a checkpoint's state.json (format 3), or nullopt when
// the directory has no state.json or its model is stored whole. Throws
// borealis::Error naming state.json when the list is malformed or does not
// hold each part of the grid exactly once under its name.
std::optional<ModelParts> read_model_parts(const std::filesystem::path& dir);
// The same from the manifest's JSON text (the value of "manifest").
ModelParts parse_model_parts(const std::string& manifest_json, const std::string& where);

// One stored part: its layout, and a reader of its data. read(v, from,
// count, out) copies elements [from, from + count) of view v (one of
// layout's views) to out.
struct StoredPart {
  ParamLayout layout;
  std::function<void(const ParamView& v, std::int64_t from, std::int64_t count, float* out)> read;
};

// Elements [begin, end) of the flat buffer of layout `to` (out[0] is
// element begin), from `stored`: parts of the same model that together hold
// every tensor whole. A view the stored part holds identically is read
// directly (only the elements wanted); other views are put together from
// the overlapping pieces. Throws borealis::Error (at `where`, the
// checkpoint) when a tensor is not covered or the parts disagree on its
// shape.
void reshard(const std::vector<StoredPart>& stored, const ParamLayout& to, std::int64_t begin,
             std::int64_t end, float* out, const std::string& where);

// Copies the elements two parts of one tensor share, from `src` (laid out as
// view `from`) into `dst` (as view `to`). Returns the number copied; throws
// borealis::Error (at `where`) when they are not parts of one shape.
std::int64_t copy_overlap(const ParamView& from, const float* src, const ParamView& to, float* dst,
                          const std::string& where);

// The parameters of part `to` of the model stored in parts in dir (the
// whole model, for generation and exports).
void load_model_parts(const std::filesystem::path& dir, const ModelParts& parts,
                      const ModelConfig& config, const ParamLayout& to, float* params);

}  // namespace borealis
