// Collective communication behind one interface: an MPI backend on host buffers (the CPU path,
// and what CI tests with mpirun -np 2/3) and an NCCL backend on device buffers (the GPU path).
// A world of one (no mpirun) uses the trivial self communicator. Every rank must call every
// collective in the same order with the same counts.
#pragma once
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

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
  // Device backends (NCCL, staged) take device pointers, and their collectives are ordered on
  // device_stream() (a cudaStream_t; nullptr is the legacy default stream), so that a caller
  // working on another stream can order itself with them. Host backends: false.
  virtual bool device_buffers() const { return false; }
  virtual void* device_stream() const { return nullptr; }
  // Collectives called between group_start() and group_end() may be fused into one launch
  // (NCCL: ncclGroupStart/End; the others run each call as it comes). For many small collectives
  // in a row, e.g. FSDP's per-parameter gathers. Use CollectiveGroup.
  virtual void group_start() {}
  virtual void group_end() {}

  // Variable-size blocks (FSDP shards of uneven row splits): counts[r] elements from / to rank r,
  // block r at element offset counts[0] + ... + counts[r-1] of the concatenated buffer.
  // all_gatherv: send holds counts[rank()] elements, recv the sum of counts.
  // reduce_scatterv: send holds the sum of counts, recv counts[rank()] (block rank() reduced).
  // The defaults serve host-buffer backends (self, MPI): each block is padded to the largest
  // count in a temporary host buffer of size() x max(counts) elements and the equal-block
  // collective runs on it, so the traffic is size() x max instead of the sum (for FSDP row
  // shards: at most one row per rank and parameter more). Device backends (NCCL) override them.
  virtual void all_gatherv(const void* send, void* recv, const std::vector<size_t>& counts, DType t);
  virtual void reduce_scatterv(const void* send, void* recv, const std::vector<size_t>& counts, DType t, ReduceOp op);

  // typed conveniences
  void all_reduce(float* d, size_t n, ReduceOp op) { all_reduce(d, n, DType::F32, op); }
  void all_reduce(double* d, size_t n, ReduceOp op) { all_reduce(d, n, DType::F64, op); }
  double all_reduce_scalar(double v, ReduceOp op) {
    all_reduce(&v, 1, DType::F64, op);
    return v;
  }
};

// group_start() on construction, group_end() on destruction (not while an exception from inside
// the group unwinds: that error is the one to report, and the job aborts on it).
class CollectiveGroup {
 public:
  explicit CollectiveGroup(Communicator& c) : c_(c), unwinding_(std::uncaught_exceptions()) { c_.group_start(); }
  ~CollectiveGroup() noexcept(false) {
    if (std::uncaught_exceptions() == unwinding_) c_.group_end();
  }
  CollectiveGroup(const CollectiveGroup&) = delete;
  CollectiveGroup& operator=(const CollectiveGroup&) = delete;

 private:
  Communicator& c_;
  int unwinding_;
};

// A world of one rank: every collective is a copy.
std::unique_ptr<Communicator> make_self_communicator();
// MPI_COMM_WORLD (host buffers). MPI must be initialized (dist/bootstrap.h).
std::unique_ptr<Communicator> make_mpi_communicator();

}  // namespace og
