// The CUDA emulation's Python module (built by tools/cuda_emulation.py, for the tests): the CUDA
// phases (../phases.cpp) compiled for the host, handed to softiou_cuda._C as a capsule.
#include <Python.h>

#include "../../ops/phases.h"

namespace {

PyObject* phases(PyObject*, PyObject*) {
  return PyCapsule_New(const_cast<softiou::Phases*>(softiou::cuda_phases()), "softiou.Phases",
                       nullptr);
}

PyMethodDef methods[] = {
    {"phases", phases, METH_NOARGS, "The emulated CUDA phases, as a capsule for softiou_cuda._C."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "softiou_cuda_emulation",
                          "softiou's CUDA kernels emulated on the CPU (tests only)", -1, methods};

}  // namespace

extern "C" __attribute__((visibility("default"))) PyObject* PyInit_softiou_cuda_emulation(void) {
  return PyModule_Create(&module_def);
}
