#!/usr/bin/env bash
# The whole virtkit test suite: installs the peers it compares against
# (Debian packages), then runs every unit and integration test, optimised
# (the tests boot real guests and run real programs under the emulator).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo test --release --workspace "$@"
