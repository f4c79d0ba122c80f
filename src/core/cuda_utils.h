// CUDA helpers shared by every .cu file: error checks that name the call site, a device
// buffer owner, and whether a GPU is present. Include only from CUDA builds (ORTHOGPT_CUDA).
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "core/error.h"

#define CUDA_CHECK(call)                                                                                             \
  do {                                                                                                               \
    cudaError_t err_ = (call);                                                                                       \
    if (err_ != cudaSuccess)                                                                                         \
      ::og::fail("CUDA error {} ({}) at {}:{}: {}", (int)err_, cudaGetErrorString(err_), __FILE__, __LINE__, #call); \
  } while (0)

#define CUBLAS_CHECK(call)                                                                                      \
  do {                                                                                                          \
    cublasStatus_t st_ = (call);                                                                                \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                                           \
      ::og::fail("cuBLAS error {} ({}) at {}:{}: {}", (int)st_, cublasGetStatusString(st_), __FILE__, __LINE__, \
                 #call);                                                                                        \
  } while (0)

// Check the last launch (call right after a <<<...>>>).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace og {

// True if a CUDA device is usable (cached).
bool cuda_available();

// True if p is aligned to `bytes`; all_aligned_to: every non-null pointer is (the condition of a
// kernel's vector path).
inline bool aligned_to(const void* p, size_t bytes) { return ((uintptr_t)p % bytes) == 0; }
inline bool all_aligned_to(std::initializer_list<const void*> ptrs, size_t bytes) {
  for (const void* p : ptrs)
    if (p && !aligned_to(p, bytes)) return false;
  return true;
}

// Calls f(std::integral_constant<int, V>{}) for the V among Vs that equals v, or for the last V if
// none does: a runtime choice among a kernel's instantiated template values, as a compile-time
// constant (the callers check v first).
template <int... Vs, typename F> void with_constant(int v, F&& f) {
  constexpr int values[] = {Vs...};
  bool done = false;
  ((done = done || (v == Vs && (f(std::integral_constant<int, Vs>{}), true))), ...);
  if (!done) f(std::integral_constant<int, values[sizeof...(Vs) - 1]>{});
}

// Owning device allocation (cudaMalloc / cudaFree). An allocation failure is an og::Error that
// says how many bytes were asked for (out-of-memory must be a clear error).
template <typename T> class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { resize(n); }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void resize(size_t n) {
    if (n == n_) return;
    release();
    if (n == 0) return;
    cudaError_t e = cudaMalloc(&p_, n * sizeof(T));
    if (e != cudaSuccess) {
      p_ = nullptr;
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("GPU out of memory: asked for {:.1f} MiB, {:.1f} MiB free of {:.1f} MiB ({})", n * sizeof(T) / 1048576.0,
           free_b / 1048576.0, total_b / 1048576.0, cudaGetErrorString(e));
    }
    n_ = n;
  }
  void release() {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// An owned CUDA stream / event handle: null until created (create() or a cudaXxxCreate on
// .s / .e), destroyed with its owner.
struct OwnedStream {
  cudaStream_t s = nullptr;
  OwnedStream() = default;
  OwnedStream(const OwnedStream&) = delete;
  OwnedStream& operator=(const OwnedStream&) = delete;
  ~OwnedStream() {
    if (s) cudaStreamDestroy(s);
  }
};
struct OwnedEvent {
  cudaEvent_t e = nullptr;
  OwnedEvent() = default;
  OwnedEvent(const OwnedEvent&) = delete;
  OwnedEvent& operator=(const OwnedEvent&) = delete;
  ~OwnedEvent() {
    if (e) cudaEventDestroy(e);
  }
  // A timing-free event (for ordering streams).
  void create() { CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)); }
};

// `waiter` continues only after everything enqueued on `signaller` so far (e: a scratch event,
// recorded here; reusable at once, since the wait captures the record).
inline void stream_wait(cudaStream_t waiter, cudaStream_t signaller, cudaEvent_t e) {
  CUDA_CHECK(cudaEventRecord(e, signaller));
  CUDA_CHECK(cudaStreamWaitEvent(waiter, e, 0));
}

// A non-blocking stream that a piece of work (a Newton–Schulz group) runs on beside a step
// stream: forked from it at an event recorded there, joined back into it. Empty (s == nullptr)
// until create(); priority as cudaStreamCreateWithPriority (0: the default).
struct SideStream {
  cudaStream_t s = nullptr;  // owned by stream
  void create(int priority = 0) {
    CUDA_CHECK(cudaStreamCreateWithPriority(&stream_.s, cudaStreamNonBlocking, priority));
    done_.create();
    s = stream_.s;
  }
  // Work enqueued on s from now on starts after `fork` (an event recorded on the step stream).
  void fork(cudaEvent_t fork) const { CUDA_CHECK(cudaStreamWaitEvent(s, fork, 0)); }
  // The step stream continues only after everything enqueued on s so far.
  void join(cudaStream_t step) const { stream_wait(step, s, done_.e); }

 private:
  OwnedStream stream_;
  OwnedEvent done_;
};

}  // namespace og
