// CUDA bindings of the fused QME expert mixture: expert_fuse, expert_fuse_bwd and
// their workspace sizes. Same arguments as the CPU bindings (device addresses)
// plus (workspace address, workspace bytes, cudaStream_t as an int).
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

  m.def("expert_fuse",
        [](py::tuple x, uintptr_t a, uintptr_t c, uintptr_t w1, uintptr_t b1, uintptr_t w2,
           uintptr_t b2, uintptr_t gate, int num_experts, int hidden, double dropout,
           uint64_t seed, uintptr_t fused, uintptr_t workspace, size_t workspace_bytes,
           uintptr_t stream) {
          qme::ExpertFuseArgs args{qme_py::cube_from(x, "x"),
                                   qme_py::expert_params(a, c, w1, b1, w2, b2, gate, num_experts,
                                                         hidden, dropout, seed),
                                   ptr<void>(fused)};
          py::gil_scoped_release nogil;
          qme::expert_fuse_cuda(args, ptr<void>(workspace), workspace_bytes, stream_of(stream));
        });

  m.def("expert_fuse_bwd",
        [](py::tuple x, uintptr_t a, uintptr_t c, uintptr_t w1, uintptr_t b1, uintptr_t w2,
           uintptr_t b2, uintptr_t gate, int num_experts, int hidden, double dropout,
           uint64_t seed, uintptr_t grad_fused, uintptr_t grad_x, uintptr_t grad_a,
           uintptr_t grad_c, uintptr_t grad_w1, uintptr_t grad_b1, uintptr_t grad_w2,
           uintptr_t grad_b2, uintptr_t grad_gate, uintptr_t workspace, size_t workspace_bytes,
           uintptr_t stream) {
          qme::ExpertFuseBwdArgs args{
              qme_py::cube_from(x, "x"),
              qme_py::expert_params(a, c, w1, b1, w2, b2, gate, num_experts, hidden, dropout,
                                    seed),
              ptr<const void>(grad_fused), ptr<void>(grad_x), ptr<void>(grad_a),
              ptr<void>(grad_c), ptr<void>(grad_w1), ptr<void>(grad_b1), ptr<void>(grad_w2),
              ptr<void>(grad_b2), ptr<void>(grad_gate)};
          py::gil_scoped_release nogil;
          qme::expert_fuse_bwd_cuda(args, ptr<void>(workspace), workspace_bytes,
                                    stream_of(stream));
        });
}

const qme_py::Register registered(register_expert_fuse_cuda);

}  // namespace
