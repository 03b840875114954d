// CPU bindings of the fused QME expert mixture: expert_fuse and expert_fuse_bwd.
// Tensors arrive as raw addresses; x as an 8-tuple cube descriptor, the expert
// parameters as addresses of contiguous compute-type buffers (qme_ext/_ops_qme.py).
#include <pybind11/pybind11.h>

#include "../bind_common.h"
#include "../registry.h"
#include "../expert_fuse_bind.h"

namespace py = pybind11;
using qme_py::ptr;

namespace {

void register_expert_fuse(py::module_& m) {
  m.def("expert_fuse",
        [](py::tuple x, uintptr_t a, uintptr_t c, uintptr_t w1, uintptr_t b1, uintptr_t w2,
           uintptr_t b2, uintptr_t gate, int num_experts, int hidden, double dropout,
           uint64_t seed, uintptr_t fused) {
          qme::ExpertFuseArgs args{qme_py::cube_from(x, "x"),
                                   qme_py::expert_params(a, c, w1, b1, w2, b2, gate, num_experts,
                                                         hidden, dropout, seed),
                                   ptr<void>(fused)};
          py::gil_scoped_release nogil;
          qme::expert_fuse_cpu(args, qme_py::cpu_threads());
        });

  m.def("expert_fuse_bwd",
        [](py::tuple x, uintptr_t a, uintptr_t c, uintptr_t w1, uintptr_t b1, uintptr_t w2,
           uintptr_t b2, uintptr_t gate, int num_experts, int hidden, double dropout,
           uint64_t seed, uintptr_t grad_fused, uintptr_t grad_x, uintptr_t grad_a,
           uintptr_t grad_c, uintptr_t grad_w1, uintptr_t grad_b1, uintptr_t grad_w2,
           uintptr_t grad_b2, uintptr_t grad_gate) {
          qme::ExpertFuseBwdArgs args{
              qme_py::cube_from(x, "x"),
              qme_py::expert_params(a, c, w1, b1, w2, b2, gate, num_experts, hidden, dropout,
                                    seed),
              ptr<const void>(grad_fused), ptr<void>(grad_x), ptr<void>(grad_a),
              ptr<void>(grad_c), ptr<void>(grad_w1), ptr<void>(grad_b1), ptr<void>(grad_w2),
              ptr<void>(grad_b2), ptr<void>(grad_gate)};
          py::gil_scoped_release nogil;
          qme::expert_fuse_bwd_cpu(args, qme_py::cpu_threads());
        });
}

const qme_py::Register registered(register_expert_fuse);

}  // namespace
