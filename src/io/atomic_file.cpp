#include "io/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <random>

#include "io/npy.hpp"

namespace sdpa::io {
namespace {

std::string errno_text() { return std::strerror(errno); }

/// Opens a new file next to `path` ("<path>.tmp.<random>"), created with mode 0666 & ~umask like
/// any other new file.
int create_temp_file(const std::string& path, std::string& temp_path) {
  std::random_device entropy;
  std::mt19937_64 generator((static_cast<std::uint64_t>(entropy()) << 32) ^ entropy() ^
                            static_cast<std::uint64_t>(::getpid()));
  static const char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp_path = path + ".tmp.";
    for (int i = 0; i < 8; ++i) temp_path += kAlphabet[generator() % 36];
    const int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  errno = EEXIST;
  return -1;
}

/// Flushes the directory holding `path` so the rename itself is durable. Best effort: some file
/// systems refuse fsync on directories, and the data is already safe.
void sync_parent_directory(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  const std::string directory =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

bool write_all(int fd, std::string_view bytes) {
  const char* p = bytes.data();
  std::size_t size = bytes.size();
  while (size > 0) {
    const ssize_t put = ::write(fd, p, std::min<std::size_t>(size, 1 << 30));
    if (put < 0 && errno == EINTR) continue;
    if (put == 0) errno = EIO;
    if (put <= 0) return false;
    p += put;
    size -= static_cast<std::size_t>(put);
  }
  return true;
}

}  // namespace

void write_file_atomically(const std::string& path, std::initializer_list<std::string_view> parts) {
  std::string temp_path;
  const int fd = create_temp_file(path, temp_path);
  if (fd < 0)
    throw npy::IoError(path + ": cannot create temporary file " + temp_path + ": " + errno_text());
  // The first failing step and its errno text (captured at once: close() may change errno).
  const char* failed = nullptr;
  std::string reason;
  auto step = [&](bool ok, const char* name) {
    if (!ok && failed == nullptr) {
      failed = name;
      reason = errno_text();
    }
  };
  for (std::string_view part : parts)
    if (failed == nullptr) step(write_all(fd, part), "write");
  if (failed == nullptr) step(::fsync(fd) == 0, "fsync");
  step(::close(fd) == 0, "close");
  if (failed == nullptr) step(::rename(temp_path.c_str(), path.c_str()) == 0, "rename");
  if (failed != nullptr) {
    ::unlink(temp_path.c_str());
    throw npy::IoError(path + ": " + failed + " failed: " + reason + " (nothing written)");
  }
  sync_parent_directory(path);
}

}  // namespace sdpa::io
