// Kernels that break the rules the emulation checks, one rule each, and one that keeps them:
// tests/test_cuda_emulation.py asserts that each break is caught, so that a check of the
// emulation that stops working shows. Compiled by tools/cuda_emulation.py like csrc/cuda's
// sources (the launches and the shared arrays rewritten), never by nvcc.
#include <cuda_runtime.h>

#include <cstring>
#include <vector>

namespace softiou_emu_selftest {

// Each thread writes its slot of a shared array and reads its neighbour's. Without the barrier a
// thread reads a slot its neighbour has not written yet: the emulation's poison (NaN), in every
// block (block 1 does not see block 0's values).
__global__ void exchange(float* out, bool barrier) {
  __shared__ float s[64];
  s[threadIdx.x] = float(threadIdx.x);
  if (barrier) __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

__global__ void divergent_barrier(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();  // another barrier: on the GPU, a hang or worse
  }
  out[threadIdx.x] = 1.0f;
}

__global__ void shuffle_with_returned_lane(float* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}

// Lane 0 waits for the block, the other lanes for lane 0's shuffle.
__global__ void deadlock(float* out) {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  }
}

__global__ void failing_assert(float* out) {
  if (threadIdx.x == 3 && out != nullptr) __assert_fail("selftest", __FILE__, __LINE__, __func__);
}

// Runs the kernel `name` on `out` (128 floats, -1 where nothing is written): the launch's error
// in `err`; false where no kernel has that name.
bool run(const char* name, std::vector<float>& out, cudaError_t& err) {
  out.assign(128, -1.0f);
  float* o = out.data();
  if (std::strcmp(name, "exchange") == 0) {
    exchange<<<2, 64>>>(o, true);
  } else if (std::strcmp(name, "exchange_without_barrier") == 0) {
    exchange<<<2, 64>>>(o, false);
  } else if (std::strcmp(name, "divergent_barrier") == 0) {
    divergent_barrier<<<1, 64>>>(o);
  } else if (std::strcmp(name, "shuffle_with_returned_lane") == 0) {
    shuffle_with_returned_lane<<<1, 32>>>(o);
  } else if (std::strcmp(name, "deadlock") == 0) {
    deadlock<<<1, 32>>>(o);
  } else if (std::strcmp(name, "failing_assert") == 0) {
    failing_assert<<<1, 32>>>(o);
  } else {
    return false;
  }
  err = cudaGetLastError();
  return true;
}

}  // namespace softiou_emu_selftest
