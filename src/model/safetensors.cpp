#include "model/safetensors.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <bit>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/mapped_file.h"

namespace borealis {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts need byte swapping");

namespace {
// Headers beyond this are not weights files (the format's own limit is 100 MB).
constexpr std::uint64_t kMaxHeader = 100u << 20;
}  // namespace

void save_safetensors(const std::filesystem::path& path, const ParamLayout& layout,
                      const float* params, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& v : layout.views()) {
    const std::uint64_t bytes = static_cast<std::uint64_t>(v.size) * sizeof(float);
    header[v.name] = {
        {"dtype", "F32"}, {"shape", v.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  const std::uint64_t length = text.size();
  AtomicFile out(path);
  out.write(&length, sizeof(length));
  out.write(text);
  for (const auto& v : layout.views()) {
    out.write(params + v.offset, static_cast<std::size_t>(v.size) * sizeof(float));
  }
  out.commit();
}

void load_safetensors(const std::filesystem::path& path, const ParamLayout& layout, float* params) {
  const std::string where = path.string();
  const MappedFile file(path, MappedFile::Access::Sequential);
  std::uint64_t length = 0;
  if (file.size() < sizeof(length)) throw Error("not a safetensors file: too short", where);
  std::memcpy(&length, file.data(), sizeof(length));
  if (length > kMaxHeader || length > file.size() - sizeof(length)) {
    throw Error(fmt::format("not a safetensors file: header length {} does not fit the file of "
                            "{} bytes",
                            length, file.size()),
                where);
  }
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(file.text().substr(sizeof(length), length));
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("not a safetensors file: bad JSON header: {}", e.what()), where);
  }
  if (!header.is_object()) throw Error("not a safetensors file: header is not an object", where);
  const std::byte* data = file.data() + sizeof(length) + length;
  const std::uint64_t data_size = file.size() - sizeof(length) - length;
  std::set<std::string> wanted;
  for (const auto& v : layout.views()) {
    wanted.insert(v.name);
    const auto it = header.find(v.name);
    if (it == header.end()) throw Error(fmt::format("tensor '{}' is missing", v.name), where);
    try {
      const std::string dtype = it->at("dtype").get<std::string>();
      if (dtype != "F32") {
        throw Error(fmt::format("tensor '{}' has dtype {}, expected F32", v.name, dtype), where);
      }
      const auto shape = it->at("shape").get<std::vector<std::int64_t>>();
      if (shape != v.shape) {
        throw Error(fmt::format("tensor '{}' has shape [{}], expected [{}]", v.name,
                                fmt::join(shape, ", "), fmt::join(v.shape, ", ")),
                    where);
      }
      const auto range = it->at("data_offsets").get<std::vector<std::uint64_t>>();
      const std::uint64_t bytes = static_cast<std::uint64_t>(v.size) * sizeof(float);
      if (range.size() != 2 || range[1] < range[0] || range[1] - range[0] != bytes ||
          range[1] > data_size) {
        throw Error(fmt::format("tensor '{}' has a bad byte range", v.name), where);
      }
      std::memcpy(params + v.offset, data + range[0], bytes);
    } catch (const nlohmann::json::exception& e) {
      throw Error(fmt::format("tensor '{}' has a malformed header entry: {}", v.name, e.what()),
                  where);
    }
  }
  for (const auto& [name, value] : header.items()) {
    if (name != "__metadata__" && !wanted.contains(name)) {
      throw Error(fmt::format("tensor '{}' is not part of this model", name), where);
    }
  }
}

std::map<std::string, std::string> load_safetensors_metadata(const std::filesystem::path& path) {
  const std::string where = path.string();
  const MappedFile file(path);
  std::uint64_t length = 0;
  if (file.size() < sizeof(length)) throw Error("not a safetensors file: too short", where);
  std::memcpy(&length, file.data(), sizeof(length));
  if (length > kMaxHeader || length > file.size() - sizeof(length)) {
    throw Error(fmt::format("not a safetensors file: header length {} does not fit the file of "
                            "{} bytes",
                            length, file.size()),
                where);
  }
  std::map<std::string, std::string> metadata;
  try {
    const nlohmann::json header = nlohmann::json::parse(file.text().substr(sizeof(length), length));
    if (!header.is_object()) throw Error("not a safetensors file: header is not an object", where);
    const auto it = header.find("__metadata__");
    if (it == header.end()) return metadata;
    if (!it->is_object()) throw Error("__metadata__ is not an object", where);
    for (const auto& [key, value] : it->items()) {
      if (!value.is_string()) {
        throw Error(fmt::format("__metadata__ value of '{}' is not a string", key), where);
      }
      metadata[key] = value.get<std::string>();
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("not a safetensors file: bad JSON header: {}", e.what()), where);
  }
  return metadata;
}

}  // namespace borealis
