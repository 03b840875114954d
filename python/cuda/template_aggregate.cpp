// CUDA binding of template_aggregate: device addresses plus the stream as an
// int (0 = legacy default stream). No workspace. Only enqueues work.
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "qme/ops_cuda.h"
#define QME_QUALITY_WITH_CUDA 1
#include "qme/quality_ops.h"

namespace py = pybind11;
using qme_py::matrix_from;
using qme_py::ptr;

namespace {

void register_template_aggregate_cuda(py::module_& m) {
  m.def("template_aggregate",
        [](py::tuple features, uintptr_t weights, bool weights_f64, uintptr_t offsets,
           int64_t num_templates, bool normalize, uintptr_t templates, uintptr_t weight_sum,
           uintptr_t norm, uintptr_t stream) {
          qme::TemplateAggregateArgs a{matrix_from(features, "features"), ptr<const void>(weights),
                                       weights_f64, ptr<const int64_t>(offsets), num_templates,
                                       normalize, ptr<void>(templates), ptr<void>(weight_sum),
                                       ptr<void>(norm)};
          py::gil_scoped_release nogil;
          qme::template_aggregate_cuda(a, reinterpret_cast<cudaStream_t>(stream));
        });
}

const qme_py::Register registered(register_template_aggregate_cuda);

}  // namespace
