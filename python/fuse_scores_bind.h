// Argument decoding shared by the CPU and CUDA bindings of fuse_scores: one tuple
// per call from src/qme_ext/ops/fusion.py.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind_common.h"
#include "qme/fuse_scores.h"

namespace qme_py {

// ((matrix descriptor, ...) K, (norm codes) K, (shifts) K, (divisors) K, rule,
//  weights address, weights row stride, m, out address, out dtype code)
inline qme::FuseScoresArgs fuse_scores_args(const pybind11::tuple& t) {
  expect_tuple(t, 10, "fuse_scores arguments");
  const pybind11::tuple mats = t[0].cast<pybind11::tuple>();
  const size_t K = mats.size();
  if (K < 1 || K > static_cast<size_t>(qme::kFuseMaxModels))
    throw qme::InvalidArgument("scores: expected 1.." + std::to_string(qme::kFuseMaxModels) +
                               " score matrices, got " + std::to_string(K));
  const pybind11::tuple norm = t[1].cast<pybind11::tuple>(), shift = t[2].cast<pybind11::tuple>(),
                        div = t[3].cast<pybind11::tuple>();
  expect_tuple(norm, K, "norm");
  expect_tuple(shift, K, "shift");
  expect_tuple(div, K, "div");
  qme::FuseScoresArgs a{};
  a.num_models = static_cast<int32_t>(K);
  for (size_t k = 0; k < K; ++k) {
    a.scores[k] = matrix_from(mats[k].cast<pybind11::tuple>(), "scores");
    a.norm[k] = norm[k].cast<int32_t>();
    a.shift[k] = shift[k].cast<double>();
    a.div[k] = div[k].cast<double>();
  }
  a.rule = t[4].cast<int32_t>();
  a.weights = ptr<const double>(t[5].cast<uintptr_t>());
  a.weights_stride = t[6].cast<int64_t>();
  a.m = t[7].cast<double>();
  a.out = ptr<void>(t[8].cast<uintptr_t>());
  a.out_dtype = static_cast<qme::DType>(t[9].cast<int32_t>());
  return a;
}

}  // namespace qme_py
