#include "core/workspace.hpp"

#include <algorithm>
#include <cstdlib>
#include <iomanip>
#include <limits>
#include <mutex>
#include <new>
#include <sstream>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "sdpa/sdpa.hpp"

namespace sdpa {
namespace {

struct Block {
  void* data;
  std::size_t bytes;
};

// At most kMaxPooled buffers are kept; the smallest goes first when the pool is full.
constexpr std::size_t kMaxPooled = 4;

struct Pool {
  std::mutex mutex;
  std::vector<Block> free_blocks;
  ~Pool() {
    for (const Block& b : free_blocks) std::free(b.data);
  }
};

Pool& pool() {
  static Pool instance;
  return instance;
}

void give_back(void* data, std::size_t bytes) {
  Pool& p = pool();
  std::lock_guard lock(p.mutex);
  p.free_blocks.push_back({data, bytes});
  if (p.free_blocks.size() > kMaxPooled) {
    auto smallest = std::min_element(p.free_blocks.begin(), p.free_blocks.end(),
                                     [](const Block& a, const Block& b) { return a.bytes < b.bytes; });
    std::free(smallest->data);
    p.free_blocks.erase(smallest);
  }
}

[[noreturn]] void out_of_memory(std::size_t bytes) {
  std::ostringstream message;
  message << "cannot allocate " << bytes << " bytes (" << std::setprecision(3)
          << static_cast<double>(bytes) / (1 << 30)
          << " GiB) of scratch memory for this call (a smaller options.workspace_limit processes "
             "fewer (batch, head) groups at a time)";
  throw OutOfMemory(message.str());
}

}  // namespace

void* allocate_large(std::size_t bytes) {
  constexpr std::size_t kHugePage = std::size_t{2} << 20;
  if (bytes < kHugePage) return std::aligned_alloc(64, std::max<std::size_t>(64, (bytes + 63) / 64 * 64));
  if (bytes > std::numeric_limits<std::size_t>::max() - kHugePage) return nullptr;
  const std::size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* data = std::aligned_alloc(kHugePage, rounded);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (data != nullptr) madvise(data, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return data;
}

Workspace::Workspace(Workspace&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

Workspace& Workspace::operator=(Workspace&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) give_back(data_, bytes_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

Workspace::~Workspace() {
  if (data_ != nullptr) give_back(data_, bytes_);
}

Workspace acquire_workspace(std::size_t bytes) {
  if (bytes > std::numeric_limits<std::size_t>::max() - 63) out_of_memory(bytes);
  bytes = std::max<std::size_t>(64, (bytes + 63) / 64 * 64);
  {
    Pool& p = pool();
    std::lock_guard lock(p.mutex);
    // The smallest pooled block that is big enough, unless it is wastefully big (> 4x).
    auto best = p.free_blocks.end();
    for (auto it = p.free_blocks.begin(); it != p.free_blocks.end(); ++it)
      if (it->bytes >= bytes && it->bytes / 4 <= bytes &&
          (best == p.free_blocks.end() || it->bytes < best->bytes))
        best = it;
    if (best != p.free_blocks.end()) {
      const Block b = *best;
      p.free_blocks.erase(best);
      return Workspace(b.data, b.bytes);
    }
  }
  // Plain pages: huge pages (allocate_large) made no difference to the forward at L = 4096 or
  // 8192 (A/B, 2 threads), whose packed tiles are reread from the caches.
  void* data = std::aligned_alloc(64, bytes);
  if (data == nullptr) out_of_memory(bytes);
  return Workspace(data, bytes);
}

void release_pooled_workspaces() {
  Pool& p = pool();
  std::lock_guard lock(p.mutex);
  for (const Block& b : p.free_blocks) std::free(b.data);
  p.free_blocks.clear();
}

std::size_t pooled_workspace_bytes() {
  Pool& p = pool();
  std::lock_guard lock(p.mutex);
  std::size_t total = 0;
  for (const Block& b : p.free_blocks) total += b.bytes;
  return total;
}

}  // namespace sdpa
