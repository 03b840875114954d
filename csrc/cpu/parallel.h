// Row-parallel loop on std::thread: the CPU twins split probes (rows) between
// threads. Each thread gets one contiguous block of rows, so per-thread results
// can be reduced in a fixed order (results do not depend on the thread count).
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace qme {

// fn(thread_id, begin, end) over [0, n) split into at most num_threads blocks.
template <typename Fn>
void parallel_for_blocks(int64_t n, int num_threads, int64_t min_per_thread, Fn&& fn) {
  if (n <= 0) return;
  int64_t max_threads = std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_thread));
  int t = static_cast<int>(std::min<int64_t>(std::max(1, num_threads), max_threads));
  if (t == 1) {
    fn(0, int64_t{0}, n);
    return;
  }
  std::vector<std::thread> workers;
  std::exception_ptr error;
  std::mutex error_mutex;
  int64_t chunk = (n + t - 1) / t;
  for (int i = 0; i < t; ++i) {
    int64_t b = i * chunk, e = std::min(n, b + chunk);
    if (b >= e) break;
    workers.emplace_back([&, i, b, e] {
      try {
        fn(i, b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    });
  }
  for (auto& w : workers) w.join();
  if (error) std::rethrow_exception(error);
}

// Number of blocks parallel_for_blocks will use (for per-thread scratch sizing).
inline int parallel_blocks(int64_t n, int num_threads, int64_t min_per_thread) {
  if (n <= 0) return 1;
  int64_t max_threads = std::max<int64_t>(1, n / std::max<int64_t>(1, min_per_thread));
  return static_cast<int>(std::min<int64_t>(std::max(1, num_threads), max_threads));
}

}  // namespace qme
