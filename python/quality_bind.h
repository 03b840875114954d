// Argument decoding shared by the CPU and CUDA bindings of the quality ops
// (qmagface_epilogue, template_aggregate): one tuple per call from
// src/qme_ext/ops/quality.py, one decoder for both modules.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind_common.h"
#include "qme/quality_ops.h"

namespace qme_py {

// (cos matrix, q_probe address, q_gallery address, alpha, beta, out matrix)
inline qme::QMagFaceEpilogueArgs qmagface_epilogue_args(const pybind11::tuple& t) {
  expect_tuple(t, 6, "qmagface_epilogue arguments");
  const qme::MatrixView o = matrix_from(t[5].cast<pybind11::tuple>(), "out");
  return qme::QMagFaceEpilogueArgs{
      matrix_from(t[0].cast<pybind11::tuple>(), "cos"), ptr<const double>(t[1].cast<uintptr_t>()),
      ptr<const double>(t[2].cast<uintptr_t>()), t[3].cast<double>(), t[4].cast<double>(),
      qme::MutableMatrixView{const_cast<void*>(o.data), o.dtype, o.rows, o.cols, o.stride_row,
                             o.stride_col}};
}

// (features matrix, weights address, weights_f64, offsets address, T, normalize,
//  templates address, weight_sum address, norm address)
inline qme::TemplateAggregateArgs template_aggregate_args(const pybind11::tuple& t) {
  expect_tuple(t, 9, "template_aggregate arguments");
  return qme::TemplateAggregateArgs{
      matrix_from(t[0].cast<pybind11::tuple>(), "features"),
      ptr<const void>(t[1].cast<uintptr_t>()), t[2].cast<bool>(),
      ptr<const int64_t>(t[3].cast<uintptr_t>()), t[4].cast<int64_t>(), t[5].cast<bool>(),
      ptr<void>(t[6].cast<uintptr_t>()), ptr<void>(t[7].cast<uintptr_t>()),
      ptr<void>(t[8].cast<uintptr_t>())};
}

}  // namespace qme_py
