// The hard counts of SPEC section 11 on CUDA (torch-free): per (sample, class) tp, fp, tn, fn.
//
// A kernel of its own where the statistics pass does not count (kernels.h: counts_in_stats):
// launched after it on the same stream, it reads the input a second time. Integer counts with
// integer atomics: exact, so the result is the same bitwise whatever the order of the additions
// (no float atomics anywhere).
//
// The prediction is made from the raw input (SPEC section 11): multiclass, the first maximal
// class (torch.argmax's choice); binary/multilabel, x > a.count_threshold. The target: a class
// map's value, an integer target's 1, a dense target's first maximal class (multiclass) or
// y > 0.5. Pixels or elements the statistics do not keep (ignore_index, values out of range,
// which the statistics kernels report) count nowhere.
#include "common.cuh"

namespace softiou {
namespace cuda {
namespace detail {

// Counters per block in shared memory up to this many classes; beyond, straight to global memory.
constexpr int64_t kSharedClasses = 1024;

// A target element as a number (integers exactly: class maps stay far below 2^53).
template <class T>
__device__ __forceinline__ double target_value(const T* p) {
  if constexpr (IsInt<T>::value || std::is_same<T, double>::value) {
    return double(*p);
  } else {
    return double(to_acc<float>(*p));
  }
}

// Whether an element equals the ignored value (compared as numbers: a value the target's type
// cannot hold equals none of its elements).
__device__ __forceinline__ bool ignored(const KernelArgs& a, double v) {
  return a.options.ignore_index.has && v == double(a.options.ignore_index.value);
}

// A class map's class at t: -1 where it is ignored or out of range.
__device__ __forceinline__ int64_t class_at(const KernelArgs& a, double v) {
  return !ignored(a, v) && v >= 0.0 && v < double(a.C) ? int64_t(v) : int64_t(-1);
}

// counts: [N][C][4] (tp, predicted, target, kept), zeroed by the caller.
template <class S, class TT>
__global__ void __launch_bounds__(kThreads) count_kernel(KernelArgs a,
                                                         unsigned long long* counts) {
  using A = typename Acc<S>::type;
  extern __shared__ unsigned long long shared_counts[];
  const int64_t C = a.C;
  const bool in_shared = C <= kSharedClasses;
  const bool multiclass = a.options.mode == Mode::kMulticlass;
  const A thr = A(a.count_threshold);
  // samples beyond the grid's 65535 rows: the block's row strides over them
  for (int64_t n = blockIdx.y; n < a.N; n += gridDim.y) {
    unsigned long long* acc = in_shared ? shared_counts : counts + n * C * 4;
    if (in_shared) {
      __syncthreads();  // the previous sample's counters are flushed
      for (int64_t i = threadIdx.x; i < C * 4; i += blockDim.x) acc[i] = 0ull;
      __syncthreads();
    }
    const S* x0 = static_cast<const S*>(a.x) + n * a.x_sN;
    const TT* t0 = static_cast<const TT*>(a.t) + n * a.t_sN;
    unsigned long long kept = 0;
    for (int64_t m = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; m < a.M;
         m += int64_t(gridDim.x) * blockDim.x) {
      const S* x = x0 + m * a.x_sM;
      const TT* t = t0 + m * a.t_sM;
      if (multiclass) {
        int64_t y = -1;
        if (a.class_map) {
          y = class_at(a, target_value(t));
        } else {  // a dense target's first maximal class
          double best = target_value(t);
          y = 0;
          // (the class loops are not unrolled: each step depends on the one before, and the
          // unrolled copies of this kernel's many paths made ptxas spill)
#pragma unroll 1
          for (int64_t c = 1; c < C; ++c) {
            const double v = target_value(t + c * a.t_sC);
            if (v > best) {
              best = v;
              y = c;
            }
          }
        }
        if (y < 0) continue;
        A best = to_acc<A>(x[0]);
        int64_t pred = 0;
#pragma unroll 1
        for (int64_t c = 1; c < C; ++c) {
          const A v = to_acc<A>(x[c * a.x_sC]);
          if (v > best) {  // strict: the first maximal class stays
            best = v;
            pred = c;
          }
        }
        atomicAdd(acc + pred * 4 + 1, 1ull);
        atomicAdd(acc + y * 4 + 2, 1ull);
        if (pred == y) atomicAdd(acc + y * 4 + 0, 1ull);
        ++kept;
      } else {
#pragma unroll 1
        for (int64_t c = 0; c < C; ++c) {
          bool keep, y;
          if (a.class_map) {  // multilabel of a class map: y = [t == c]
            const int64_t k = class_at(a, target_value(t));
            keep = k >= 0;
            y = k == c;
          } else {
            const double tv = target_value(t + c * a.t_sC);
            if (IsInt<TT>::value) {
              keep = !ignored(a, tv) && (tv == 0.0 || tv == 1.0);
              y = tv == 1.0;
            } else {
              keep = !ignored(a, tv);
              y = tv > 0.5;
            }
          }
          if (!keep) continue;
          const bool p = to_acc<A>(x[c * a.x_sC]) > thr;
          if (p) atomicAdd(acc + c * 4 + 1, 1ull);
          if (y) atomicAdd(acc + c * 4 + 2, 1ull);
          if (p && y) atomicAdd(acc + c * 4 + 0, 1ull);
          atomicAdd(acc + c * 4 + 3, 1ull);
        }
      }
    }
    if (multiclass) {
      // the pixels this thread kept count in every class
      for (int off = 16; off > 0; off >>= 1) kept += __shfl_xor_sync(0xffffffffu, kept, off);
      if ((threadIdx.x & 31) == 0 && kept != 0) {
        for (int64_t c = 0; c < C; ++c) atomicAdd(acc + c * 4 + 3, kept);
      }
    }
    if (in_shared) {
      __syncthreads();
      unsigned long long* out = counts + n * C * 4;
      for (int64_t i = threadIdx.x; i < C * 4; i += blockDim.x) {
        if (acc[i] != 0ull) atomicAdd(out + i, acc[i]);
      }
    }
  }
}

// [tp, predicted, target, kept] -> [tp, fp, tn, fn], in place.
__global__ void finish_counts_kernel(long long* counts, int64_t pairs) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs;
       i += int64_t(gridDim.x) * blockDim.x) {
    long long* q = counts + i * 4;
    const long long tp = q[0], predicted = q[1], target = q[2], kept = q[3];
    q[1] = predicted - tp;
    q[2] = kept - predicted - target + tp;
    q[3] = target - tp;
  }
}

template <class S, class TT>
cudaError_t run_counts(const KernelArgs& a, void* out, int device, cudaStream_t stream) {
  int sms = 0;
  cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  // about four blocks per multiprocessor over the batch; a block covers whole pixels
  const int64_t per_sample = (a.M + kThreads - 1) / kThreads;
  const int64_t want = (int64_t(sms) * 4 + a.N - 1) / a.N;
  const dim3 grid(unsigned(per_sample < want ? per_sample : want),
                  unsigned(a.N < 65535 ? a.N : 65535));
  const size_t shared = a.C <= kSharedClasses ? size_t(a.C) * 4 * sizeof(unsigned long long) : 0;
  if (shared > 48 * 1024) {
    err = cudaFuncSetAttribute(count_kernel<S, TT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               int(shared));
    if (err != cudaSuccess) return err;
  }
  count_kernel<S, TT><<<grid, kThreads, shared, stream>>>(
      a, static_cast<unsigned long long*>(out));
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return finish_counts(out, a.N * a.C, stream);
}

template <class S>
cudaError_t counts_for_input(const KernelArgs& a, void* out, int device, cudaStream_t stream) {
  switch (a.t_dtype) {
    case DType::kUInt8: return run_counts<S, uint8_t>(a, out, device, stream);
    case DType::kInt32: return run_counts<S, int32_t>(a, out, device, stream);
    case DType::kInt64: return run_counts<S, int64_t>(a, out, device, stream);
    case DType::kFloat32: return run_counts<S, float>(a, out, device, stream);
    case DType::kFloat64: return run_counts<S, double>(a, out, device, stream);
    case DType::kFloat16: return run_counts<S, __half>(a, out, device, stream);
    case DType::kBFloat16: return run_counts<S, __nv_bfloat16>(a, out, device, stream);
    case DType::kBool: return run_counts<S, bool>(a, out, device, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace detail

cudaError_t finish_counts(void* counts, int64_t pairs, cudaStream_t stream) {
  const int64_t blocks = (pairs + detail::kThreads - 1) / detail::kThreads;
  detail::finish_counts_kernel<<<unsigned(blocks < 1024 ? blocks : 1024), detail::kThreads, 0,
                                 stream>>>(static_cast<long long*>(counts), pairs);
  return cudaGetLastError();
}

cudaError_t launch_counts(const KernelArgs& a, void* out, int device, cudaStream_t stream) {
  cudaError_t err = cudaMemsetAsync(out, 0, size_t(a.N * a.C * 4) * sizeof(int64_t), stream);
  if (err != cudaSuccess || a.N == 0 || a.C == 0 || a.M == 0) return err;
  switch (a.x_dtype) {
    case DType::kFloat32: return detail::counts_for_input<float>(a, out, device, stream);
    case DType::kFloat64: return detail::counts_for_input<double>(a, out, device, stream);
    case DType::kFloat16: return detail::counts_for_input<__half>(a, out, device, stream);
    case DType::kBFloat16: return detail::counts_for_input<__nv_bfloat16>(a, out, device, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace softiou
