// CPU binding of rerank_jaccard (qme/rerank_jaccard.h).
#include <pybind11/pybind11.h>

#include "../rerank_jaccard_bind.h"
#include "../registry.h"

namespace py = pybind11;

namespace {

void register_rerank_jaccard(py::module_& m) {
  m.def("rerank_jaccard", [](py::tuple t) {
    const qme::RerankJaccardArgs a = qme_py::rerank_jaccard_args(t);
    py::gil_scoped_release nogil;
    qme::rerank_jaccard_cpu(a, qme_py::cpu_threads());
  });
}

const qme_py::Register registered(register_rerank_jaccard);

}  // namespace
