// The CUDA emulation's Python module (built by tools/cuda_emulation.py, for the tests): the CUDA
// phases (../phases.cpp) compiled for the host, handed to softiou_cuda._C as a capsule.
#include <Python.h>

#include <cstring>
#include <vector>

#include "../../ops/phases.h"
#include "emulation.h"

namespace softiou_emu_selftest {
bool run(const char* name, std::vector<float>& out, cudaError_t& err);  // selftest.cu
}

namespace {

PyObject* phases(PyObject*, PyObject*) {
  return PyCapsule_New(const_cast<softiou::Phases*>(softiou::cuda_phases()), "softiou.Phases",
                       nullptr);
}

// selftest(name) -> (error, message, out): one of selftest.cu's kernels run; cudaGetErrorString
// of its launch, the emulation's reason, and the 128 floats it wrote to.
PyObject* selftest(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  std::vector<float> out;
  cudaError_t err = cudaSuccess;
  if (!softiou_emu_selftest::run(name, out, err)) {
    PyErr_Format(PyExc_ValueError, "no self-test kernel named %s", name);
    return nullptr;
  }
  PyObject* values = PyList_New(Py_ssize_t(out.size()));
  if (values == nullptr) return nullptr;
  for (size_t i = 0; i < out.size(); ++i) {
    PyList_SET_ITEM(values, Py_ssize_t(i), PyFloat_FromDouble(out[i]));
  }
  return Py_BuildValue("(ssN)", cudaGetErrorString(err),
                       err == cudaSuccess ? "" : softiou_emu::last_error_message(), values);
}

// set_thread_order("alternate" | "forward" | "reverse"): emulation.h's set_thread_order.
PyObject* set_thread_order(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  const char* names[] = {"alternate", "forward", "reverse"};
  for (int i = 0; i < 3; ++i) {
    if (std::strcmp(name, names[i]) == 0) {
      softiou_emu::set_thread_order(i);
      Py_RETURN_NONE;
    }
  }
  PyErr_Format(PyExc_ValueError, "thread order %s: not alternate, forward or reverse", name);
  return nullptr;
}

PyMethodDef methods[] = {
    {"phases", phases, METH_NOARGS, "The emulated CUDA phases, as a capsule for softiou_cuda._C."},
    {"selftest", selftest, METH_O, "Runs one of the emulation's self-test kernels (selftest.cu)."},
    {"set_thread_order", set_thread_order, METH_O,
     "The order a block's threads run in: alternate (from block to block), forward, reverse."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "softiou_cuda_emulation",
                          "softiou's CUDA kernels emulated on the CPU (tests only)", -1, methods};

}  // namespace

extern "C" __attribute__((visibility("default"))) PyObject* PyInit_softiou_cuda_emulation(void) {
  return PyModule_Create(&module_def);
}
