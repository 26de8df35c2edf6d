#include "model/checkpoint_load.h"

#include <fmt/format.h>

#include <charconv>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <system_error>

#include "core/error.h"
#include "core/mapped_file.h"
#include "model/model_parts.h"
#include "model/params.h"
#include "model/safetensors.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

// N of a directory named "step-<N>" (leading zeros allowed), if it is one.
std::optional<long long> step_number(const std::string& name) {
  constexpr std::string_view kPrefix = "step-";
  if (name.size() <= kPrefix.size() || !name.starts_with(kPrefix)) return std::nullopt;
  long long step = 0;
  const char* begin = name.data() + kPrefix.size();
  const char* end = name.data() + name.size();
  const auto [ptr, ec] = std::from_chars(begin, end, step);
  if (ec != std::errc() || ptr != end || step < 0) return std::nullopt;
  return step;
}

}  // namespace

fs::path resolve_checkpoint_dir(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw Error("no such checkpoint or run directory", path.string());
  if (!fs::is_directory(path, ec)) {
    throw Error("not a directory (expected a checkpoint or run directory)", path.string());
  }
  if (fs::exists(path / "model.safetensors", ec) || read_model_parts(path)) return path;
  const fs::path checkpoints = path / "checkpoints";
  if (!fs::is_directory(checkpoints, ec)) {
    throw Error(
        "neither a checkpoint directory (no model.safetensors, no model parts in state.json) "
        "nor a run directory (no checkpoints/)",
        path.string());
  }
  std::optional<long long> best;
  fs::path best_dir;
  for (const auto& entry : fs::directory_iterator(checkpoints, ec)) {
    if (!entry.is_directory(ec)) continue;
    const auto step = step_number(entry.path().filename().string());
    if (!step || !fs::exists(entry.path() / "state.json", ec)) continue;
    if (!best || *step > *best) {
      best = step;
      best_dir = entry.path();
    }
  }
  if (ec) throw Error(fmt::format("cannot list: {}", ec.message()), checkpoints.string());
  if (!best) {
    throw Error("no complete checkpoint (a step-<N> directory with state.json)",
                checkpoints.string());
  }
  return best_dir;
}

namespace {

ModelConfig config_from_metadata(const std::map<std::string, std::string>& metadata,
                                 const fs::path& file) {
  const auto it = metadata.find(kModelConfigKey);
  if (it == metadata.end()) {
    throw Error(fmt::format("no model config in the safetensors metadata (key \"{}\"); was it "
                            "written by borealis train?",
                            kModelConfigKey),
                file.string());
  }
  return model_config_from_json(it->second, file.string() + " " + kModelConfigKey);
}

// Whether the data section of file is exactly the flat buffer of layout.
bool is_flat_buffer(const SafetensorsFile& file, const ParamLayout& layout) {
  if (reinterpret_cast<std::uintptr_t>(file.data()) % alignof(float) != 0) return false;
  if (file.names().size() != layout.views().size()) return false;
  for (const ParamView& v : layout.views()) {
    const SafetensorsFile::Entry* e = file.find(v.name);
    if (e == nullptr || e->dtype != "F32" || e->shape != v.shape ||
        e->begin != static_cast<std::uint64_t>(v.offset) * sizeof(float) ||
        e->end != static_cast<std::uint64_t>(v.offset + v.size) * sizeof(float)) {
      return false;
    }
  }
  return true;
}

}  // namespace

LoadedModel load_model_dir(const fs::path& dir) {
  const fs::path file = dir / "model.safetensors";
  std::error_code ec;
  LoadedModel loaded;
  loaded.dir = dir;
  if (!fs::exists(file, ec)) {
    // A tensor- or pipeline-parallel run's checkpoint: the parts put together.
    const std::optional<ModelParts> parts = read_model_parts(dir);
    if (!parts) throw Error("checkpoint has no model.safetensors", file.string());
    const fs::path first = dir / parts->files.front().file;
    loaded.config = config_from_metadata(read_safetensors_metadata(first), first);
    const ParamLayout layout(loaded.config);
    loaded.params.assign(static_cast<std::size_t>(layout.total()), 0.0f);
    load_model_parts(dir, *parts, loaded.config, layout, loaded.params.data());
    return loaded;
  }
  loaded.config = config_from_metadata(read_safetensors_metadata(file), file);
  const ParamLayout layout(loaded.config);
  loaded.params.assign(static_cast<std::size_t>(layout.total()), 0.0f);
  load_safetensors(file, layout, loaded.params.data());
  return loaded;
}

ModelWeights::ModelWeights(const LoadedModel& model)
    : dir_(model.dir), config_(model.config), params_(model.params.data()) {}

ModelWeights::ModelWeights(std::shared_ptr<const LoadedModel> model) : ModelWeights(*model) {
  owner_ = std::move(model);
}

void ModelWeights::release(std::int64_t offset, std::int64_t count) const {
  if (file_ == nullptr || count <= 0) return;
  const auto begin = static_cast<std::uint64_t>(offset) * sizeof(float);
  file_->release(begin, begin + static_cast<std::uint64_t>(count) * sizeof(float));
}

void ModelWeights::populate(std::int64_t offset, std::int64_t count) const {
  if (file_ == nullptr || count <= 0) return;
  const auto begin = static_cast<std::uint64_t>(offset) * sizeof(float);
  file_->populate(begin, begin + static_cast<std::uint64_t>(count) * sizeof(float));
}

ModelWeights map_model_dir(const fs::path& dir) {
  const fs::path path = dir / "model.safetensors";
  try {
    auto file = std::make_shared<const SafetensorsFile>(path, MappedFile::Access::Sequential);
    ModelWeights w;
    w.config_ = config_from_metadata(file->metadata(), path);
    if (is_flat_buffer(*file, ParamLayout(w.config_))) {
      w.dir_ = dir;
      w.params_ = reinterpret_cast<const float*>(file->data());
      w.file_ = file.get();
      w.owner_ = std::move(file);
      return w;
    }
  } catch (const Error&) {
    // load_model_dir below says what is wrong, as every other reader does.
  }
  return ModelWeights(std::make_shared<const LoadedModel>(load_model_dir(dir)));
}

Tokenizer load_model_tokenizer(const std::filesystem::path& path, const ModelConfig& config) {
  if (!std::filesystem::exists(path)) {
    throw Error("no tokenizer.json here (pass --tokenizer)", path.string());
  }
  Tokenizer tok = Tokenizer::load(path);
  if (tok.vocab_size() > static_cast<std::size_t>(config.vocab_size)) {
    throw Error(fmt::format("tokenizer has {} tokens but the model's vocabulary is {}: not the "
                            "tokenizer this model was trained with",
                            tok.vocab_size(), config.vocab_size),
                path.string());
  }
  return tok;
}

}  // namespace borealis
