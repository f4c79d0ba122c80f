// Collective communication behind one interface: an MPI backend on host buffers (the CPU path,
// and what CI tests with mpirun -np 2/3) and an NCCL backend on device buffers (the GPU path).
// A world of one (no mpirun) uses the trivial self communicator. Every rank must call every
// collective in the same order with the same counts.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace og {

enum class DType { F32, F64, BF16, I32, I64, U8 };
enum class ReduceOp { Sum, Avg, Max, Min };
size_t dtype_size(DType t);

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "self", "mpi", "nccl"
  // In place: data[0..count) <- op over ranks.
  virtual void all_reduce(void* data, size_t count, DType t, ReduceOp op) = 0;
  // send: size()*count elements (rank r's block r is reduced into recv of count elements).
  virtual void reduce_scatter(const void* send, void* recv, size_t count, DType t, ReduceOp op) = 0;
  // recv: size()*count elements, block r from rank r.
  virtual void all_gather(const void* send, void* recv, size_t count, DType t) = 0;
  // send and recv: size()*count elements; block j of send goes to rank j, block i of recv came from rank i.
  virtual void all_to_all(const void* send, void* recv, size_t count, DType t) = 0;
  virtual void broadcast(void* data, size_t count, DType t, int root) = 0;
  virtual void barrier() = 0;
  // Abort the whole job (with a message naming the collective) when one collective takes longer
  // than `seconds` (dist.timeout_s): a dead or hanging peer must not hang the others forever.
  // <= 0: wait forever. Only the MPI backend needs it (self never waits; NCCL has its own).
  virtual void set_timeout(double seconds) { (void)seconds; }

  // typed conveniences
  void all_reduce(float* d, size_t n, ReduceOp op) { all_reduce(d, n, DType::F32, op); }
  void all_reduce(double* d, size_t n, ReduceOp op) { all_reduce(d, n, DType::F64, op); }
  double all_reduce_scalar(double v, ReduceOp op) {
    all_reduce(&v, 1, DType::F64, op);
    return v;
  }
};

// A world of one rank: every collective is a copy.
std::unique_ptr<Communicator> make_self_communicator();
// MPI_COMM_WORLD (host buffers). MPI must be initialized (dist/bootstrap.h).
std::unique_ptr<Communicator> make_mpi_communicator();

}  // namespace og
