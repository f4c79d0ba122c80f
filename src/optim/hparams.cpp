#include "optim/hparams.h"

#include <utility>
#include <vector>

#include "core/error.h"

namespace og {
namespace {

template <typename E>
E parse_enum(const std::string& what, const std::string& s, const std::vector<std::pair<std::string, E>>& table) {
  for (const auto& [name, v] : table)
    if (s == name) return v;
  std::string list;
  for (const auto& [name, v] : table) list += (list.empty() ? "" : ", ") + name;
  fail("unknown {} '{}' (expected one of: {})", what, s, list);
}

}  // namespace

Algorithm parse_algorithm(const std::string& s) {
  return parse_enum<Algorithm>("algorithm", s,
                               {{"adamw", Algorithm::AdamW},
                                {"lion", Algorithm::Lion},
                                {"muon", Algorithm::Muon},
                                {"normuon", Algorithm::NorMuon},
                                {"dion2", Algorithm::Dion2},
                                {"nordion2", Algorithm::NorDion2},
                                {"dion3", Algorithm::NorDion2},
                                {"dion", Algorithm::Dion}});
}
AdjustLr parse_adjust_lr(const std::string& s) {
  return parse_enum<AdjustLr>(
      "adjust_lr", s,
      {{"spectral_norm", AdjustLr::SpectralNorm}, {"rms_norm", AdjustLr::RmsNorm}, {"none", AdjustLr::None}});
}
Ortho parse_ortho(const std::string& s) {
  return parse_enum<Ortho>("ortho", s,
                           {{"newton_schulz", Ortho::NewtonSchulz},
                            {"newton_schulz5", Ortho::NewtonSchulz},
                            {"polar_express", Ortho::PolarExpress}});
}
Select parse_select(const std::string& s) {
  return parse_enum<Select>("select", s, {{"l1", Select::L1}, {"random", Select::Random}});
}
SelectDim parse_select_dim(const std::string& s) {
  return parse_enum<SelectDim>("select_dim", s,
                               {{"shorter", SelectDim::Shorter}, {"rows", SelectDim::Rows}, {"cols", SelectDim::Cols}});
}
StateDtype parse_state_dtype(const std::string& s) {
  return parse_enum<StateDtype>("state dtype", s,
                                {{"fp32", StateDtype::F32},
                                 {"float32", StateDtype::F32},
                                 {"bf16", StateDtype::BF16},
                                 {"bfloat16", StateDtype::BF16}});
}

const char* name_of(Algorithm a) {
  switch (a) {
    case Algorithm::AdamW: return "adamw";
    case Algorithm::Lion: return "lion";
    case Algorithm::Muon: return "muon";
    case Algorithm::NorMuon: return "normuon";
    case Algorithm::Dion2: return "dion2";
    case Algorithm::NorDion2: return "nordion2";
    case Algorithm::Dion: return "dion";
  }
  return "?";
}
const char* name_of(AdjustLr a) {
  switch (a) {
    case AdjustLr::SpectralNorm: return "spectral_norm";
    case AdjustLr::RmsNorm: return "rms_norm";
    case AdjustLr::None: return "none";
  }
  return "?";
}
const char* name_of(Ortho o) { return o == Ortho::NewtonSchulz ? "newton_schulz" : "polar_express"; }
const char* name_of(Select s) { return s == Select::L1 ? "l1" : "random"; }
const char* name_of(SelectDim s) {
  switch (s) {
    case SelectDim::Shorter: return "shorter";
    case SelectDim::Rows: return "rows";
    case SelectDim::Cols: return "cols";
  }
  return "?";
}
const char* name_of(StateDtype s) { return s == StateDtype::F32 ? "fp32" : "bf16"; }

bool is_matrix_algorithm(Algorithm a) {
  return a == Algorithm::Muon || a == Algorithm::NorMuon || a == Algorithm::Dion2 || a == Algorithm::NorDion2 ||
         a == Algorithm::Dion;
}

}  // namespace og
