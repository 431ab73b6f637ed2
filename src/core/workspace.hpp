// Scratch memory for the kernels, recycled across calls.
//
// Fresh pages cost a page fault and a zeroing each (measured here: a 16 MiB workspace taken new on
// every call spent ~20% of a 2048-token forward in the kernel's clear_page). So released buffers go
// back to a small process-wide pool and the next call of a similar size reuses them.
#pragma once

#include <cstddef>
#include <memory>

namespace sdpa {

class WorkspacePool;

/// A 64-byte aligned block of at least `bytes` bytes; returned to the pool when destroyed.
class Workspace {
 public:
  Workspace() = default;
  Workspace(Workspace&& other) noexcept;
  Workspace& operator=(Workspace&& other) noexcept;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace();

  float* floats() const { return static_cast<float*>(data_); }
  std::size_t bytes() const { return bytes_; }

 private:
  friend Workspace acquire_workspace(std::size_t bytes);
  Workspace(void* data, std::size_t bytes) : data_(data), bytes_(bytes) {}
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// `bytes` bytes, 64-byte aligned; buffers of 2 MiB and more are 2 MiB aligned and advised as
/// transparent huge pages (Linux, before their first touch), which long streams over them (a KV
/// cache, packed keys) read with fewer TLB misses. nullptr when memory cannot be had; std::free.
void* allocate_large(std::size_t bytes);

/// A workspace of at least `bytes` bytes (a pooled one when one is big enough). Throws
/// sdpa::OutOfMemory (a std::bad_alloc naming the bytes) when memory cannot be had.
Workspace acquire_workspace(std::size_t bytes);

/// Frees every pooled buffer (memory held between calls).
void release_pooled_workspaces();

/// Bytes currently held by the pool.
std::size_t pooled_workspace_bytes();

}  // namespace sdpa
