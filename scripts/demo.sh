#!/usr/bin/env bash
# The main job on the embedded default model: install, build the model, run a short sweep on
# local replicas, write a capacity report. Prints the report path last.
# Pass a different spec as $1 (default: loadgen/examples/demo.toml).
set -euo pipefail
# The load harness and the report stack (not this script's own arguments).
source "$(dirname "$0")/_env.sh" "loadgen,reports"
spec="${1:-loadgen/examples/demo.toml}"

echo "== building the default model (SmolLM2-135M-Instruct -> CTranslate2 INT8)" >&2
tokenbooth model build >&2

echo "== sweeping $spec (starts and stops its own replicas)" >&2
run_dir="$(tokenbooth sweep "$spec" | tail -n 1)"

echo "== report" >&2
report="$(tokenbooth report "$run_dir" | tail -n 1)"
echo "run directory: $run_dir" >&2
echo "serve it yourself: tokenbooth serve   (then see README: curl a streaming chat completion)" >&2
echo "$report"
