// A Communicator decorator that forwards every collective to the wrapped communicator and
// counts the bytes this rank sends, per collective kind, with the standard bandwidth-optimal
// (ring) algorithm formulas for W ranks and a payload of n bytes per rank-block:
//   all_reduce      2·(W−1)/W · n      (ring reduce-scatter + ring all-gather of the n-byte buffer)
//   reduce_scatter  (W−1) · n          (n = one output block; the input is W blocks)
//   all_gather      (W−1) · n          (n = one input block)
//   all_to_all      (W−1) · n          (n = one block; the block addressed to itself stays local)
//   broadcast       n                  (pipelined chain: every rank forwards the buffer once)
//   barrier         0
// These are what NCCL's ring algorithms and MPI's large-message algorithms move per rank; the
// real wire bytes of a small message (latency-bound tree algorithms) differ, but the model is the
// one the bandwidth cost of an optimizer step is compared by. A world of one counts 0.
#pragma once
#include <array>
#include <cstddef>
#include <memory>
#include <string>

#include "dist/communicator.h"

namespace og {

enum class CollectiveKind { AllReduce, ReduceScatter, AllGather, AllToAll, Broadcast, Barrier };
inline constexpr int kNumCollectiveKinds = 6;
const char* name_of(CollectiveKind k);

// Bytes one rank sends for a collective of `count` elements of `t` (count as passed to the
// Communicator call) in a world of `world` ranks, by the formulas above.
double ring_bytes_per_rank(CollectiveKind kind, size_t count, DType t, int world);

class CountingCommunicator final : public Communicator {
 public:
  // Wraps `inner` (not owned; it must outlive this object).
  explicit CountingCommunicator(Communicator& inner) : inner_(inner) {}

  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  std::string backend() const override { return inner_.backend(); }
  bool device_buffers() const override { return inner_.device_buffers(); }
  void* device_stream() const override { return inner_.device_stream(); }
  void group_start() override { inner_.group_start(); }
  void group_end() override { inner_.group_end(); }
  void all_reduce(void* data, size_t count, DType t, ReduceOp op) override;
  void reduce_scatter(const void* send, void* recv, size_t count, DType t, ReduceOp op) override;
  void all_gather(const void* send, void* recv, size_t count, DType t) override;
  void all_to_all(const void* send, void* recv, size_t count, DType t) override;
  void broadcast(void* data, size_t count, DType t, int root) override;
  void barrier() override;
  // Forwarded (so a device backend's own implementation runs) and counted as the padded
  // equal-block collective, each block max(counts) elements.
  void all_gatherv(const void* send, void* recv, const std::vector<size_t>& counts, DType t) override;
  void reduce_scatterv(const void* send, void* recv, const std::vector<size_t>& counts, DType t, ReduceOp op) override;
  using Communicator::all_reduce;

  Communicator& inner() { return inner_; }
  // Bytes sent since construction or the last reset(), per kind and in total, and the number of calls.
  double bytes(CollectiveKind k) const { return bytes_[(int)k]; }
  double total_bytes() const;
  size_t calls(CollectiveKind k) const { return calls_[(int)k]; }
  void reset();

 private:
  void count(CollectiveKind k, size_t n, DType t);
  Communicator& inner_;
  std::array<double, kNumCollectiveKinds> bytes_{};
  std::array<size_t, kNumCollectiveKinds> calls_{};
};

}  // namespace og
