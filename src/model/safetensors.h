// Parameters to and from safetensors files, the weight format of Hugging Face
// and PyTorch (safetensors.torch.load_file reads what save_safetensors writes).
//
// A file is an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw little-endian data.
// Tensors carry the names of ParamLayout ("wte", "h.0.attn.qkv.w", ...); a
// tied lm head is stored once, as "wte". Parameters are F32; NamedTensor
// lists may also be written as F16 or BF16 (for exports), and a
// SafetensorsFile reads those back as float. Files of other tensors (pieces of flat buffers, e.g.
// optimizer shards) are written from NamedTensor lists and read through a SafetensorsFile, which
// maps the file and copies out any element range of a tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/atomic_file.h"
#include "core/hash.h"
#include "core/mapped_file.h"
#include "model/params.h"

namespace borealis {

// Element types of stored tensors. Conversions from float round to nearest
// even (core/half.h).
enum class TensorDtype { kF32, kF16, kBF16 };
std::string_view dtype_name(TensorDtype dtype);  // "F32", "F16", "BF16"
std::size_t dtype_bytes(TensorDtype dtype);

// Tensors of any names and shapes (pieces of flat buffers, such as the
// optimizer shards of checkpoints, or the tensors of an export), written in
// order, atomically. Returns the file's size and XXH3-128, computed while
// writing.
struct NamedTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  const float* data = nullptr;            // the product of shape elements
  TensorDtype dtype = TensorDtype::kF32;  // as stored; data is always float
  // A 2-D tensor whose data is the transpose of what is stored: data holds
  // [shape[1], shape[0]] row-major (Hugging Face's Conv1D weights are the
  // transpose of Borealis's [out, in] linear weights).
  bool transposed = false;
};
// The bytes save_safetensors writes for the tensor's data.
std::uint64_t stored_bytes(const NamedTensor& tensor);
struct FileDigest {
  std::uint64_t bytes = 0;
  Hash128 xxh3_128;
};
FileDigest save_safetensors(const std::filesystem::path& path,
                            const std::vector<NamedTensor>& tensors,
                            const std::map<std::string, std::string>& metadata = {});

// save_safetensors one tensor at a time, for data that is produced or
// released as the file is written (an import converting tensor by tensor, an
// export dropping the mapped pages behind it), so that no more than one
// tensor need be in memory. The header comes from the whole list (its data
// pointers are not read); write() then takes each tensor's data in the
// list's order, and commit() makes the file visible under its name. The
// bytes are those of save_safetensors for the same list.
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::filesystem::path& path, std::vector<NamedTensor> tensors,
                    const std::map<std::string, std::string>& metadata = {});
  // The data of the next tensor of the list (as NamedTensor::data: float,
  // transposed when the list says so).
  void write(const float* data);
  // The next `bytes` of the file's data section as stored, for tensors
  // written in pieces (converted a block at a time, or copied as they are
  // from another file). Pieces may be of any size and may span tensors;
  // write() may follow only once the appended bytes end a tensor.
  void append(const void* stored, std::size_t bytes);
  // After every tensor is written. Returns the file's size and XXH3-128.
  FileDigest commit();

 private:
  void put(const void* data, std::size_t bytes);

  std::vector<NamedTensor> tensors_;
  std::size_t next_ = 0;
  std::uint64_t appended_ = 0;  // bytes of tensor next_ given to append()
  AtomicFile out_;
  Hasher hash_;
};

// Writes every tensor of layout from params, atomically (temp file + rename).
// metadata goes to the header's "__metadata__" (string values, as the format
// requires). Returns the file's size and checksum.
FileDigest save_safetensors(const std::filesystem::path& path, const ParamLayout& layout,
                            const float* params,
                            const std::map<std::string, std::string>& metadata = {});

// Several flat buffers in one layout in one file, each tensor named
// prefix + view name (an optimizer's moments: {"m.", m}, {"v.", v}).
struct TensorGroup {
  std::string prefix;
  const float* data = nullptr;
};
struct MutableTensorGroup {
  std::string prefix;
  float* data = nullptr;
};
FileDigest save_safetensors(const std::filesystem::path& path, const ParamLayout& layout,
                            const std::vector<TensorGroup>& groups,
                            const std::map<std::string, std::string>& metadata = {});
void load_safetensors(const std::filesystem::path& path, const ParamLayout& layout,
                      const std::vector<MutableTensorGroup>& groups);

// The header's "__metadata__" strings (empty when it has none).
std::map<std::string, std::string> read_safetensors_metadata(const std::filesystem::path& path);

// Reads every tensor of layout into params. Throws borealis::Error naming the
// file when it is malformed, when a tensor is missing or has another dtype or
// shape, or when the file holds tensors the layout does not have.
void load_safetensors(const std::filesystem::path& path, const ParamLayout& layout, float* params);

// A safetensors file mapped read-only: tensors are read in place, and only
// the pages of the parts copied out are read from disk.
class SafetensorsFile {
 public:
  // Throws borealis::Error naming the file when it is missing or malformed.
  explicit SafetensorsFile(const std::filesystem::path& path,
                           MappedFile::Access access = MappedFile::Access::Normal);

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return tensors_.contains(name); }
  // Copies elements [from, from + count) of the F32 tensor `name`, which
  // must have exactly `shape` (flattened in row-major order), to out.
  // Throws Error naming the file and tensor when it is missing, has another
  // dtype or shape, or the range does not fit it.
  void read_f32(const std::string& name, const std::vector<std::int64_t>& shape, std::int64_t from,
                std::int64_t count, float* out) const;

  struct Entry {
    std::string dtype;  // as in the header: "F32", "BF16", ...
    std::vector<std::int64_t> shape;
    std::uint64_t begin = 0, end = 0;  // bytes in the data section
  };
  // Tensor names in the header (sorted), and one tensor's entry (nullptr
  // when absent).
  std::vector<std::string> names() const;
  const Entry* find(const std::string& name) const;
  const std::string& where() const { return where_; }
  // The whole tensor `name`, F32, F16 or BF16, as float. It must have
  // exactly `shape`; with transposed (2-D only), out receives the transpose,
  // [shape[1], shape[0]]. Throws Error naming the file and tensor as
  // read_f32 does, and for other dtypes.
  void read_float(const std::string& name, const std::vector<std::int64_t>& shape, float* out,
                  bool transposed = false) const;
  // Elements [from, from + count) of what read_float gives (of the
  // transpose, with transposed) to out, for reading a large tensor in
  // pieces. Throws as read_float does, and when the range does not fit.
  void read_float(const std::string& name, const std::vector<std::int64_t>& shape, float* out,
                  bool transposed, std::int64_t from, std::int64_t count) const;
  // The checks of read_float without the read: throws what it would throw.
  void check_float(const std::string& name, const std::vector<std::int64_t>& shape) const;

  // The data section, where an Entry's bytes [begin, end) are (in place, not
  // necessarily aligned for its dtype).
  const std::byte* data() const { return data_; }
  // Drops the mapped pages of data bytes [begin, end) from memory
  // (MappedFile::release), for readers done with them.
  void release(std::uint64_t begin, std::uint64_t end) const;
  // Maps the pages of data bytes [begin, end) in now (MappedFile::populate),
  // before they are read whole.
  void populate(std::uint64_t begin, std::uint64_t end) const;

 private:
  MappedFile file_;
  std::string where_;
  const std::byte* data_ = nullptr;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry> tensors_;
};

}  // namespace borealis
