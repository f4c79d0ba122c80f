// Shared by the GPU-MPI tests (mpirun with 2 and 3 ranks that may share one GPU): device
// selection, the device communicators this machine allows, and device-to-host state reads.
#pragma once
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/cuda_utils.h"
#include "dist/staged_communicator.h"
#include "optim/optimizer.h"
#include "tests/mpi/mpi_env.h"
#ifdef ORTHOGPT_NCCL
#include "dist/nccl_communicator.h"
#endif

namespace og_test {

// False without a CUDA device (the tests then skip); else this rank's GPU is selected
// (local rank modulo the GPUs: ranks may share one).
inline bool gpu_ready() {
  if (!og::cuda_available()) return false;
  int n = 0;
  CUDA_CHECK(cudaGetDeviceCount(&n));
  CUDA_CHECK(cudaSetDevice(g_dist->local_rank % n));
  return true;
}

// The device communicators this machine allows: "staged" always, "nccl" with a GPU per rank.
inline std::vector<std::string> device_backends() {
  std::vector<std::string> out{"staged"};
#ifdef ORTHOGPT_NCCL
  int n = 0;
  CUDA_CHECK(cudaGetDeviceCount(&n));
  int enough = n >= g_dist->local_world ? 1 : 0;
  comm().all_reduce(&enough, 1, og::DType::I32, og::ReduceOp::Min);
  if (enough) out.push_back("nccl");
#endif
  return out;
}

inline std::unique_ptr<og::Communicator> device_comm(const std::string& backend) {
#ifdef ORTHOGPT_NCCL
  if (backend == "nccl") return og::make_nccl_communicator(comm(), nullptr, 120.0);
#endif
  return og::make_staged_communicator(comm(), nullptr);
}

// n state elements of dtype t at device pointer p, as floats.
inline std::vector<float> download_f32(const void* p, size_t n, og::StateDtype t) {
  std::vector<float> out(n);
  if (n == 0) return out;
  if (t == og::StateDtype::F32) {
    CUDA_CHECK(cudaMemcpy(out.data(), p, n * 4, cudaMemcpyDeviceToHost));
  } else {
    std::vector<uint16_t> b(n);
    CUDA_CHECK(cudaMemcpy(b.data(), p, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) out[i] = og::float_from_bf16_bits(b[i]);
  }
  return out;
}

// The matrix optimizers' hyperparameters of these tests.
inline og::OptimHParams matrix_hparams(og::Algorithm a) {
  og::OptimHParams hp;
  hp.algorithm = a;
  hp.weight_decay = 0.1f;
  hp.fraction = 0.5f;
  hp.seed = 7;
  return hp;
}

// The configurations both distributed-optimizer tests sweep; `check` runs one (hp, label) and
// returns the bytes a rank sent in its last step.
using MatrixCheck = std::function<double(const og::OptimHParams&, const std::string&)>;

// Muon and NorMuon: fp32 state, then bf16 state with nesterov flipped.
inline void check_muon_configs(const MatrixCheck& check) {
  for (og::Algorithm a : {og::Algorithm::Muon, og::Algorithm::NorMuon}) {
    og::OptimHParams hp = matrix_hparams(a);
    check(hp, og::name_of(a));
    hp.state_dtype = og::StateDtype::BF16;
    hp.nesterov = !hp.nesterov;
    check(hp, std::string(og::name_of(a)) + " bf16 state, nesterov flipped");
  }
}

// Dion2 and NorDion2: ℓ1 and random selection with ef on and off, then bf16 state at α = 0.25.
inline void check_dion2_configs(const MatrixCheck& check) {
  for (og::Algorithm a : {og::Algorithm::Dion2, og::Algorithm::NorDion2}) {
    for (og::Select sel : {og::Select::L1, og::Select::Random})
      for (bool ef : {true, false}) {
        og::OptimHParams hp = matrix_hparams(a);
        hp.select = sel;
        hp.ef = ef;
        check(hp, fmt::format("{} select {} ef {}", og::name_of(a), og::name_of(sel), ef));
      }
    og::OptimHParams hp = matrix_hparams(a);
    hp.state_dtype = og::StateDtype::BF16;
    hp.fraction = 0.25f;
    check(hp, fmt::format("{} bf16 state, fraction 0.25", og::name_of(a)));
  }
}

// Dion2's bytes per step fall with α = 0.5, 0.25, 0.125, all below Muon's.
inline void check_dion2_bytes_fall_with_fraction(const MatrixCheck& check) {
  double last = check(matrix_hparams(og::Algorithm::Muon), "muon");
  for (float f : {0.5f, 0.25f, 0.125f}) {
    og::OptimHParams hp = matrix_hparams(og::Algorithm::Dion2);
    hp.fraction = f;
    const double b = check(hp, fmt::format("dion2 fraction {}", f));
    EXPECT_LT(b, last) << "fraction " << f;
    last = b;
  }
}

}  // namespace og_test
