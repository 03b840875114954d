// Descriptor decoding shared by the CPU and CUDA bindings of expert_fuse.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "qme/expert_fuse.h"

namespace qme_py {

// (address, dtype_code, B, K, G, stride_b, stride_k, stride_g) -> ScoreCubeView
inline qme::ScoreCubeView cube_from(const pybind11::tuple& t, const char* name) {
  if (t.size() != 8)
    throw qme::InvalidArgument(std::string(name) + ": expected an 8-tuple cube descriptor");
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

inline qme::ExpertParams expert_params(uintptr_t a, uintptr_t c, uintptr_t w1, uintptr_t b1,
                                       uintptr_t w2, uintptr_t b2, uintptr_t gate,
                                       int num_experts, int hidden, double dropout,
                                       uint64_t seed) {
  auto p = [](uintptr_t v) { return reinterpret_cast<const void*>(v); };
  return qme::ExpertParams{p(a), p(c), p(w1), p(b1), p(w2), p(b2), p(gate),
                           num_experts, hidden, dropout, seed};
}

}  // namespace qme_py
