// The CUDA emulation's scheduler (emulation.h): a block's threads as fibers, switched at barriers.
#include "emulation.h"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace softiou_emu {
namespace {

constexpr size_t kStack = 256 * 1024;  // per thread: the kernels' arrays live on it

struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
  const char* file = nullptr;  // __syncthreads: where the threads waiting now called it
  unsigned line = 0;
};

struct Thread {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  uint3 index{0, 0, 0};
  bool done = false;
  const Barrier* waiting = nullptr;  // the barrier it waits at, and that barrier's generation
  uint64_t generation = 0;
};

struct Warp {
  Barrier barrier;
  uint64_t slots[32] = {};
};

struct Block {
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  Barrier barrier;
  int live = 0;  // threads not yet returned
  ucontext_t scheduler;
  Thread* current = nullptr;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> shared;
  dim3 grid, dim;
  uint3 index{0, 0, 0};
  bool failed = false;
  uint64_t serial = 0;                          // this block's number, over all launches
  std::unordered_map<void*, uint64_t> fresh;    // a shared array: the block that filled it
};

int g_order = 0;            // set_thread_order
Block* g_block = nullptr;  // the block running (one launch at a time: g_launch)
std::mutex g_launch;
cudaError_t g_error = cudaSuccess;
std::string g_message;

[[noreturn]] void fail(const std::string& why) {
  Block* b = g_block;
  if (b == nullptr || b->current == nullptr) {  // host code: nowhere to return to
    std::fprintf(stderr, "softiou CUDA emulation: %s\n", why.c_str());
    std::abort();
  }
  if (g_message.empty()) g_message = why;
  b->failed = true;
  swapcontext(&b->current->context, &b->scheduler);  // never resumed
  std::abort();
}

void yield() {
  Block* b = g_block;
  swapcontext(&b->current->context, &b->scheduler);
}

// Arrive at a barrier of `expected` threads; wait for the last of them. The last one yields too:
// after a barrier the threads go on in the scheduler's order (set_thread_order), not the last
// one first.
void arrive(Barrier& bar, int expected) {
  Thread* t = g_block->current;
  t->waiting = &bar;
  t->generation = bar.generation;
  if (++bar.arrived == expected) {
    bar.arrived = 0;
    ++bar.generation;
  }
  yield();
}

void trampoline() {
  Block* b = g_block;
  (*b->body)();
  b->current->done = true;
  --b->live;
  swapcontext(&b->current->context, &b->scheduler);
}

bool released(const Thread& t) {
  return t.waiting == nullptr || t.waiting->generation != t.generation;
}

void run_block(Block& b) {
  const int n = int(b.threads.size());
  for (Thread& t : b.threads) {
    if (!t.stack) t.stack.reset(new char[kStack]);
    getcontext(&t.context);
    t.context.uc_stack.ss_sp = t.stack.get();
    t.context.uc_stack.ss_size = kStack;
    t.context.uc_link = nullptr;
    makecontext(&t.context, trampoline, 0);
    t.done = false;
    t.waiting = nullptr;
  }
  for (Warp& w : b.warps) w.barrier = Barrier{};
  b.barrier = Barrier{};
  b.live = n;
  const bool reverse = g_order == 2 || (g_order == 0 && b.serial % 2 == 0);
  while (b.live > 0 && !b.failed) {
    bool ran = false;
    for (int i = 0; i < n; ++i) {
      Thread& t = b.threads[reverse ? n - 1 - i : i];
      if (t.done || !released(t)) continue;
      t.waiting = nullptr;
      b.current = &t;
      swapcontext(&b.scheduler, &t.context);
      b.current = nullptr;
      ran = true;
      if (b.failed) break;
      if (t.done) {
        // a returned thread no longer takes part in __syncthreads (as on the device); the
        // threads already waiting there are released if it was the last one missing
        if (b.barrier.arrived > 0 && b.barrier.arrived == b.live) {
          b.barrier.arrived = 0;
          ++b.barrier.generation;
        }
        const Warp& w = b.warps[t.index.x / 32];
        if (w.barrier.arrived > 0 && g_message.empty()) {
          g_message = "a warp shuffle waits for a lane that has returned (thread " +
                      std::to_string(t.index.x) + ")";
          b.failed = true;
        }
      }
    }
    if (!ran && !b.failed) {
      g_message = "deadlock: every thread of the block waits at a barrier the others do not reach";
      b.failed = true;
    }
  }
}

}  // namespace

int multiprocessors() {
  static const int n = [] {
    const char* s = std::getenv("SOFTIOU_EMULATED_SMS");
    const int v = s ? std::atoi(s) : 0;
    return v > 0 ? v : 2;
  }();
  return n;
}

void set_thread_order(int order) {
  std::lock_guard<std::mutex> lock(g_launch);
  g_order = order;
}

cudaError_t take_error() {
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}

const char* last_error_message() { return g_message.c_str(); }

const uint3& thread_index() { return g_block->current->index; }
const uint3& block_index() { return g_block->index; }
const dim3& block_dim() { return g_block->dim; }
const dim3& grid_dim() { return g_block->grid; }
void* dynamic_shared() { return g_block->shared.data(); }

void fresh_shared(void* p, size_t bytes) {
  uint64_t& filled = g_block->fresh[p];
  if (filled != g_block->serial) {
    filled = g_block->serial;
    std::memset(p, 0xFF, bytes);
  }
}
uint64_t* warp_slots() { return g_block->warps[g_block->current->index.x / 32].slots; }

void sync_block(const char* file, unsigned line) {
  Barrier& bar = g_block->barrier;
  if (bar.arrived == 0) {
    bar.file = file;
    bar.line = line;
  } else if (bar.line != line || std::strcmp(bar.file, file) != 0) {
    fail("divergent __syncthreads: thread " + std::to_string(g_block->current->index.x) +
         " at " + file + ":" + std::to_string(line) + ", " + std::to_string(bar.arrived) +
         " thread(s) waiting at " + bar.file + ":" + std::to_string(bar.line));
  }
  arrive(bar, g_block->live);
}

void sync_warp() {
  Block* b = g_block;
  const unsigned w = b->current->index.x / 32;
  const unsigned first = w * 32, size = b->dim.x - first < 32 ? b->dim.x - first : 32;
  for (unsigned i = first; i < first + size; ++i) {
    if (b->threads[i].done) fail("a warp shuffle with a lane that has returned");
  }
  arrive(b->warps[w].barrier, int(size));
}

void device_assert(const char* cond, const char* file, unsigned line, const char* func) {
  fail(std::string(file) + ":" + std::to_string(line) + ": " + func + ": device-side assert `" +
       cond + "` failed");
}

void run_grid(dim3 grid, dim3 block, size_t shared, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_launch);
  if (g_error != cudaSuccess) return;  // a failed launch stops the stream's later ones
  if (block.y != 1 || block.z != 1 || block.x == 0 || block.x > 1024) {
    g_error = cudaErrorInvalidValue;
    return;
  }
  thread_local Block b;  // the fibers' stacks are kept from launch to launch
  b.threads.resize(block.x);
  b.warps.assign((block.x + 31) / 32, Warp{});
  for (unsigned i = 0; i < block.x; ++i) b.threads[i].index = uint3{i, 0, 0};
  b.body = &body;
  b.grid = grid;
  b.dim = block;
  b.failed = false;
  g_message.clear();
  g_block = &b;
  for (unsigned z = 0; z < grid.z && !b.failed; ++z) {
    for (unsigned y = 0; y < grid.y && !b.failed; ++y) {
      for (unsigned x = 0; x < grid.x && !b.failed; ++x) {
        static uint64_t blocks = 0;
        b.serial = ++blocks;
        b.index = uint3{x, y, z};
        // dynamic shared memory starts as a pattern, not zeros: a kernel must initialise it
        b.shared.assign(shared, 0xA5);
        run_block(b);
      }
    }
  }
  g_block = nullptr;
  if (b.failed) g_error = g_message.find("device-side assert") != std::string::npos
                              ? cudaErrorAssert
                              : cudaErrorLaunchFailure;
}

}  // namespace softiou_emu
