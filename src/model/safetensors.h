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

#include "model/params.h"

namespace borealis {

// Writes every tensor of layout from params, atomically (temp file + rename).
// metadata goes to the header's "__metadata__" (string values, as the format
// requires).
void save_safetensors(const std::filesystem::path& path, const ParamLayout& layout,
                      const float* params, const std::map<std::string, std::string>& metadata = {});

// Reads every tensor of layout into params. Throws borealis::Error naming the
// file when it is malformed, when a tensor is missing or has another dtype or
// shape, or when the file holds tensors the layout does not have.
void load_safetensors(const std::filesystem::path& path, const ParamLayout& layout, float* params);

// The header's "__metadata__" string map (empty when the file has none).
// Throws borealis::Error naming the file when it is not a safetensors file or
// the metadata is not a map of strings.
std::map<std::string, std::string> load_safetensors_metadata(const std::filesystem::path& path);

}  // namespace borealis
