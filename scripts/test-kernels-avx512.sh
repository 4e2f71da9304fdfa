#!/usr/bin/env bash
# The kernels' tests on emulated AVX-512 CPUs (Bochs, via scripts/test-avx512.sh), so the
# AVX-512 VNNI and BF16 paths are checked against the AVX2 and portable ones on a machine without them.
# The test binary is built statically (the emulated machine has no libc) in its own target dir.
# Extra arguments go to the test binary (test name filters).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/test-avx512.sh --setup-only
export CARGO_TARGET_DIR=target/avx512 RUSTFLAGS='-C target-feature=+crt-static'
bin=$(cargo test -p nano-qwen3-kernels --lib --no-run --target x86_64-unknown-linux-gnu --message-format=json |
  node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const l of s.split("\n")){try{const m=JSON.parse(l);if(m.executable&&m.profile?.test)console.log(m.executable)}catch{}}})')
[ -x "$bin" ] || { echo "test-kernels-avx512: no test binary built" >&2; exit 1; }
# Tiger Lake (AVX-512 + VNNI): every kernel test, and the run fails if VNNI is not detected or not
# chosen. Not the thread pool's own tests (no SIMD; slow on one emulated core) nor the tiling sweep:
# its hundreds of pool dispatches, each with 2 ms of (emulated-clock) worker spinning, take hours
# there; the repack tests cover VNNI in 1- and 3-thread pools.
./scripts/test-avx512.sh --cpu tigerlake --env NANO_QWEN3_REQUIRE_ISA=avx512-vnni --env NANO_QWEN3_EXPECT_ISA=avx512-vnni \
  "$bin" --test-threads 1 --skip tuning:: --skip pool:: "$@"
# Sapphire Rapids (adds AVX512_BF16; Bochs 3.0): the bf16 dense path and the VNNI tiles under it.
./scripts/test-avx512.sh --cpu sapphire_rapids --env NANO_QWEN3_REQUIRE_ISA=avx512-bf16 --env NANO_QWEN3_EXPECT_ISA=avx512-bf16 \
  "$bin" --test-threads 1 simd:: linear:: repack:: q4:: q8:: ggml::
# Skylake-X (AVX-512 without VNNI): detection must fall back to AVX2.
./scripts/test-avx512.sh --cpu corei7_skylake_x --env NANO_QWEN3_REQUIRE_ISA=avx2 --env NANO_QWEN3_EXPECT_ISA=avx2 "$bin" --test-threads 1 simd:: repack:: ggml::
