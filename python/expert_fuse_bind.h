// Argument decoding shared by the CPU and CUDA bindings of expert_fuse and
// expert_fuse_bwd: the Python layer (src/qme_ext/ops/qme.py) passes one tuple per
// call, so both modules build the same argument block from the same code.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "bind_common.h"
#include "qme/expert_fuse.h"

namespace qme_py {

// (address, dtype_code, B, K, G, stride_b, stride_k, stride_g) -> ScoreCubeView
inline qme::ScoreCubeView cube_from(const pybind11::tuple& t, const char* name) {
  expect_tuple(t, 8, name);
  qme::ScoreCubeView v;
  v.data = reinterpret_cast<const void*>(t[0].cast<uintptr_t>());
  v.dtype = static_cast<qme::DType>(t[1].cast<int32_t>());
  v.batch = t[2].cast<int64_t>();
  v.channels = t[3].cast<int64_t>();
  v.cols = t[4].cast<int64_t>();
  v.stride_batch = t[5].cast<int64_t>();
  v.stride_channel = t[6].cast<int64_t>();
  v.stride_col = t[7].cast<int64_t>();
  return v;
}

// (x cube, (a, c, w1, b1, w2, b2, gate addresses), Z, H, dropout, seed) -> (x, params)
inline qme::ExpertParams expert_params_from(const pybind11::tuple& t) {
  const pybind11::tuple p = t[1].cast<pybind11::tuple>();
  expect_tuple(p, 7, "expert parameters");
  auto at = [&](int i) { return reinterpret_cast<const void*>(p[i].cast<uintptr_t>()); };
  return qme::ExpertParams{at(0), at(1), at(2), at(3), at(4), at(5), at(6),
                           t[2].cast<int32_t>(), t[3].cast<int32_t>(), t[4].cast<double>(),
                           t[5].cast<uint64_t>()};
}

// (x, params, Z, H, dropout, seed, fused address)
inline qme::ExpertFuseArgs expert_fuse_args(const pybind11::tuple& t) {
  expect_tuple(t, 7, "expert_fuse arguments");
  return qme::ExpertFuseArgs{cube_from(t[0].cast<pybind11::tuple>(), "x"),
                             expert_params_from(t), ptr<void>(t[6].cast<uintptr_t>())};
}

// (x, params, Z, H, dropout, seed, grad_fused address,
//  (grad_x, grad_a, grad_c, grad_w1, grad_b1, grad_w2, grad_b2, grad_gate addresses))
inline qme::ExpertFuseBwdArgs expert_fuse_bwd_args(const pybind11::tuple& t) {
  expect_tuple(t, 8, "expert_fuse_bwd arguments");
  const pybind11::tuple g = t[7].cast<pybind11::tuple>();
  expect_tuple(g, 8, "expert_fuse_bwd gradients");
  auto out = [&](int i) { return ptr<void>(g[i].cast<uintptr_t>()); };
  return qme::ExpertFuseBwdArgs{cube_from(t[0].cast<pybind11::tuple>(), "x"),
                                expert_params_from(t), ptr<const void>(t[6].cast<uintptr_t>()),
                                out(0), out(1), out(2), out(3), out(4), out(5), out(6), out(7)};
}

}  // namespace qme_py
