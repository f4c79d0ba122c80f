// Fuzz the checkpoint reader: a checkpoint folder with arbitrary state.bin / meta.json bytes is
// either read or refused with an og::Error.
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "tests/fuzz/fuzz_common.h"
#include "train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The first two bytes (little-endian) say how many of the following bytes are meta.json; the
  // rest is state.bin.
  if (size < 2) return 0;
  const size_t meta_len = std::min<size_t>(data[0] | (size_t)data[1] << 8, size - 2);
  std::filesystem::create_directories(og_fuzz::scratch() / "ckpt");
  og_fuzz::write_file("ckpt/meta.json", data + 2, meta_len);
  og_fuzz::write_file("ckpt/state.bin", data + 2 + meta_len, size - 2 - meta_len);
  try {
    og::CheckpointReader r((og_fuzz::scratch() / "ckpt").string());
    for (const auto& n : r.names()) {
      std::vector<char> buf(16);
      try {
        r.read(n, buf.data(), buf.size());
      } catch (const og::Error&) {}
    }
  } catch (const og::Error&) {}
  return 0;
}
