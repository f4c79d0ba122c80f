#include "dist/staged_communicator.h"

#ifdef ORTHOGPT_CUDA
#include <numeric>
#include <vector>

#include "core/cuda_utils.h"
#include "core/error.h"

namespace og {
namespace {

class StagedCommunicator final : public Communicator {
 public:
  StagedCommunicator(Communicator& host, cudaStream_t stream) : host_(host), stream_(stream) {}
  ~StagedCommunicator() override {
    if (pinned_) cudaFreeHost(pinned_);
  }
  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  std::string backend() const override { return "staged:" + host_.backend(); }
  bool device_buffers() const override { return true; }
  void* device_stream() const override { return stream_; }
  void set_timeout(double seconds) override { host_.set_timeout(seconds); }

  void all_reduce(void* data, size_t count, DType t, ReduceOp op) override {
    char* h = to_host(data, count, t, 0);  // reduced in place
    host_.all_reduce(h, count, t, op);
    to_device(data, h, count, t);
  }
  void reduce_scatter(const void* send, void* recv, size_t count, DType t, ReduceOp op) override {
    const size_t W = (size_t)size();
    char* hs = to_host(send, W * count, t, count);
    char* hr = hs + W * count * dtype_size(t);
    host_.reduce_scatter(hs, hr, count, t, op);
    to_device(recv, hr, count, t);
  }
  void all_gather(const void* send, void* recv, size_t count, DType t) override {
    // send may be this rank's block of recv (in place): stage it on its own.
    const size_t W = (size_t)size();
    char* hs = to_host(send, count, t, W * count);
    char* hr = hs + count * dtype_size(t);
    host_.all_gather(hs, hr, count, t);
    to_device(recv, hr, W * count, t);
  }
  void all_to_all(const void* send, void* recv, size_t count, DType t) override {
    const size_t W = (size_t)size();
    char* hs = to_host(send, W * count, t, W * count);
    char* hr = hs + W * count * dtype_size(t);
    host_.all_to_all(hs, hr, count, t);
    to_device(recv, hr, W * count, t);
  }
  void broadcast(void* data, size_t count, DType t, int root) override {
    char* h = to_host(data, count, t, 0);
    host_.broadcast(h, count, t, root);
    to_device(data, h, count, t);
  }
  void barrier() override {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    host_.barrier();
  }
  void all_gatherv(const void* send, void* recv, const std::vector<size_t>& counts, DType t) override {
    const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
    char* hs = to_host(send, counts.at((size_t)rank()), t, total);
    char* hr = hs + counts[(size_t)rank()] * dtype_size(t);
    host_.all_gatherv(hs, hr, counts, t);
    to_device(recv, hr, total, t);
  }
  void reduce_scatterv(const void* send, void* recv, const std::vector<size_t>& counts, DType t, ReduceOp op) override {
    const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
    char* hs = to_host(send, total, t, counts.at((size_t)rank()));
    char* hr = hs + total * dtype_size(t);
    host_.reduce_scatterv(hs, hr, counts, t, op);
    to_device(recv, hr, counts.at((size_t)rank()), t);
  }

 private:
  // Waits for the stream, then copies n elements from the device into the staging buffer (sized
  // for n + out elements: the input, then the collective's output) and returns it.
  char* to_host(const void* src, size_t n, DType t, size_t out) {
    const size_t es = dtype_size(t);
    reserve((n + out) * es);
    CUDA_CHECK(cudaMemcpyAsync(pinned_, src, n * es, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return static_cast<char*>(pinned_);
  }
  void to_device(void* dst, const char* h, size_t n, DType t) {
    CUDA_CHECK(cudaMemcpyAsync(dst, h, n * dtype_size(t), cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));  // the staging buffer is reused by the next call
  }
  void reserve(size_t bytes) {
    if (bytes <= capacity_) return;
    if (pinned_) CUDA_CHECK(cudaFreeHost(pinned_));
    pinned_ = nullptr;
    capacity_ = 0;
    OG_CHECK(cudaMallocHost(&pinned_, bytes) == cudaSuccess, "staged communicator: cannot pin {} bytes of host memory",
             bytes);
    capacity_ = bytes;
  }

  Communicator& host_;
  cudaStream_t stream_;
  void* pinned_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_staged_communicator(Communicator& host, cudaStream_t stream) {
  return std::make_unique<StagedCommunicator>(host, stream);
}

}  // namespace og
#endif  // ORTHOGPT_CUDA
