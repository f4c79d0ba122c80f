#include "dist/communicator.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace og {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

void Communicator::all_gatherv(const void* send, void* recv, const std::vector<size_t>& counts, DType t) {
  const size_t n = (size_t)size(), es = dtype_size(t);
  OG_CHECK(counts.size() == n, "all_gatherv: {} counts for {} ranks", counts.size(), n);
  size_t max = 0;
  for (size_t c : counts) max = std::max(max, c);
  if (max == 0) return;
  std::vector<char> mine(max * es, 0), all(n * max * es);
  if (counts[rank()]) std::memcpy(mine.data(), send, counts[rank()] * es);
  all_gather(mine.data(), all.data(), max, t);
  char* out = static_cast<char*>(recv);
  for (size_t r = 0; r < n; ++r) {
    if (counts[r]) std::memcpy(out, all.data() + r * max * es, counts[r] * es);
    out += counts[r] * es;
  }
}

void Communicator::reduce_scatterv(const void* send, void* recv, const std::vector<size_t>& counts, DType t,
                                   ReduceOp op) {
  const size_t n = (size_t)size(), es = dtype_size(t);
  OG_CHECK(counts.size() == n, "reduce_scatterv: {} counts for {} ranks", counts.size(), n);
  size_t max = 0;
  for (size_t c : counts) max = std::max(max, c);
  if (max == 0) return;
  std::vector<char> padded(n * max * es, 0), mine(max * es);
  const char* in = static_cast<const char*>(send);
  for (size_t r = 0; r < n; ++r) {
    if (counts[r]) std::memcpy(padded.data() + r * max * es, in, counts[r] * es);
    in += counts[r] * es;
  }
  reduce_scatter(padded.data(), mine.data(), max, t, op);
  if (counts[rank()]) std::memcpy(recv, mine.data(), counts[rank()] * es);
}

namespace {

class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "self"; }
  void all_reduce(void*, size_t, DType, ReduceOp) override {}
  void reduce_scatter(const void* send, void* recv, size_t count, DType t, ReduceOp) override {
    copy(send, recv, count, t);
  }
  void all_gather(const void* send, void* recv, size_t count, DType t) override { copy(send, recv, count, t); }
  void all_to_all(const void* send, void* recv, size_t count, DType t) override { copy(send, recv, count, t); }
  void broadcast(void*, size_t, DType, int root) override {
    OG_CHECK(root == 0, "broadcast from rank {} in a world of one", root);
  }
  void barrier() override {}

 private:
  static void copy(const void* s, void* d, size_t n, DType t) {
    if (s != d && n) std::memmove(d, s, n * dtype_size(t));
  }
};

}  // namespace

std::unique_ptr<Communicator> make_self_communicator() { return std::make_unique<SelfCommunicator>(); }

}  // namespace og
