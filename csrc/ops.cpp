// softiou operator schemas (TORCH_LIBRARY) and the Python module that loads them.
//
//   softiou::loss            the loss of SPEC sections 1-5 in one call: statistics pass + finalize
//                            forward, one gradient pass backward (autograd in autograd.cpp)
//   softiou::stats           one fused pass: per-(sample, class) sums I, P, Y  -> [N, C, 3]
//   softiou::stats_backward  the gradient pass from the gradient of those sums
//   softiou::stats_ce        stats with the cross-entropy term's per-sample sums [N, 2] (SPEC
//                            section 9; the pooled path keeps that term local), and its backward
//   softiou::finalize        the finalize step alone (SPEC sections 4-5), from [N, C, 3]
//                            statistics: the pooled data-parallel path all-reduces the statistics
//                            between stats and finalize
//   softiou::_loss_forward, _loss_backward, _finalize: what the autograd kernels of loss and
//                            finalize call below autograd (the forward also returns the
//                            coefficients of the gradient that the backward reads)
//
// The module's `loss` calls softiou::loss from Python without torch.ops' generic binding, which
// converts each of the schema's 29 arguments by its type and looks for __torch_function__ on every
// one of them: on the CPU a call of an empty input takes 8.0 us through torch.ops and 3.3 us here
// (a small forward of soft_iou_loss: 14.4 -> 9.1 us). It takes the operator's (input, target,
// weight, class_weight, options), the options as the tuple softiou_cuda.checks.LossOptions, and
// makes the same dispatcher call, with the GIL released, and the same errors and warnings. It
// returns NotImplemented, and the caller goes through torch.ops, for whatever that binding would
// do more: a tensor that is not a plain Tensor or Parameter (a subclass, a FakeTensor, an fx
// Proxy), a TorchFunctionMode, or an option of another type.
//
// Kernels: cpu/softiou_cpu.cpp (CPU) and cuda/softiou_cuda.cpp (CUDA); the fake (meta) kernels
// and the autograd of stats are registered from Python (softiou_cuda/ops.py).
#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/util/SmallVector.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/library.h>

#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "cpu/softiou_cpu.h"
#include "ops.h"

namespace {

// A C++ error (a bad SOFTIOU_CPU_ISA among them) becomes a Python ValueError.
template <class F>
PyObject* translate_errors(F&& f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return nullptr;
  }
}

PyObject* cpu_isa(PyObject*, PyObject*) {
  return translate_errors([] { return PyUnicode_FromString(softiou::cpu_isa_name()); });
}

PyObject* cpu_isas(PyObject*, PyObject*) {
  const std::vector<std::string> names = softiou::cpu_isas();
  PyObject* out = PyTuple_New(Py_ssize_t(names.size()));
  if (out == nullptr) return nullptr;
  for (size_t i = 0; i < names.size(); ++i) {
    PyObject* name = PyUnicode_FromString(names[i].c_str());
    if (name == nullptr) {
      Py_DECREF(out);
      return nullptr;
    }
    PyTuple_SET_ITEM(out, Py_ssize_t(i), name);
  }
  return out;
}

PyObject* set_cpu_isa(PyObject*, PyObject* arg) {
  if (!PyUnicode_Check(arg)) {
    PyErr_SetString(PyExc_TypeError, "softiou: the instruction set must be a str");
    return nullptr;
  }
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  return translate_errors([name] {
    softiou::set_cpu_isa(name);
    Py_RETURN_NONE;
  });
}

PyObject* has_cuda(PyObject*, PyObject*) {
#ifdef SOFTIOU_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// ---------------------------------------------------------------------------------------------
// loss(input, target, weight, class_weight, options)
// ---------------------------------------------------------------------------------------------
using LossSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           SOFTIOU_LOSS_OPTION_PARAMS);

// torch.nn.Parameter, whose __torch_function__ is the disabled one (set when the module loads;
// nullptr if it could not be found)
PyObject* parameter_type = nullptr;

// A plain Tensor (or Parameter), which torch.ops' binding would pass on as it is.
bool plain_tensor(PyObject* obj) {
  return THPVariable_CheckExact(obj) ||
         (parameter_type != nullptr && reinterpret_cast<PyObject*>(Py_TYPE(obj)) == parameter_type);
}

// The option values, read as the schema's types; false for any other type.
bool read(PyObject* o, c10::string_view& out) {
  Py_ssize_t size = 0;
  const char* data = PyUnicode_Check(o) ? PyUnicode_AsUTF8AndSize(o, &size) : nullptr;
  if (data == nullptr) {
    PyErr_Clear();
    return false;
  }
  out = c10::string_view(data, size_t(size));
  return true;
}

bool read(PyObject* o, bool& out) {
  out = o == Py_True;
  return PyBool_Check(o);
}

bool read(PyObject* o, double& out) {
  out = PyFloat_CheckExact(o) ? PyFloat_AS_DOUBLE(o) : 0.0;
  return PyFloat_CheckExact(o);
}

bool read(PyObject* o, int64_t& out) {
  if (!PyLong_CheckExact(o)) return false;
  int overflow = 0;
  out = PyLong_AsLongLongAndOverflow(o, &overflow);
  return overflow == 0 && !(out == -1 && PyErr_Occurred());
}

// int? and float?: None, or the value read as above
template <class T>
bool read(PyObject* o, std::optional<T>& out) {
  if (o == Py_None) return true;
  T v{};
  if (!read(o, v)) return false;
  out = v;
  return true;
}

bool read(PyObject* o, std::optional<c10::SmallVector<int64_t, 8>>& out) {
  if (o == Py_None) return true;
  if (!PyTuple_CheckExact(o)) return false;
  out.emplace();
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(o); ++i) {
    int64_t v = 0;
    if (!read(PyTuple_GET_ITEM(o, i), v)) return false;
    out->push_back(v);
  }
  return true;
}

bool read(PyObject* o, std::optional<at::Tensor>& out) {
  if (o == Py_None) return true;
  if (!plain_tensor(o)) return false;
  out = THPVariable_Unpack(o);
  return true;
}

// The GIL released for the dispatcher call, and taken back however it ends.
struct ReleaseGil {
  PyThreadState* state = PyEval_SaveThread();
  ~ReleaseGil() { PyEval_RestoreThread(state); }
};

PyObject* loss(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 5) {
    PyErr_SetString(PyExc_TypeError,
                    "softiou: _C.loss takes (input, target, weight, class_weight, options)");
    return nullptr;
  }
  PyObject* opts = args[4];
  constexpr Py_ssize_t kOptions = 24;  // softiou_cuda.checks.LossOptions, in schema order
  if (!plain_tensor(args[0]) || !plain_tensor(args[1]) || !PyTuple_Check(opts) ||
      PyTuple_GET_SIZE(opts) != kOptions || at::impl::torch_function_mode_enabled()) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  std::optional<at::Tensor> weight, class_weight;
  c10::string_view mode, intersection, metric, absent, reduction, w_type;
  bool from_logits = true, log_loss = false, include_background = true, per_image = true,
       squared = false, weighted_mean = true;
  double sharpness = 1.0, alpha = 0.5, beta = 0.5, gamma = 1.0, smooth = 0.0, eps = 1e-7,
         ce_weight = 0.0, label_smoothing = 0.0, ce_pos_weight = 1.0;
  std::optional<c10::SmallVector<int64_t, 8>> classes;
  std::optional<int64_t> ignore_index;
  std::optional<double> smooth_dr;
  auto at = [opts](Py_ssize_t i) { return PyTuple_GET_ITEM(opts, i); };
  const bool ok = read(args[2], weight) && read(args[3], class_weight) && read(at(0), mode) &&
                  read(at(1), from_logits) && read(at(2), sharpness) &&
                  read(at(3), intersection) && read(at(4), metric) && read(at(5), alpha) &&
                  read(at(6), beta) && read(at(7), gamma) && read(at(8), log_loss) &&
                  read(at(9), smooth) && read(at(10), eps) && read(at(11), classes) &&
                  read(at(12), include_background) && read(at(13), ignore_index) &&
                  read(at(14), per_image) && read(at(15), absent) && read(at(16), reduction) &&
                  read(at(17), ce_weight) && read(at(18), label_smoothing) &&
                  read(at(19), squared) && read(at(20), smooth_dr) &&
                  read(at(21), weighted_mean) && read(at(22), w_type) &&
                  read(at(23), ce_pos_weight);
  if (!ok) Py_RETURN_NOTIMPLEMENTED;
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("softiou::loss", "").typed<LossSig>();
  const at::Tensor& input = THPVariable_Unpack(args[0]);
  const at::Tensor& target = THPVariable_Unpack(args[1]);
  at::Tensor out;
  {
    ReleaseGil released;
    out = op.call(input, target, weight, class_weight, mode, from_logits, sharpness, intersection,
                  metric, alpha, beta, gamma, log_loss, smooth, eps,
                  classes ? at::OptionalIntArrayRef(*classes) : at::OptionalIntArrayRef(),
                  include_background, ignore_index, per_image, absent, reduction, ce_weight,
                  label_smoothing, squared, smooth_dr, weighted_mean, w_type, ce_pos_weight);
  }
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "Instruction set the CPU kernels run with."},
    {"cpu_isas", cpu_isas, METH_NOARGS, "Instruction sets of the CPU kernels this processor runs."},
    {"_set_cpu_isa", set_cpu_isa, METH_O, "Switches the CPU kernels to another instruction set."},
    {"has_cuda", has_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {"loss", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(loss)), METH_FASTCALL,
     "softiou::loss(input, target, weight, class_weight, *options), or NotImplemented."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "softiou compiled kernels", -1, methods};

}  // namespace

// Importing softiou_cuda._C loads this library, which runs the registrations below.
extern "C" PyObject* PyInit__C(void) {
  PyObject* module = PyImport_ImportModule("torch.nn.parameter");
  parameter_type = module ? PyObject_GetAttrString(module, "Parameter") : nullptr;  // kept
  Py_XDECREF(module);
  PyErr_Clear();
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(softiou, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def(
      "stats(Tensor input, Tensor target, Tensor? weight, str mode, bool from_logits, "
      "float sharpness, str intersection, int? ignore_index, bool squared=False) -> Tensor",
      tags);
  m.def(
      "stats_backward(Tensor grad_stats, Tensor input, Tensor target, Tensor? weight, str mode, "
      "bool from_logits, float sharpness, str intersection, int? ignore_index, "
      "bool squared=False) -> Tensor",
      tags);
  m.def(
      "stats_ce(Tensor input, Tensor target, Tensor? weight, Tensor? class_weight, str mode, "
      "bool from_logits, float sharpness, str intersection, int? ignore_index, "
      "float label_smoothing, float ce_pos_weight=1.0, bool squared=False) -> (Tensor, Tensor)",
      tags);
  m.def(
      "stats_ce_backward(Tensor grad_stats, Tensor? grad_ce, Tensor input, Tensor target, "
      "Tensor? weight, Tensor? class_weight, str mode, bool from_logits, float sharpness, "
      "str intersection, int? ignore_index, float label_smoothing, float ce_pos_weight=1.0, "
      "bool squared=False) -> Tensor",
      tags);
  m.def("loss(Tensor input, Tensor target, Tensor? weight=None, " SOFTIOU_LOSS_OPTION_SCHEMA
        ") -> Tensor",
        tags);
  m.def("_loss_forward(Tensor input, Tensor target, Tensor? weight, "
        SOFTIOU_LOSS_OPTION_SCHEMA ") -> (Tensor, Tensor)",
        tags);
  m.def("_loss_backward(Tensor grad, Tensor input, Tensor target, Tensor? weight, Tensor coef, "
        SOFTIOU_LOSS_OPTION_SCHEMA ") -> Tensor",
        tags);
  m.def("finalize(Tensor stats, Tensor? class_weight=None, *, " SOFTIOU_FINALIZE_OPTION_SCHEMA
        ") -> Tensor",
        tags);
  m.def("_finalize(Tensor stats, Tensor? class_weight=None, *, " SOFTIOU_FINALIZE_OPTION_SCHEMA
        ") -> (Tensor, Tensor)",
        tags);
}
