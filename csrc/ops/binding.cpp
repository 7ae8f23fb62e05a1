// The extension module softiou_cuda._C: importing it loads the operators (library.cpp,
// autograd.cpp, the devices' phases); its functions tell which CPU kernels run, and `loss` calls
// softiou::loss from Python without torch.ops' generic binding.
//
// That binding converts each of the schema's arguments by its type and looks for
// __torch_function__ on every one of them; `loss` takes the operator's (input, target, weight,
// class_weight, options, backend), the options as the tuple softiou_cuda.options.LossOptions,
// reads them by type and makes the same dispatcher call, with the GIL released, and the same
// errors and warnings. It returns NotImplemented, and the caller goes through torch.ops, for
// whatever that binding would do more: a tensor that is not a plain Tensor or Parameter (a
// subclass, a FakeTensor, an fx Proxy), a TorchFunctionMode, or an option of another type.
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

#include "../cpu/isa.h"
#include "library.h"
#include "phases.h"

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

// The CUDA kernels emulated on the CPU, for the tests: a capsule "softiou.Phases" from the
// emulation's module (tools/cuda_emulation.py), or None to stop.
PyObject* set_cuda_emulation(PyObject*, PyObject* arg) {
  const softiou::Phases* phases = nullptr;
  if (arg != Py_None) {
    phases = static_cast<const softiou::Phases*>(PyCapsule_GetPointer(arg, "softiou.Phases"));
    if (phases == nullptr) return nullptr;  // not such a capsule: the TypeError is set
  }
  softiou::set_cuda_emulation(phases);
  Py_RETURN_NONE;
}

// ---------------------------------------------------------------------------------------------
// loss(input, target, weight, class_weight, options, backend)
// ---------------------------------------------------------------------------------------------
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
  if (nargs != 6) {
    PyErr_SetString(PyExc_TypeError, "softiou: _C.loss takes (input, target, weight, "
                    "class_weight, options, backend)");
    return nullptr;
  }
  PyObject* opts = args[4];
  if (!plain_tensor(args[0]) || !plain_tensor(args[1]) || !PyTuple_Check(opts) ||
      PyTuple_GET_SIZE(opts) != softiou::kLossOptions || at::impl::torch_function_mode_enabled()) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  std::optional<at::Tensor> weight, class_weight;
  c10::string_view backend;
  if (!read(args[2], weight) || !read(args[3], class_weight) || !read(args[5], backend)) {
    Py_RETURN_NOTIMPLEMENTED;
  }
  const at::Tensor& input = THPVariable_Unpack(args[0]);
  const at::Tensor& target = THPVariable_Unpack(args[1]);
  at::Tensor out;
  const bool read_all = softiou::with_loss_options(
      [opts](int i, auto& value) { return read(PyTuple_GET_ITEM(opts, i), value); },
      [&](auto&&... options) {
        ReleaseGil released;
        out = softiou::loss_op().call(input, target, weight, class_weight, options..., backend);
      });
  if (!read_all) Py_RETURN_NOTIMPLEMENTED;
  return THPVariable_Wrap(std::move(out));
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "Instruction set the CPU kernels run with."},
    {"cpu_isas", cpu_isas, METH_NOARGS, "Instruction sets of the CPU kernels this processor runs."},
    {"_set_cpu_isa", set_cpu_isa, METH_O, "Switches the CPU kernels to another instruction set."},
    {"has_cuda", has_cuda, METH_NOARGS, "Whether the CUDA kernels were compiled in."},
    {"_set_cuda_emulation", set_cuda_emulation, METH_O,
     "backend='cuda' on CPU tensors runs the CUDA kernels' emulation (a capsule), or not (None)."},
    {"loss", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(loss)), METH_FASTCALL,
     "softiou::loss(input, target, weight, class_weight, *options, backend), or NotImplemented."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "softiou compiled kernels", -1, methods};

}  // namespace

// Importing softiou_cuda._C loads this library, which runs the operators' registrations
// (library.cpp, autograd.cpp).
extern "C" PyObject* PyInit__C(void) {
  PyObject* module = PyImport_ImportModule("torch.nn.parameter");
  parameter_type = module ? PyObject_GetAttrString(module, "Parameter") : nullptr;  // kept
  Py_XDECREF(module);
  PyErr_Clear();
  return PyModule_Create(&module_def);
}

