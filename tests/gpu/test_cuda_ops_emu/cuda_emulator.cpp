// The emulator's runtime: fibers, barriers, warp exchanges, deferred cp.async (see cuda_emulator.h).
#include "cuda_emulator.h"

#include <ucontext.h>

namespace emu {

uint3 g_threadIdx, g_blockIdx;
dim3 g_blockDim, g_gridDim;
unsigned char* g_dyn_smem = nullptr;

namespace {

struct PendingCopy {
  void* dst;
  const void* src;
  bool valid;
  int group;
};

struct Barrier {
  int count = 0;
  long generation = 0;
};

struct Fiber {
  ucontext_t ctx;
  const Barrier* waiting_on = nullptr;  // blocked until this barrier's generation moves on
  long waiting_generation = 0;
  std::vector<char> stack;
  bool done = false;
  uint3 tid;
  std::vector<PendingCopy> pending;
  int committed = 0;
};

constexpr size_t kStackBytes = 96 * 1024;

size_t g_dyn_bytes = 0;
ucontext_t g_scheduler;
std::vector<Fiber> g_fibers;
int g_current = 0;
int g_nthreads = 0;
std::function<void()>* g_body = nullptr;
Barrier g_block_barrier;
Barrier g_warp_barrier[32];
WarpExchange g_exchange[32];

void yield() { swapcontext(&g_fibers[g_current].ctx, &g_scheduler); }

void wait_at(Barrier& b, int participants) {
  const long gen = b.generation;
  if (++b.count == participants) {
    b.count = 0;
    ++b.generation;
  } else {
    Fiber& f = g_fibers[g_current];
    f.waiting_on = &b;
    f.waiting_generation = gen;
    yield();  // the scheduler resumes this fiber only once the barrier has opened
  }
}

int linear_tid() {
  return g_threadIdx.x + g_threadIdx.y * g_blockDim.x + g_threadIdx.z * g_blockDim.x * g_blockDim.y;
}

void fiber_main() {
  (*g_body)();
  g_fibers[g_current].done = true;  // then uc_link returns to the scheduler
}

}  // namespace

int lane() { return linear_tid() % 32; }
int warp() { return linear_tid() / 32; }
void syncthreads() { wait_at(g_block_barrier, g_nthreads); }
void warp_barrier() { wait_at(g_warp_barrier[warp()], std::min(32, g_nthreads - 32 * warp())); }
WarpExchange& warp_exchange() { return g_exchange[warp()]; }

float shfl_xor(float v, int lane_mask) {
  WarpExchange& x = warp_exchange();
  x.f[lane()] = v;
  warp_barrier();
  const float r = x.f[lane() ^ lane_mask];
  warp_barrier();
  return r;
}

void check_dynamic_smem(const void* p, size_t bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < g_dyn_smem || c + bytes > g_dyn_smem + g_dyn_bytes) {
    std::fprintf(stderr, "access outside dynamic shared memory: offset %td of %zu bytes\n", c - g_dyn_smem,
                 g_dyn_bytes);
    std::abort();
  }
}

void cp_async(void* dst, const void* src, bool valid) {
  Fiber& f = g_fibers[g_current];
  f.pending.push_back({dst, src, valid, f.committed});
}

void cp_commit() { ++g_fibers[g_current].committed; }

void cp_wait(int max_pending_groups) {
  Fiber& f = g_fibers[g_current];
  std::vector<PendingCopy> keep;
  for (const PendingCopy& c : f.pending) {
    if (c.group < f.committed - max_pending_groups) {
      if (c.valid)
        std::memcpy(c.dst, c.src, 16);
      else
        std::memset(c.dst, 0, 16);
    } else {
      keep.push_back(c);
    }
  }
  f.pending.swap(keep);
}

void launch(dim3 grid, dim3 block, size_t smem, std::function<void()> body) {
  g_gridDim = grid;
  g_blockDim = block;
  g_nthreads = block.x * block.y * block.z;
  g_body = &body;
  std::vector<unsigned char> dyn(smem + 16);
  if ((int)g_fibers.size() < g_nthreads) g_fibers.resize(g_nthreads);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        g_blockIdx = make_uint3(bx, by, bz);
        std::fill(dyn.begin(), dyn.end(), 0xFF);
        g_dyn_smem = dyn.data();
        g_dyn_bytes = smem;
        g_block_barrier = Barrier{};
        for (Barrier& b : g_warp_barrier) b = Barrier{};
        for (int i = 0; i < g_nthreads; ++i) {
          Fiber& f = g_fibers[i];
          f.done = false;
          f.waiting_on = nullptr;
          f.pending.clear();
          f.committed = 0;
          if (f.stack.size() != kStackBytes) f.stack.resize(kStackBytes);
          f.tid = make_uint3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = f.stack.data();
          f.ctx.uc_stack.ss_size = f.stack.size();
          f.ctx.uc_link = &g_scheduler;
          makecontext(&f.ctx, fiber_main, 0);
        }
        // round-robin until every thread of the block has returned
        for (bool all_done = false; !all_done;) {
          all_done = true;
          bool progressed = false;
          for (int i = 0; i < g_nthreads; ++i) {
            Fiber& f = g_fibers[i];
            if (f.done) continue;
            all_done = false;
            if (f.waiting_on && f.waiting_on->generation == f.waiting_generation) continue;
            f.waiting_on = nullptr;
            progressed = true;
            g_current = i;
            g_threadIdx = g_fibers[i].tid;
            swapcontext(&g_scheduler, &g_fibers[i].ctx);
          }
          if (!all_done && !progressed) {
            std::fprintf(stderr, "emulator: deadlock in block (%u, %u, %u): threads wait at barriers that never open\n",
                         bx, by, bz);
            std::abort();
          }
        }
      }
}

cudaError_t device_malloc(void** p, size_t n) {
  *p = std::aligned_alloc(256, (n + 255) / 256 * 256 + 256);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t device_free(void* p) {
  std::free(p);
  return cudaSuccess;
}

}  // namespace emu

// The emulator is the device.
namespace og {
bool cuda_available() { return true; }
}  // namespace og
