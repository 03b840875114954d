// CPU bindings of the fused QME expert mixture: expert_fuse and expert_fuse_bwd.
// One argument tuple per call, decoded by expert_fuse_bind.h (src/qme_ext/ops/qme.py).
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../expert_fuse_bind.h"
#include "../registry.h"

namespace py = pybind11;

namespace {

void register_expert_fuse(py::module_& m) {
  m.def("expert_fuse", [](py::tuple t) {
    const qme::ExpertFuseArgs args = qme_py::expert_fuse_args(t);
    py::gil_scoped_release nogil;
    qme::expert_fuse_cpu(args, qme_py::cpu_threads());
  });
  m.def("expert_fuse_bwd", [](py::tuple t) {
    const qme::ExpertFuseBwdArgs args = qme_py::expert_fuse_bwd_args(t);
    py::gil_scoped_release nogil;
    qme::expert_fuse_bwd_cpu(args, qme_py::cpu_threads());
  });
}

const qme_py::Register registered(register_expert_fuse);

}  // namespace
