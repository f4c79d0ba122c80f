// Errors: every failure the user can cause (bad file, bad key, NaN at a step) is an og::Error
// whose message names the file / key / step. main() prints it and exits non-zero.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace og {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throw og::Error with a fmt-formatted message.
template <typename... Args> [[noreturn]] inline void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace og

// OG_CHECK(cond, "fmt {}", args...): precondition on user input or on invariants.
#define OG_CHECK(cond, ...)               \
  do {                                    \
    if (!(cond)) ::og::fail(__VA_ARGS__); \
  } while (0)
