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
// Kernels: cpu/softiou_cpu.cpp (CPU) and cuda/softiou_cuda.cpp (CUDA); the fake (meta) kernels
// and the autograd of stats are registered from Python (softiou_cuda/ops.py).
#include <Python.h>
#include <torch/library.h>

#include <exception>
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

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "Instruction set the CPU kernels run with."},
    {"cpu_isas", cpu_isas, METH_NOARGS, "Instruction sets of the CPU kernels this processor runs."},
    {"_set_cpu_isa", set_cpu_isa, METH_O, "Switches the CPU kernels to another instruction set."},
    {"has_cuda", has_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "softiou compiled kernels", -1, methods};

}  // namespace

// Importing softiou_cuda._C loads this library, which runs the registrations below.
extern "C" PyObject* PyInit__C(void) { return PyModule_Create(&module_def); }

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
