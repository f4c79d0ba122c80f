// MPI backend of the Communicator (host buffers). bf16 is reduced as uint16 pairs would be
// wrong, so bf16 reductions are refused here (the CPU path never reduces bf16).
//
// Timeout (dist.timeout_s, set_timeout): each collective is started non-blocking (MPI_Iallreduce
// ...) and polled with MPI_Test, first in a tight loop (a collective that completes promptly
// costs what the blocking call would), then with sleeps growing to 1 ms. When the timeout passes
// the job is ended with MPI_Abort and a message naming the collective and the timeout: a peer
// that died or hangs would otherwise keep every other rank waiting forever. Without a timeout
// (<= 0) the blocking calls are used.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"

namespace og {
namespace {

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::BF16: return MPI_UINT16_T;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::U8: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_SUM;
}

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fail("MPI {} failed: {}", what, std::string(msg, len));
  }
}

// Divide in place by the world size (Avg = Sum / size).
void scale(void* data, size_t n, DType t, int size) {
  if (t == DType::F32) {
    float* p = static_cast<float*>(data);
    const float s = 1.0f / (float)size;
    for (size_t i = 0; i < n; ++i) p[i] *= s;
  } else if (t == DType::F64) {
    double* p = static_cast<double*>(data);
    for (size_t i = 0; i < n; ++i) p[i] /= (double)size;
  } else {
    fail("MPI communicator: average of a non-float type");
  }
}

// Wait for request `req` of collective `what`; MPI_Abort when it takes longer than timeout_s.
void wait_or_abort(MPI_Request& req, const char* what, double timeout_s, int rank) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto spin = std::chrono::microseconds(2000);  // poll without sleeping this long first
  const double limit_s = std::min(timeout_s, 1e9);    // ~30 years: "forever" without overflowing the clock
  const auto deadline = start + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(limit_s));
  auto nap = std::chrono::microseconds(10);
  for (;;) {
    int done = 0;
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what);
    if (done) return;
    const auto now = clock::now();
    if (now >= deadline) {
      std::fprintf(stderr,
                   "error: rank %d: MPI %s did not complete within dist.timeout_s = %gs (a peer rank died or hangs); "
                   "aborting the job\n",
                   rank, what, timeout_s);
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 3);
      std::_Exit(3);  // MPI_Abort does not return; if it did, never hang here
    }
    if (now - start > spin) {
      std::this_thread::sleep_for(nap);
      nap = std::min(nap * 2, std::chrono::microseconds(1000));
    }
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }

  void all_reduce(void* data, size_t count, DType t, ReduceOp op) override {
    OG_CHECK(t != DType::BF16, "MPI all_reduce of bf16 is not supported");
    // MPI counts are int: reduce in chunks so huge buffers work.
    char* p = static_cast<char*>(data);
    const size_t chunk = 1u << 30, es = dtype_size(t);
    for (size_t off = 0; off < count; off += chunk) {
      const int n = (int)std::min(chunk, count - off);
      if (timeout_s_ <= 0) {
        check(MPI_Allreduce(MPI_IN_PLACE, p + off * es, n, mpi_type(t), mpi_op(op), MPI_COMM_WORLD), "all_reduce");
        continue;
      }
      MPI_Request req;
      check(MPI_Iallreduce(MPI_IN_PLACE, p + off * es, n, mpi_type(t), mpi_op(op), MPI_COMM_WORLD, &req), "all_reduce");
      wait(req, "all_reduce");
    }
    if (op == ReduceOp::Avg) scale(data, count, t, size_);
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DType t, ReduceOp op) override {
    OG_CHECK(t != DType::BF16, "MPI reduce_scatter of bf16 is not supported");
    OG_CHECK(count < (1u << 31), "MPI reduce_scatter: count {} too large", count);
    if (timeout_s_ <= 0) {
      check(MPI_Reduce_scatter_block(send, recv, (int)count, mpi_type(t), mpi_op(op), MPI_COMM_WORLD),
            "reduce_scatter");
    } else {
      MPI_Request req;
      check(MPI_Ireduce_scatter_block(send, recv, (int)count, mpi_type(t), mpi_op(op), MPI_COMM_WORLD, &req),
            "reduce_scatter");
      wait(req, "reduce_scatter");
    }
    if (op == ReduceOp::Avg) scale(recv, count, t, size_);
  }
  void all_gather(const void* send, void* recv, size_t count, DType t) override {
    OG_CHECK(count < (1u << 31), "MPI all_gather: count {} too large", count);
    const void* s = send;
    // MPI forbids aliasing send with recv unless MPI_IN_PLACE; support send == own block of recv.
    if (static_cast<const char*>(send) == static_cast<char*>(recv) + rank_ * count * dtype_size(t)) s = MPI_IN_PLACE;
    if (timeout_s_ <= 0) {
      check(MPI_Allgather(s, (int)count, mpi_type(t), recv, (int)count, mpi_type(t), MPI_COMM_WORLD), "all_gather");
    } else {
      MPI_Request req;
      check(MPI_Iallgather(s, (int)count, mpi_type(t), recv, (int)count, mpi_type(t), MPI_COMM_WORLD, &req),
            "all_gather");
      wait(req, "all_gather");
    }
  }
  void all_to_all(const void* send, void* recv, size_t count, DType t) override {
    OG_CHECK(count < (1u << 31), "MPI all_to_all: count {} too large", count);
    if (timeout_s_ <= 0) {
      check(MPI_Alltoall(send, (int)count, mpi_type(t), recv, (int)count, mpi_type(t), MPI_COMM_WORLD), "all_to_all");
    } else {
      MPI_Request req;
      check(MPI_Ialltoall(send, (int)count, mpi_type(t), recv, (int)count, mpi_type(t), MPI_COMM_WORLD, &req),
            "all_to_all");
      wait(req, "all_to_all");
    }
  }
  void broadcast(void* data, size_t count, DType t, int root) override {
    OG_CHECK(count < (1u << 31), "MPI broadcast: count {} too large", count);
    if (timeout_s_ <= 0) {
      check(MPI_Bcast(data, (int)count, mpi_type(t), root, MPI_COMM_WORLD), "broadcast");
    } else {
      MPI_Request req;
      check(MPI_Ibcast(data, (int)count, mpi_type(t), root, MPI_COMM_WORLD, &req), "broadcast");
      wait(req, "broadcast");
    }
  }
  void barrier() override {
    if (timeout_s_ <= 0) {
      check(MPI_Barrier(MPI_COMM_WORLD), "barrier");
    } else {
      MPI_Request req;
      check(MPI_Ibarrier(MPI_COMM_WORLD, &req), "barrier");
      wait(req, "barrier");
    }
  }
  void set_timeout(double seconds) override { timeout_s_ = seconds; }

 private:
  void wait(MPI_Request& req, const char* what) const { wait_or_abort(req, what, timeout_s_, rank_); }
  int rank_ = 0, size_ = 1;
  double timeout_s_ = 0;  // <= 0: blocking calls, no timeout
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace og
