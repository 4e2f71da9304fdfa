#!/usr/bin/env node
// npm's install hook. Nothing to do when the prebuilt platform package for the target machine is
// installed (the usual case: npm picked it from optionalDependencies by os / cpu / libc). Otherwise,
// or when NANO_QWEN3_BUILD_FROM_SOURCE=1, build the addon from source, which needs Rust (cargo).
// Nothing here is required for a prebuilt install: with install scripts disabled (npm's
// --ignore-scripts, or npm 11 awaiting approval) the loader still finds the platform package.
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(join(root, 'package.json'))
const { currentPlatform, describePlatform, packageName, platforms } = require('./platform.cjs')
const forced = !['', '0', 'false'].includes(process.env.NANO_QWEN3_BUILD_FROM_SOURCE ?? '')
// npm passes --os / --cpu / --libc (an install for another machine) to scripts as npm_config_*.
const target = { os: process.env.npm_config_os, cpu: process.env.npm_config_cpu, libc: process.env.npm_config_libc }
const crossInstall = Boolean(
  (target.os && target.os !== process.platform) || (target.cpu && target.cpu !== process.arch) || target.libc,
)
const platform = currentPlatform(target)
const targetName = crossInstall ? `${target.os || process.platform}-${target.cpu || process.arch}` : describePlatform()

function prebuiltInstalled() {
  if (!platform) return false
  try {
    require.resolve(`${packageName(platform)}/package.json`)
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

function fail(message) {
  console.error(`nano-qwen3-serving: ${message}`)
  process.exit(1)
}

const missing = platform
  ? `the prebuilt package ${packageName(platform)} is not installed (were optional dependencies left out?)`
  : `no prebuilt binary exists for ${targetName} (prebuilt: ${platforms.map((p) => p.suffix).join(', ')})`
if (!forced && prebuiltInstalled()) process.exit(0)
if (crossInstall && platform !== currentPlatform()) {
  fail(`installing for ${targetName} from a ${describePlatform()} machine: ${missing}, and a source build here would make a binary for this machine, not that one.`)
}
if (!cargoPresent()) {
  fail(
    `${forced ? 'NANO_QWEN3_BUILD_FROM_SOURCE is set' : missing}, and building from source needs Rust (cargo), which was not found.\n` +
      'Install Rust from https://rustup.rs and run `npm rebuild nano-qwen3-serving`' +
      (platform && !forced ? ', or reinstall with `npm install --include=optional`.' : '.'),
  )
}
execFileSync(process.execPath, [join(root, 'scripts', 'build-native.mjs')], { stdio: 'inherit' })
