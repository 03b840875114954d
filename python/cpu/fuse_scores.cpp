// CPU binding of fuse_scores (qme/fuse_scores.h); its argument tuple is decoded by
// fuse_scores_bind.h, shared with the CUDA binding.
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../fuse_scores_bind.h"
#include "../registry.h"

namespace py = pybind11;

namespace {

void register_fuse_scores(py::module_& m) {
  m.def("fuse_scores", [](py::tuple t) {
    const qme::FuseScoresArgs a = qme_py::fuse_scores_args(t);
    py::gil_scoped_release nogil;
    qme::fuse_scores_cpu(a, qme_py::cpu_threads());
  });
}

const qme_py::Register registered(register_fuse_scores);

}  // namespace
