// Peak resident memory of sdpa::forward, measured in a forked child so the parent's allocations
// (the naive baseline's L×L scores above all) cannot pollute the high-water mark.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>

#include "bench/bench.hpp"

namespace sdpa::bench {
namespace {

// A "VmRSS:  1234 kB" style field of /proc/self/status, in bytes (0 when absent).
std::size_t status_bytes(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::size_t field_length = std::strlen(field);
  while (std::getline(status, line)) {
    if (line.compare(0, field_length, field) == 0 && line.size() > field_length &&
        line[field_length] == ':')
      return std::stoull(line.substr(field_length + 1)) * 1024;
  }
  return 0;
}

// Resets VmHWM to the current RSS (Linux ≥ 4.0); harmless where unsupported, because a forked
// child's high-water mark starts at its RSS at fork time anyway.
void reset_peak_rss() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";
}

// Runs in the child: allocate, run forward twice (the second reuses whatever the first kept),
// read the high-water mark.
MemoryMeasurement measure_here(const AttentionShape& shape, int threads) {
  reset_peak_rss();
  MemoryMeasurement m;
  m.length = shape.length;
  const std::size_t rss_before = status_bytes("VmRSS");
  AttentionData data = AttentionData::random(shape);
  m.io_bytes = data.bytes();
  m.workspace_bytes = run_sdpa_forward(data, threads).workspace_bytes;
  run_sdpa_forward(data, threads);
  const std::size_t hwm = status_bytes("VmHWM");
  m.growth_bytes = hwm > rss_before ? hwm - rss_before : 0;
  m.extra_bytes = m.growth_bytes > m.io_bytes ? m.growth_bytes - m.io_bytes : 0;
  return m;
}

bool read_all(int fd, void* buffer, std::size_t size) {
  auto* bytes = static_cast<char*>(buffer);
  while (size > 0) {
    const ssize_t got = read(fd, bytes, size);
    if (got <= 0) return false;
    bytes += got;
    size -= static_cast<std::size_t>(got);
  }
  return true;
}

}  // namespace

MemoryMeasurement measure_forward_memory(const AttentionShape& shape, int threads) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("measure_forward_memory: pipe() failed");
  std::fflush(nullptr);  // the child must not re-flush the parent's buffered output
  const pid_t child = fork();
  if (child < 0) throw std::runtime_error("measure_forward_memory: fork() failed");
  if (child == 0) {
    close(fds[0]);
    int status = 1;
    try {
      const MemoryMeasurement m = measure_here(shape, threads);
      status = write(fds[1], &m, sizeof m) == static_cast<ssize_t>(sizeof m) ? 0 : 1;
    } catch (...) {
    }
    _exit(status);
  }
  close(fds[1]);
  MemoryMeasurement m;
  const bool complete = read_all(fds[0], &m, sizeof m);
  close(fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  if (!complete || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error("measure_forward_memory: the child process failed at L = " +
                             std::to_string(shape.length));
  return m;
}

}  // namespace sdpa::bench
