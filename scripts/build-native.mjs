#!/usr/bin/env node
// Builds the Rust addon from source with cargo and puts it where index.js (the loader) looks for a
// source build. `npm run build` runs it; on `npm install`, scripts/install.mjs runs it only when no
// prebuilt binary fits. cargo's incremental build makes a repeat run take seconds.
// The `dev` profile is optimised (see Cargo.toml), so `cargo test` reuses the same artifacts.
import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, renameSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { binaryName, cdylibName, localSuffix } = createRequire(import.meta.url)('../platform.cjs')

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
const targetDir = process.env.CARGO_TARGET_DIR ?? join(root, 'target')
const built = join(targetDir, 'debug', cdylibName(process.platform))
if (!existsSync(built)) {
  console.error(`nano-qwen3-serving: cargo finished but ${built} is missing`)
  process.exit(1)
}
// Named after the prebuilt target it stands in for (or the bare platform): how the loader finds it.
// Copied beside it and renamed over it: a process that has the old addon loaded keeps its (mapped)
// file, where overwriting it in place would crash that process with SIGBUS.
const dest = join(root, binaryName(localSuffix()))
copyFileSync(built, `${dest}.partial`)
renameSync(`${dest}.partial`, dest)
