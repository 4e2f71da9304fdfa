#!/usr/bin/env bash
# Builds the server image from a clean clone and checks it from outside, as a user would: time to
# /ready, a streamed completion, /metrics, and SIGTERM draining then exiting 0; validates
# deploy/kubernetes.yaml against the Kubernetes API schema. Prints the figures the README quotes.
#   deploy/check-container.sh            (podman or docker; root or rootless)
# Where Docker Hub or rustup cannot be reached (this project's build machines), the addon is built
# on the host from the clone (`npm ci`: cargo) and staged with deploy/stage-app.sh, and the run
# stage's base is node:20-bookworm-slim when it can be pulled, else Debian bookworm from
# debootstrap (apt) with this machine's `node`. Environment: PORT (18000), KEEP=1 keeps the
# work folder, CARGO_TARGET_DIR reuses a build folder.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
port=${PORT:-18000}
engine=$(command -v podman || command -v docker || true)
[ -n "$engine" ] || { echo "check-container: needs podman or docker" >&2; exit 1; }
work=$(mktemp -d /var/tmp/nq3-container.XXXXXX)
name=nq3-check-$$
cleanup() {
  "$engine" rm -f "$name" >/dev/null 2>&1 || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT
say() { echo "check-container: $*" >&2; }

say "clean clone of $(git -C "$repo" rev-parse --short HEAD)"
git clone -q "$repo" "$work/src"
(cd "$work/src" && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm prune --omit=dev --ignore-scripts --loglevel=error >/dev/null)
"$repo/deploy/stage-app.sh" "$work/src" "$work/context/app"

base=node:20-bookworm-slim
if ! "$engine" pull -q "docker.io/library/$base" >/dev/null 2>&1; then
  base=localhost/nq3-bookworm-node:20
  if ! "$engine" image exists "$base" 2>/dev/null; then
    say "docker.io unreachable: base image from debootstrap (Debian bookworm, minbase) + $(command -v node) ($(node --version))"
    rootfs=/var/tmp/nq3-rootfs
    [ -x "$rootfs/bin/sh" ] || debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    install -m 0755 "$(command -v node)" "$rootfs/usr/local/bin/node"
    tar -C "$rootfs" -c . | "$engine" import -q - "$base" >/dev/null
  fi
fi
say "building on $base"
"$engine" build -q --build-arg "RUNTIME_IMAGE=$base" -f "$repo/deploy/Dockerfile.prebuilt" -t nano-qwen3-serving:check "$work/context" >/dev/null
size=$("$engine" image inspect nano-qwen3-serving:check --format '{{.Size}}')

# Where the container runtime cannot raise limits or use this host's cgroups (a sandboxed VM), say
# what was needed: runc and limits below the host's hard ones.
run_flags=()
if ! "$engine" run --rm --entrypoint node nano-qwen3-serving:check -e 0 >/dev/null 2>&1; then
  run_flags=(--runtime runc --ulimit "nofile=4096:4096" --ulimit "nproc=4096:4096")
  say "default OCI runtime refused (setrlimit / cgroups): running with ${run_flags[*]}"
fi
started=$(date +%s.%N)
"$engine" run -d --name "$name" "${run_flags[@]}" -p "127.0.0.1:$port:8000" nano-qwen3-serving:check >/dev/null
until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do
  sleep 0.1
  if [ "$(echo "$(date +%s.%N) - $started > 120" | bc)" = 1 ]; then "$engine" logs "$name" >&2; say "not ready after 120 s"; exit 1; fi
done
ready=$(echo "$(date +%s.%N) - $started" | bc)
stream=$(curl -sfN "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' \
  -d '{"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}')
events=$(grep -c '^data: {' <<<"$stream")
grep -q '"completion_tokens":8' <<<"$stream" || { echo "$stream" >&2; say "no usage with 8 tokens in the stream"; exit 1; }
tail -c 20 <<<"$stream" | grep -q 'data: \[DONE\]' || { say "the stream did not end with [DONE]"; exit 1; }
metrics=$(curl -sf "http://127.0.0.1:$port/metrics")
grep -q '^vllm:generation_tokens_total{[^}]*} 8' <<<"$metrics" || { echo "$metrics" | head -20 >&2; say "/metrics does not count the 8 tokens"; exit 1; }

# SIGTERM while a long request runs: it is drained (completes), and the process exits 0.
curl -sf "http://127.0.0.1:$port/v1/completions" -H 'content-type: application/json' \
  -d '{"prompt": "x", "max_tokens": 64, "temperature": 0, "ignore_eos": true}' >"$work/drained.json" &
client=$!
sleep 0.3
"$engine" kill -s TERM "$name" >/dev/null
wait "$client" || { say "the in-flight request failed during the drain"; exit 1; }
grep -q '"completion_tokens":64' "$work/drained.json" || { cat "$work/drained.json" >&2; say "the in-flight request was not finished"; exit 1; }
code=$("$engine" wait "$name")
[ "$code" = 0 ] || { "$engine" logs "$name" >&2; say "exit code $code after SIGTERM"; exit 1; }
"$engine" logs "$name" 2>&1 | grep -q 'shutting down' || { say "no drain message in the logs"; exit 1; }

# The Kubernetes manifests against the API schema (kubernetes-validate, from PyPI; strict: unknown fields fail).
venv=/var/tmp/nq3-kubernetes-validate
[ -x "$venv/bin/kubernetes-validate" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q kubernetes-validate==1.37.0; }
"$venv/bin/kubernetes-validate" --strict --quiet "$repo/deploy/kubernetes.yaml"

echo "image: nano-qwen3-serving:check on $base, $((size / 1000000)) MB"
echo "time to /ready: ${ready} s (container start to the first 200)"
echo "streamed completion: $events data events, 8 tokens, [DONE]; /metrics counted them"
echo "SIGTERM: the in-flight 64-token request finished, exit code 0"
echo "deploy/kubernetes.yaml: valid against Kubernetes 1.37 (strict)"
