// Error checking for the CUDA twins: every runtime call and every launch goes
// through these, so a failure surfaces as a C++ exception naming the call site
// instead of a sticky error found by some later, unrelated call.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace qme {
namespace cuda_detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr +
                           " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

// Shared memory one block may opt into on the current device. Used both to size
// the workspace and to pick the launch path, so when the device cannot be asked
// (no driver when only the size is wanted) it answers the conservative default,
// which can only over-estimate the workspace, never under-estimate it.
inline size_t max_block_smem_optin() {
  int dev = 0;
  int bytes = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
      bytes <= 0) {
    (void)cudaGetLastError();  // the failed query must not poison the next launch check
    return 48 * 1024;
  }
  return static_cast<size_t>(bytes);
}

inline int sm_count() {
  int dev = 0;
  int n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
    (void)cudaGetLastError();
    return 32;
  }
  return n;
}

}  // namespace cuda_detail
}  // namespace qme

#define QME_CUDA_CHECK(expr)                                                        \
  do {                                                                              \
    const cudaError_t qme_cuda_err_ = (expr);                                       \
    if (qme_cuda_err_ != cudaSuccess)                                               \
      ::qme::cuda_detail::throw_cuda_error(qme_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a <<<...>>> launch: catches bad configurations (too much shared memory,
// too many threads) immediately; faults inside the kernel show up at the next
// synchronising call made by the caller.
#define QME_CUDA_CHECK_LAUNCH() QME_CUDA_CHECK(cudaGetLastError())

namespace qme {
namespace cuda_detail {

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device
// (above 48 KiB this must be opted into). The limit is an attribute of the kernel, not
// of a launch, and the bindings release the GIL: so it only ever grows, under one lock,
// and a concurrent launch that needs more is never undercut by one that needs less.
template <typename Kernel>
void allow_dynamic_smem(Kernel* kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return;
  int dev = 0;
  QME_CUDA_CHECK(cudaGetDevice(&dev));
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, size_t> granted;
  const std::lock_guard<std::mutex> lock(mu);
  size_t& have = granted[{reinterpret_cast<const void*>(kernel), dev}];
  if (have >= bytes) return;
  QME_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
  have = bytes;
}

}  // namespace cuda_detail
}  // namespace qme
