#!/usr/bin/env bash
# Runs every test (unit and integration, with real containerd/runc/QEMU started by the tests
# themselves). Makes sure dependencies are installed first, so it also works on a new machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --deps-only
exec node --test --test-concurrency=1 dist/js/test/unit/ dist/js/test/integration/
