// Optimizer step benchmark on the GPU: the hidden-matrix set of the 160M model (12 layers ×
// [4 of 768×768, 3072×768, 768×3072]) and of the 1B model (16 layers, d_model 2048), fp32 master
// weights and random gradients in one contiguous buffer each (as the trainer lays them out).
// Per case: 3 warm-up steps, then the median (and min) over --steps steps of the optimizer step
// time measured with CUDA events on the optimizer's stream.
//
// Floors (H100 SXM ceilings: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3):
//   FLOP floor = Σ NS FLOPs / 989e12, NS FLOPs of an m×n (m ≤ n) input = 5·(2m²n + 2m³ + 2m²n)
//                (full products; the symmetric path needs fewer), Dion2 on its k×L submatrices
//   byte floor = fp32 traffic that any implementation needs / 3.35e12:
//                AdamW 28 B/elem (W, M, V read+write, G read); Muon, NorMuon, Dion2 20 B/elem
//                (W, M read+write, G read)
//   gap = median / (FLOP floor + byte floor): the NS and the elementwise passes are sequential.
// "NS GF" is the NS work as this configuration computes it (Gram variant: fewer FLOPs; the
// block-triangle products are counted as full), in GFLOP. For Dion (no NS) the FLOP floor and the
// column count its four m×n×r products (P = M·Q, R = Mᵀ·P, the error feedback P·Rᵀ and the update
// P·Qᵀ: 8·m·n·r at the bf16 peak, a floor the fp32/fp64 path cannot reach); the QR of the m×r P
// (randomized Cholesky-QR, fp64) is left out of the floor.
// "host ms" is the median CPU time of the step() call itself (enqueueing its launches): when it is
// close to the median, the step is bound by launch overhead, not by the GPU.
// Variants: "[r0]" is the first H100 run's code path (Muon groups in sequence with one shared
// workspace, Dion2 weight decay inside pass 1, no Gram NS); "[r1]" the second run's defaults (Gram
// NS off); "[graph]" the step replayed as a CUDA graph. Rows are printed as they finish, and the
// whole table again at the end. Then the per-phase breakdowns (profile_phases: the groups in
// sequence on one stream, events between the phases; the sum exceeds the concurrent step's time).
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "core/cuda_utils.h"
#include "core/error.h"
#include "core/rng.h"
#include "matrix_set.cuh"
#include "optim/cuda/cuda_optimizer.h"
#include "optim/cuda/newton_schulz.h"
#include "optim/dion_shape.h"
#include "optim/optimizer.h"
#include "optim/slice_select.h"

using namespace og;
using og::bench::MatrixSet;
using og::bench::median_of;

namespace {

constexpr double kPeakFlops = 989e12;
constexpr double kPeakBytes = 3.35e12;

struct Case {
  std::string label;
  MatrixSet* set;
  OptimHParams hp;
  CudaOptimOptions opt;
  double target_ms = 0.0;  // 0: none
  double ref_ms = 0.0;     // PyTorch reference (microsoft/dion) on an H100; 0: not measured
};

// NS FLOPs of one rows×cols input: the full-product count, or (as_run) the Gram variant's where
// this configuration uses it.
double ns_one(int64_t rows, int64_t cols, const CudaOptimOptions& o, bool as_run) {
  const int64_t m = std::min(rows, cols), n = std::max(rows, cols);
  if (as_run && o.gram_ns && n >= 2 * m) return cuda::ns_gram_flops(rows, cols);
  return cuda::ns_flops(rows, cols);
}

double ns_flops_of(const Case& c, bool as_run = false) {
  double f = 0.0;
  for (const ParamSlot& s : c.set->slots) {
    switch (c.hp.algorithm) {
      case Algorithm::Muon:
      case Algorithm::NorMuon: f += ns_one(s.rows, s.cols, c.opt, as_run); break;
      case Algorithm::Dion2:
      case Algorithm::NorDion2: {
        const bool rows =
            c.hp.algorithm == Algorithm::NorDion2 || selection_axis(c.hp.select_dim, s.rows, s.cols) == SliceAxis::Rows;
        const int64_t n = rows ? s.rows : s.cols, L = rows ? s.cols : s.rows;
        f += ns_one(select_count(c.hp.fraction, n), L, c.opt, as_run);
        break;
      }
      case Algorithm::Dion: {
        const int64_t r = dion::dion_rank(c.hp.rank_fraction, s.rows, s.cols);
        f += 8.0 * (double)s.rows * (double)s.cols * (double)r;
        break;
      }
      default: break;
    }
  }
  return f;
}

double floor_bytes_of(const Case& c) {
  const double per = c.hp.algorithm == Algorithm::AdamW ? 28.0 : 20.0;  // Lion: W, M read+write, G read
  return per * (double)c.set->elems;
}

std::vector<std::string> g_rows;  // the table, printed again at the end

// Per-phase breakdown of one case (profile_phases): median ms per phase over `steps` steps, their
// sum, the median event-timed step and the median host time of step().
std::string phase_breakdown(const Case& c, int steps) {
  CudaOptimOptions o = c.opt;
  o.profile_phases = true;
  std::unique_ptr<CudaOptimizer> opt = make_cuda_optimizer(c.hp, c.set->slots, o);
  cudaStream_t s = opt->stream();
  const float lr = 1e-4f;
  int64_t t = 1;
  for (int i = 0; i < 3; ++i) opt->step({t++, lr});
  CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<std::string> order;
  std::map<std::string, std::vector<double>> per;
  std::vector<double> host_ms, total_ms;
  for (int i = 0; i < steps; ++i) {
    const auto h0 = std::chrono::steady_clock::now();
    opt->step({t++, lr});
    host_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - h0).count());
    double total = 0.0;
    for (const auto& [name, ms] : opt->last_phase_ms()) {
      if (!per.count(name)) order.push_back(name);
      per[name].push_back(ms);
      total += ms;
    }
    total_ms.push_back(total);
  }
  std::string out = fmt::format("{} (profiled: groups in sequence)\n", c.label);
  for (const std::string& name : order) out += fmt::format("    {:<24} {:>9.3f} ms\n", name, median_of(per[name]));
  out += fmt::format("    {:<24} {:>9.3f} ms   (host time of step(): {:.3f} ms)\n", "sum", median_of(total_ms),
                     median_of(host_ms));
  return out;
}

void run_case(const Case& c, int steps) {
  std::unique_ptr<CudaOptimizer> opt = make_cuda_optimizer(c.hp, c.set->slots, c.opt);
  cudaStream_t s = opt->stream();
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  const float lr = 1e-4f;
  int64_t t = 1;
  for (int i = 0; i < 3; ++i) opt->step({t++, lr});
  CUDA_CHECK(cudaStreamSynchronize(s));
  std::vector<float> ms;
  std::vector<double> host_ms;
  for (int i = 0; i < steps; ++i) {
    CUDA_CHECK(cudaEventRecord(e0, s));
    const auto h0 = std::chrono::steady_clock::now();
    opt->step({t++, lr});
    host_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - h0).count());
    CUDA_CHECK(cudaEventRecord(e1, s));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float x = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&x, e0, e1));
    ms.push_back(x);
  }
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  std::sort(ms.begin(), ms.end());
  const double median = median_of(std::vector<double>(ms.begin(), ms.end()));
  const double flop_ms = ns_flops_of(c) / kPeakFlops * 1e3, byte_ms = floor_bytes_of(c) / kPeakBytes * 1e3;
  const std::string target = c.target_ms > 0
                                 ? fmt::format("{:.2f}{}", c.target_ms, median <= c.target_ms ? " ok" : " MISS")
                                 : std::string("-");
  const std::string ref = c.ref_ms > 0 ? fmt::format("{:.2f}", c.ref_ms) : std::string("-");
  const std::string row =
      fmt::format("{:<44} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>6.2f} {:>10} {:>8} {:>8.0f} {:>8.3f}\n",
                  c.label, median, ms.front(), flop_ms, byte_ms, flop_ms + byte_ms, median / (flop_ms + byte_ms),
                  target, ref, ns_flops_of(c, true) / 1e9, median_of(host_ms));
  g_rows.push_back(row);
  fmt::print("{}", row);
  std::fflush(stdout);
}

OptimHParams hp_of(Algorithm a, float fraction = 0.25f, Select sel = Select::L1) {
  OptimHParams hp;
  hp.rank_fraction = fraction;  // Dion
  hp.algorithm = a;
  hp.weight_decay = 0.01f;
  hp.nesterov = (a == Algorithm::Muon || a == Algorithm::NorMuon);  // the paper's runs
  hp.fraction = fraction;
  hp.select = sel;
  return hp;
}

CudaOptimOptions::Symmetric parse_sym(const std::string& s) {
  if (s == "auto") return CudaOptimOptions::Symmetric::Auto;
  if (s == "on") return CudaOptimOptions::Symmetric::On;
  if (s == "off") return CudaOptimOptions::Symmetric::Off;
  fail("--sym must be auto, on or off (got '{}')", s);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"orthogpt optimizer step benchmark (GPU)"};
  int steps = 20, block = 256;
  std::string only, sym = "auto";
  bool autotune = false, variants = true, big = true, phases = true;
  app.add_option("--steps", steps, "timed steps per case (after 3 warm-up steps)")->check(CLI::Range(1, 10000));
  app.add_option("--only", only, "run only the cases whose label contains this text");
  app.add_option("--sym", sym, "symmetric block products: auto, on or off");
  app.add_option("--block", block, "block size of the symmetric products (multiple of 32)");
  app.add_flag("--autotune", autotune, "time the cuBLASLt candidates at construction");
  app.add_flag("!--no-variants", variants, "skip the symmetric/autotune variant rows");
  app.add_flag("!--no-1b", big, "skip the 1B matrix set");
  app.add_flag("!--no-phases", phases, "skip the per-phase breakdowns");
  CLI11_PARSE(app, argc, argv);

  try {
    if (!cuda_available()) {
      fmt::print("bench_optim: no CUDA device, nothing to measure\n");
      return 0;
    }
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    CudaOptimOptions base;
    base.symmetric = parse_sym(sym);
    base.symmetric_block = block;
    base.autotune_gemm = autotune;

    MatrixSet m160("160M", 12, 768);
    std::unique_ptr<MatrixSet> m1b;
    if (big) m1b = std::make_unique<MatrixSet>("1B", 16, 2048);

    std::vector<Case> cases;
    auto add = [&](std::string label, MatrixSet* set, OptimHParams hp, double target, double ref, CudaOptimOptions o) {
      cases.push_back({std::move(label), set, hp, o, target, ref});
    };
    add("160M adamw", &m160, hp_of(Algorithm::AdamW), 1.2, 1.43, base);
    add("160M muon", &m160, hp_of(Algorithm::Muon), 3.0, 5.59, base);
    add("160M normuon", &m160, hp_of(Algorithm::NorMuon), 0, 0, base);
    for (float a : {0.5f, 0.25f, 0.125f})
      for (Select sel : {Select::L1, Select::Random}) {
        const double target = sel == Select::L1 ? (a == 0.5f ? 1.8 : a == 0.25f ? 1.0 : 0.0) : 0.0;
        const double ref = sel == Select::L1 ? (a == 0.5f ? 18.5 : a == 0.25f ? 13.2 : 0.0) : 0.0;
        add(fmt::format("160M dion2 a={} {}", a, name_of(sel)), &m160, hp_of(Algorithm::Dion2, a, sel), target, ref,
            base);
      }
    add("160M nordion2 a=0.25 l1", &m160, hp_of(Algorithm::NorDion2), 0, 0, base);
    // Dion at the paper's rank fraction 0.25 and the reference 160M config's 0.5
    for (float rf : {0.25f, 0.5f})
      add(fmt::format("160M dion r={}", rf), &m160, hp_of(Algorithm::Dion, rf), 0, 0, base);
    if (m1b) {
      add("1B adamw", m1b.get(), hp_of(Algorithm::AdamW), 0, 0, base);
      add("1B muon", m1b.get(), hp_of(Algorithm::Muon), 40.0, 69.3, base);
      add("1B dion2 a=0.25 l1", m1b.get(), hp_of(Algorithm::Dion2), 8.0, 0, base);
      add("1B dion r=0.25", m1b.get(), hp_of(Algorithm::Dion, 0.25f), 0, 0, base);
    }
    std::vector<Case> phase_cases;  // per-phase breakdowns, printed after the summary
    if (variants) {
      // Round 2: the step as a CUDA graph, next to the defaults (launched).
      CudaOptimOptions graph = base;
      graph.cuda_graph = true;
      add("160M muon [graph]", &m160, hp_of(Algorithm::Muon), 0, 0, graph);
      add("160M normuon [graph]", &m160, hp_of(Algorithm::NorMuon), 0, 0, graph);
      for (float a : {0.5f, 0.25f, 0.125f})
        add(fmt::format("160M dion2 a={} l1 [graph]", a), &m160, hp_of(Algorithm::Dion2, a), 0, 0, graph);
      add("160M dion2 a=0.25 random [graph]", &m160, hp_of(Algorithm::Dion2, 0.25f, Select::Random), 0, 0, graph);
      add("160M nordion2 a=0.25 l1 [graph]", &m160, hp_of(Algorithm::NorDion2), 0, 0, graph);
      if (m1b) {
        add("1B muon [graph]", m1b.get(), hp_of(Algorithm::Muon), 0, 0, graph);
        add("1B dion2 a=0.25 l1 [graph]", m1b.get(), hp_of(Algorithm::Dion2), 0, 0, graph);
      }
      // Earlier code paths: [r1] = the second run's defaults (no Gram NS), [r0] = the first run's.
      CudaOptimOptions r1 = base, r0 = base, d_r0 = base;
      r1.gram_ns = false;
      r0.gram_ns = false;
      r0.concurrent_groups = false;  // Muon: the groups in sequence
      d_r0.gram_ns = false;
      d_r0.dion2_decay = CudaOptimOptions::Dion2Decay::InPass1;  // Dion2: decay inside pass 1, groups concurrent
      // The default fuses the decay into the scatter; [split rows] decays the unselected rows ahead,
      // under the NS (session 9, measured slower); [decay overlapped] = round 2's default.
      CudaOptimOptions split = base;
      split.dion2_decay = CudaOptimOptions::Dion2Decay::SplitRows;
      for (float a : {0.5f, 0.25f, 0.125f})
        add(fmt::format("160M dion2 a={} l1 [split rows]", a), &m160, hp_of(Algorithm::Dion2, a), 0, 0, split);
      if (m1b) add("1B dion2 a=0.25 l1 [split rows]", m1b.get(), hp_of(Algorithm::Dion2), 0, 0, split);
      CudaOptimOptions r2 = base;
      r2.dion2_decay = CudaOptimOptions::Dion2Decay::Overlapped;
      for (float a : {0.5f, 0.25f, 0.125f})
        add(fmt::format("160M dion2 a={} l1 [decay overlapped]", a), &m160, hp_of(Algorithm::Dion2, a), 0, 0, r2);
      if (m1b) add("1B dion2 a=0.25 l1 [decay overlapped]", m1b.get(), hp_of(Algorithm::Dion2), 0, 0, r2);
      CudaOptimOptions eager = base;  // the selective decay written back by the gather
      eager.dion2_lazy_decay = false;
      for (float a : {0.5f, 0.25f})
        add(fmt::format("160M dion2 a={} l1 [eager ef decay]", a), &m160, hp_of(Algorithm::Dion2, a), 0, 0, eager);
      if (m1b) add("1B dion2 a=0.25 l1 [eager ef decay]", m1b.get(), hp_of(Algorithm::Dion2), 0, 0, eager);
      add("160M muon [r1]", &m160, hp_of(Algorithm::Muon), 0, 0, r1);
      add("160M muon [r0]", &m160, hp_of(Algorithm::Muon), 0, 0, r0);
      add("160M normuon [r1]", &m160, hp_of(Algorithm::NorMuon), 0, 0, r1);
      for (float a : {0.5f, 0.25f, 0.125f}) {
        add(fmt::format("160M dion2 a={} l1 [r1]", a), &m160, hp_of(Algorithm::Dion2, a), 0, 0, r1);
        add(fmt::format("160M dion2 a={} l1 [r0]", a), &m160, hp_of(Algorithm::Dion2, a), 0, 0, d_r0);
      }
      add("160M nordion2 a=0.25 l1 [r1]", &m160, hp_of(Algorithm::NorDion2), 0, 0, r1);
      if (m1b) {
        add("1B muon [r1]", m1b.get(), hp_of(Algorithm::Muon), 0, 0, r1);
        add("1B muon [sym off]", m1b.get(), hp_of(Algorithm::Muon), 0, 0, [&] {
          CudaOptimOptions o = base;
          o.symmetric = CudaOptimOptions::Symmetric::Off;
          return o;
        }());
        add("1B dion2 a=0.25 l1 [r1]", m1b.get(), hp_of(Algorithm::Dion2), 0, 0, r1);
      }
      CudaOptimOptions serial = base, tuned = base;
      serial.concurrent_groups = false;
      tuned.autotune_gemm = true;
      add("160M muon [serial groups]", &m160, hp_of(Algorithm::Muon), 0, 0, serial);
      add("160M dion2 a=0.25 l1 [serial groups]", &m160, hp_of(Algorithm::Dion2), 0, 0, serial);
      add("160M muon [autotune]", &m160, hp_of(Algorithm::Muon), 0, 0, tuned);
      add("160M dion2 a=0.25 l1 [autotune]", &m160, hp_of(Algorithm::Dion2), 0, 0, tuned);
    }
    for (float a : {0.25f, 0.125f, 0.5f})
      phase_cases.push_back({fmt::format("160M dion2 a={} l1", a), &m160, hp_of(Algorithm::Dion2, a), base});
    phase_cases.push_back({"160M muon", &m160, hp_of(Algorithm::Muon), base});
    if (m1b) {
      phase_cases.push_back({"1B dion2 a=0.25 l1", m1b.get(), hp_of(Algorithm::Dion2), base});
      phase_cases.push_back({"1B muon", m1b.get(), hp_of(Algorithm::Muon), base});
    }

    fmt::print(
        "device: {}; {} timed steps per case; ceilings 989 TFLOP/s bf16, 3.35 TB/s; sym={} block={} "
        "autotune={}\n",
        prop.name, steps, sym, block, autotune);
    fmt::print("160M set: {} matrices, {:.1f}M elements", m160.slots.size(), m160.elems / 1e6);
    if (m1b) fmt::print("; 1B set: {} matrices, {:.1f}M elements", m1b->slots.size(), m1b->elems / 1e6);
    const std::string header =
        fmt::format("{:<44} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>10} {:>8} {:>8} {:>8}\n", "case", "median ms",
                    "min ms", "FLOP flr", "byte flr", "floor", "gap", "target", "pytorch", "NS GF", "host ms");
    fmt::print("\n{}", header);
    for (const Case& c : cases)
      if (only.empty() || c.label.find(only) != std::string::npos) run_case(c, steps);
    fmt::print("\n==== summary ====\n{}", header);
    for (const std::string& r : g_rows) fmt::print("{}", r);
    if (phases) {
      fmt::print("\n==== per-phase breakdown (median ms over {} steps) ====\n", steps);
      for (const Case& c : phase_cases)
        if (only.empty() || c.label.find(only) != std::string::npos) {
          fmt::print("{}", phase_breakdown(c, steps));
          std::fflush(stdout);
        }
    }
  } catch (const Error& e) {
    fmt::print(stderr, "bench_optim: {}\n", e.what());
    return 1;
  }
  return 0;
}
