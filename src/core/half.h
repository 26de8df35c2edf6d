// 16-bit floating point: IEEE half (f16) and bfloat16 (bf16), as stored in
// safetensors and GGUF files, to and from float.
//
// Conversions to 16 bits round to nearest, ties to even (what PyTorch's
// tensor.to(torch.float16 / torch.bfloat16) does), keep infinities and
// keep NaN a NaN. Conversions to float are exact.
#pragma once

#include <bit>
#include <cstdint>

namespace borealis {

// GCC's _Float16 converts with F16C instructions where the target has them
// and exactly in software otherwise; both round to nearest even.
inline std::uint16_t float_to_f16(float x) {
  return std::bit_cast<std::uint16_t>(static_cast<_Float16>(x));
}
inline float f16_to_float(std::uint16_t h) {
  return static_cast<float>(std::bit_cast<_Float16>(h));
}

// bfloat16 is the top half of a float; rounding adds half an ulp of the
// kept part (minus one when the kept part is even, for ties to even).
inline std::uint16_t float_to_bf16(float x) {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<std::uint16_t>((bits >> 16) | 0x40);  // quiet NaN, sign kept
  }
  const std::uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>((bits + rounding) >> 16);
}
inline float bf16_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

}  // namespace borealis
