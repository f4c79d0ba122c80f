// bfloat16 on the host (and device): conversion with round-to-nearest-even, NaN kept a NaN.
// The CPU reference uses it to emulate bf16 storage bit-exactly as the GPU's __float2bfloat16_rn.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/rng.h"  // OG_HD

namespace og {

OG_HD uint16_t bf16_bits_from_float(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even, on the dropped 16 bits
  return (uint16_t)(u >> 16);
}

OG_HD float float_from_bf16_bits(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// x rounded to the nearest bf16 value, as a float.
OG_HD float round_to_bf16(float x) { return float_from_bf16_bits(bf16_bits_from_float(x)); }

}  // namespace og
