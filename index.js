// The native addon's loader (hand-written: napi-rs's generated one names packages we don't publish and
// ends in an error that says nothing about the platform). Order:
//   1. NANO_QWEN3_NATIVE_PATH, when set (a binary built elsewhere);
//   2. a source build in this folder (nano-qwen3-serving.<suffix>.node): it exists only when this
//      package was built from source, on purpose or because no prebuilt binary fits (on a platform
//      with no prebuilt target, <suffix> is the bare platform, e.g. freebsd-x64);
//   3. the prebuilt platform package nano-qwen3-serving-<suffix> (an optional dependency, so npm
//      installs only the one whose os / cpu / libc match);
// else an error that names the platform, what was tried and what to do.
// Paths are relative to this file, never to process.execPath (Electron's is not node).
'use strict'

const { existsSync } = require('node:fs')
const { join } = require('node:path')
const { platforms, currentPlatform, describePlatform, packageName, binaryName, localSuffix } = require('./platform.cjs')
const { version } = require('./package.json')

function load() {
  const tried = []
  const attempt = (what, fn) => {
    try {
      return fn()
    } catch (e) {
      tried.push(`${what}: ${e.message.split('\n')[0]}`)
      return undefined
    }
  }
  if (process.env.NANO_QWEN3_NATIVE_PATH) {
    const path = process.env.NANO_QWEN3_NATIVE_PATH
    const binding = attempt(`NANO_QWEN3_NATIVE_PATH=${path}`, () => require(path))
    if (binding) return binding
  }
  const local = join(__dirname, binaryName(localSuffix()))
  if (existsSync(local)) {
    const binding = attempt(local, () => require(local))
    if (binding) return binding
  } else tried.push(`${local}: no source build`)
  const platform = currentPlatform()
  if (platform) {
    const pkg = packageName(platform)
    const binding = attempt(pkg, () => {
      const found = require(`${pkg}/package.json`).version
      if (found !== version) throw new Error(`version ${found} installed, ${version} needed (reinstall the package)`)
      return require(pkg)
    })
    if (binding) return binding
  }
  const supported = platforms.map((p) => p.suffix).join(', ')
  const advice = platform
    ? `Reinstall with optional dependencies enabled (npm install --include=optional; a lockfile made on another ` +
      `platform can leave ${packageName(platform)} out), or build from source with Rust ` +
      `(https://rustup.rs): NANO_QWEN3_BUILD_FROM_SOURCE=1 npm rebuild nano-qwen3-serving`
    : `No prebuilt binary exists for it (prebuilt: ${supported}). Build from source with Rust ` +
      `(https://rustup.rs): NANO_QWEN3_BUILD_FROM_SOURCE=1 npm rebuild nano-qwen3-serving`
  throw new Error(
    `nano-qwen3-serving: no native addon could be loaded for ${describePlatform()}. ${advice}.` +
      (tried.length ? `\nTried:\n  ${tried.join('\n  ')}` : ''),
  )
}

const nativeBinding = load()
module.exports = nativeBinding
module.exports.NativeEngine = nativeBinding.NativeEngine
module.exports.loadEngine = nativeBinding.loadEngine
module.exports.optionValues = nativeBinding.optionValues
module.exports.planAcceleration = nativeBinding.planAcceleration
