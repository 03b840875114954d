// CUDA binding of rerank_jaccard (qme/rerank_jaccard.h): device addresses plus the
// cudaStream_t as an int. Only enqueues work; the op needs no workspace.
#define QME_RERANK_JACCARD_WITH_CUDA 1
#include <pybind11/pybind11.h>

#include "../rerank_jaccard_bind.h"
#include "../registry.h"

namespace py = pybind11;

namespace {

void register_rerank_jaccard_cuda(py::module_& m) {
  m.def("rerank_jaccard", [](py::tuple t, uintptr_t stream) {
    const qme::RerankJaccardArgs a = qme_py::rerank_jaccard_args(t);
    py::gil_scoped_release nogil;
    qme::rerank_jaccard_cuda(a, reinterpret_cast<cudaStream_t>(stream));
  });
}

const qme_py::Register registered(register_rerank_jaccard_cuda);

}  // namespace
