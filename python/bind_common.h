// Helpers shared by the _C and _C_cuda bindings: the Python layer passes raw
// addresses (ints) and sizes, so the modules need neither torch nor numpy
// headers at build time. Checks here are the last line; the op wrappers
// (src/qme_ext/ops/) validate first with user-facing messages.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "qme/ops.h"

namespace qme_py {
namespace py = pybind11;

inline void expect_tuple(const py::tuple& t, size_t n, const char* name) {
  if (t.size() != n)
    throw qme::InvalidArgument(std::string(name) + ": expected a " + std::to_string(n) +
                               "-tuple, got " + std::to_string(t.size()) + " items");
}

// (address, dtype_code, rows, cols, stride_row, stride_col) -> MatrixView
inline qme::MatrixView matrix_from(const py::tuple& t, const char* name) {
  expect_tuple(t, 6, name);
  qme::MatrixView m;
  m.data = reinterpret_cast<const void*>(t[0].cast<uintptr_t>());
  m.dtype = static_cast<qme::DType>(t[1].cast<int32_t>());
  m.rows = t[2].cast<int64_t>();
  m.cols = t[3].cast<int64_t>();
  m.stride_row = t[4].cast<int64_t>();
  m.stride_col = t[5].cast<int64_t>();
  qme::check_matrix(m, name);
  return m;
}

template <typename T>
inline T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

inline void register_errors(py::module_& m) {
  py::register_exception<qme::InvalidArgument>(m, "InvalidArgument", PyExc_ValueError);
}

}  // namespace qme_py
