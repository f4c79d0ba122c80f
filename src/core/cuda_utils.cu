#include "core/cuda_utils.h"

namespace og {

bool cuda_available() {
  static const bool ok = [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  }();
  return ok;
}

}  // namespace og
