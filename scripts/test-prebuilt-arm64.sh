#!/usr/bin/env bash
# The linux-arm64-gnu platform package as a user gets it: `npm pack` tarballs installed into a fresh
# folder offline and without cargo (scripts/install-offline.mjs; npm runs on this x64 host with
# --cpu=arm64), then the CLI, an ESM and a CJS script run the embedded model under QEMU user-mode
# emulation with Debian's arm64 Node.js (bookworm: Node 18), which is unpacked into target/, not
# installed, so the host's node stays as it is. The tokens must equal this host's (x64) greedy tokens.
# Needs: root with apt (adds the arm64 architecture to dpkg for `apt-get download`), qemu-user, and
# npm/linux-arm64-gnu staged (node scripts/prebuilt.mjs build linux-arm64-gnu).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f npm/linux-arm64-gnu/package.json ] || { echo "stage it first: node scripts/prebuilt.mjs build linux-arm64-gnu" >&2; exit 1; }
command -v qemu-aarch64 >/dev/null || apt-get install -y -q qemu-user >/dev/null
sysroot=target/arm64-node
if [ ! -x "$sysroot/usr/bin/node" ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64 && apt-get update -q; }
  mkdir -p "$sysroot/debs"
  (cd "$sysroot/debs" && apt-get download -q nodejs:arm64 libnode108:arm64 libc6:arm64 libbrotli1:arm64 libc-ares2:arm64 \
    libicu72:arm64 libnghttp2-14:arm64 libssl3:arm64 libstdc++6:arm64 libgcc-s1:arm64 libuv1:arm64 zlib1g:arm64 \
    node-acorn node-cjs-module-lexer node-undici node-busboy)
  for deb in "$sysroot"/debs/*.deb; do dpkg -x "$deb" "$sysroot"; done
fi
node_arm64() { qemu-aarch64 -L "$sysroot" "$sysroot/usr/bin/node" "$@"; }
echo "arm64 node: $(node_arm64 -p 'process.version + " " + process.arch')"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm run -s build:ts
node scripts/prebuilt.mjs pack linux-arm64-gnu --out "$work/tarballs" >/dev/null
node scripts/install-offline.mjs "$work/app" "$work"/tarballs/nano-qwen3-serving-0*.tgz "$work"/tarballs/nano-qwen3-serving-linux-arm64-gnu-*.tgz
generate='const runner = await ModelRunner.load({ modelName: defaultModelDir() })
const r = await runner.generate("Hello, my dog is cute", { maxTokens: 8, temperature: 0, ignoreEos: true })
console.log(JSON.stringify(r.tokenIds))
await runner.dispose()'
# The host's tokens, from this checkout's own build.
expected=$(node --input-type=module -e "import { ModelRunner, defaultModelDir } from '$PWD/dist/index.mjs'
$generate")
cd "$work/app"
printf "import { ModelRunner, defaultModelDir } from 'nano-qwen3-serving'\n%s\n" "$generate" > run.mjs
printf "const { ModelRunner, defaultModelDir } = require('nano-qwen3-serving')\n;(async () => {\n%s\n})()\n" "$generate" > run.cjs
esm=$(node_arm64 run.mjs)
cjs=$(node_arm64 run.cjs)
cli=$(node_arm64 node_modules/.bin/nano-qwen3-serving generate --max-tokens 8 Hello 2>&1)
echo "x64 host: $expected"
echo "arm64 ESM: $esm"
echo "arm64 CJS: $cjs"
echo "arm64 CLI: $cli"
[ "$esm" = "$expected" ] && [ "$cjs" = "$expected" ] || { echo "FAIL: arm64 tokens differ from the host's" >&2; exit 1; }
echo "$cli" | grep -q '\[length\] 8 tokens' || { echo "FAIL: the CLI did not generate" >&2; exit 1; }
echo "OK: linux-arm64-gnu package installed and ran under QEMU"
