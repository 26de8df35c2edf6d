#include "train/checkpoint.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/mapped_file.h"
#include "model/checkpoint_load.h"
#include "model/safetensors.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

constexpr int kFormat = 1;         // whole optimizer moments
constexpr int kShardedFormat = 2;  // optimizer shards listed in "manifest"
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

// The files state.json lists under "files" (the optimizer shards are in its
// "manifest").
std::vector<const char*> whole_files(bool sharded) {
  if (sharded) return {kModelFile, kTokenizerFile};
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
    OptimizerShard sh;
    sh.rank = item.at("rank").get<int>();
    sh.file = item.at("file").get<std::string>();
    sh.begin = item.at("begin").get<std::int64_t>();
    sh.end = item.at("end").get<std::int64_t>();
    sh.bytes = item.at("bytes").get<std::uint64_t>();
    sh.xxh3_128 = item.at("xxh3_128").get<std::string>();
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
                              {});
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
  files[kTokenizerFile] = copy_tokenizer(tokenizer, tmp / kTokenizerFile);
  return files;
}

OptimizerShard write_optimizer_shard(const fs::path& tmp, int rank, int world_size,
                                     std::int64_t total, FlatRange range, const float* m,
                                     const float* v) {
  OptimizerShard shard;
  shard.rank = rank;
  shard.file = optimizer_shard_name(rank, world_size);
  shard.begin = range.begin;
  shard.end = range.end;
  const std::vector<std::int64_t> shape = {range.size()};
  const FileDigest digest = save_safetensors(
      tmp / shard.file,
      {{shard_tensor_name("m", range), shape, m}, {shard_tensor_name("v", range), shape, v}},
      {{"rank", std::to_string(rank)},
       {"world_size", std::to_string(world_size)},
       {"begin", std::to_string(range.begin)},
       {"end", std::to_string(range.end)},
       {"total", std::to_string(total)}});
  shard.bytes = digest.bytes;
  shard.xxh3_128 = digest.xxh3_128.hex();
  return shard;
}

fs::path publish_checkpoint(const fs::path& checkpoints, const fs::path& tmp,
                            const TrainState& state, const ModelConfig& model,
                            std::int64_t adamw_steps, const std::string& config_toml,
                            const FileRecords& files, const std::vector<OptimizerShard>& shards) {
  const fs::path final_dir = checkpoints / checkpoint_name(state.step);
  nlohmann::ordered_json j;
  j["format"] = shards.empty() ? kFormat : kShardedFormat;
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
  for (const char* f : whole_files(!shards.empty())) {
    const auto it = files.find(f);
    if (it == files.end()) throw std::logic_error(fmt::format("no record of {}", f));
    records[f] = {{"bytes", it->second.bytes}, {"xxh3_128", it->second.xxh3_128.hex()}};
  }
  j["files"] = records;
  if (!shards.empty()) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const auto& sh : shards) {
      list.push_back({{"rank", sh.rank},
                      {"file", sh.file},
                      {"begin", sh.begin},
                      {"end", sh.end},
                      {"bytes", sh.bytes},
                      {"xxh3_128", sh.xxh3_128}});
    }
    j["manifest"] = {{"optimizer", "zero-1 shards of the moments m and v"},
                     {"world_size", shards.size()},
                     {"total", shards.back().end},
                     {"shards", list}};
  }
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
    if (format != kFormat && format != kShardedFormat) {
      throw Error(fmt::format("state.json has format {}, this build reads {} and {}", format,
                              kFormat, kShardedFormat),
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
    const bool sharded = format == kShardedFormat;
    const auto& files = j.at("files");
    for (const char* f : whole_files(sharded)) {
      const auto& rec = files.at(f);
      check_file(dir, f, rec.at("bytes").get<std::uint64_t>(),
                 rec.at("xxh3_128").get<std::string>());
    }
    if (sharded) {
      info.shards = read_manifest(j.at("manifest"), ParamLayout(info.model).total(), where);
      for (const auto& sh : info.shards) check_file(dir, sh.file, sh.bytes, sh.xxh3_128);
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

void load_optimizer_range(const CheckpointInfo& info, const ParamLayout& layout, FlatRange range,
                          float* m, float* v) {
  if (range.begin < 0 || range.end < range.begin || range.end > layout.total()) {
    throw std::invalid_argument(
        fmt::format("elements [{}, {}) of a layout of {}", range.begin, range.end, layout.total()));
  }
  if (info.shards.empty()) {
    // One stored range per tensor of optimizer.safetensors.
    std::vector<FlatRange> stored;
    for (const auto& view : layout.views())
      stored.push_back({view.offset, view.offset + view.size});
    const auto copies = plan_range_copies(stored, range);
    if (copies.empty()) return;
    const SafetensorsFile file(info.dir / kOptimizerFile);
    for (const RangeCopy& c : copies) {
      const ParamView& view = layout.views()[c.source];
      file.read_f32("m." + view.name, view.shape, c.source_offset, c.count, m + c.dest_offset);
      file.read_f32("v." + view.name, view.shape, c.source_offset, c.count, v + c.dest_offset);
    }
    return;
  }
  std::vector<FlatRange> stored;
  for (const auto& sh : info.shards) stored.push_back({sh.begin, sh.end});
  for (const RangeCopy& c : plan_range_copies(stored, range)) {
    const OptimizerShard& sh = info.shards[c.source];
    const fs::path path = info.dir / sh.file;
    const SafetensorsFile file(path);
    const std::map<std::string, std::string> expected = {
        {"rank", std::to_string(sh.rank)},
        {"world_size", std::to_string(info.shards.size())},
        {"begin", std::to_string(sh.begin)},
        {"end", std::to_string(sh.end)},
        {"total", std::to_string(layout.total())}};
    if (file.metadata() != expected) {
      throw Error("the shard's metadata does not match the manifest in state.json", path.string());
    }
    const std::vector<std::int64_t> shape = {sh.end - sh.begin};
    file.read_f32(shard_tensor_name("m", stored[c.source]), shape, c.source_offset, c.count,
                  m + c.dest_offset);
    file.read_f32(shard_tensor_name("v", stored[c.source]), shape, c.source_offset, c.count,
                  v + c.dest_offset);
  }
}

void load_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                     FlatRange range, float* m, float* v) {
  load_safetensors(info.dir / kModelFile, layout, params);
  load_optimizer_range(info, layout, range, m, v);
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
