// Fuzz the YAML config loader + validator and the CLI override parser: any input is either a
// valid config or an og::Error; nothing else escapes.
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "tests/fuzz/fuzz_common.h"
#include "train/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // First line (up to '\n'): CLI overrides separated by spaces; the rest: the YAML file.
  const std::string all(reinterpret_cast<const char*>(data), size);
  const size_t nl = all.find('\n');
  const std::string cli = nl == std::string::npos ? "" : all.substr(0, nl);
  const std::string yaml = nl == std::string::npos ? all : all.substr(nl + 1);
  std::vector<std::string> overrides;
  size_t pos = 0;
  while (pos < cli.size()) {
    size_t sp = cli.find(' ', pos);
    if (sp == std::string::npos) sp = cli.size();
    if (sp > pos) overrides.push_back(cli.substr(pos, sp - pos));
    pos = sp + 1;
  }
  const std::string path =
      og_fuzz::write_file("config.yaml", reinterpret_cast<const uint8_t*>(yaml.data()), yaml.size());
  try {
    og::Config c = og::load_config(path, overrides);
    og::validate_config(c, 1 + (int)(size % 4));
    (void)og::config_to_yaml(c);
  } catch (const og::Error&) {}
  return 0;
}
