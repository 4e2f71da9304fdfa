#!/usr/bin/env node
// Builds the Rust addon from source with cargo and puts it where index.js (the loader) looks for a
// source build. `npm run build` runs it; on `npm install`, scripts/install.mjs runs it only when no
// prebuilt binary fits. cargo's incremental build makes a repeat run take seconds.
// The `dev` profile is optimised (see Cargo.toml), so `cargo test` reuses the same artifacts.
import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { currentPlatform, describePlatform } = createRequire(import.meta.url)('../platform.cjs')
const platform = currentPlatform()
// A source build is named after the prebuilt target it stands in for, which is how the loader finds it.
if (!platform) {
  console.error(`nano-qwen3-serving: no build recipe for ${describePlatform()}`)
  process.exit(1)
}
const suffix = platform.suffix
if (process.env.NANO_QWEN3_SKIP_NATIVE_BUILD) process.exit(0)

try {
  execFileSync('cargo', ['--version'], { stdio: 'ignore' })
} catch {
  console.error(
    'nano-qwen3-serving: building the native addon needs Rust (cargo), which was not found.\n' +
      'Install it from https://rustup.rs and run `npm install` again.',
  )
  process.exit(1)
}

console.error('nano-qwen3-serving: building the native addon (first build takes several minutes)...')
execFileSync('cargo', ['build', '-p', 'nano-qwen3-node'], { cwd: root, stdio: 'inherit' })
const lib = { linux: 'libnano_qwen3_node.so', darwin: 'libnano_qwen3_node.dylib', win32: 'nano_qwen3_node.dll' }[
  process.platform
]
const targetDir = process.env.CARGO_TARGET_DIR ?? join(root, 'target')
const built = join(targetDir, 'debug', lib)
if (!existsSync(built)) {
  console.error(`nano-qwen3-serving: cargo finished but ${built} is missing`)
  process.exit(1)
}
copyFileSync(built, join(root, `nano-qwen3-serving.${suffix}.node`))
