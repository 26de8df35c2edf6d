#include "interop/hf_checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <system_error>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "interop/hf_config.h"
#include "interop/hf_tensors.h"
#include "model/checkpoint_load.h"
#include "model/params.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"

namespace borealis {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kWeights = "model.safetensors";
constexpr const char* kIndex = "model.safetensors.index.json";
constexpr const char* kConfig = "config.json";
constexpr const char* kTokenizer = "tokenizer.json";

json read_json(const fs::path& path) {
  const MappedFile file(path, MappedFile::Access::Sequential);
  json j = json::parse(file.text(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw Error("not valid JSON", path.string());
  return j;
}

// The first added token among `names`.
std::optional<std::uint32_t> first_token(const Tokenizer& tok,
                                         std::initializer_list<const char*> names) {
  for (const char* n : names) {
    if (auto id = tok.added_token_id(n)) return id;
  }
  return std::nullopt;
}

// Borealis never prepends a beginning-of-text token; a tokenizer that has one
// names it, and otherwise the end-of-document token serves (as in GPT-2).
SpecialIds special_ids(const Tokenizer& tok) {
  SpecialIds ids;
  ids.eos = tok.eod_id();
  ids.bos = first_token(tok, {"<|begin_of_text|>", "<s>", "<bos>"});
  if (!ids.bos) ids.bos = ids.eos;
  return ids;
}

std::string tokenizer_config_json(const Tokenizer& tok, const SpecialIds& ids, int max_seq) {
  json added = json::object();
  for (const AddedToken& a : tok.added_tokens()) {
    added[std::to_string(a.id)] = {{"content", a.text},    {"lstrip", false},
                                   {"normalized", false},  {"rstrip", false},
                                   {"single_word", false}, {"special", a.special}};
  }
  const auto text = [&](const std::optional<std::uint32_t>& id) {
    return id ? json(std::string(tok.token_bytes(*id))) : json(nullptr);
  };
  json j;
  // Borealis models were trained without a beginning-of-text token.
  j["add_bos_token"] = false;
  j["add_eos_token"] = false;
  j["added_tokens_decoder"] = added;
  j["bos_token"] = text(ids.bos);
  j["clean_up_tokenization_spaces"] = false;
  j["eos_token"] = text(ids.eos);
  j["model_max_length"] = max_seq;
  j["tokenizer_class"] = "PreTrainedTokenizerFast";
  return j.dump(2) + "\n";
}

bool is_weight_file(const std::string& name) {
  return name == kWeights || name == kIndex ||
         (name.starts_with("model-") && name.ends_with(".safetensors"));
}

}  // namespace

HfExportReport export_hf(const ModelWeights& model, const fs::path& tokenizer,
                         const fs::path& out_dir, const HfExportOptions& options) {
  const ModelConfig& c = model.config();
  const Tokenizer tok = load_model_tokenizer(tokenizer, c);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw Error(fmt::format("cannot create directory: {}", ec.message()), out_dir.string());

  // Shards as transformers cuts them: tensors in order, a new shard when the
  // next tensor would take this one past the limit.
  std::vector<std::vector<NamedTensor>> shards(1);
  std::vector<std::vector<HfTensor>> sources(1);  // where each tensor is in the flat buffer
  std::uint64_t shard_size = 0;
  HfExportReport report;
  for (HfTensor& t : hf_tensors(c)) {
    NamedTensor nt{t.name, t.shape, model.params() + t.offset, options.dtype, t.transposed};
    const std::uint64_t bytes = stored_bytes(nt);
    if (!shards.back().empty() && shard_size + bytes > options.shard_bytes) {
      shards.emplace_back();
      sources.emplace_back();
      shard_size = 0;
    }
    shards.back().push_back(std::move(nt));
    sources.back().push_back(std::move(t));
    shard_size += bytes;
    report.tensor_bytes += bytes;
    ++report.tensors;
  }
  report.shards = static_cast<int>(shards.size());
  // Tensor by tensor from the parameters to the file, dropping the pages of
  // a mapped checkpoint behind: memory holds one tensor, not the model.
  const auto save = [&](const fs::path& path, std::size_t shard,
                        const std::map<std::string, std::string>& metadata) {
    SafetensorsWriter writer(path, shards[shard], metadata);
    for (std::size_t i = 0; i < shards[shard].size(); ++i) {
      std::int64_t n = 1;
      for (const std::int64_t d : shards[shard][i].shape) n *= d;
      model.populate(sources[shard][i].offset, n);
      writer.write(shards[shard][i].data);
      model.release(sources[shard][i].offset, n);
    }
    writer.commit();
  };

  const SpecialIds ids = special_ids(tok);
  write_file_atomic(out_dir / kConfig, hf_config_json(c, options.dtype, ids));
  write_file_atomic(out_dir / "generation_config.json", hf_generation_config_json(ids));
  if (tok.source_format() == "huggingface") {
    const MappedFile file(tokenizer, MappedFile::Access::Sequential);
    write_file_atomic(out_dir / kTokenizer, file.text());
  } else {
    write_file_atomic(out_dir / kTokenizer, hf_tokenizer_json(tok));
  }
  write_file_atomic(out_dir / "tokenizer_config.json", tokenizer_config_json(tok, ids, c.max_seq));

  // transformers refuses safetensors files whose metadata lacks format "pt".
  const std::map<std::string, std::string> metadata{{"format", "pt"}};
  std::set<std::string> written;
  if (shards.size() == 1) {
    save(out_dir / kWeights, 0, metadata);
    written.insert(kWeights);
  } else {
    json weight_map = json::object();
    for (std::size_t i = 0; i < shards.size(); ++i) {
      const std::string name =
          fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
      save(out_dir / name, i, metadata);
      for (const auto& t : shards[i]) weight_map[t.name] = name;
      written.insert(name);
    }
    json index;
    index["metadata"] = {{"total_size", report.tensor_bytes}};
    index["weight_map"] = weight_map;
    write_file_atomic(out_dir / kIndex, index.dump(2) + "\n");
    written.insert(kIndex);
  }
  for (const auto& entry : fs::directory_iterator(out_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (is_weight_file(name) && !written.contains(name)) fs::remove(entry.path(), ec);
  }
  return report;
}

bool is_hf_model_dir(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / kConfig, ec) &&
         (fs::is_regular_file(dir / kWeights, ec) || fs::is_regular_file(dir / kIndex, ec));
}

namespace {

// The safetensors files of a Hugging Face directory and which holds each tensor.
class HfWeights {
 public:
  explicit HfWeights(const fs::path& dir) {
    std::error_code ec;
    if (fs::is_regular_file(dir / kWeights, ec)) {
      source_ = dir / kWeights;
      files_.push_back(std::make_unique<SafetensorsFile>(source_));
      for (const auto& name : files_[0]->names()) where_[name] = 0;
      return;
    }
    const fs::path index_path = dir / kIndex;
    source_ = index_path;
    if (!fs::is_regular_file(index_path, ec)) {
      throw Error(fmt::format("no {} or {} (only safetensors weights are read; convert "
                              "pytorch_model.bin with transformers first)",
                              kWeights, kIndex),
                  dir.string());
    }
    const json index = read_json(index_path);
    const auto map = index.find("weight_map");
    if (!index.is_object() || map == index.end() || !map->is_object()) {
      throw Error("no 'weight_map' object", index_path.string());
    }
    std::map<std::string, std::size_t> by_file;
    for (const auto& [tensor, file] : map->items()) {
      if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos) {
        throw Error(fmt::format("weight_map entry '{}' is not a file name", tensor),
                    index_path.string());
      }
      const std::string name = file.get<std::string>();
      auto [it, added] = by_file.emplace(name, files_.size());
      if (added) files_.push_back(std::make_unique<SafetensorsFile>(dir / name));
      where_[tensor] = it->second;
    }
    // Every tensor of every shard must be in the index, and where it says.
    for (const auto& [name, i] : by_file) {
      for (const auto& tensor : files_[i]->names()) {
        const auto it = where_.find(tensor);
        if (it == where_.end() || it->second != i) {
          throw Error(fmt::format("tensor '{}' is not mapped to this file by {}", tensor, kIndex),
                      files_[i]->where());
        }
      }
    }
  }

  bool contains(const std::string& name) const { return where_.contains(name); }
  const SafetensorsFile* file_of(const std::string& name) const {
    const auto it = where_.find(name);
    return it == where_.end() ? nullptr : files_[it->second].get();
  }
  const std::map<std::string, std::size_t>& tensors() const { return where_; }
  // model.safetensors, or the index of the shards.
  const fs::path& source() const { return source_; }

 private:
  fs::path source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::size_t> where_;  // tensor name -> index in files_
};

}  // namespace

namespace {

// A Hugging Face directory read and checked, its tensors not yet read: the
// model's config and, for each tensor of hf_tensors(config), the file and
// name it is stored under.
struct HfSource {
  ModelConfig config;
  std::unique_ptr<HfWeights> weights;
  struct Item {
    HfTensor tensor;
    std::string stored;  // its name in the file
    const SafetensorsFile* file = nullptr;
  };
  std::vector<Item> items;

  std::int64_t elements(const Item& item) const {
    std::int64_t n = 1;
    for (const std::int64_t d : item.tensor.shape) n *= d;
    return n;
  }
  // Reads item into the flat buffer whose element `base` is at `buffer`.
  void read(const Item& item, float* buffer, std::int64_t base) const {
    item.file->read_float(item.stored, item.tensor.shape, buffer + (item.tensor.offset - base),
                          item.tensor.transposed);
  }
};

HfSource open_hf_source(const fs::path& dir) {
  const fs::path config_path = dir / kConfig;
  std::error_code ec;
  if (!fs::is_regular_file(config_path, ec)) throw Error("no config.json", dir.string());
  const std::string name = fs::absolute(dir, ec).lexically_normal().filename().string();
  HfSource src;
  src.config = model_config_from_hf(read_json(config_path), config_path.string(),
                                    name.empty() ? "hf" : name);
  const ModelConfig& c = src.config;
  src.weights = std::make_unique<HfWeights>(dir);
  const HfWeights& weights = *src.weights;

  // GPT2Model checkpoints (and the original GPT-2 release) name tensors
  // without the "transformer." prefix of GPT2LMHeadModel.
  std::string strip;
  if (c.family == ModelFamily::kGpt2 && !weights.contains("transformer.wte.weight") &&
      weights.contains("wte.weight")) {
    strip = "transformer.";
  }
  std::set<std::string> used;
  for (HfTensor& t : hf_tensors(c)) {
    std::string stored = t.name.substr(t.name.starts_with(strip) ? strip.size() : 0);
    const SafetensorsFile* file = weights.file_of(stored);
    if (file == nullptr) {
      throw Error(fmt::format("tensor '{}' is missing", stored), weights.source().string());
    }
    const SafetensorsFile::Entry* e = file->find(stored);
    if (e == nullptr) throw Error(fmt::format("tensor '{}' is missing", stored), file->where());
    if (e->shape != t.shape) {
      throw Error(fmt::format("tensor '{}' has shape [{}] but config.json implies [{}]", stored,
                              fmt::join(e->shape, ", "), fmt::join(t.shape, ", ")),
                  file->where());
    }
    file->check_float(stored, t.shape);
    used.insert(stored);
    src.items.push_back({std::move(t), std::move(stored), file});
  }
  for (const auto& [tensor, i] : weights.tensors()) {
    if (used.contains(tensor) || hf_ignored_tensor(c, strip + tensor) ||
        hf_ignored_tensor(c, tensor)) {
      continue;
    }
    throw Error(fmt::format("tensor '{}' is not part of a {} model as config.json describes it "
                            "(Borealis's {} has {})",
                            tensor, family_name(c.family), family_name(c.family),
                            c.has_bias() ? "no such tensor" : "no biases and no such tensor"),
                weights.file_of(tensor)->where());
  }
  return src;
}

}  // namespace

LoadedModel load_hf_model(const fs::path& dir) {
  const HfSource src = open_hf_source(dir);
  LoadedModel loaded;
  loaded.dir = dir;
  loaded.config = src.config;
  loaded.params.assign(static_cast<std::size_t>(ParamLayout(src.config).total()), 0.0f);
  for (const HfSource::Item& item : src.items) src.read(item, loaded.params.data(), 0);
  return loaded;
}

LoadedModel load_any_model(const fs::path& path) {
  if (is_hf_model_dir(path)) return load_hf_model(path);
  const fs::path dir = resolve_checkpoint_dir(path);
  if (dir != path) spdlog::info("using checkpoint {}", dir.string());
  return load_model_dir(dir);
}

ModelWeights open_any_model(const fs::path& path) {
  if (is_hf_model_dir(path))
    return ModelWeights(std::make_shared<const LoadedModel>(load_hf_model(path)));
  const fs::path dir = resolve_checkpoint_dir(path);
  if (dir != path) spdlog::info("using checkpoint {}", dir.string());
  return map_model_dir(dir);
}

HfImportReport import_hf(const fs::path& hf_dir, const fs::path& ckpt_dir) {
  const HfSource src = open_hf_source(hf_dir);  // every check before anything is written
  HfImportReport report{src.config, false};
  std::error_code ec;
  fs::create_directories(ckpt_dir, ec);
  if (ec) throw Error(fmt::format("cannot create directory: {}", ec.message()), ckpt_dir.string());
  const fs::path tok_path = hf_dir / kTokenizer;
  if (fs::is_regular_file(tok_path, ec)) {
    const Tokenizer tok = Tokenizer::load(tok_path);  // an unsupported tokenizer fails here
    if (tok.vocab_size() > static_cast<std::size_t>(src.config.vocab_size)) {
      throw Error(fmt::format("tokenizer has {} tokens but config.json's vocab_size is {}",
                              tok.vocab_size(), src.config.vocab_size),
                  tok_path.string());
    }
    const MappedFile file(tok_path, MappedFile::Access::Sequential);
    write_file_atomic(ckpt_dir / kTokenizer, file.text());
    report.tokenizer = true;
  }
  // model.safetensors last: its presence makes the directory a checkpoint.
  // Written in pieces, view by view, with the bytes save_safetensors writes
  // for the whole buffer: a float32 tensor stored as Borealis stores it goes
  // to the file straight from the mapped source; any other (float16,
  // bfloat16, GPT-2's Conv1D weights stored transposed) is converted a block
  // at a time into a buffer that stays in cache; padding rows are zeros.
  // The source is mapped in 16 MiB at a time, in one call, and dropped once
  // written (a transposed tensor whole), so memory holds a piece, not a
  // tensor or the model.
  const ParamLayout layout(src.config);
  std::vector<NamedTensor> views;
  for (const ParamView& v : layout.views()) views.push_back({v.name, v.shape, nullptr});
  SafetensorsWriter writer(ckpt_dir / kWeights, views,
                           {{kModelConfigKey, model_config_to_json(src.config)}});
  constexpr std::int64_t kBlock = 1 << 16;  // elements: 256 KiB of float
  constexpr std::int64_t kPiece = 1 << 22;  // elements: 16 MiB of float32 source
  std::vector<float> block(kBlock);
  const std::vector<float> zeros(kBlock, 0.0f);
  const auto write = [&](const void* data, std::int64_t elements) {
    writer.append(data, static_cast<std::size_t>(elements) * 4);
  };
  for (const ParamView& v : layout.views()) {
    std::vector<const HfSource::Item*> inside;
    for (const HfSource::Item& item : src.items) {
      if (item.tensor.offset >= v.offset && item.tensor.offset < v.offset + v.size) {
        inside.push_back(&item);
      }
    }
    std::sort(inside.begin(), inside.end(), [](const HfSource::Item* a, const HfSource::Item* b) {
      return a->tensor.offset < b->tensor.offset;
    });
    std::int64_t at = v.offset;  // the next element of the file's buffer to write
    const auto zeros_to = [&](std::int64_t end) {
      for (; at < end; at += std::min(kBlock, end - at))
        write(zeros.data(), std::min(kBlock, end - at));
    };
    for (const HfSource::Item* item : inside) {
      if (item->tensor.offset < at) {
        throw std::logic_error(
            fmt::format("import: tensor '{}' overlaps the one before it", item->tensor.name));
      }
      zeros_to(item->tensor.offset);
      const SafetensorsFile& file = *item->file;
      const SafetensorsFile::Entry& e = *file.find(item->stored);
      const std::int64_t n = src.elements(*item);
      const std::uint64_t width = e.dtype == "F32" ? 4 : 2;  // F16, BF16 (checked)
      if (item->tensor.transposed) {
        // A block of the transpose reads a strip of every stored row: the
        // whole tensor is mapped in, then dropped.
        file.populate(e.begin, e.end);
        for (std::int64_t from = 0; from < n; from += kBlock) {
          const std::int64_t count = std::min(kBlock, n - from);
          file.read_float(item->stored, item->tensor.shape, block.data(), true, from, count);
          write(block.data(), count);
        }
        file.release(e.begin, e.end);
      } else {
        // In pieces of the source, each mapped in, written and dropped.
        for (std::int64_t from = 0; from < n; from += kPiece) {
          const std::int64_t count = std::min(kPiece, n - from);
          const std::uint64_t begin = e.begin + static_cast<std::uint64_t>(from) * width;
          const std::uint64_t end = begin + static_cast<std::uint64_t>(count) * width;
          file.populate(begin, end);
          if (e.dtype == "F32") {
            write(file.data() + begin, count);
          } else {
            for (std::int64_t at_block = from; at_block < from + count; at_block += kBlock) {
              const std::int64_t k = std::min(kBlock, from + count - at_block);
              file.read_float(item->stored, item->tensor.shape, block.data(), false, at_block, k);
              write(block.data(), k);
            }
          }
          file.release(begin, end);
        }
      }
      at += n;
    }
    zeros_to(v.offset + v.size);
  }
  writer.commit();
  return report;
}

}  // namespace borealis
