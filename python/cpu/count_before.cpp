// CPU binding of count_before (qme/count_before.h).
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "qme/count_before.h"

namespace py = pybind11;
using qme_py::matrix_from;
using qme_py::ptr;

namespace {

void register_count_before(py::module_& m) {
  m.def("count_before", [](py::tuple scores, int64_t col_offset, uintptr_t offsets, uintptr_t keys,
                           uintptr_t cols, int64_t max_queries, uintptr_t counts) {
    qme::CountBeforeArgs a{matrix_from(scores, "scores"), col_offset, ptr<const int64_t>(offsets),
                           ptr<const uint64_t>(keys), ptr<const int64_t>(cols), max_queries,
                           ptr<int64_t>(counts)};
    py::gil_scoped_release nogil;
    qme::count_before_cpu(a, qme_py::cpu_threads());
  });
}

const qme_py::Register registered(register_count_before);

}  // namespace
