#!/usr/bin/env bash
# The kernels' tests on aarch64 under QEMU user-mode emulation (`-cpu max`: NEON and dotprod), so
# the NEON paths are checked against the portable ones on an x86-64 machine.
# Needs: Debian's gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user (installed here when
# missing and run as root), and the Rust target (rustup target add aarch64-unknown-linux-gnu).
# `--setup-only` installs those and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
  else
    echo "test-aarch64: needs qemu-aarch64 and aarch64-linux-gnu-gcc (Debian: qemu-user gcc-aarch64-linux-gnu)" >&2
    exit 1
  fi
fi
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
[ "${1:-}" = --setup-only ] && exit 0
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
run() {
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $1" \
    cargo test -p nano-qwen3-kernels --target aarch64-unknown-linux-gnu --quiet "${@:2}"
}
# A CPU with dotprod: every NEON path against the portable one (the test fails if it is not found).
NANO_QWEN3_REQUIRE_ISA=neon-dotprod NANO_QWEN3_EXPECT_ISA=neon-dotprod run max "$@"
# A CPU without it (Cortex-A72, Raspberry Pi 4): detection falls back to the portable kernels.
NANO_QWEN3_EXPECT_ISA=portable run cortex-a72 "$@"
