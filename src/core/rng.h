// Random numbers. Two kinds:
//  - og::Rng: a sequential xoshiro256** stream with uniform/normal draws (weight init, tests).
//  - og::hash_u64 / counter_uniform: stateless counter-based draws, the same on host and device,
//    so a quantity like "the random key of slice i of parameter p at step t" is reproducible on
//    any backend and any rank from (seed, step, p, i) alone; nothing to checkpoint but the seed.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define OG_HD __host__ __device__ __forceinline__
#else
#define OG_HD inline
#endif

namespace og {

// SplitMix64 finalizer: a bijective mixer of 64-bit words.
OG_HD uint64_t mix_u64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Hash of a tuple of counters (seed, a, b, c): independent-looking 64-bit values.
OG_HD uint64_t hash_u64(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  return mix_u64(mix_u64(mix_u64(mix_u64(seed) ^ a) ^ b) ^ c);
}

// Uniform in [0, 1) from the top 53 bits of a hash.
OG_HD double counter_uniform(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  return (double)(hash_u64(seed, a, b, c) >> 11) * 0x1.0p-53;
}

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed) {
    uint64_t z = seed;
    for (auto& w : s_) w = mix_u64(z++);
    have_spare_ = false;
  }
  uint64_t next_u64() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  double uniform() { return (double)(next_u64() >> 11) * 0x1.0p-53; }  // [0, 1)
  // uniform integer in [0, n)
  uint64_t below(uint64_t n) { return n ? next_u64() % n : 0; }
  // standard normal (Box-Muller, caches the second value)
  double normal() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    double u1;
    do u1 = uniform();
    while (u1 <= 0.0);
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * M_PI * u2);
    have_spare_ = true;
    return r * std::cos(2.0 * M_PI * u2);
  }
  // full state, for checkpoints
  struct State {
    uint64_t s[4];
    double spare;
    bool have_spare;
  };
  State state() const { return {{s_[0], s_[1], s_[2], s_[3]}, spare_, have_spare_}; }
  void set_state(const State& st) {
    for (int i = 0; i < 4; ++i) s_[i] = st.s[i];
    spare_ = st.spare;
    have_spare_ = st.have_spare;
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
  double spare_ = 0.0;
  bool have_spare_ = false;
};

}  // namespace og
