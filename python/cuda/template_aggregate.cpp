// CUDA binding of template_aggregate: the CPU binding's argument tuple (device addresses) plus
// the stream as an int (0 = legacy default stream). No workspace; only enqueues work.
#define QME_QUALITY_WITH_CUDA 1
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../quality_bind.h"
#include "../registry.h"
#include "qme/ops_cuda.h"

namespace py = pybind11;

namespace {

void register_template_aggregate_cuda(py::module_& m) {
  m.def("template_aggregate", [](py::tuple t, uintptr_t stream) {
    const qme::TemplateAggregateArgs a = qme_py::template_aggregate_args(t);
    py::gil_scoped_release nogil;
    qme::template_aggregate_cuda(a, reinterpret_cast<cudaStream_t>(stream));
  });
}

const qme_py::Register registered(register_template_aggregate_cuda);

}  // namespace
