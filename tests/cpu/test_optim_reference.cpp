// Cross-check against the PyTorch reference (microsoft/dion) vectors in tests/data/reference:
// every case's per-step update ΔW must match within the tolerance of check_reference.h
// (1e-4 AdamW/Lion; 5e-2 NS5 and 6e-2 Polar Express matrix algorithms, whose reference runs NS in
// bf16), and every momentum/variance array the case holds must match within 1e-4.
// Also: the case loader rejects malformed cases with errors naming the folder and key.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "optim/check_reference.h"
#include "optim/reference_case.h"

namespace fs = std::filesystem;
using namespace og;

namespace {

std::vector<std::string> reference_cases() {
  std::vector<std::string> dirs;
  for (const auto& e : fs::directory_iterator(fs::path(OG_TEST_DATA_DIR) / "reference"))
    if (e.is_directory() && fs::exists(e.path() / "manifest.yaml")) dirs.push_back(e.path().string());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

// A scratch copy of a reference case whose manifest can be edited.
struct CaseCopy {
  fs::path dir;
  explicit CaseCopy(const std::string& src, const std::string& tag) {
    dir = fs::temp_directory_path() / ("og_refcase_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy(src, dir, fs::copy_options::recursive);
  }
  ~CaseCopy() { fs::remove_all(dir); }
  std::string manifest() const {
    std::ifstream f(dir / "manifest.yaml");
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  void write_manifest(const std::string& text) const { std::ofstream(dir / "manifest.yaml") << text; }
  void replace(const std::string& from, const std::string& to) const {
    std::string m = manifest();
    const size_t at = m.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    m.replace(at, from.size(), to);
    write_manifest(m);
  }
};

void expect_error(const std::string& dir, const std::vector<std::string>& needles) {
  try {
    load_reference_case(dir);
    ADD_FAILURE() << "no error for " << dir;
  } catch (const Error& e) {
    for (const std::string& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

std::string case_dir(const std::string& name) { return (fs::path(OG_TEST_DATA_DIR) / "reference" / name).string(); }

}  // namespace

TEST(OptimReference, EveryCasePasses) {
  const std::vector<std::string> dirs = reference_cases();
  ASSERT_GE(dirs.size(), 9u);
  for (const std::string& dir : dirs) {
    const ReferenceCase c = load_reference_case(dir);
    const ReferenceCheck r = check_reference_case(c, Device::CPU);
    std::printf("%-20s %-9s dW err %.3e (tol %.0e)  state err %.3e (%s)\n", r.name.c_str(), name_of(r.algorithm),
                r.worst_update, r.update_tol, r.worst_state, r.worst_state_array.c_str());
    EXPECT_TRUE(r.pass) << dir;
    EXPECT_LE(r.worst_update, r.update_tol) << dir;
    // Every case holds momentum arrays: they were compared.
    EXPECT_GE(r.worst_state, 0.0) << dir;
    EXPECT_LE(r.worst_state, r.state_tol) << dir;
  }
}

TEST(OptimReference, RunCheckReferencePrintsOneLinePerCase) {
  const std::vector<std::string> dirs = reference_cases();
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  EXPECT_EQ(run_check_reference(dirs, Device::CPU, out), 0);
  std::rewind(out);
  std::string text;
  char line[1024];
  int lines = 0;
  while (std::fgets(line, sizeof line, out)) {
    text += line;
    ++lines;
  }
  std::fclose(out);
  EXPECT_EQ(lines, (int)dirs.size()) << text;
  EXPECT_NE(text.find("muon_polar_express"), std::string::npos);
  EXPECT_EQ(text.find("FAIL"), std::string::npos) << text;
}

TEST(OptimReference, PerturbedReferenceFails) {
  // Change the manifest's lr: the updates no longer match, the check must say FAIL.
  CaseCopy copy(case_dir("muon_ns5"), "lr");
  copy.replace("lr: 0.02", "lr: 0.021");
  std::FILE* out = std::tmpfile();
  EXPECT_NE(run_check_reference({copy.dir.string()}, Device::CPU, out), 0);
  std::fclose(out);
  // A Dion2 case run as if with a different fraction must fail too.
  CaseCopy frac(case_dir("dion2_a0.25"), "frac");
  frac.replace("fraction: 0.25", "fraction: 0.5");
  EXPECT_FALSE(check_reference_case(load_reference_case(frac.dir.string()), Device::CPU).pass);
}

TEST(OptimReference, LoaderErrorsNameFolderAndKey) {
  {
    CaseCopy c(case_dir("adamw"), "key");
    c.replace("steps: 3", "steps: 3\nlearning_rate: 0.1");
    expect_error(c.dir.string(), {c.dir.string(), "learning_rate"});
  }
  {
    CaseCopy c(case_dir("adamw"), "alg");
    c.replace("algorithm: adamw", "algorithm: adamx");
    expect_error(c.dir.string(), {c.dir.string(), "algorithm", "adamx"});
  }
  {
    CaseCopy c(case_dir("adamw"), "offset");
    c.replace("offset: 2048", "offset: 99999999");
    expect_error(c.dir.string(), {c.dir.string(), "W0_1", "data.bin"});
  }
  {
    // A missing array is reported when the check needs it.
    CaseCopy c(case_dir("lion"), "missing");
    c.replace("- name: G2_1", "- name: G2_1_renamed");
    const ReferenceCase rc = load_reference_case(c.dir.string());
    try {
      check_reference_case(rc, Device::CPU);
      ADD_FAILURE() << "no error for a missing array";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("G2_1"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.dir.string()), std::string::npos) << e.what();
    }
  }
  {
    CaseCopy c(case_dir("muon_ns5"), "nolr");
    c.replace("lr: 0.02\n", "");
    expect_error(c.dir.string(), {c.dir.string(), "lr"});
  }
  expect_error((fs::path(OG_TEST_DATA_DIR) / "reference" / "no_such_case").string(), {"no_such_case", "manifest"});
}

TEST(OptimReference, LoaderReadsHyperparameters) {
  const ReferenceCase c = load_reference_case(case_dir("nordion2_a0.25"));
  EXPECT_EQ(c.name, "nordion2_a0.25");
  EXPECT_EQ(c.hp.algorithm, Algorithm::NorDion2);
  EXPECT_EQ(c.steps, 3);
  EXPECT_FLOAT_EQ(c.lr, 0.02f);
  EXPECT_FLOAT_EQ(c.hp.fraction, 0.25f);
  EXPECT_FLOAT_EQ(c.hp.beta2, 0.95f);
  EXPECT_FLOAT_EQ(c.hp.weight_decay, 0.01f);
  EXPECT_EQ(c.hp.select, Select::L1);
  EXPECT_EQ(c.hp.ortho, Ortho::NewtonSchulz);
  ASSERT_EQ(c.params.size(), 3u);
  EXPECT_EQ(c.params[0].rows, 64);
  EXPECT_EQ(c.params[0].cols, 32);
  const ReferenceCase pe = load_reference_case(case_dir("muon_polar_express"));
  EXPECT_EQ(pe.hp.ortho, Ortho::PolarExpress);
  const ReferenceCase rms = load_reference_case(case_dir("muon_nesterov_rms"));
  EXPECT_TRUE(rms.hp.nesterov);
  EXPECT_EQ(rms.hp.adjust_lr, AdjustLr::RmsNorm);
}
