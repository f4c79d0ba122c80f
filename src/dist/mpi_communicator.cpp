// MPI backend of the Communicator (host buffers). bf16 is reduced as uint16 pairs would be
// wrong, so bf16 reductions are refused here (the CPU path never reduces bf16).
#include <mpi.h>

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
      check(MPI_Allreduce(MPI_IN_PLACE, p + off * es, n, mpi_type(t), mpi_op(op), MPI_COMM_WORLD), "all_reduce");
    }
    if (op == ReduceOp::Avg) scale(data, count, t, size_);
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DType t, ReduceOp op) override {
    OG_CHECK(t != DType::BF16, "MPI reduce_scatter of bf16 is not supported");
    OG_CHECK(count < (1u << 31), "MPI reduce_scatter: count {} too large", count);
    check(MPI_Reduce_scatter_block(send, recv, (int)count, mpi_type(t), mpi_op(op), MPI_COMM_WORLD), "reduce_scatter");
    if (op == ReduceOp::Avg) scale(recv, count, t, size_);
  }
  void all_gather(const void* send, void* recv, size_t count, DType t) override {
    OG_CHECK(count < (1u << 31), "MPI all_gather: count {} too large", count);
    const void* s = send;
    // MPI forbids aliasing send with recv unless MPI_IN_PLACE; support send == own block of recv.
    if (static_cast<const char*>(send) == static_cast<char*>(recv) + rank_ * count * dtype_size(t)) s = MPI_IN_PLACE;
    check(MPI_Allgather(s, (int)count, mpi_type(t), recv, (int)count, mpi_type(t), MPI_COMM_WORLD), "all_gather");
  }
  void all_to_all(const void* send, void* recv, size_t count, DType t) override {
    OG_CHECK(count < (1u << 31), "MPI all_to_all: count {} too large", count);
    check(MPI_Alltoall(send, (int)count, mpi_type(t), recv, (int)count, mpi_type(t), MPI_COMM_WORLD), "all_to_all");
  }
  void broadcast(void* data, size_t count, DType t, int root) override {
    OG_CHECK(count < (1u << 31), "MPI broadcast: count {} too large", count);
    check(MPI_Bcast(data, (int)count, mpi_type(t), root, MPI_COMM_WORLD), "broadcast");
  }
  void barrier() override { check(MPI_Barrier(MPI_COMM_WORLD), "barrier"); }

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace og
