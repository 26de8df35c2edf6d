#include "model/safetensors.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/mapped_file.h"

namespace borealis {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts need byte swapping");

namespace {
// Headers beyond this are not weights files (the format's own limit is 100 MB).
constexpr std::uint64_t kMaxHeader = 100u << 20;
}  // namespace

FileDigest save_safetensors(const std::filesystem::path& path, const ParamLayout& layout,
                            const std::vector<TensorGroup>& groups,
                            const std::map<std::string, std::string>& metadata) {
  std::vector<NamedTensor> tensors;
  for (const auto& g : groups) {
    for (const auto& v : layout.views())
      tensors.push_back({g.prefix + v.name, v.shape, g.data + v.offset});
  }
  return save_safetensors(path, tensors, metadata);
}

FileDigest save_safetensors(const std::filesystem::path& path, const ParamLayout& layout,
                            const float* params,
                            const std::map<std::string, std::string>& metadata) {
  return save_safetensors(path, layout, std::vector<TensorGroup>{{"", params}}, metadata);
}

namespace {

struct Header {
  nlohmann::json json;
  const std::byte* data = nullptr;
  std::uint64_t data_size = 0;
};

Header read_header(const MappedFile& file, const std::string& where) {
  std::uint64_t length = 0;
  if (file.size() < sizeof(length)) throw Error("not a safetensors file: too short", where);
  std::memcpy(&length, file.data(), sizeof(length));
  if (length > kMaxHeader || length > file.size() - sizeof(length)) {
    throw Error(fmt::format("not a safetensors file: header length {} does not fit the file of "
                            "{} bytes",
                            length, file.size()),
                where);
  }
  Header h;
  try {
    h.json = nlohmann::json::parse(file.text().substr(sizeof(length), length));
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("not a safetensors file: bad JSON header: {}", e.what()), where);
  }
  if (!h.json.is_object()) throw Error("not a safetensors file: header is not an object", where);
  h.data = file.data() + sizeof(length) + length;
  h.data_size = file.size() - sizeof(length) - length;
  return h;
}

}  // namespace

std::map<std::string, std::string> read_safetensors_metadata(const std::filesystem::path& path) {
  const std::string where = path.string();
  const MappedFile file(path, MappedFile::Access::Sequential);
  const Header h = read_header(file, where);
  std::map<std::string, std::string> out;
  const auto it = h.json.find("__metadata__");
  if (it == h.json.end()) return out;
  if (!it->is_object()) throw Error("__metadata__ is not an object", where);
  for (const auto& [key, value] : it->items()) {
    if (!value.is_string()) {
      throw Error(fmt::format("__metadata__ value '{}' is not a string", key), where);
    }
    out[key] = value.get<std::string>();
  }
  return out;
}

void load_safetensors(const std::filesystem::path& path, const ParamLayout& layout,
                      const std::vector<MutableTensorGroup>& groups) {
  const std::string where = path.string();
  const MappedFile file(path, MappedFile::Access::Sequential);
  const Header h = read_header(file, where);
  std::set<std::string> wanted;
  for (const auto& g : groups) {
    for (const auto& v : layout.views()) {
      const std::string name = g.prefix + v.name;
      wanted.insert(name);
      const auto it = h.json.find(name);
      if (it == h.json.end()) throw Error(fmt::format("tensor '{}' is missing", name), where);
      try {
        const std::string dtype = it->at("dtype").get<std::string>();
        if (dtype != "F32") {
          throw Error(fmt::format("tensor '{}' has dtype {}, expected F32", name, dtype), where);
        }
        const auto shape = it->at("shape").get<std::vector<std::int64_t>>();
        if (shape != v.shape) {
          throw Error(fmt::format("tensor '{}' has shape [{}], expected [{}]", name,
                                  fmt::join(shape, ", "), fmt::join(v.shape, ", ")),
                      where);
        }
        const auto range = it->at("data_offsets").get<std::vector<std::uint64_t>>();
        const std::uint64_t bytes = static_cast<std::uint64_t>(v.size) * sizeof(float);
        if (range.size() != 2 || range[1] < range[0] || range[1] - range[0] != bytes ||
            range[1] > h.data_size) {
          throw Error(fmt::format("tensor '{}' has a bad byte range", name), where);
        }
        std::memcpy(g.data + v.offset, h.data + range[0], bytes);
      } catch (const nlohmann::json::exception& e) {
        throw Error(fmt::format("tensor '{}' has a malformed header entry: {}", name, e.what()),
                    where);
      }
    }
  }
  for (const auto& [name, value] : h.json.items()) {
    if (name != "__metadata__" && !wanted.contains(name)) {
      throw Error(fmt::format("tensor '{}' is not part of this model", name), where);
    }
  }
}

void load_safetensors(const std::filesystem::path& path, const ParamLayout& layout, float* params) {
  load_safetensors(path, layout, std::vector<MutableTensorGroup>{{"", params}});
}

FileDigest save_safetensors(const std::filesystem::path& path,
                            const std::vector<NamedTensor>& tensors,
                            const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  std::vector<std::size_t> sizes;
  for (const auto& t : tensors) {
    std::int64_t elements = 1;
    for (const std::int64_t d : t.shape) {
      if (d < 0) throw std::invalid_argument(fmt::format("tensor '{}': negative shape", t.name));
      elements *= d;
    }
    if (t.name == "__metadata__" || header.contains(t.name)) {
      throw std::invalid_argument(fmt::format("tensor name '{}' used twice or reserved", t.name));
    }
    const std::uint64_t bytes = static_cast<std::uint64_t>(elements) * sizeof(float);
    header[t.name] = {
        {"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    sizes.push_back(static_cast<std::size_t>(bytes));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  const std::uint64_t length = text.size();
  AtomicFile out(path);
  Hasher hash;
  const auto put = [&](const void* data, std::size_t bytes) {
    out.write(data, bytes);
    hash.update(data, bytes);
  };
  put(&length, sizeof(length));
  put(text.data(), text.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) put(tensors[i].data, sizes[i]);
  out.commit();
  return {sizeof(length) + length + offset, hash.digest()};
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : file_(path, MappedFile::Access::Normal), where_(path.string()) {
  const Header h = read_header(file_, where_);
  data_ = h.data;
  for (const auto& [name, value] : h.json.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) throw Error("__metadata__ is not an object", where_);
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) {
          throw Error(fmt::format("__metadata__ value '{}' is not a string", key), where_);
        }
        metadata_[key] = text.get<std::string>();
      }
      continue;
    }
    try {
      Entry e;
      e.dtype = value.at("dtype").get<std::string>();
      e.shape = value.at("shape").get<std::vector<std::int64_t>>();
      const auto range = value.at("data_offsets").get<std::vector<std::uint64_t>>();
      if (range.size() != 2 || range[1] < range[0] || range[1] > h.data_size) {
        throw Error(fmt::format("tensor '{}' has a bad byte range", name), where_);
      }
      e.begin = range[0];
      e.end = range[1];
      tensors_.emplace(name, std::move(e));
    } catch (const nlohmann::json::exception& ex) {
      throw Error(fmt::format("tensor '{}' has a malformed header entry: {}", name, ex.what()),
                  where_);
    }
  }
}

void SafetensorsFile::read_f32(const std::string& name, const std::vector<std::int64_t>& shape,
                               std::int64_t from, std::int64_t count, float* out) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(fmt::format("tensor '{}' is missing", name), where_);
  const Entry& e = it->second;
  if (e.dtype != "F32") {
    throw Error(fmt::format("tensor '{}' has dtype {}, expected F32", name, e.dtype), where_);
  }
  if (e.shape != shape) {
    throw Error(fmt::format("tensor '{}' has shape [{}], expected [{}]", name,
                            fmt::join(e.shape, ", "), fmt::join(shape, ", ")),
                where_);
  }
  std::int64_t elements = 1;
  for (const std::int64_t d : shape) elements *= d;
  if (e.end - e.begin != static_cast<std::uint64_t>(elements) * sizeof(float)) {
    throw Error(fmt::format("tensor '{}' has a bad byte range", name), where_);
  }
  if (from < 0 || count < 0 || from > elements - count) {
    throw std::out_of_range(
        fmt::format("elements [{}, {}) of tensor '{}' of {}", from, from + count, name, elements));
  }
  if (count == 0) return;
  std::memcpy(out, data_ + e.begin + static_cast<std::uint64_t>(from) * sizeof(float),
              static_cast<std::size_t>(count) * sizeof(float));
}

}  // namespace borealis
