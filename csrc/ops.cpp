// softiou operator schemas (TORCH_LIBRARY) and the Python module that loads them.
//
//   softiou::stats           one fused pass: per-(sample, class) sums I, P, Y  -> [N, C, 3]
//   softiou::stats_backward  one fused pass: the gradient of the input from the gradient of the sums
//   softiou::loss            the complete loss of SPEC sections 4-5 built on stats; its body is
//                            the CompositeImplicitAutograd kernel registered by softiou_cuda/ops.py,
//                            so autograd and torch.compile see through it to stats.
//
// Kernels: cpu/softiou_cpu.cpp (CPU) and cuda/softiou_cuda.cpp (CUDA). Autograd and the fake
// (meta) kernels are registered from Python (softiou_cuda/ops.py), as in pytorch/extension-cpp.
#include <Python.h>
#include <torch/library.h>

#include "cpu/softiou_cpu.h"

namespace {

PyObject* cpu_isa(PyObject*, PyObject*) { return PyUnicode_FromString(softiou::cpu_isa_name()); }

PyObject* has_cuda(PyObject*, PyObject*) {
#ifdef SOFTIOU_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "Instruction set the CPU kernels run with."},
    {"has_cuda", has_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "softiou compiled kernels", -1, methods};

}  // namespace

// Importing softiou_cuda._C loads this library, which runs the registrations below.
extern "C" PyObject* PyInit__C(void) { return PyModule_Create(&module_def); }

TORCH_LIBRARY(softiou, m) {
  m.def(
      "stats(Tensor input, Tensor target, Tensor? weight, str mode, bool from_logits, "
      "float sharpness, str intersection, int? ignore_index) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "stats_backward(Tensor grad_stats, Tensor input, Tensor target, Tensor? weight, str mode, "
      "bool from_logits, float sharpness, str intersection, int? ignore_index) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "loss(Tensor input, Tensor target, Tensor? weight=None, *, str mode=\"multiclass\", "
      "bool from_logits=True, float sharpness=1.0, str intersection=\"product\", "
      "str metric=\"jaccard\", float alpha=0.5, float beta=0.5, float gamma=1.0, "
      "bool log_loss=False, float smooth=0.0, float eps=1e-07, Tensor? class_weight=None, "
      "int[]? classes=None, bool include_background=True, int? ignore_index=None, "
      "bool per_image=True, str absent=\"include\", str reduction=\"mean\") -> Tensor",
      {at::Tag::pt2_compliant_tag});
}
