// CPU binding of template_aggregate (qme/quality_ops.h); its argument tuple is decoded by
// quality_bind.h, shared with the CUDA binding.
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../quality_bind.h"
#include "../registry.h"

namespace py = pybind11;

namespace {

void register_template_aggregate(py::module_& m) {
  m.def("template_aggregate", [](py::tuple t) {
    const qme::TemplateAggregateArgs a = qme_py::template_aggregate_args(t);
    py::gil_scoped_release nogil;
    qme::template_aggregate_cpu(a, qme_py::cpu_threads());
  });
}

const qme_py::Register registered(register_template_aggregate);

}  // namespace
