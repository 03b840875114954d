// CUDA binding of fuse_scores: the CPU binding's argument tuple (device addresses)
// plus the stream as an int. No workspace; only enqueues work.
#define QME_FUSE_SCORES_WITH_CUDA 1
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../fuse_scores_bind.h"
#include "../registry.h"

namespace py = pybind11;

namespace {

void register_fuse_scores_cuda(py::module_& m) {
  m.def("fuse_scores", [](py::tuple t, uintptr_t stream) {
    const qme::FuseScoresArgs a = qme_py::fuse_scores_args(t);
    py::gil_scoped_release nogil;
    qme::fuse_scores_cuda(a, reinterpret_cast<cudaStream_t>(stream));
  });
}

const qme_py::Register registered(register_fuse_scores_cuda);

}  // namespace
