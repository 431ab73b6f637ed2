#!/usr/bin/env bash
# Installs the build into a temporary prefix and builds and runs tests/install_consumer against it
# with find_package(sdpa): the packaging a downstream project relies on.
# Usage: tests/install_consumer.sh <build dir> <scratch dir>
set -euo pipefail
build=$1 scratch=$2
here="$(cd "$(dirname "$0")" && pwd)"
rm -rf "$scratch"
cmake --install "$build" --prefix "$scratch/prefix" >/dev/null
cmake -S "$here/install_consumer" -B "$scratch/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$scratch/prefix" >/dev/null
cmake --build "$scratch/consumer" >/dev/null
"$scratch/consumer/consumer"
