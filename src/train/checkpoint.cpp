#include "train/checkpoint.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/mapped_file.h"
#include "model/checkpoint_load.h"
#include "model/model_parts.h"
#include "model/safetensors.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

constexpr int kFormat = 1;         // whole optimizer moments
constexpr int kShardedFormat = 2;  // optimizer shards listed in "manifest"
constexpr int kPartsFormat = 3;    // model parts and their shards listed in "manifest"
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kTokenizerFile = "tokenizer.json";
constexpr const char* kStateFile = "state.json";
constexpr const char* kPrefix = "step-";

// The step of a checkpoint directory name, or -1 for anything else
// (temporary directories included).
std::int64_t step_of(const std::string& name) {
  if (!name.starts_with(kPrefix) || name.size() == std::char_traits<char>::length(kPrefix)) {
    return -1;
  }
  std::int64_t step = 0;
  for (std::size_t i = std::char_traits<char>::length(kPrefix); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || step > INT64_MAX / 10 - 10) return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

// Complete checkpoint directories, newest first.
std::vector<std::pair<std::int64_t, fs::path>> list_checkpoints(const fs::path& checkpoints) {
  std::vector<std::pair<std::int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(checkpoints, ec)) return out;
  for (const auto& entry : fs::directory_iterator(checkpoints)) {
    const std::int64_t step = step_of(entry.path().filename().string());
    if (step >= 0 && entry.is_directory()) out.emplace_back(step, entry.path());
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  return out;
}

// The files state.json lists under "files" (the optimizer shards and model
// parts are in its "manifest").
std::vector<const char*> whole_files(int format) {
  if (format == kPartsFormat) return {kTokenizerFile};
  if (format == kShardedFormat) return {kModelFile, kTokenizerFile};
  return {kModelFile, kOptimizerFile, kTokenizerFile};
}

// "m[0:1000]": the moments of flat elements [0, 1000).
std::string shard_tensor_name(const char* moment, FlatRange range) {
  return fmt::format("{}[{}:{}]", moment, range.begin, range.end);
}

// A file of the checkpoint against its recorded size and checksum.
void check_file(const fs::path& dir, const std::string& name, std::uint64_t bytes,
                const std::string& xxh3_128) {
  const fs::path path = dir / name;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw Error(fmt::format("{} is missing", name), dir.string());
  if (fs::file_size(path) != bytes) {
    throw Error(
        fmt::format("{} has {} bytes, state.json says {}", name, fs::file_size(path), bytes),
        dir.string());
  }
  if (hash_file(path).hex() != xxh3_128) {
    throw Error(fmt::format("{} does not match its checksum", name), dir.string());
  }
}

OptimizerShard read_shard(const nlohmann::json& item) {
  OptimizerShard sh;
  sh.rank = item.at("rank").get<int>();
  sh.file = item.at("file").get<std::string>();
  sh.begin = item.at("begin").get<std::int64_t>();
  sh.end = item.at("end").get<std::int64_t>();
  sh.bytes = item.at("bytes").get<std::uint64_t>();
  sh.xxh3_128 = item.at("xxh3_128").get<std::string>();
  return sh;
}

nlohmann::ordered_json shard_json(const OptimizerShard& sh) {
  return {{"rank", sh.rank}, {"file", sh.file},   {"begin", sh.begin},
          {"end", sh.end},   {"bytes", sh.bytes}, {"xxh3_128", sh.xxh3_128}};
}

// The manifest of a sharded checkpoint: shards in rank order that tile
// [0, total) of the model's parameters, under their canonical names.
std::vector<OptimizerShard> read_manifest(const nlohmann::json& manifest, std::int64_t total,
                                          const std::string& where) {
  const int world = manifest.at("world_size").get<int>();
  const auto& list = manifest.at("shards");
  if (world < 1 || !list.is_array() || list.size() != static_cast<std::size_t>(world)) {
    throw Error(
        fmt::format("the manifest lists {} shards for a world size of {}", list.size(), world),
        where);
  }
  if (manifest.at("total").get<std::int64_t>() != total) {
    throw Error(fmt::format("the manifest covers {} elements, the model has {}",
                            manifest.at("total").get<std::int64_t>(), total),
                where);
  }
  std::vector<OptimizerShard> shards;
  std::int64_t next = 0;
  for (const auto& item : list) {
    OptimizerShard sh = read_shard(item);
    const int expected = static_cast<int>(shards.size());
    if (sh.rank != expected || sh.file != optimizer_shard_name(expected, world)) {
      throw Error(
          fmt::format("manifest entry {} is rank {} in {}, expected rank {} in {}", expected,
                      sh.rank, sh.file, expected, optimizer_shard_name(expected, world)),
          where);
    }
    if (sh.begin != next || sh.end < sh.begin || sh.end > total) {
      throw Error(fmt::format("shard {} covers [{}, {}), expected a range from {}", sh.rank,
                              sh.begin, sh.end, next),
                  where);
    }
    next = sh.end;
    shards.push_back(std::move(sh));
  }
  if (next != total) {
    throw Error(fmt::format("the shards cover [0, {}) of {} elements", next, total), where);
  }
  return shards;
}

// The manifest of a checkpoint stored in parts: each part of the grid once,
// its element count that of its layout, its shards (files of ranks of the
// run) tiling it in order.
CheckpointParts read_parts_manifest(const nlohmann::json& manifest, const ModelConfig& model,
                                    const std::string& where) {
  const ModelParts grid = parse_model_parts(manifest.dump(), where);
  CheckpointParts out;
  out.tensor_parallel = grid.tensor_parallel;
  out.pipeline_parallel = grid.pipeline_parallel;
  out.world_size = manifest.at("world_size").get<int>();
  const auto& list = manifest.at("parts");
  for (std::size_t i = 0; i < grid.files.size(); ++i) {
    const auto& item = list.at(i);
    CheckpointPart part;
    part.tensor_rank = grid.files[i].tensor_rank;
    part.stage = grid.files[i].stage;
    part.file = grid.files[i].file;
    part.bytes = item.at("bytes").get<std::uint64_t>();
    part.xxh3_128 = item.at("xxh3_128").get<std::string>();
    part.total = item.at("total").get<std::int64_t>();
    const ParamLayout layout(model, TensorSplit{part.tensor_rank, out.tensor_parallel},
                             PipelineStage{part.stage, out.pipeline_parallel});
    if (part.total != layout.total()) {
      throw Error(fmt::format("model part {} has {} elements, the model's part has {}", part.file,
                              part.total, layout.total()),
                  where);
    }
    std::int64_t next = 0;
    for (const auto& s : item.at("optimizer")) {
      OptimizerShard sh = read_shard(s);
      if (sh.rank < 0 || sh.rank >= out.world_size ||
          sh.file != optimizer_shard_name(sh.rank, out.world_size) || sh.begin != next ||
          sh.end < sh.begin || sh.end > part.total) {
        throw Error(fmt::format("model part {}: shard {} of rank {} covers [{}, {}), expected a "
                                "range from {}",
                                part.file, sh.file, sh.rank, sh.begin, sh.end, next),
                    where);
      }
      next = sh.end;
      part.shards.push_back(std::move(sh));
    }
    if (next != part.total) {
      throw Error(fmt::format("model part {}: its shards cover [0, {}) of {} elements", part.file,
                              next, part.total),
                  where);
    }
    out.parts.push_back(std::move(part));
  }
  return out;
}

FileDigest copy_tokenizer(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  if (!fs::is_regular_file(from, ec) || from.extension() != ".json") {
    throw Error(
        "the tokenizer to store with checkpoints must be a JSON tokenizer file "
        "(tokenizer.json, or tiktoken JSON)",
        from.string());
  }
  const MappedFile file(from, MappedFile::Access::Sequential);
  write_file_atomic(to, file.text());
  return {file.size(), hash128(file.text())};
}

}  // namespace

std::string checkpoint_name(std::int64_t step) {
  return fmt::format("{}{:08d}", kPrefix, step);
}

fs::path save_checkpoint(const fs::path& checkpoints, const TrainState& state,
                         const ModelConfig& model, const ParamLayout& layout, const float* params,
                         const AdamW& optimizer, const fs::path& tokenizer,
                         const std::string& config_toml) {
  if (optimizer.begin() != 0 || optimizer.end() != layout.total()) {
    throw std::logic_error("save_checkpoint needs the whole optimizer state");
  }
  return save_checkpoint(
      checkpoints, state, model, layout, params,
      OptimizerState{optimizer.m().data(), optimizer.v().data(), optimizer.steps()}, tokenizer,
      config_toml);
}

fs::path save_checkpoint(const fs::path& checkpoints, const TrainState& state,
                         const ModelConfig& model, const ParamLayout& layout, const float* params,
                         const OptimizerState& optimizer, const fs::path& tokenizer,
                         const std::string& config_toml) {
  const fs::path tmp = checkpoint_temp_dir(checkpoints, state.step);
  try {
    FileRecords files = write_replicated_files(tmp, model, layout, params, tokenizer);
    files[kOptimizerFile] =
        save_safetensors(tmp / kOptimizerFile, layout,
                         std::vector<TensorGroup>{{"m.", optimizer.m}, {"v.", optimizer.v}});
    return publish_checkpoint(checkpoints, tmp, state, model, optimizer.steps, config_toml, files,
                              std::vector<OptimizerShard>{});
  } catch (...) {
    // A full disk or a failed write leaves nothing half-written behind.
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

std::string optimizer_shard_name(int rank, int world_size) {
  return fmt::format("optimizer-rank-{:05d}-of-{:05d}.safetensors", rank, world_size);
}

fs::path checkpoint_temp_dir(const fs::path& checkpoints, std::int64_t step) {
  fs::create_directories(checkpoints);
  const fs::path tmp = checkpoints / fmt::format("{}.tmp-{}", checkpoint_name(step), getpid());
  fs::remove_all(tmp);
  fs::create_directory(tmp);
  return tmp;
}

namespace {
std::function<void(const fs::path&)>& checkpoint_file_hook() {
  static std::function<void(const fs::path&)> hook;
  return hook;
}
}  // namespace

void set_checkpoint_file_hook(std::function<void(const fs::path&)> hook) {
  checkpoint_file_hook() = std::move(hook);
}

FileRecords write_replicated_files(const fs::path& tmp, const ModelConfig& model,
                                   const ParamLayout& layout, const float* params,
                                   const fs::path& tokenizer) {
  FileRecords files;
  files[kModelFile] =
      save_safetensors(tmp / kModelFile, layout, params,
                       {{kModelConfigKey, model_config_to_json(model)}, {"format", "pt"}});
  if (checkpoint_file_hook()) checkpoint_file_hook()(tmp / kModelFile);
  files.merge(write_tokenizer_file(tmp, tokenizer));
  return files;
}

FileRecords write_tokenizer_file(const fs::path& tmp, const fs::path& tokenizer) {
  return {{kTokenizerFile, copy_tokenizer(tokenizer, tmp / kTokenizerFile)}};
}

FileDigest write_model_part(const fs::path& tmp, const ModelConfig& model, const ParamLayout& part,
                            const float* params) {
  std::vector<NamedTensor> tensors;
  for (const ParamView& v : part.views()) {
    if (!v.pipeline_copy) tensors.push_back({v.name, v.shape, params + v.offset});
  }
  std::map<std::string, std::string> metadata = model_part_metadata(part);
  metadata[kModelConfigKey] = model_config_to_json(model);
  metadata["format"] = "pt";
  const fs::path path = tmp / model_part_name(part.split().rank, part.split().size,
                                              part.stage().stage, part.stage().stages);
  const FileDigest digest = save_safetensors(path, tensors, metadata);
  if (checkpoint_file_hook()) checkpoint_file_hook()(path);
  return digest;
}

OptimizerShard write_optimizer_shard(const fs::path& tmp, int rank, int world_size,
                                     std::int64_t total, FlatRange range, const float* m,
                                     const float* v,
                                     const std::map<std::string, std::string>& extra) {
  OptimizerShard shard;
  shard.rank = rank;
  shard.file = optimizer_shard_name(rank, world_size);
  shard.begin = range.begin;
  shard.end = range.end;
  const std::vector<std::int64_t> shape = {range.size()};
  std::map<std::string, std::string> metadata = extra;
  metadata.insert({{"rank", std::to_string(rank)},
                   {"world_size", std::to_string(world_size)},
                   {"begin", std::to_string(range.begin)},
                   {"end", std::to_string(range.end)},
                   {"total", std::to_string(total)}});
  const FileDigest digest = save_safetensors(
      tmp / shard.file,
      {{shard_tensor_name("m", range), shape, m}, {shard_tensor_name("v", range), shape, v}},
      metadata);
  shard.bytes = digest.bytes;
  shard.xxh3_128 = digest.xxh3_128.hex();
  return shard;
}

namespace {

// Writes state.json (format, with `manifest` unless it is null) into tmp and
// renames tmp to the checkpoint's name.
fs::path publish(const fs::path& checkpoints, const fs::path& tmp, const TrainState& state,
                 const ModelConfig& model, std::int64_t adamw_steps, const std::string& config_toml,
                 const FileRecords& files, int format, const nlohmann::ordered_json& manifest) {
  const fs::path final_dir = checkpoints / checkpoint_name(state.step);
  nlohmann::ordered_json j;
  j["format"] = format;
  j["step"] = state.step;
  j["tokens"] = state.tokens;
  j["next_sample"] = state.next_sample;
  j["skipped_steps"] = state.skipped_steps;
  j["elapsed_s"] = state.elapsed_s;
  j["adamw_steps"] = adamw_steps;
  j["recent_losses"] = state.recent_losses;
  j["model"] = nlohmann::ordered_json::parse(model_config_to_json(model));
  j["config"] = config_toml;
  nlohmann::ordered_json records;
  for (const char* f : whole_files(format)) {
    const auto it = files.find(f);
    if (it == files.end()) throw std::logic_error(fmt::format("no record of {}", f));
    records[f] = {{"bytes", it->second.bytes}, {"xxh3_128", it->second.xxh3_128.hex()}};
  }
  j["files"] = records;
  if (!manifest.is_null()) j["manifest"] = manifest;
  write_file_atomic(tmp / kStateFile, j.dump(2) + "\n");
  fsync_directory(tmp);

  // Replace a checkpoint of the same step (a run resumed from an earlier
  // one reaches it again): move the old one aside first, so that a crash
  // between the two renames leaves the new one under a temporary name and the
  // old one still usable.
  std::error_code ec;
  if (fs::exists(final_dir, ec)) {
    const fs::path old =
        checkpoints / fmt::format("{}.old-{}", checkpoint_name(state.step), getpid());
    fs::remove_all(old);
    fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old);
  } else {
    fs::rename(tmp, final_dir);
  }
  fsync_directory(checkpoints);
  return final_dir;
}

}  // namespace

fs::path publish_checkpoint(const fs::path& checkpoints, const fs::path& tmp,
                            const TrainState& state, const ModelConfig& model,
                            std::int64_t adamw_steps, const std::string& config_toml,
                            const FileRecords& files, const std::vector<OptimizerShard>& shards) {
  nlohmann::ordered_json manifest;
  if (!shards.empty()) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const auto& sh : shards) list.push_back(shard_json(sh));
    manifest = {{"optimizer", "zero-1 shards of the moments m and v"},
                {"world_size", shards.size()},
                {"total", shards.back().end},
                {"shards", list}};
  }
  return publish(checkpoints, tmp, state, model, adamw_steps, config_toml, files,
                 shards.empty() ? kFormat : kShardedFormat, manifest);
}

fs::path publish_checkpoint(const fs::path& checkpoints, const fs::path& tmp,
                            const TrainState& state, const ModelConfig& model,
                            std::int64_t adamw_steps, const std::string& config_toml,
                            const FileRecords& files, const CheckpointParts& parts) {
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const CheckpointPart& part : parts.parts) {
    nlohmann::ordered_json shards = nlohmann::ordered_json::array();
    for (const auto& sh : part.shards) shards.push_back(shard_json(sh));
    list.push_back({{"tensor_rank", part.tensor_rank},
                    {"stage", part.stage},
                    {"file", part.file},
                    {"bytes", part.bytes},
                    {"xxh3_128", part.xxh3_128},
                    {"total", part.total},
                    {"optimizer", shards}});
  }
  const nlohmann::ordered_json manifest = {
      {"layout",
       "the model in tensor_parallel x pipeline_parallel parts; each part's moments m and v in "
       "shards of its flat buffer"},
      {"tensor_parallel", parts.tensor_parallel},
      {"pipeline_parallel", parts.pipeline_parallel},
      {"world_size", parts.world_size},
      {"parts", list}};
  return publish(checkpoints, tmp, state, model, adamw_steps, config_toml, files, kPartsFormat,
                 manifest);
}

CheckpointInfo verify_checkpoint(const fs::path& dir) {
  const fs::path state_path = dir / kStateFile;
  const std::string where = state_path.string();
  std::error_code ec;
  if (!fs::is_regular_file(state_path, ec)) throw Error("state.json is missing", dir.string());
  nlohmann::json j;
  {
    const MappedFile file(state_path, MappedFile::Access::Sequential);
    j = nlohmann::json::parse(file.text(), nullptr, /*allow_exceptions=*/false);
  }
  if (!j.is_object()) throw Error("state.json is not a JSON object", where);
  CheckpointInfo info;
  info.dir = dir;
  try {
    const int format = j.at("format").get<int>();
    if (format != kFormat && format != kShardedFormat && format != kPartsFormat) {
      throw Error(fmt::format("state.json has format {}, this build reads {} to {}", format,
                              kFormat, kPartsFormat),
                  where);
    }
    info.state.step = j.at("step").get<std::int64_t>();
    info.state.tokens = j.at("tokens").get<std::uint64_t>();
    info.state.next_sample = j.at("next_sample").get<std::uint64_t>();
    info.state.skipped_steps = j.at("skipped_steps").get<std::int64_t>();
    info.state.elapsed_s = j.at("elapsed_s").get<double>();
    info.state.recent_losses = j.at("recent_losses").get<std::vector<double>>();
    info.adamw_steps = j.at("adamw_steps").get<std::int64_t>();
    info.config_toml = j.at("config").get<std::string>();
    info.model = model_config_from_json(j.at("model").dump(), where);
    const auto& files = j.at("files");
    for (const char* f : whole_files(format)) {
      const auto& rec = files.at(f);
      check_file(dir, f, rec.at("bytes").get<std::uint64_t>(),
                 rec.at("xxh3_128").get<std::string>());
    }
    if (format == kShardedFormat) {
      info.shards = read_manifest(j.at("manifest"), ParamLayout(info.model).total(), where);
      for (const auto& sh : info.shards) check_file(dir, sh.file, sh.bytes, sh.xxh3_128);
    }
    if (format == kPartsFormat) {
      info.parts = read_parts_manifest(j.at("manifest"), info.model, where);
      for (const CheckpointPart& part : info.parts.parts) {
        check_file(dir, part.file, part.bytes, part.xxh3_128);
        for (const auto& sh : part.shards) check_file(dir, sh.file, sh.bytes, sh.xxh3_128);
      }
    }
    if (step_of(dir.filename().string()) != info.state.step) {
      throw Error(fmt::format("the directory name does not match step {}", info.state.step),
                  dir.string());
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("state.json is malformed: {}", e.what()), where);
  }
  return info;
}

std::optional<CheckpointInfo> latest_checkpoint(
    const fs::path& checkpoints, std::vector<std::pair<fs::path, std::string>>& skipped) {
  for (const auto& [step, dir] : list_checkpoints(checkpoints)) {
    try {
      return verify_checkpoint(dir);
    } catch (const Error& e) {
      skipped.emplace_back(dir, e.message());
    }
  }
  return std::nullopt;
}

namespace {

// The files of a checkpoint, each mapped once when first read.
class CheckpointFiles {
 public:
  explicit CheckpointFiles(fs::path dir) : dir_(std::move(dir)) {}
  // A shard is checked against what the manifest says of it (`expected`).
  const SafetensorsFile& get(const std::string& name,
                             const std::map<std::string, std::string>* expected = nullptr) {
    auto& file = files_[name];
    if (!file) {
      file = std::make_unique<SafetensorsFile>(dir_ / name);
      if (expected != nullptr && file->metadata() != *expected) {
        throw Error("the shard's metadata does not match the manifest in state.json",
                    (dir_ / name).string());
      }
    }
    return *file;
  }

 private:
  fs::path dir_;
  std::map<std::string, std::unique_ptr<SafetensorsFile>> files_;
};

// The moments of one flat buffer (the whole model's or a part's) in shards.
struct ShardedMoments {
  const std::vector<OptimizerShard>* shards = nullptr;
  int world_size = 1;
  std::int64_t total = 0;
  std::map<std::string, std::string> extra;  // a part's tensor_rank and stage
};

// Elements `want` of moment "m" or "v" from the shards that overlap it.
void read_shards(CheckpointFiles& files, const ShardedMoments& s, const char* moment,
                 FlatRange want, float* out) {
  std::vector<FlatRange> stored;
  for (const auto& sh : *s.shards) stored.push_back({sh.begin, sh.end});
  for (const RangeCopy& c : plan_range_copies(stored, want)) {
    const OptimizerShard& sh = (*s.shards)[c.source];
    std::map<std::string, std::string> expected = s.extra;
    expected.insert({{"rank", std::to_string(sh.rank)},
                     {"world_size", std::to_string(s.world_size)},
                     {"begin", std::to_string(sh.begin)},
                     {"end", std::to_string(sh.end)},
                     {"total", std::to_string(s.total)}});
    const std::vector<std::int64_t> shape = {sh.end - sh.begin};
    files.get(sh.file, &expected)
        .read_f32(shard_tensor_name(moment, stored[c.source]), shape, c.source_offset, c.count,
                  out + c.dest_offset);
  }
}

// What the checkpoint stores, as parts model/model_parts.h reshards: the
// parameters, m and v, each of one whole part (formats 1 and 2) or of every
// part of the grid (format 3).
struct StoredState {
  std::vector<StoredPart> params, m, v;
};

StoredState stored_state(const CheckpointInfo& info, CheckpointFiles& files) {
  StoredState out;
  const auto add_sharded = [&](const ParamLayout& layout, ShardedMoments moments) {
    const auto shared = std::make_shared<const ShardedMoments>(std::move(moments));
    for (const char* moment : {"m", "v"}) {
      (moment[0] == 'm' ? out.m : out.v)
          .push_back(
              {layout, [&files, shared, moment](const ParamView& v, std::int64_t from,
                                                std::int64_t count, float* o) {
                 read_shards(files, *shared, moment, {v.offset + from, v.offset + from + count}, o);
               }});
    }
  };
  if (info.parts.parts.empty()) {
    const ParamLayout whole(info.model);
    out.params.push_back(
        {whole, [&files](const ParamView& v, std::int64_t from, std::int64_t count, float* o) {
           files.get(kModelFile).read_f32(v.name, v.shape, from, count, o);
         }});
    if (!info.shards.empty()) {
      add_sharded(whole, {&info.shards, static_cast<int>(info.shards.size()), whole.total(), {}});
      return out;
    }
    for (const char* moment : {"m.", "v."}) {
      (moment[0] == 'm' ? out.m : out.v)
          .push_back(
              {whole, [&files, moment](const ParamView& v, std::int64_t from, std::int64_t count,
                                       float* o) {
                 files.get(kOptimizerFile).read_f32(moment + v.name, v.shape, from, count, o);
               }});
    }
    return out;
  }
  for (const CheckpointPart& part : info.parts.parts) {
    const ParamLayout layout(info.model, TensorSplit{part.tensor_rank, info.parts.tensor_parallel},
                             PipelineStage{part.stage, info.parts.pipeline_parallel});
    auto expected = std::make_shared<const std::map<std::string, std::string>>([&] {
      auto m = model_part_metadata(layout);
      m[kModelConfigKey] = model_config_to_json(info.model);
      m["format"] = "pt";
      return m;
    }());
    out.params.push_back(
        {layout, [&files, file = part.file, expected](const ParamView& v, std::int64_t from,
                                                      std::int64_t count, float* o) {
           files.get(file, expected.get()).read_f32(v.name, v.shape, from, count, o);
         }});
    add_sharded(layout, {&part.shards,
                         info.parts.world_size,
                         part.total,
                         {{"tensor_rank", std::to_string(part.tensor_rank)},
                          {"stage", std::to_string(part.stage)}}});
  }
  return out;
}

void check_range(const ParamLayout& layout, FlatRange range) {
  if (range.begin < 0 || range.end < range.begin || range.end > layout.total()) {
    throw std::invalid_argument(
        fmt::format("elements [{}, {}) of a layout of {}", range.begin, range.end, layout.total()));
  }
}

}  // namespace

void load_optimizer_range(const CheckpointInfo& info, const ParamLayout& layout, FlatRange range,
                          float* m, float* v) {
  check_range(layout, range);
  CheckpointFiles files(info.dir);
  const StoredState stored = stored_state(info, files);
  reshard(stored.m, layout, range.begin, range.end, m, info.dir.string());
  reshard(stored.v, layout, range.begin, range.end, v, info.dir.string());
}

void load_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                     FlatRange range, float* m, float* v) {
  check_range(layout, range);
  CheckpointFiles files(info.dir);
  const StoredState stored = stored_state(info, files);
  reshard(stored.params, layout, 0, layout.total(), params, info.dir.string());
  reshard(stored.m, layout, range.begin, range.end, m, info.dir.string());
  reshard(stored.v, layout, range.begin, range.end, v, info.dir.string());
}

void load_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params, float* m,
                     float* v) {
  load_checkpoint(info, layout, params, {0, layout.total()}, m, v);
}

void load_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                     AdamW& optimizer) {
  if (optimizer.begin() != 0 || optimizer.end() != layout.total()) {
    throw std::logic_error("load_checkpoint needs an optimizer of the whole buffer");
  }
  load_checkpoint(info, layout, params, optimizer.m_data(), optimizer.v_data());
  optimizer.set_steps(info.adamw_steps);
}

void prune_checkpoints(const fs::path& checkpoints, int keep) {
  const auto all = list_checkpoints(checkpoints);
  for (std::size_t i = static_cast<std::size_t>(std::max(keep, 0)); i < all.size(); ++i) {
    spdlog::debug("removing checkpoint {}", all[i].second.string());
    fs::remove_all(all[i].second);
  }
  std::error_code ec;
  if (!fs::is_directory(checkpoints, ec)) return;
  for (const auto& entry : fs::directory_iterator(checkpoints)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with(kPrefix) &&
        (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos)) {
      fs::remove_all(entry.path());
    }
  }
}

}  // namespace borealis
