// One optimizer cross-check case produced by the PyTorch reference (tests/data/reference/README.md):
// a folder with manifest.yaml (algorithm, hyperparameters, parameter shapes, steps, and the
// name/shape/offset of every array) and data.bin (all arrays as little-endian float32).
// Loading is generic and strict: any shapes and step counts; every manifest key must be known.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/param_layout.h"
#include "optim/hparams.h"

namespace og {

struct ReferenceArray {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // in floats, into data.bin
  size_t count = 0;   // product of shape
};

struct ReferenceParam {
  int64_t rows = 0, cols = 0;  // a 1-D shape [n] is (1, n)
  ParamRole role = ParamRole::Matrix;
};

struct ReferenceCase {
  std::string dir;   // the case folder
  std::string name;  // manifest "case" (the folder name when absent)
  OptimHParams hp;
  float lr = 0.0f;  // constant learning rate of every step
  int64_t steps = 0;
  std::vector<ReferenceParam> params;  // manifest "shapes" (and optional "roles")
  std::map<std::string, ReferenceArray> arrays;
  std::vector<float> data;  // all of data.bin

  bool has(const std::string& array) const { return arrays.count(array) != 0; }
  // The values of an array that must exist and hold `expect_count` floats; otherwise og::Error
  // naming the case folder and the array.
  const float* array(const std::string& name, size_t expect_count) const;
};

// Throws og::Error naming the folder and the key for a missing or unreadable file, an unknown
// key or algorithm, a missing required key, or an array that does not fit in data.bin.
ReferenceCase load_reference_case(const std::string& dir);

}  // namespace og
