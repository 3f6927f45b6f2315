#!/usr/bin/env bash
# tokenbooth and llama.cpp's llama-server side by side on this machine: the same SmolLM2-135M
# weights (tokenbooth: CTranslate2 INT8 from the GGUF; llama.cpp: the Q4_1 GGUF itself), the same
# workload (64-token prompts, 64 output tokens), closed loop at 1, 8 and 32 users and one
# Poisson rate, each server measured alone. Writes four run directories and a comparison report
# under $1 (default runs/compare-<time>) and prints the report path last. About 8 minutes.
#
# Servers run one at a time on loopback; the load generator shares the cores with whichever runs
# (its CPU share is in every point). llama-server: -t 2 (both cores), -np 32 slots.
set -euo pipefail
# The load harness and the report stack (not this script's own arguments).
source "$(dirname "$0")/_env.sh" "loadgen,reports"
out="${1:-runs/compare-$(date -u +%Y%m%dT%H%M%S)}"
rate="${COMPARE_RATE:-1.0}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

llama="$(bash scripts/build_llama_server.sh | tail -n 1)"
tokenbooth model build >&2
gguf="$(python -c 'from service.models.paths import default_gguf_path; print(default_gguf_path())')"
port="$(python -c 'from service.launch import free_port; print(free_port())')"

# spec NAME TARGET_TOML LOAD_TOML -> a spec file in $out
spec() {
    cat > "$out/$1.toml" <<TOML
[run]
name = "$1"
duration_s = 30.0
warmup_s = 5.0
max_requests = 2000
min_samples = 10
request_timeout_s = 120.0

$2

$3

[workload]
kind = "synthetic"
api = "chat"
input_tokens = { dist = "fixed", value = 64 }
output_tokens = { dist = "fixed", value = 64 }
ignore_eos = true

[slo]
ttft_p95_s = 2.0
tpot_p95_s = 0.2
max_error_rate = 0.01
TOML
}
tokenbooth_target='[target]
kind = "local"

[server]
replicas = [1]
max_batch_size = [16]
max_batch_delay_ms = [5.0]
batch_workers = [2]
intra_threads = [1]'
llama_target="[target]
kind = \"remote\"
urls = [\"http://127.0.0.1:$port\"]"
closed='[load]
mode = "concurrency"
concurrency = [1, 8, 32]'
poisson="[load]
mode = \"rate\"
rate = [$rate]
arrival = \"poisson\""
spec tokenbooth-closed "$tokenbooth_target" "$closed"
spec tokenbooth-poisson "$tokenbooth_target" "$poisson"
spec llamacpp-closed "$llama_target" "$closed"
spec llamacpp-poisson "$llama_target" "$poisson"

echo "== tokenbooth (local replica, 2 batch workers x 1 thread, batch 16)" >&2
tokenbooth sweep "$out/tokenbooth-closed.toml" --output "$out/tokenbooth-closed" --quiet >&2
tokenbooth sweep "$out/tokenbooth-poisson.toml" --output "$out/tokenbooth-poisson" --quiet >&2

# A fresh llama-server per sweep: both sweeps send the same seeded prompts, and a warm slot
# cache would give the second one a prefill it never paid for.
llama_pid=""
stop_llama() { [ -z "$llama_pid" ] || { kill "$llama_pid" 2>/dev/null || true; wait "$llama_pid" 2>/dev/null || true; }; llama_pid=""; }
trap stop_llama EXIT
for load in closed poisson; do
    echo "== llama.cpp llama-server on 127.0.0.1:$port (-t 2 -np 32), $load" >&2
    "$llama" -m "$gguf" --host 127.0.0.1 --port "$port" -t 2 -np 32 -c 8192 --metrics \
        > "$out/llama-server-$load.log" 2>&1 &
    llama_pid=$!
    tokenbooth sweep "$out/llamacpp-$load.toml" --output "$out/llamacpp-$load" --quiet >&2
    stop_llama
done

echo "== reports" >&2
python - "$out" <<'PY' >&2
import sys
from pathlib import Path
import pandas as pd
from loadgen.results import Point, RunDir
cols = [Point.LOAD_MODE, Point.LOAD_LEVEL, Point.VALID, Point.N_OK, Point.OUTPUT_TOKENS_PER_S,
        Point.TTFT_P50_S, Point.TTFT_P95_S, Point.ITL_P50_S, Point.LOADGEN_CPU_PERCENT]
out = Path(sys.argv[1])
for name in ("tokenbooth-closed", "llamacpp-closed", "tokenbooth-poisson", "llamacpp-poisson"):
    p = RunDir(out / name).points()[cols]
    print(f"\n{name}\n{p.to_string(index=False, float_format=lambda v: f'{v:.4g}')}")
PY
tokenbooth report "$out/tokenbooth-closed" "$out/llamacpp-closed" --output "$out/report" | tail -n 1
