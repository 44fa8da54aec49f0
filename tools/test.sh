#!/usr/bin/env bash
# Set up (editable install with the test extras) and run the whole test suite.
# Tests that need /dev/kvm or qemu-system-x86_64 skip with a reason when those
# are missing; the pure tests always run.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
exec python3 -m pytest -q -rs "$@"
