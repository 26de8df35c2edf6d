// Parameters to and from safetensors files, the weight format of Hugging Face
// and PyTorch (safetensors.torch.load_file reads what save_safetensors writes).
//
// A file is an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw little-endian data.
// Tensors carry the names of ParamLayout ("wte", "h.0.attn.qkv.w", ...); a
// tied lm head is stored once, as "wte". Only F32 is written or accepted.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "model/params.h"

namespace borealis {

// Writes every tensor of layout from params, atomically (temp file + rename).
// metadata goes to the header's "__metadata__" (string values, as the format
// requires).
void save_safetensors(const std::filesystem::path& path, const ParamLayout& layout,
                      const float* params, const std::map<std::string, std::string>& metadata = {});

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
void save_safetensors(const std::filesystem::path& path, const ParamLayout& layout,
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


}  // namespace borealis
