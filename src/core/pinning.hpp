// Keeping the threads of one call on different CPUs.
//
// Unbound, the OpenMP threads of a call often start on the same CPU and share it until the
// scheduler moves one (measured on the 2-vCPU guest: `sdpa demo` 12.9–34.0 ms over 8 runs unbound,
// 12.6–13.0 ms bound). When a call's team uses every CPU the process may run on, each thread is
// pinned to its own CPU for the duration of the parallel region and its affinity restored when
// the region ends, so no thread keeps a pin after the call. Smaller teams are left alone: pinning
// them to the first CPUs would crowd several processes onto the same cores.
#pragma once

#include <vector>

namespace sdpa {

/// Decided once per call, before its parallel region.
class CpuPlan {
 public:
  /// Pins a team of `team` threads when it is as large as the process's CPU set (and ≥ 2).
  explicit CpuPlan(int team);
  bool pins() const { return !cpus_.empty(); }

 private:
  friend class ThreadPin;
  std::vector<int> cpus_;  // thread t runs on cpus_[t]; empty = no pinning
};

/// Constructed by every thread at the start of the parallel region, destroyed at its end.
class ThreadPin {
 public:
  ThreadPin(const CpuPlan& plan, int thread);
  ~ThreadPin();
  ThreadPin(const ThreadPin&) = delete;
  ThreadPin& operator=(const ThreadPin&) = delete;

 private:
  bool pinned_ = false;
  alignas(8) unsigned char saved_[128];  // the thread's own cpu_set_t before the pin
};

}  // namespace sdpa
