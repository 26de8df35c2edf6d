#include "model/safetensors.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/half.h"
#include "core/hash.h"
#include "core/mapped_file.h"

namespace borealis {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts need byte swapping");

namespace {
// Headers beyond this are not weights files (the format's own limit is 100 MB).
constexpr std::uint64_t kMaxHeader = 100u << 20;
// Converted tensors are written through a buffer of this many elements.
constexpr std::int64_t kConvertChunk = 1 << 16;

std::int64_t element_count(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (const std::int64_t d : shape) n *= d;
  return n;
}

// Elements [from, from + n) (row-major in the stored shape) of a tensor, from
// its data, into out. A transposed tensor walks its stored rows with
// counters, not a division per element.
void gather(const NamedTensor& t, std::int64_t from, std::int64_t n, float* out) {
  if (!t.transposed) {
    std::memcpy(out, t.data + from, static_cast<std::size_t>(n) * sizeof(float));
    return;
  }
  const std::int64_t rows = t.shape[0], cols = t.shape[1];
  std::int64_t r = from / cols, c = from % cols;
  for (std::int64_t i = 0; i < n; ++i) {
    out[i] = t.data[c * rows + r];
    if (++c == cols) {
      c = 0;
      ++r;
    }
  }
}

// Writes elements [from, from + n) of the tensor as stored.
template <typename Put>
void put_converted(const NamedTensor& t, std::int64_t from, std::int64_t n, Put&& put) {
  std::vector<float> buf(static_cast<std::size_t>(n));
  gather(t, from, n, buf.data());
  if (t.dtype == TensorDtype::kF32) {
    put(buf.data(), buf.size() * sizeof(float));
    return;
  }
  std::vector<std::uint16_t> half(static_cast<std::size_t>(n));
  const bool f16 = t.dtype == TensorDtype::kF16;
  for (std::size_t i = 0; i < half.size(); ++i) {
    half[i] = f16 ? float_to_f16(buf[i]) : float_to_bf16(buf[i]);
  }
  put(half.data(), half.size() * sizeof(std::uint16_t));
}

}  // namespace

std::string_view dtype_name(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::kF32:
      return "F32";
    case TensorDtype::kF16:
      return "F16";
    case TensorDtype::kBF16:
      return "BF16";
  }
  return "?";
}

std::size_t dtype_bytes(TensorDtype dtype) {
  return dtype == TensorDtype::kF32 ? 4 : 2;
}

std::uint64_t stored_bytes(const NamedTensor& tensor) {
  return static_cast<std::uint64_t>(element_count(tensor.shape)) * dtype_bytes(tensor.dtype);
}

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

SafetensorsWriter::SafetensorsWriter(const std::filesystem::path& path,
                                     std::vector<NamedTensor> tensors,
                                     const std::map<std::string, std::string>& metadata)
    : tensors_(std::move(tensors)), out_(path) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (const auto& t : tensors_) {
    for (const std::int64_t d : t.shape) {
      if (d < 0) throw std::invalid_argument(fmt::format("tensor '{}': negative shape", t.name));
    }
    if (t.transposed && t.shape.size() != 2) {
      throw std::invalid_argument(fmt::format("tensor '{}': only 2-D tensors transpose", t.name));
    }
    if (t.name == "__metadata__" || header.contains(t.name)) {
      throw std::invalid_argument(fmt::format("tensor name '{}' used twice or reserved", t.name));
    }
    const std::uint64_t bytes = stored_bytes(t);
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data 8-byte aligned
  const std::uint64_t length = text.size();
  put(&length, sizeof(length));
  put(text.data(), text.size());
}

void SafetensorsWriter::put(const void* data, std::size_t bytes) {
  out_.write(data, bytes);
  hash_.update(data, bytes);
}

void SafetensorsWriter::write(const float* data) {
  if (next_ >= tensors_.size())
    throw std::logic_error("SafetensorsWriter: more tensors than listed");
  if (appended_ != 0)
    throw std::logic_error("SafetensorsWriter: write() inside an appended tensor");
  NamedTensor t = tensors_[next_++];
  t.data = data;
  if (t.dtype == TensorDtype::kF32 && !t.transposed) {
    put(t.data, static_cast<std::size_t>(stored_bytes(t)));
    return;
  }
  const std::int64_t n = element_count(t.shape);
  const auto sink = [&](const void* p, std::size_t bytes) { put(p, bytes); };
  for (std::int64_t from = 0; from < n; from += kConvertChunk) {
    put_converted(t, from, std::min(kConvertChunk, n - from), sink);
  }
}

void SafetensorsWriter::append(const void* stored, std::size_t bytes) {
  const auto* p = static_cast<const std::byte*>(stored);
  while (bytes > 0) {
    if (next_ >= tensors_.size()) {
      throw std::logic_error("SafetensorsWriter: more bytes than the listed tensors hold");
    }
    const std::uint64_t size = stored_bytes(tensors_[next_]);
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes, size - appended_));
    put(p, n);
    p += n;
    bytes -= n;
    appended_ += n;
    if (appended_ == size) {  // empty tensors are passed over here too
      ++next_;
      appended_ = 0;
    }
  }
}

FileDigest SafetensorsWriter::commit() {
  while (appended_ == 0 && next_ < tensors_.size() && stored_bytes(tensors_[next_]) == 0) ++next_;
  if (next_ != tensors_.size()) {
    throw std::logic_error("SafetensorsWriter: commit before every tensor is written");
  }
  const FileDigest digest{out_.size(), hash_.digest()};
  out_.commit();
  return digest;
}

FileDigest save_safetensors(const std::filesystem::path& path,
                            const std::vector<NamedTensor>& tensors,
                            const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter writer(path, tensors, metadata);
  for (const auto& t : tensors) writer.write(t.data);
  return writer.commit();
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path, MappedFile::Access access)
    : file_(path, access), where_(path.string()) {
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
      if (range.size() != 2 || range[1] < range[0]) {
        throw Error(fmt::format("tensor '{}' has a bad byte range", name), where_);
      }
      if (range[1] > h.data_size) {
        throw Error(fmt::format("tensor '{}' ends at byte {} of the data, past its end at {} "
                                "(truncated file?)",
                                name, range[1], h.data_size),
                    where_);
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

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& [name, entry] : tensors_) out.push_back(name);
  return out;
}

const SafetensorsFile::Entry* SafetensorsFile::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

void SafetensorsFile::release(std::uint64_t begin, std::uint64_t end) const {
  if (end <= begin) return;
  const auto at = static_cast<std::size_t>(data_ - file_.data());
  file_.release(at + static_cast<std::size_t>(begin), static_cast<std::size_t>(end - begin));
}

void SafetensorsFile::populate(std::uint64_t begin, std::uint64_t end) const {
  if (end <= begin) return;
  const auto at = static_cast<std::size_t>(data_ - file_.data());
  file_.populate(at + static_cast<std::size_t>(begin), static_cast<std::size_t>(end - begin));
}

void SafetensorsFile::check_float(const std::string& name,
                                  const std::vector<std::int64_t>& shape) const {
  const Entry* e = find(name);
  if (e == nullptr) throw Error(fmt::format("tensor '{}' is missing", name), where_);
  std::size_t width = 0;
  if (e->dtype == "F32") {
    width = 4;
  } else if (e->dtype == "F16" || e->dtype == "BF16") {
    width = 2;
  } else {
    throw Error(
        fmt::format("tensor '{}' has dtype {}; only F32, F16 and BF16 are read", name, e->dtype),
        where_);
  }
  if (e->shape != shape) {
    throw Error(fmt::format("tensor '{}' has shape [{}], expected [{}]", name,
                            fmt::join(e->shape, ", "), fmt::join(shape, ", ")),
                where_);
  }
  const std::int64_t n = element_count(shape);
  if (e->end - e->begin != static_cast<std::uint64_t>(n) * width) {
    throw Error(fmt::format("tensor '{}' has {} bytes, expected {} for its shape and dtype", name,
                            e->end - e->begin, static_cast<std::uint64_t>(n) * width),
                where_);
  }
}

void SafetensorsFile::read_float(const std::string& name, const std::vector<std::int64_t>& shape,
                                 float* out, bool transposed) const {
  read_float(name, shape, out, transposed, 0, element_count(shape));
}

void SafetensorsFile::read_float(const std::string& name, const std::vector<std::int64_t>& shape,
                                 float* out, bool transposed, std::int64_t from,
                                 std::int64_t count) const {
  check_float(name, shape);
  if (transposed && shape.size() != 2) {
    throw std::invalid_argument(fmt::format("tensor '{}': only 2-D tensors transpose", name));
  }
  const std::int64_t n = element_count(shape);
  if (from < 0 || count < 0 || from > n || count > n - from) {
    throw Error(fmt::format("elements [{}, {}) of tensor '{}' are out of range (it has {})", from,
                            from + count, name, n),
                where_);
  }
  const Entry* e = find(name);
  const std::byte* src = data_ + e->begin;
  if (e->dtype == "F32" && !transposed) {
    std::memcpy(out, src + from * 4, static_cast<std::size_t>(count) * 4);
    return;
  }
  const std::int64_t end = from + count;
  const auto convert = [&](auto load) {
    if (!transposed) {
      for (std::int64_t i = from; i < end; ++i) out[i - from] = load(i);
      return;
    }
    // The result is [cols, rows]: its element c * rows + r is stored (r, c).
    // In tiles of 32 stored rows, so that both sides stay in cache; the
    // first and last result rows of the range may be partial.
    const std::int64_t rows = shape[0], cols = shape[1];
    if (count == 0) return;
    const std::int64_t c_first = from / rows, c_last = (end - 1) / rows;
    constexpr std::int64_t kTile = 32;
    for (std::int64_t r0 = 0; r0 < rows; r0 += kTile) {
      for (std::int64_t c = c_first; c <= c_last; ++c) {
        const std::int64_t lo = std::max(r0, from - c * rows);
        const std::int64_t hi = std::min({r0 + kTile, rows, end - c * rows});
        float* dst = out + (c * rows - from);
        for (std::int64_t r = lo; r < hi; ++r) dst[r] = load(r * cols + c);
      }
    }
  };
  // One loop per stored type, so no element pays for the choice.
  if (e->dtype == "F32") {
    convert([src](std::int64_t i) {
      float x;
      std::memcpy(&x, src + i * 4, 4);
      return x;
    });
  } else if (e->dtype == "F16") {
    convert([src](std::int64_t i) {
      std::uint16_t h;
      std::memcpy(&h, src + i * 2, 2);
      return f16_to_float(h);
    });
  } else {
    convert([src](std::int64_t i) {
      std::uint16_t h;
      std::memcpy(&h, src + i * 2, 2);
      return bf16_to_float(h);
    });
  }
}

}  // namespace borealis
