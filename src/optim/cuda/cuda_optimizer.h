// CUDA implementations of the optimizer interface (pointers in ParamSlot are device memory).
// Available only in CUDA builds (ORTHOGPT_CUDA); make_optimizer(..., Device::CUDA) calls it.
//
// Contract: the w and g pointers of every ParamSlot must stay valid and unchanged for the
// optimizer's lifetime (kernel argument tables are built once). Every step() is asynchronous:
// all work is enqueued on one stream (set_stream), with no host synchronization and no
// device-to-host copy inside step().
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "optim/optimizer.h"

namespace og {

// Tuning knobs of the CUDA matrix optimizers (the defaults are the fast choices; the benchmark
// flips them to measure alternatives).
struct CudaOptimOptions {
  cudaStream_t stream = nullptr;  // all work goes on this stream (nullptr: the legacy default stream)
  // X·Xᵀ and A·A are symmetric: compute only the upper triangle of b×b blocks and mirror it.
  // Auto uses it where the saved FLOPs outweigh the mirror pass (see newton_schulz.cu).
  enum class Symmetric { Auto, Off, On };
  Symmetric symmetric = Symmetric::Auto;
  int symmetric_block = 256;  // b, a multiple of 32
  // Time the cuBLASLt heuristic's candidate algorithms once at construction and keep the fastest.
  // Off by default: timing can pick different algorithms on different ranks, and ranks that run
  // the same update redundantly (DDP) must round identically; the heuristic's first choice is
  // deterministic.
  bool autotune_gemm = false;
  // Muon / NorMuon / Dion2 / NorDion2: run the per-shape groups concurrently on internal streams
  // (forked from and joined back into `stream`, so the step stays ordered on it). Muon then gives
  // every group its own NS workspace (more memory: the sum of the groups' instead of the largest).
  bool concurrent_groups = true;
  // Dion2 / NorDion2: where the weight decay W ← W·(1 − lr·wd) runs. Same arithmetic in all four,
  // bit-identical results.
  //  SplitRows   InScatter, except that the unselected rows of row-slice matrices are decayed on a
  //              low-priority internal stream right after the selection (overlapping the gathers
  //              and the Newton–Schulz) and each group's pass after its NS covers only the selected
  //              rows of its row-slice matrices (column-slice matrices: whole W, as InScatter)
  //  InScatter   one pass over W per NS group after its Newton–Schulz that also applies the update
  //              to the selected slices (8 bytes per element, instead of the decay's 8 plus the
  //              scatter's 8 per selected element); with wd = 0 the plain scatter runs instead
  //  Overlapped  its own pass on a low-priority internal stream, overlapping selection, gather and
  //              Newton–Schulz (pass 1 then moves 12 instead of 20 bytes per element)
  //  InPass1     inside pass 1
  enum class Dion2Decay { SplitRows, InScatter, Overlapped, InPass1 };
  // InScatter is the default: SplitRows measured slower on the H100 (session 10: 160M α=0.25 1.030
  // vs 0.988 ms, 1B 8.60 vs 8.49; the low-priority decay competes with the gathers and the NS for
  // HBM bandwidth rather than filling idle time; docs/PERF_NOTES_optim.md R4.1).
  Dion2Decay dion2_decay = Dion2Decay::InScatter;
  // Dion2 / NorDion2 with ef on: the selective decay M[K] ← ef_decay·M[K] of the selected slices is
  // applied by the next step's pass 1 (which reads and writes all of M anyway) instead of being
  // written back by the gather. For column slices the gather's scattered writes dirtied ~90% of
  // M's sectors at α = 0.25. state() settles a pending decay first, so the state seen from
  // outside (checkpoints, tests) is the eager one; bit-identical to the eager path.
  bool dion2_lazy_decay = true;
  // Gram Newton–Schulz for batches whose long side is at least twice the short one: iterate on
  // the m×m Gram matrix (X_k = Q_k·X with Q_k a polynomial in X·Xᵀ), materializing X once after
  // iteration 2 ("restart", for bf16 stability). The same polynomial in exact arithmetic with
  // 8m²n + 28m³ instead of 20m²n + 10m³ FLOPs (see newton_schulz.h). On since the second H100
  // run (faster everywhere: 160M muon 3.44 → 3.17 ms, 1B muon 59.4 → 54.3, 1B dion2 12.6 → 11.2;
  // the GPU tests hold it to the standard path's tolerances).
  bool gram_ns = true;
  // Muon / NorMuon / Dion2 / NorDion2: capture the whole step once as a CUDA graph and replay it
  // (step_graph.h); the per-step scalars (lr, step) reach the kernels through device memory.
  // Removes the host launch overhead of ~50–100 launches per step. Bit-identical to the launched
  // path. Off until measured.
  bool cuda_graph = false;
  // Muon / NorMuon / Dion2 / NorDion2: record CUDA events between the phases of every step and
  // report them (CudaOptimizer::last_phase_ms). Runs the groups in sequence on the step stream
  // (and Dion2's weight decay inline), without a graph: for the benchmark's breakdown only.
  bool profile_phases = false;
  // Muon / NorMuon / Dion2 / NorDion2 on replicated parameters across data-parallel ranks (DDP,
  // gradients already averaged): with a device communicator of two or more ranks, each matrix is
  // orthonormalized by one owner rank and the results are all-gathered (owner_split.h); the
  // elementwise work runs on every rank, so the state stays identical. nullptr: one process.
  // make_distributed_optimizer sets it; the communicator must outlive the optimizer.
  Communicator* ddp_comm = nullptr;
  // Dion2 with random selection across DDP ranks whose matrix gradients were NOT averaged
  // (dist.compressed_sync, the paper's §3.2): every rank draws the same slices, so after the
  // selection only M[K] is all-reduced (averaged, fp32) and written back, and the NS input scale
  // is recomputed from the averaged slices; the unselected momentum stays local until
  // synchronize_state(). Combines with ddp_comm. nullptr: the gradients were averaged.
  Communicator* compressed_sync_comm = nullptr;
};

class CudaOptimizer : public Optimizer {
 public:
  // Later steps go on `stream`; work already enqueued on the previous one is not ordered with it
  // (synchronize or record an event first).
  virtual void set_stream(cudaStream_t stream) = 0;
  virtual cudaStream_t stream() const = 0;
  // Dion2 / NorDion2 only (empty otherwise): the slice indices selected at the last step, per
  // parameter, ascending. Synchronizes the stream and copies to the host: for tests and debugging.
  virtual std::vector<std::vector<int32_t>> last_selection() { return {}; }
  // With CudaOptimOptions::profile_phases: milliseconds per phase of the last step, in step order
  // (waits for it). Empty otherwise.
  virtual std::vector<std::pair<std::string, double>> last_phase_ms() { return {}; }
};

std::unique_ptr<CudaOptimizer> make_cuda_optimizer(const OptimHParams& hp, std::vector<ParamSlot> params,
                                                   const CudaOptimOptions& options = {});

}  // namespace og
