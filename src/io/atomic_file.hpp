// Atomic file output, shared by every writer of the CLI (.npy arrays, JSON, HTML): the bytes go to
// a temporary file in the target's directory, are flushed to disk, and the file is renamed over
// the target only when complete — so no partial output file ever exists.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

namespace sdpa::io {

/// Writes the concatenation of `parts` to `path` atomically (temporary file "<path>.tmp.<random>",
/// fsync, rename, then a best-effort fsync of the directory). On failure it throws
/// sdpa::npy::IoError naming `path`; no file at `path` is created or changed and the temporary file
/// is removed.
void write_file_atomically(const std::string& path, std::initializer_list<std::string_view> parts);

}  // namespace sdpa::io
