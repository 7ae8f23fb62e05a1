// Torch glue shared by the CPU and CUDA implementations of softiou::stats and
// softiou::stats_backward: argument checks (SPEC section 7), the [N, C, M] views, the kernel
// arguments and the messages for bad values found by the kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "kernel_args.h"

namespace softiou {

inline DType to_dtype(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kBool: return DType::kBool;
    case at::kByte: return DType::kUInt8;
    case at::kInt: return DType::kInt32;
    case at::kLong: return DType::kInt64;
    default: TORCH_CHECK(false, "softiou: unsupported dtype ", s);
  }
}

inline bool is_class_index_dtype(at::ScalarType s) {
  return s == at::kByte || s == at::kInt || s == at::kLong;
}

// A view of the checked arguments, and the tensors that own the memory it points to.
struct Prepared {
  at::Tensor x, t, w, grad_stats;
  KernelArgs args;
  at::ScalarType acc = at::kFloat;
  bool empty = false;  // N, C or M is 0: nothing to compute
};

inline Prepared prepare(const at::Tensor& input, const at::Tensor& target,
                        const std::optional<at::Tensor>& weight, c10::string_view mode,
                        bool from_logits, double sharpness, c10::string_view intersection,
                        std::optional<int64_t> ignore_index) {
  Prepared p;
  const bool multiclass = mode == "multiclass";
  TORCH_CHECK(multiclass || mode == "binary" || mode == "multilabel",
              "softiou: mode must be 'binary', 'multiclass' or 'multilabel', got '",
              std::string(mode), "'");
  TORCH_CHECK(intersection == "product" || intersection == "min",
              "softiou: intersection must be 'product' or 'min', got '",
              std::string(intersection), "'");
  TORCH_CHECK(sharpness > 0.0 && sharpness < 1e30,
              "softiou: sharpness must be a finite number > 0, got ", sharpness);
  const auto xs = input.scalar_type();
  TORCH_CHECK(xs == at::kFloat || xs == at::kDouble || xs == at::kHalf || xs == at::kBFloat16,
              "softiou: input must be float32, float64, float16 or bfloat16, got ", xs);
  TORCH_CHECK(input.dim() >= 3, "softiou: input must be [N, C, *spatial] with at least one ",
              "spatial dim, got shape ", input.sizes());
  const int64_t N = input.size(0), C = input.size(1);
  TORCH_CHECK(!multiclass || C >= 2, "softiou: multiclass mode needs C >= 2 classes, got input ",
              "shape ", input.sizes(), " (use mode='binary' for one channel)");
  TORCH_CHECK(mode != "binary" || C == 1, "softiou: binary mode needs C = 1, got input shape ",
              input.sizes());
  TORCH_CHECK(target.device() == input.device(), "softiou: target is on ", target.device(),
              " but input is on ", input.device());
  std::vector<int64_t> spatial(input.sizes().begin() + 2, input.sizes().end());
  int64_t M = 1;
  for (auto s : spatial) M *= s;

  const auto ts = target.scalar_type();
  const bool integer_target = is_class_index_dtype(ts);
  const bool dense_target = at::isFloatingType(ts) || ts == at::kBool;
  TORCH_CHECK(integer_target || dense_target, "softiou: target must be an integer class map ",
              "(int64, int32, uint8) or a dense float/half/bool tensor, got ", ts);
  const bool class_map = multiclass && integer_target;
  std::vector<int64_t> map_shape{N};
  map_shape.insert(map_shape.end(), spatial.begin(), spatial.end());
  if (class_map) {
    TORCH_CHECK(target.sizes() == at::IntArrayRef(map_shape), "softiou: target class map must ",
                "have shape [N, *spatial] = ", at::IntArrayRef(map_shape), ", got ",
                target.sizes());
  } else {
    TORCH_CHECK(target.sizes() == input.sizes(), "softiou: target must have the input's shape ",
                input.sizes(), ", got ", target.sizes(),
                multiclass ? "" : " (binary/multilabel targets are shaped like the input)");
  }

  const bool use_double = xs == at::kDouble;
  p.acc = use_double ? at::kDouble : at::kFloat;
  if (weight.has_value()) {
    const auto& w = *weight;
    TORCH_CHECK(w.device() == input.device(), "softiou: weight is on ", w.device(),
                " but input is on ", input.device());
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), "softiou: weight must be a floating ",
                "tensor, got ", w.scalar_type());
    std::vector<int64_t> with_channel{N, 1};
    with_channel.insert(with_channel.end(), spatial.begin(), spatial.end());
    TORCH_CHECK(w.sizes() == at::IntArrayRef(map_shape) ||
                    w.sizes() == at::IntArrayRef(with_channel),
                "softiou: weight must have shape [N, *spatial] = ", at::IntArrayRef(map_shape),
                ", got ", w.sizes());
  }

  p.empty = N == 0 || C == 0 || M == 0;
  if (p.empty) return p;

  p.x = input.reshape({N, C, M});
  if (class_map) {
    p.t = target.reshape({N, M});
  } else if (dense_target && ts != xs && ts != at::kBool && ts != p.acc) {
    // dense targets are read as the input dtype, the accumulation dtype or bool
    p.t = target.reshape({N, C, M}).to(p.acc);
  } else {
    p.t = target.reshape({N, C, M});
  }
  if (weight.has_value()) p.w = weight->reshape({N, M}).to(p.acc);

  KernelArgs& a = p.args;
  a.x = p.x.data_ptr();
  a.x_dtype = to_dtype(xs);
  a.x_sN = p.x.stride(0);
  a.x_sC = p.x.stride(1);
  a.x_sM = p.x.stride(2);
  a.t = p.t.data_ptr();
  a.t_dtype = to_dtype(p.t.scalar_type());
  a.class_map = class_map;
  a.t_sN = p.t.stride(0);
  a.t_sC = class_map ? 0 : p.t.stride(1);
  a.t_sM = class_map ? p.t.stride(1) : p.t.stride(2);
  if (p.w.defined()) {
    a.w = p.w.data_ptr();
    a.w_sN = p.w.stride(0);
    a.w_sM = p.w.stride(1);
  }
  a.N = N;
  a.C = C;
  a.M = M;
  if (multiclass) {
    a.prob = (from_logits || sharpness != 1.0) ? Prob::kSoftmax : Prob::kIdentity;
  } else {
    a.prob = (from_logits || sharpness != 1.0) ? Prob::kSigmoid : Prob::kIdentity;
  }
  a.from_logits = from_logits;
  a.sharpness = sharpness;
  a.min_intersection = intersection == "min";
  a.has_ignore = ignore_index.has_value();
  a.ignore_index = ignore_index.value_or(0);
  return p;
}

// [N, C, 3] in the accumulation dtype, uninitialised.
inline at::Tensor stats_output(const at::Tensor& input, const Prepared& p) {
  return at::empty({input.size(0), input.size(1), 3}, input.options().dtype(p.acc));
}

inline void check_grad_stats(const at::Tensor& grad_stats, const at::Tensor& input) {
  TORCH_CHECK(grad_stats.dim() == 3 && grad_stats.size(0) == input.size(0) &&
                  grad_stats.size(1) == input.size(1) && grad_stats.size(2) == 3,
              "softiou: grad_stats must have shape [N, C, 3] = [", input.size(0), ", ",
              input.size(1), ", 3], got ", grad_stats.sizes());
  TORCH_CHECK(grad_stats.device() == input.device(), "softiou: grad_stats is on ",
              grad_stats.device(), " but input is on ", input.device());
}

// Allocates the gradient like the [N, C, M] view of the input (so channels_last stays
// channels_last) and points the kernel arguments at it and at grad_stats.
inline at::Tensor prepare_backward(Prepared& p, const at::Tensor& grad_stats) {
  p.grad_stats = grad_stats.to(p.acc).contiguous();
  at::Tensor gx = at::empty_like(p.x);
  p.args.grad_stats = p.grad_stats.data_ptr();
  p.args.grad_x = gx.data_ptr();
  p.args.g_sN = gx.stride(0);
  p.args.g_sC = gx.stride(1);
  p.args.g_sM = gx.stride(2);
  return gx;
}

inline void raise_input_error(InputError code, double value, int64_t C,
                              std::optional<int64_t> ignore_index) {
  const std::string ign =
      ignore_index.has_value() ? " and not ignore_index=" + std::to_string(*ignore_index) : "";
  switch (code) {
    case InputError::kNone:
      return;
    case InputError::kClassIndex:
      TORCH_CHECK_VALUE(false, "softiou: target holds class index ", int64_t(value),
                        ", outside [0, ", C, ")", ign);
    case InputError::kBinaryTarget:
      TORCH_CHECK_VALUE(false, "softiou: binary/multilabel integer target holds ",
                        int64_t(value), ", expected 0 or 1", ign);
    case InputError::kDenseTarget:
      TORCH_CHECK_VALUE(false, "softiou: dense target holds ", value, ", outside [0, 1]");
    case InputError::kNegativeWeight:
      TORCH_CHECK_VALUE(false, "softiou: weight holds ", value, ", expected weights >= 0");
    case InputError::kProbability:
      TORCH_CHECK_VALUE(false, "softiou: input holds ", value,
                        ", outside [0, 1], with from_logits=False");
  }
}

}  // namespace softiou
