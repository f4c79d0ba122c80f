// CountingCommunicator: forward and count (see counting_communicator.h for the byte model).
#include "dist/counting_communicator.h"

namespace og {

const char* name_of(CollectiveKind k) {
  switch (k) {
    case CollectiveKind::AllReduce: return "all_reduce";
    case CollectiveKind::ReduceScatter: return "reduce_scatter";
    case CollectiveKind::AllGather: return "all_gather";
    case CollectiveKind::AllToAll: return "all_to_all";
    case CollectiveKind::Broadcast: return "broadcast";
    case CollectiveKind::Barrier: return "barrier";
  }
  return "?";
}

double ring_bytes_per_rank(CollectiveKind kind, size_t count, DType t, int world) {
  if (world <= 1) return 0.0;
  const double n = (double)count * (double)dtype_size(t), w = (double)world;
  switch (kind) {
    case CollectiveKind::AllReduce: return 2.0 * (w - 1.0) / w * n;
    case CollectiveKind::ReduceScatter:
    case CollectiveKind::AllGather:
    case CollectiveKind::AllToAll: return (w - 1.0) * n;
    case CollectiveKind::Broadcast: return n;
    case CollectiveKind::Barrier: return 0.0;
  }
  return 0.0;
}

void CountingCommunicator::count(CollectiveKind k, size_t n, DType t) {
  bytes_[(int)k] += ring_bytes_per_rank(k, n, t, inner_.size());
  ++calls_[(int)k];
}

void CountingCommunicator::all_reduce(void* data, size_t count_, DType t, ReduceOp op) {
  count(CollectiveKind::AllReduce, count_, t);
  inner_.all_reduce(data, count_, t, op);
}

void CountingCommunicator::reduce_scatter(const void* send, void* recv, size_t count_, DType t, ReduceOp op) {
  count(CollectiveKind::ReduceScatter, count_, t);
  inner_.reduce_scatter(send, recv, count_, t, op);
}

void CountingCommunicator::all_gather(const void* send, void* recv, size_t count_, DType t) {
  count(CollectiveKind::AllGather, count_, t);
  inner_.all_gather(send, recv, count_, t);
}

void CountingCommunicator::all_to_all(const void* send, void* recv, size_t count_, DType t) {
  count(CollectiveKind::AllToAll, count_, t);
  inner_.all_to_all(send, recv, count_, t);
}

void CountingCommunicator::broadcast(void* data, size_t count_, DType t, int root) {
  count(CollectiveKind::Broadcast, count_, t);
  inner_.broadcast(data, count_, t, root);
}

namespace {
size_t max_count(const std::vector<size_t>& counts) {
  size_t m = 0;
  for (size_t c : counts) m = c > m ? c : m;
  return m;
}
}  // namespace

void CountingCommunicator::all_gatherv(const void* send, void* recv, const std::vector<size_t>& counts, DType t) {
  count(CollectiveKind::AllGather, max_count(counts), t);
  inner_.all_gatherv(send, recv, counts, t);
}

void CountingCommunicator::reduce_scatterv(const void* send, void* recv, const std::vector<size_t>& counts, DType t,
                                           ReduceOp op) {
  count(CollectiveKind::ReduceScatter, max_count(counts), t);
  inner_.reduce_scatterv(send, recv, counts, t, op);
}

void CountingCommunicator::barrier() {
  count(CollectiveKind::Barrier, 0, DType::U8);
  inner_.barrier();
}

double CountingCommunicator::total_bytes() const {
  double s = 0.0;
  for (double b : bytes_) s += b;
  return s;
}

void CountingCommunicator::reset() {
  bytes_.fill(0.0);
  calls_.fill(0);
}

}  // namespace og
