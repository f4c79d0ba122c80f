// Fuzz the shard reader: any file is either refused with an og::Error or reads back in bounds.
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "data/shard.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = og_fuzz::write_file("shard.bin", data, size);
  try {
    og::Shard s = og::Shard::open(path);
    std::vector<int32_t> out(std::min<size_t>(s.num_tokens(), 4096));
    if (!out.empty()) s.read(0, out.size(), out.data(), 50304);
    if (s.num_tokens() > 1) s.read(s.num_tokens() - 1, 1, out.data(), 65536);
  } catch (const og::Error&) {}
  return 0;
}
