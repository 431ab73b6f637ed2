// fail(): throw sdpa::Error with a message assembled from its arguments.
#pragma once

#include <sstream>
#include <string>

#include "sdpa/sdpa.hpp"

namespace sdpa {

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw Error(message.str());
}

}  // namespace sdpa
