#include "train/checkpoint.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
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

constexpr int kFormat = 1;
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

nlohmann::ordered_json file_record(const fs::path& path) {
  return {{"bytes", fs::file_size(path)}, {"xxh3_128", hash_file(path).hex()}};
}

void copy_tokenizer(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  if (!fs::is_regular_file(from, ec) || from.extension() != ".json") {
    throw Error(
        "the tokenizer to store with checkpoints must be a JSON tokenizer file "
        "(tokenizer.json, or tiktoken JSON)",
        from.string());
  }
  const MappedFile file(from, MappedFile::Access::Sequential);
  write_file_atomic(to, file.text());
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
  fs::create_directories(checkpoints);
  const fs::path final_dir = checkpoints / checkpoint_name(state.step);
  const fs::path tmp =
      checkpoints / fmt::format("{}.tmp-{}", checkpoint_name(state.step), getpid());
  fs::remove_all(tmp);
  fs::create_directory(tmp);

  save_safetensors(tmp / kModelFile, layout, params,
                   {{kModelConfigKey, model_config_to_json(model)}, {"format", "pt"}});
  save_safetensors(tmp / kOptimizerFile, layout,
                   std::vector<TensorGroup>{{"m.", optimizer.m}, {"v.", optimizer.v}});
  copy_tokenizer(tokenizer, tmp / kTokenizerFile);

  nlohmann::ordered_json j;
  j["format"] = kFormat;
  j["step"] = state.step;
  j["tokens"] = state.tokens;
  j["next_sample"] = state.next_sample;
  j["skipped_steps"] = state.skipped_steps;
  j["elapsed_s"] = state.elapsed_s;
  j["adamw_steps"] = optimizer.steps;
  j["recent_losses"] = state.recent_losses;
  j["model"] = nlohmann::ordered_json::parse(model_config_to_json(model));
  j["config"] = config_toml;
  nlohmann::ordered_json files;
  for (const char* f : {kModelFile, kOptimizerFile, kTokenizerFile})
    files[f] = file_record(tmp / f);
  j["files"] = files;
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
    if (j.at("format").get<int>() != kFormat) {
      throw Error(fmt::format("state.json has format {}, this build reads {}",
                              j.at("format").get<int>(), kFormat),
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
    for (const char* f : {kModelFile, kOptimizerFile, kTokenizerFile}) {
      const auto& rec = files.at(f);
      const fs::path path = dir / f;
      if (!fs::is_regular_file(path, ec))
        throw Error(fmt::format("{} is missing", f), dir.string());
      const auto bytes = rec.at("bytes").get<std::uint64_t>();
      if (fs::file_size(path) != bytes) {
        throw Error(
            fmt::format("{} has {} bytes, state.json says {}", f, fs::file_size(path), bytes),
            dir.string());
      }
      if (hash_file(path).hex() != rec.at("xxh3_128").get<std::string>()) {
        throw Error(fmt::format("{} does not match its checksum", f), dir.string());
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

void load_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params, float* m,
                     float* v) {
  load_safetensors(info.dir / kModelFile, layout, params);
  load_safetensors(info.dir / kOptimizerFile, layout,
                   std::vector<MutableTensorGroup>{{"m.", m}, {"v.", v}});
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
