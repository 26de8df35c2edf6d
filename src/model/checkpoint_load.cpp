#include "model/checkpoint_load.h"

#include <fmt/format.h>

#include <charconv>
#include <optional>
#include <string>
#include <system_error>

#include "core/error.h"
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
  if (fs::exists(path / "model.safetensors", ec)) return path;
  const fs::path checkpoints = path / "checkpoints";
  if (!fs::is_directory(checkpoints, ec)) {
    throw Error(
        "neither a checkpoint directory (no model.safetensors) nor a run directory (no "
        "checkpoints/)",
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

LoadedModel load_model_dir(const fs::path& dir) {
  const fs::path file = dir / "model.safetensors";
  std::error_code ec;
  if (!fs::exists(file, ec)) throw Error("checkpoint has no model.safetensors", file.string());
  const auto metadata = read_safetensors_metadata(file);
  const auto it = metadata.find(kModelConfigKey);
  if (it == metadata.end()) {
    throw Error(fmt::format("no model config in the safetensors metadata (key \"{}\"); was it "
                            "written by borealis train?",
                            kModelConfigKey),
                file.string());
  }
  LoadedModel loaded;
  loaded.dir = dir;
  loaded.config = model_config_from_json(it->second, file.string() + " " + kModelConfigKey);
  const ParamLayout layout(loaded.config);
  loaded.params.assign(static_cast<std::size_t>(layout.total()), 0.0f);
  load_safetensors(file, layout, loaded.params.data());
  return loaded;
}

}  // namespace borealis
