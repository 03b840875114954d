// CUDA bindings of the fused QME expert mixture: expert_fuse, expert_fuse_bwd and
// their workspace sizes. The same argument tuple as the CPU bindings (device
// addresses) plus (workspace address, workspace bytes, cudaStream_t as an int).
#define QME_EXPERT_FUSE_WITH_CUDA 1
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include "../bind_common.h"
#include "../expert_fuse_bind.h"
#include "../registry.h"

namespace py = pybind11;
using qme_py::ptr;

namespace {

cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

qme::ExpertParams sizing_params(int num_experts, int hidden) {
  // Only the sizes matter for the workspace; the pointers are never read.
  return qme::ExpertParams{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                           num_experts, hidden, 0.0, 0};
}

void register_expert_fuse_cuda(py::module_& m) {
  m.def("expert_fuse_workspace", [](py::tuple x, int num_experts, int hidden) {
    qme::ExpertFuseArgs a{qme_py::cube_from(x, "x"), sizing_params(num_experts, hidden),
                          nullptr};
    return qme::expert_fuse_cuda_workspace(a);
  });
  m.def("expert_fuse_bwd_workspace", [](py::tuple x, int num_experts, int hidden) {
    qme::ExpertFuseBwdArgs a{qme_py::cube_from(x, "x"), sizing_params(num_experts, hidden),
                             nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                             nullptr, nullptr, nullptr};
    return qme::expert_fuse_bwd_cuda_workspace(a);
  });

  m.def("expert_fuse", [](py::tuple t, uintptr_t workspace, size_t workspace_bytes,
                          uintptr_t stream) {
    const qme::ExpertFuseArgs args = qme_py::expert_fuse_args(t);
    py::gil_scoped_release nogil;
    qme::expert_fuse_cuda(args, ptr<void>(workspace), workspace_bytes, stream_of(stream));
  });
  m.def("expert_fuse_bwd", [](py::tuple t, uintptr_t workspace, size_t workspace_bytes,
                              uintptr_t stream) {
    const qme::ExpertFuseBwdArgs args = qme_py::expert_fuse_bwd_args(t);
    py::gil_scoped_release nogil;
    qme::expert_fuse_bwd_cuda(args, ptr<void>(workspace), workspace_bytes, stream_of(stream));
  });
}

const qme_py::Register registered(register_expert_fuse_cuda);

}  // namespace
