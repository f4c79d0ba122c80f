#include "dist/nccl_communicator.h"

#ifdef ORTHOGPT_NCCL
#include <nccl.h>

#include <chrono>
#include <thread>
#include <vector>

#include "core/cuda_utils.h"
#include "core/error.h"

namespace og {
namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::U8: return ncclUint8;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Avg: return ncclAvg;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  return ncclSum;
}

}  // namespace

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& host, cudaStream_t stream, double timeout_s)
      : rank_(host.rank()), size_(host.size()), stream_(stream), timeout_s_(timeout_s) {
    ncclUniqueId id;
    if (rank_ == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    host.broadcast(&id, sizeof id, DType::U8, 0);
    // Non-blocking communicator: every call returns at once and errors surface through
    // ncclCommGetAsyncError, which wait() polls with a deadline.
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    check(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config), "ncclCommInitRankConfig");
    wait_ready("ncclCommInitRankConfig");
  }
  ~NcclCommunicator() override {
    if (comm_) ncclCommAbort(comm_);  // abort is safe for a non-blocking comm in any state
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  bool device_buffers() const override { return true; }
  void* device_stream() const override { return stream_; }
  void group_start() override { check(ncclGroupStart(), "ncclGroupStart"); }
  void group_end() override { check(ncclGroupEnd(), "ncclGroupEnd"); }

  void all_reduce(void* data, size_t count, DType t, ReduceOp op) override {
    check(ncclAllReduce(data, data, count, nccl_type(t), nccl_op(op), comm_, stream_), "ncclAllReduce");
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DType t, ReduceOp op) override {
    check(ncclReduceScatter(send, recv, count, nccl_type(t), nccl_op(op), comm_, stream_), "ncclReduceScatter");
  }
  void all_gather(const void* send, void* recv, size_t count, DType t) override {
    check(ncclAllGather(send, recv, count, nccl_type(t), comm_, stream_), "ncclAllGather");
  }
  void all_to_all(const void* send, void* recv, size_t count, DType t) override {
    const size_t bytes = count * dtype_size(t);
    check(ncclGroupStart(), "ncclGroupStart");
    for (int peer = 0; peer < size_; ++peer) {
      check(ncclSend(static_cast<const char*>(send) + peer * bytes, count, nccl_type(t), peer, comm_, stream_),
            "ncclSend");
      check(ncclRecv(static_cast<char*>(recv) + peer * bytes, count, nccl_type(t), peer, comm_, stream_), "ncclRecv");
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
  }
  // Variable-size blocks as one NCCL group: rank r's block is broadcast from r (all_gatherv) or
  // reduced to r (reduce_scatterv); empty blocks are skipped (every rank sees the same counts).
  void all_gatherv(const void* send, void* recv, const std::vector<size_t>& counts, DType t) override {
    OG_CHECK(counts.size() == (size_t)size_, "all_gatherv: {} counts for {} ranks", counts.size(), size_);
    const size_t es = dtype_size(t);
    char* out = static_cast<char*>(recv);
    check(ncclGroupStart(), "ncclGroupStart");
    for (int r = 0; r < size_; ++r) {
      if (counts[r]) {
        const void* src = r == rank_ ? send : out;  // only the root's send buffer is read
        check(ncclBroadcast(src, out, counts[r], nccl_type(t), r, comm_, stream_), "ncclBroadcast");
      }
      out += counts[r] * es;
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
  }
  void reduce_scatterv(const void* send, void* recv, const std::vector<size_t>& counts, DType t, ReduceOp op) override {
    OG_CHECK(counts.size() == (size_t)size_, "reduce_scatterv: {} counts for {} ranks", counts.size(), size_);
    const size_t es = dtype_size(t);
    const char* in = static_cast<const char*>(send);
    check(ncclGroupStart(), "ncclGroupStart");
    for (int r = 0; r < size_; ++r) {
      if (counts[r]) {
        void* dst = r == rank_ ? recv : const_cast<char*>(in);  // recvbuff is only written on the root
        check(ncclReduce(in, dst, counts[r], nccl_type(t), nccl_op(op), r, comm_, stream_), "ncclReduce");
      }
      in += counts[r] * es;
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
  }
  void broadcast(void* data, size_t count, DType t, int root) override {
    check(ncclBroadcast(data, data, count, nccl_type(t), root, comm_, stream_), "ncclBroadcast");
  }
  void barrier() override {
    // A one-element all-reduce on a scratch value, then wait.
    if (!scratch_) CUDA_CHECK(cudaMalloc(&scratch_, sizeof(float)));
    all_reduce(scratch_, 1, DType::F32, ReduceOp::Sum);
    synchronize();
  }

  // Wait for the stream with a deadline, polling NCCL's async error state.
  void synchronize() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    while (true) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) fail("rank {}: CUDA error while waiting for NCCL: {}", rank_, cudaGetErrorString(q));
      poll_async("collective");
      if (std::chrono::steady_clock::now() > deadline) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        fail("rank {}: a collective did not finish within dist.timeout_s = {}s (a peer rank died or hangs); aborted",
             rank_, timeout_s_);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

 private:
  // A call on a non-blocking communicator may return ncclInProgress: the communicator is then
  // busy (enqueueing the operation) and must reach ncclSuccess before the next call, or NCCL
  // rejects it ("Attempt to use communicator before the previous operation returned
  // ncclSuccess", seen on the first 2-GPU run). Calls inside a group return ncclSuccess and
  // ncclGroupEnd reports for the whole group.
  void check(ncclResult_t r, const char* what) {
    if (r == ncclSuccess) return;
    if (r == ncclInProgress) {
      wait_ready(what);
      return;
    }
    fail("rank {}: {} failed: {} ({})", rank_, what, ncclGetErrorString(r), ncclGetLastError(comm_));
  }
  void poll_async(const char* what) {
    ncclResult_t st = ncclSuccess;
    ncclCommGetAsyncError(comm_, &st);
    if (st != ncclSuccess && st != ncclInProgress)
      fail("rank {}: NCCL {} failed asynchronously: {}", rank_, what, ncclGetErrorString(st));
  }
  // Enqueueing usually finishes within microseconds: poll without sleeping for the first 2 ms
  // (a 100 µs sleep per call cost FSDP's per-parameter collectives ~20 ms per step), then back off.
  void wait_ready(const char* what) {
    const auto start = std::chrono::steady_clock::now();
    const auto spin_until = start + std::chrono::milliseconds(2);
    const auto deadline = start + std::chrono::duration<double>(timeout_s_);
    ncclResult_t st = ncclInProgress;
    ncclCommGetAsyncError(comm_, &st);
    while (st == ncclInProgress) {
      const auto now = std::chrono::steady_clock::now();
      if (now > deadline) fail("rank {}: {} did not complete within {}s", rank_, what, timeout_s_);
      if (now < spin_until)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      ncclCommGetAsyncError(comm_, &st);
    }
    if (st != ncclSuccess) fail("rank {}: {} failed: {}", rank_, what, ncclGetErrorString(st));
  }

  int rank_, size_;
  cudaStream_t stream_;
  double timeout_s_;
  ncclComm_t comm_ = nullptr;
  float* scratch_ = nullptr;
};

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, cudaStream_t stream, double timeout_s) {
  return std::make_unique<NcclCommunicator>(host, stream, timeout_s);
}

void nccl_synchronize(Communicator& c) {
  auto* n = dynamic_cast<NcclCommunicator*>(&c);
  OG_CHECK(n != nullptr, "nccl_synchronize on a {} communicator", c.backend());
  n->synchronize();
}

}  // namespace og
#endif  // ORTHOGPT_NCCL
