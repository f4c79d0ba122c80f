// Loading of reference cross-check cases (see reference_case.h).
#include "optim/reference_case.h"

#include <yaml-cpp/yaml.h>

#include <bit>
#include <filesystem>
#include <fstream>
#include <functional>

#include "core/error.h"

namespace og {
namespace {

static_assert(std::endian::native == std::endian::little, "data.bin is little-endian float32");

template <typename T> T scalar(const std::string& dir, const std::string& key, const YAML::Node& n) {
  try {
    return n.as<T>();
  } catch (const YAML::Exception& e) {
    fail("reference case {}: key '{}': cannot read '{}' ({})", dir, key, YAML::Dump(n), e.what());
  }
}

std::vector<int64_t> shape_of(const std::string& dir, const std::string& key, const YAML::Node& n) {
  OG_CHECK(n.IsSequence(), "reference case {}: key '{}' must be a list of dimensions", dir, key);
  std::vector<int64_t> shape;
  for (const YAML::Node& d : n) {
    const int64_t v = scalar<int64_t>(dir, key, d);
    OG_CHECK(v > 0, "reference case {}: key '{}' has a dimension {} (must be > 0)", dir, key, v);
    shape.push_back(v);
  }
  return shape;
}

std::vector<float> read_data(const std::string& dir) {
  const std::filesystem::path path = std::filesystem::path(dir) / "data.bin";
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  OG_CHECK(f, "reference case {}: cannot open {}", dir, path.string());
  const std::streamsize bytes = f.tellg();
  OG_CHECK(bytes % 4 == 0, "reference case {}: data.bin has {} bytes, not a whole number of float32", dir, bytes);
  std::vector<float> data((size_t)bytes / 4);
  f.seekg(0);
  OG_CHECK(f.read(reinterpret_cast<char*>(data.data()), bytes), "reference case {}: cannot read {}", dir,
           path.string());
  return data;
}

}  // namespace

const float* ReferenceCase::array(const std::string& key, size_t expect_count) const {
  auto it = arrays.find(key);
  OG_CHECK(it != arrays.end(), "reference case {}: array '{}' is missing from manifest.yaml", dir, key);
  OG_CHECK(it->second.count == expect_count, "reference case {}: array '{}' has {} values, expected {}", dir, key,
           it->second.count, expect_count);
  return data.data() + it->second.offset;
}

ReferenceCase load_reference_case(const std::string& dir) {
  ReferenceCase c;
  c.dir = dir;
  c.name = std::filesystem::path(dir).filename().string();
  if (c.name.empty()) c.name = std::filesystem::path(dir).parent_path().filename().string();
  const std::string manifest = (std::filesystem::path(dir) / "manifest.yaml").string();
  OG_CHECK(std::filesystem::exists(manifest), "reference case {}: no manifest.yaml", dir);
  YAML::Node root;
  try {
    root = YAML::LoadFile(manifest);
  } catch (const YAML::Exception& e) {
    fail("reference case {}: cannot parse manifest.yaml: {}", dir, e.what());
  }
  OG_CHECK(root.IsMap(), "reference case {}: manifest.yaml is not a mapping", dir);

  OptimHParams& hp = c.hp;
  bool have_algorithm = false, have_lr = false, have_steps = false, have_shapes = false;
  std::vector<std::string> roles;
  const YAML::Node* arrays = nullptr;
  YAML::Node arrays_node;
  auto str = [&](const std::string& k, const YAML::Node& n) { return scalar<std::string>(dir, k, n); };
  auto flt = [&](const std::string& k, const YAML::Node& n) { return scalar<float>(dir, k, n); };
  // Every key a manifest may hold, and what it sets.
  const std::map<std::string, std::function<void(const std::string&, const YAML::Node&)>> keys = {
      {"case", [&](auto& k, auto& n) { c.name = str(k, n); }},
      {"algorithm",
       [&](auto& k, auto& n) {
         hp.algorithm = parse_algorithm(str(k, n));
         have_algorithm = true;
       }},
      {"shapes",
       [&](auto& k, auto& n) {
         OG_CHECK(n.IsSequence() && n.size() > 0, "reference case {}: key 'shapes' must be a non-empty list", dir);
         for (const YAML::Node& s : n) {
           const std::vector<int64_t> shape = shape_of(dir, k, s);
           OG_CHECK(shape.size() == 1 || shape.size() == 2,
                    "reference case {}: key 'shapes': {}-D shape (1-D or 2-D only)", dir, shape.size());
           ReferenceParam p;
           p.rows = shape.size() == 2 ? shape[0] : 1;
           p.cols = shape.back();
           p.role = shape.size() == 2 ? ParamRole::Matrix : ParamRole::Vector;
           c.params.push_back(p);
         }
         have_shapes = true;
       }},
      {"roles",
       [&](auto& k, auto& n) {
         OG_CHECK(n.IsSequence(), "reference case {}: key 'roles' must be a list", dir);
         for (const YAML::Node& r : n) roles.push_back(str(k, r));
       }},
      {"steps",
       [&](auto& k, auto& n) {
         c.steps = scalar<int64_t>(dir, k, n);
         have_steps = true;
       }},
      {"lr",
       [&](auto& k, auto& n) {
         c.lr = flt(k, n);
         have_lr = true;
       }},
      {"betas",
       [&](auto& k, auto& n) {
         OG_CHECK(n.IsSequence() && n.size() == 2, "reference case {}: key 'betas' must be a pair", dir);
         hp.betas = {flt(k, n[0]), flt(k, n[1])};
       }},
      {"beta2", [&](auto& k, auto& n) { hp.beta2 = flt(k, n); }},
      {"weight_decay", [&](auto& k, auto& n) { hp.weight_decay = flt(k, n); }},
      {"epsilon", [&](auto& k, auto& n) { hp.eps = flt(k, n); }},
      {"mu", [&](auto& k, auto& n) { hp.mu = flt(k, n); }},
      {"nesterov", [&](auto& k, auto& n) { hp.nesterov = scalar<bool>(dir, k, n); }},
      {"adjust_lr", [&](auto& k, auto& n) { hp.adjust_lr = n.IsNull() ? AdjustLr::None : parse_adjust_lr(str(k, n)); }},
      {"ortho", [&](auto& k, auto& n) { hp.ortho = parse_ortho(str(k, n)); }},
      {"fraction", [&](auto& k, auto& n) { hp.fraction = flt(k, n); }},
      {"ef", [&](auto& k, auto& n) { hp.ef = scalar<bool>(dir, k, n); }},
      {"ef_decay", [&](auto& k, auto& n) { hp.ef_decay = flt(k, n); }},
      {"select", [&](auto& k, auto& n) { hp.select = parse_select(str(k, n)); }},
      {"select_dim", [&](auto& k, auto& n) { hp.select_dim = parse_select_dim(str(k, n)); }},
      {"rank_fraction", [&](auto& k, auto& n) { hp.rank_fraction = flt(k, n); }},
      {"cqr_warmup_steps", [&](auto& k, auto& n) { hp.cqr_warmup_steps = scalar<int>(dir, k, n); }},
      {"state_dtype", [&](auto& k, auto& n) { hp.state_dtype = parse_state_dtype(str(k, n)); }},
      {"seed", [&](auto& k, auto& n) { hp.seed = scalar<uint64_t>(dir, k, n); }},
      {"arrays",
       [&](auto& k, auto& n) {
         arrays_node = n;
         arrays = &arrays_node;
       }},
  };
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    auto it = keys.find(key);
    if (it == keys.end()) {
      std::string known;
      for (const auto& [name, fn] : keys) known += (known.empty() ? "" : ", ") + name;
      fail("reference case {}: unknown manifest key '{}' (known: {})", dir, key, known);
    }
    try {
      it->second(key, kv.second);
    } catch (const Error& e) {
      const std::string what = e.what();
      if (what.find(dir) != std::string::npos) throw;
      fail("reference case {}: key '{}': {}", dir, key, what);
    }
  }
  OG_CHECK(have_algorithm, "reference case {}: manifest.yaml has no 'algorithm'", dir);
  OG_CHECK(have_shapes, "reference case {}: manifest.yaml has no 'shapes'", dir);
  OG_CHECK(have_steps && c.steps >= 1, "reference case {}: manifest.yaml needs 'steps' >= 1", dir);
  OG_CHECK(have_lr, "reference case {}: manifest.yaml has no 'lr'", dir);
  OG_CHECK(arrays && arrays->IsSequence(), "reference case {}: manifest.yaml has no 'arrays' list", dir);
  if (!roles.empty()) {
    OG_CHECK(roles.size() == c.params.size(), "reference case {}: key 'roles' has {} entries for {} shapes", dir,
             roles.size(), c.params.size());
    const std::map<std::string, ParamRole> by_name = {{"matrix", ParamRole::Matrix},
                                                      {"embedding", ParamRole::Embedding},
                                                      {"lm_head", ParamRole::LmHead},
                                                      {"vector", ParamRole::Vector}};
    for (size_t i = 0; i < roles.size(); ++i) {
      auto it = by_name.find(roles[i]);
      OG_CHECK(it != by_name.end(), "reference case {}: key 'roles': unknown role '{}'", dir, roles[i]);
      c.params[i].role = it->second;
    }
  }

  c.data = read_data(dir);
  for (const YAML::Node& a : *arrays) {
    OG_CHECK(a.IsMap(), "reference case {}: key 'arrays': every entry must be a mapping", dir);
    ReferenceArray arr;
    bool have_name = false, have_shape = false, have_offset = false;
    for (const auto& kv : a) {
      const std::string k = kv.first.as<std::string>();
      if (k == "name") {
        arr.name = scalar<std::string>(dir, "arrays.name", kv.second);
        have_name = true;
      } else if (k == "shape") {
        arr.shape = shape_of(dir, "arrays.shape", kv.second);
        have_shape = true;
      } else if (k == "offset") {
        arr.offset = scalar<size_t>(dir, "arrays.offset", kv.second);
        have_offset = true;
      } else {
        fail("reference case {}: unknown key 'arrays.{}' (known: name, shape, offset)", dir, k);
      }
    }
    OG_CHECK(have_name && have_shape && have_offset, "reference case {}: array '{}' needs name, shape and offset", dir,
             arr.name);
    arr.count = 1;
    for (int64_t d : arr.shape) arr.count *= (size_t)d;
    OG_CHECK(arr.offset + arr.count <= c.data.size(),
             "reference case {}: array '{}' (offset {}, {} values) runs past the end of data.bin ({} floats)", dir,
             arr.name, arr.offset, arr.count, c.data.size());
    OG_CHECK(c.arrays.emplace(arr.name, arr).second, "reference case {}: array '{}' is listed twice", dir, arr.name);
  }
  return c;
}

}  // namespace og
