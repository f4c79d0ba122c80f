// orthogpt command-line entry (skeleton; subcommands are wired as they land).
#include <cstdio>

#include "core/error.h"
#include "train/config.h"

int main(int argc, char** argv) {
  try {
    og::Config c = og::load_config("");
    og::validate_config(c);
    std::fputs(og::config_to_yaml(c).c_str(), stdout);
  } catch (const og::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
