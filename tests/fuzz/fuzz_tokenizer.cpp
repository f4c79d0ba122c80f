// Fuzz the GPT-2 tokenizer on arbitrary bytes: encoding never fails, ids are in range, and
// decoding gives the input back exactly.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const og::GPT2Tokenizer tok = og::GPT2Tokenizer::load(og::default_tokenizer_dir());
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::vector<int> ids = tok.encode(text);
  for (int id : ids)
    if (id < 0 || id >= tok.vocab_size()) std::abort();
  if (tok.decode(ids) != text) std::abort();
  return 0;
}
