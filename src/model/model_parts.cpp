#include "model/model_parts.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "core/mapped_file.h"
#include "model/safetensors.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

constexpr int kPartsFormat = 3;  // state.json "format" of a checkpoint stored in parts

bool same_part(const ParamView& a, const ParamView& b) {
  if (a.shape != b.shape || a.whole_shape != b.whole_shape || a.split_dim != b.split_dim ||
      a.runs.size() != b.runs.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.runs.size(); ++i) {
    if (a.runs[i].begin != b.runs[i].begin || a.runs[i].length != b.runs[i].length) return false;
  }
  return true;
}

// Calls f(from_offset, to_offset, count) for each contiguous run of
// elements the parts `from` and `to` of one tensor share.
template <class F>
void for_each_overlap(const ParamView& from, const ParamView& to, const std::string& where, F&& f) {
  if (from.whole_shape != to.whole_shape) {
    throw Error(fmt::format("tensor {}: the stored parts disagree on its shape", to.name), where);
  }
  const int dim = to.is_split() ? to.split_dim : from.split_dim;
  if (dim < 0) {
    f(std::int64_t{0}, std::int64_t{0}, to.size);
    return;
  }
  if (from.is_split() && to.is_split() && from.split_dim != to.split_dim) {
    throw Error(fmt::format("tensor {}: stored split along dimension {}, wanted along {}", to.name,
                            from.split_dim, to.split_dim),
                where);
  }
  const auto d = static_cast<std::size_t>(dim);
  std::int64_t outer = 1, inner = 1;
  for (std::size_t i = 0; i < d; ++i) outer *= to.whole_shape[i];
  for (std::size_t i = d + 1; i < to.whole_shape.size(); ++i) inner *= to.whole_shape[i];
  const std::vector<IndexRun> whole = {{0, to.whole_shape[d]}};
  const std::vector<IndexRun>& from_runs = from.is_split() ? from.runs : whole;
  const std::vector<IndexRun>& to_runs = to.is_split() ? to.runs : whole;
  const std::int64_t from_dim = from.is_split() ? from.shape[d] : to.whole_shape[d];
  const std::int64_t to_dim = to.is_split() ? to.shape[d] : to.whole_shape[d];
  std::int64_t from_at = 0;
  for (const IndexRun& a : from_runs) {
    std::int64_t to_at = 0;
    for (const IndexRun& b : to_runs) {
      const std::int64_t lo = std::max(a.begin, b.begin);
      const std::int64_t hi = std::min(a.begin + a.length, b.begin + b.length);
      if (lo < hi) {
        for (std::int64_t o = 0; o < outer; ++o) {
          f((o * from_dim + from_at + lo - a.begin) * inner,
            (o * to_dim + to_at + lo - b.begin) * inner, (hi - lo) * inner);
        }
      }
      to_at += b.length;
    }
    from_at += a.length;
  }
}

std::int64_t overlap_count(const ParamView& from, const ParamView& to, const std::string& where) {
  std::int64_t n = 0;
  for_each_overlap(from, to, where,
                   [&](std::int64_t, std::int64_t, std::int64_t count) { n += count; });
  return n;
}

}  // namespace

std::string model_part_name(int tensor_rank, int tensor_parallel, int stage,
                            int pipeline_parallel) {
  return fmt::format("model-tp{:05d}-of-{:05d}-pp{:05d}-of-{:05d}.safetensors", tensor_rank,
                     tensor_parallel, stage, pipeline_parallel);
}

std::map<std::string, std::string> model_part_metadata(const ParamLayout& part) {
  return {{"tensor_rank", std::to_string(part.split().rank)},
          {"tensor_parallel", std::to_string(part.split().size)},
          {"stage", std::to_string(part.stage().stage)},
          {"pipeline_parallel", std::to_string(part.stage().stages)}};
}

std::int64_t copy_overlap(const ParamView& from, const float* src, const ParamView& to, float* dst,
                          const std::string& where) {
  std::int64_t n = 0;
  for_each_overlap(from, to, where, [&](std::int64_t f, std::int64_t t, std::int64_t count) {
    std::memcpy(dst + t, src + f, static_cast<std::size_t>(count) * sizeof(float));
    n += count;
  });
  return n;
}

void reshard(const std::vector<StoredPart>& stored, const ParamLayout& to, std::int64_t begin,
             std::int64_t end, float* out, const std::string& where) {
  // Each tensor's stored pieces, by name. A tensor stored whole (norms,
  // positions and row-parallel biases are whole on every tensor rank)
  // comes from one stored part only.
  struct Piece {
    const StoredPart* part;
    const ParamView* view;
  };
  std::unordered_map<std::string, std::vector<Piece>> pieces;
  for (const StoredPart& part : stored) {
    for (const ParamView& v : part.layout.views()) {
      if (v.pipeline_copy) continue;
      auto& list = pieces[v.name];
      if (!v.is_split()) {
        if (list.empty() || list.front().view->is_split()) list.assign(1, {&part, &v});
      } else if (list.empty() || list.front().view->is_split()) {
        list.push_back({&part, &v});
      }
    }
  }
  std::vector<float> source, assembled;
  for (const ParamView& v : to.views()) {
    const std::int64_t lo = std::max(begin, v.offset);
    const std::int64_t hi = std::min(end, v.offset + v.size);
    if (lo >= hi) continue;
    float* dst = out + (lo - begin);
    const auto it = pieces.find(v.name);
    if (it == pieces.end())
      throw Error(fmt::format("no stored part holds tensor {}", v.name), where);
    const auto same = std::find_if(it->second.begin(), it->second.end(),
                                   [&](const Piece& p) { return same_part(*p.view, v); });
    if (same != it->second.end()) {
      same->part->read(*same->view, lo - v.offset, hi - lo, dst);
      continue;
    }
    const bool all = lo == v.offset && hi == v.offset + v.size;
    float* into = dst;
    if (!all) {
      assembled.resize(static_cast<std::size_t>(v.size));
      into = assembled.data();
    }
    std::int64_t copied = 0;
    for (const Piece& p : it->second) {
      if (overlap_count(*p.view, v, where) == 0) continue;
      source.resize(static_cast<std::size_t>(p.view->size));
      p.part->read(*p.view, 0, p.view->size, source.data());
      copied += copy_overlap(*p.view, source.data(), v, into, where);
    }
    if (copied != v.size) {
      throw Error(fmt::format("the stored parts hold {} of the {} elements of tensor {}", copied,
                              v.size, v.name),
                  where);
    }
    if (!all) std::copy(into + (lo - v.offset), into + (hi - v.offset), dst);
  }
}

ModelParts parse_model_parts(const std::string& manifest_json, const std::string& where) {
  const auto j = nlohmann::json::parse(manifest_json, nullptr, /*allow_exceptions=*/false);
  ModelParts parts;
  try {
    parts.tensor_parallel = j.at("tensor_parallel").get<int>();
    parts.pipeline_parallel = j.at("pipeline_parallel").get<int>();
    const int t_size = parts.tensor_parallel, p_size = parts.pipeline_parallel;
    const auto& list = j.at("parts");
    if (t_size < 1 || p_size < 1 || !list.is_array() ||
        list.size() != static_cast<std::size_t>(t_size) * static_cast<std::size_t>(p_size)) {
      throw Error(fmt::format("the manifest lists {} model parts for tensor_parallel {} x "
                              "pipeline_parallel {}",
                              list.is_array() ? list.size() : 0, t_size, p_size),
                  where);
    }
    for (const auto& item : list) {
      ModelPartFile f;
      f.tensor_rank = item.at("tensor_rank").get<int>();
      f.stage = item.at("stage").get<int>();
      f.file = item.at("file").get<std::string>();
      const auto n = static_cast<int>(parts.files.size());
      const int t = n % t_size, s = n / t_size;
      const std::string name = model_part_name(t, t_size, s, p_size);
      if (f.tensor_rank != t || f.stage != s || f.file != name) {
        throw Error(fmt::format("model part {} is tensor rank {} of stage {} in {}, expected "
                                "tensor rank {} of stage {} in {}",
                                n, f.tensor_rank, f.stage, f.file, t, s, name),
                    where);
      }
      parts.files.push_back(std::move(f));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("the manifest's model parts are malformed: {}", e.what()), where);
  }
  return parts;
}

std::optional<ModelParts> read_model_parts(const fs::path& dir) {
  const fs::path path = dir / "state.json";
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  const MappedFile file(path, MappedFile::Access::Sequential);
  const auto j = nlohmann::json::parse(file.text(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) throw Error("state.json is not a JSON object", path.string());
  const auto format = j.find("format");
  if (format == j.end() || !format->is_number_integer() || format->get<int>() != kPartsFormat) {
    return std::nullopt;
  }
  const auto manifest = j.find("manifest");
  if (manifest == j.end()) throw Error("state.json has no manifest", path.string());
  return parse_model_parts(manifest->dump(), path.string());
}

void load_model_parts(const fs::path& dir, const ModelParts& parts, const ModelConfig& config,
                      const ParamLayout& to, float* params) {
  std::vector<StoredPart> stored;
  for (const ModelPartFile& f : parts.files) {
    ParamLayout layout(config, TensorSplit{f.tensor_rank, parts.tensor_parallel},
                       PipelineStage{f.stage, parts.pipeline_parallel});
    const fs::path path = dir / f.file;
    auto file = std::make_shared<const SafetensorsFile>(path);
    auto metadata = model_part_metadata(layout);
    for (const auto& [key, value] : metadata) {
      const auto it = file->metadata().find(key);
      if (it == file->metadata().end() || it->second != value) {
        throw Error(fmt::format("the file's {} is {}, the manifest says {}", key,
                                it == file->metadata().end() ? "missing" : it->second, value),
                    path.string());
      }
    }
    stored.push_back({std::move(layout),
                      [file](const ParamView& v, std::int64_t from, std::int64_t count,
                             float* out) { file->read_f32(v.name, v.shape, from, count, out); }});
  }
  reshard(stored, to, 0, to.total(), params, dir.string());
}

}  // namespace borealis
