#!/usr/bin/env node
// npm's install hook. Nothing to do when the prebuilt platform package for this machine is installed
// (the usual case: npm picked it from optionalDependencies by os / cpu / libc). Otherwise, or when
// NANO_QWEN3_BUILD_FROM_SOURCE=1, build the addon from source, which needs Rust (cargo).
// Nothing here is required for a prebuilt install: with install scripts disabled (npm's
// --ignore-scripts, or npm 11 awaiting approval) the loader still finds the platform package.
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(join(root, 'package.json'))
const { currentPlatform, describePlatform, platforms } = require('./platform.cjs')
const forced = !['', '0', 'false'].includes(process.env.NANO_QWEN3_BUILD_FROM_SOURCE ?? '')
// npm passes --os / --cpu / --libc (installs for another machine) to scripts as npm_config_*.
const target = { os: process.env.npm_config_os, cpu: process.env.npm_config_cpu, libc: process.env.npm_config_libc }
const platform = currentPlatform(target)

function prebuiltInstalled() {
  if (!platform) return false
  try {
    require.resolve(`nano-qwen3-serving-${platform.suffix}/package.json`)
    return true
  } catch {
    return false
  }
}

function cargoPresent() {
  try {
    execFileSync('cargo', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

if (!forced && prebuiltInstalled()) process.exit(0)
if (platform && platform !== currentPlatform()) {
  console.error(
    `nano-qwen3-serving: installing for ${platform.suffix} from a ${describePlatform()} machine, and ` +
      `nano-qwen3-serving-${platform.suffix} is not installed; a source build here would make a binary for this machine, not that one.`,
  )
  process.exit(1)
}
if (!cargoPresent()) {
  const why = forced
    ? 'NANO_QWEN3_BUILD_FROM_SOURCE is set'
    : platform
      ? `the prebuilt package nano-qwen3-serving-${platform.suffix} is not installed (were optional dependencies left out?)`
      : `no prebuilt binary exists for ${describePlatform()} (prebuilt: ${platforms.map((p) => p.suffix).join(', ')})`
  console.error(
    `nano-qwen3-serving: ${why}, and building from source needs Rust (cargo), which was not found.\n` +
      'Install Rust from https://rustup.rs and run `npm rebuild nano-qwen3-serving`' +
      (platform && !forced ? ', or reinstall with `npm install --include=optional`.' : '.'),
  )
  process.exit(1)
}
execFileSync(process.execPath, [join(root, 'scripts', 'build-native.mjs')], { stdio: 'inherit' })
