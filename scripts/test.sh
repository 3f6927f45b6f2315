#!/usr/bin/env bash
# The test command: installs everything the suite needs, then lint, types and tests.
# Extra pytest arguments are passed through, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
source "$(dirname "$0")/_env.sh" "loadgen,reports,test"
apt_install prometheus prometheus    # integration: real Prometheus scrapes the service
apt_install chromium chromium        # reports: the HTML report is opened in headless Chromium
apt_install nginx nginx              # bench loadgen / calibration: a canned SSE server
apt_install haproxy haproxy          # integration: the compose proxy in front of two replicas
# integration: llama.cpp's llama-server, the third-party peer (built once per machine, cached).
# Like a missing tool in tests/conftest.py: a failed build fails CI and only warns elsewhere.
if llama_server="$(bash scripts/build_llama_server.sh)"; then
    export TOKENBOOTH_LLAMA_SERVER="${llama_server##*$'\n'}"
elif [ -n "${CI:-}" ]; then
    echo "error: building llama-server failed" >&2
    exit 1
else
    echo "warning: building llama-server failed; the tests that need it are skipped" >&2
fi

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
