// Decodes the argument tuple of rerank_jaccard (qme/rerank_jaccard.h), shared by the
// CPU and CUDA bindings: (P, G, N, probe_offsets, probe_cols, probe_vals, inv_offsets,
// inv_rows, inv_vals, out) with the arrays as raw addresses.
#pragma once

#include <pybind11/pybind11.h>

#include "bind_common.h"
#include "qme/rerank_jaccard.h"

namespace qme_py {

inline qme::RerankJaccardArgs rerank_jaccard_args(const pybind11::tuple& t) {
  expect_tuple(t, 10, "rerank_jaccard");
  return qme::RerankJaccardArgs{t[0].cast<int64_t>(),
                                t[1].cast<int64_t>(),
                                t[2].cast<int64_t>(),
                                ptr<const int64_t>(t[3].cast<uintptr_t>()),
                                ptr<const int64_t>(t[4].cast<uintptr_t>()),
                                ptr<const double>(t[5].cast<uintptr_t>()),
                                ptr<const int64_t>(t[6].cast<uintptr_t>()),
                                ptr<const int64_t>(t[7].cast<uintptr_t>()),
                                ptr<const double>(t[8].cast<uintptr_t>()),
                                ptr<double>(t[9].cast<uintptr_t>())};
}

}  // namespace qme_py
