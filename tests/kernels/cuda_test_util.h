// Whether the CUDA tests can run here.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "kernels/cuda/cuda_backend.h"

namespace borealis::test {

// "" when a CUDA device can be used; otherwise why not, to skip with. With
// BOREALIS_REQUIRE_CUDA set (scripts/device-check.sh sets it on the GPU
// machine) a missing device is a test failure instead, so a check that was
// meant to run on a GPU cannot pass by skipping.
inline std::string cuda_skip_reason() {
  const std::string why = cuda_unavailable_reason();
  if (!why.empty() && std::getenv("BOREALIS_REQUIRE_CUDA") != nullptr) {
    ADD_FAILURE() << "BOREALIS_REQUIRE_CUDA is set, but " << why;
  }
  return why;
}

}  // namespace borealis::test
