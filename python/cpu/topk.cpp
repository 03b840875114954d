// CPU binding of topk (qme/topk.h).
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "qme/topk.h"

namespace py = pybind11;
using qme_py::matrix_from;
using qme_py::ptr;

namespace {

void register_topk(py::module_& m) {
  m.def("topk", [](py::tuple scores, int64_t k, bool largest, uintptr_t values, uintptr_t indices) {
    qme::TopkArgs a{matrix_from(scores, "scores"), k, largest, ptr<void>(values),
                    ptr<int64_t>(indices)};
    py::gil_scoped_release nogil;
    qme::topk_cpu(a, qme_py::cpu_threads());
  });
}

const qme_py::Register registered(register_topk);

}  // namespace
