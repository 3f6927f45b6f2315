#!/usr/bin/env bash
# The test command: installs everything the suite needs, then lint, types and tests.
# Extra pytest arguments are passed through, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
source "$(dirname "$0")/_env.sh" test
apt_install prometheus prometheus    # integration: real Prometheus scrapes the service
apt_install chromium chromium        # reports: the HTML report is opened in headless Chromium

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== pytest"
set +e
pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$rc"
