#include "core/pinning.hpp"

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>

#include <cstring>
#endif

namespace sdpa {

#if defined(__linux__)
static_assert(sizeof(cpu_set_t) <= 128, "ThreadPin::saved_ holds a cpu_set_t");

CpuPlan::CpuPlan(int team) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (team < 2 || sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) != team) return;
  for (int cpu = 0; cpu < CPU_SETSIZE && static_cast<int>(cpus_.size()) < team; ++cpu)
    if (CPU_ISSET(cpu, &set)) cpus_.push_back(cpu);
}

ThreadPin::ThreadPin(const CpuPlan& plan, int thread) {
  if (!plan.pins() || thread < 0 || thread >= static_cast<int>(plan.cpus_.size())) return;
  cpu_set_t own;
  if (pthread_getaffinity_np(pthread_self(), sizeof own, &own) != 0) return;
  std::memcpy(saved_, &own, sizeof own);
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(plan.cpus_[static_cast<std::size_t>(thread)], &one);
  pinned_ = pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0;
}

ThreadPin::~ThreadPin() {
  if (!pinned_) return;
  cpu_set_t own;
  std::memcpy(&own, saved_, sizeof own);
  pthread_setaffinity_np(pthread_self(), sizeof own, &own);
}
#else
CpuPlan::CpuPlan(int) {}
ThreadPin::ThreadPin(const CpuPlan&, int) {}
ThreadPin::~ThreadPin() {}
#endif

}  // namespace sdpa
