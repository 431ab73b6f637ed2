// A one-line progress bar on stderr, shared by the long-running subcommands (lab, decode).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <iostream>
#include <string>

namespace sdpa::cli {

/// A one-line bar on stderr, redrawn at most every 100 ms; nothing when stderr is not a terminal.
class ProgressBar {
 public:
  using Callback = std::function<void(double fraction, const std::string& status)>;

  explicit ProgressBar(bool enabled) : enabled_(enabled && ::isatty(STDERR_FILENO) == 1) {}
  ~ProgressBar() { finish(); }

  Callback callback() {
    if (!enabled_) return {};
    return [this](double fraction, const std::string& status) { draw(fraction, status); };
  }
  void finish() {
    if (drawn_) std::cerr << "\r\033[K" << std::flush;
    drawn_ = false;
  }

 private:
  void draw(double fraction, const std::string& status) {
    const auto now = std::chrono::steady_clock::now();
    if (drawn_ && fraction < 1 && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(std::lround(std::clamp(fraction, 0.0, 1.0) * kWidth));
    std::cerr << "\r\033[K[" << std::string(static_cast<std::size_t>(filled), '#')
              << std::string(static_cast<std::size_t>(kWidth - filled), '.') << "] "
              << static_cast<int>(100 * fraction) << "% " << status << std::flush;
    drawn_ = true;
  }

  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace sdpa::cli
