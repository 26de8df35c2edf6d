// The backend a command runs on, by the name its --device option takes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace borealis {

// The names --device accepts in this build: "cpu", and "cuda" where the
// CUDA backend is compiled in.
std::vector<std::string> backend_names();

// The float backend for `device` ("cpu" or "cuda"). Throws borealis::Error
// at `where` for an unknown name, a build without the CUDA backend, or no
// usable GPU, saying which. Precision::kBf16 (bf16 matmul operands) needs
// the CUDA backend: on "cpu" it is an error at `precision_where`.
std::unique_ptr<Backend<float>> make_backend(const std::string& device,
                                             const std::string& where = "--device",
                                             Precision precision = Precision::kFp32,
                                             const std::string& precision_where = "--precision");

}  // namespace borealis
