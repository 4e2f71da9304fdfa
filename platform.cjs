// Which prebuilt target this process can load: shared by the loader (index.js), the install script
// and the source build, so the platform names live in one list (platforms.json).
'use strict'

const { readFileSync } = require('node:fs')
const { platforms } = require('./platforms.json')

/** 'glibc' or 'musl' on Linux, undefined elsewhere. */
function libc() {
  if (process.platform !== 'linux') return undefined
  const report = typeof process.report?.getReport === 'function' ? process.report.getReport() : null
  if (report?.header?.glibcVersionRuntime) return 'glibc'
  if (Array.isArray(report?.sharedObjects) && report.sharedObjects.some((f) => /ld-musl-|libc\.musl-/.test(f)))
    return 'musl'
  try {
    return readFileSync('/usr/bin/ldd', 'utf8').includes('musl') ? 'musl' : 'glibc'
  } catch {
    return 'glibc'
  }
}

/**
 * The entry of platforms.json this process matches, or undefined when there is none. `target`
 * overrides what to match (the install script passes npm's --os / --cpu / --libc, which install
 * for another machine, e.g. an arm64 Docker image or Electron build made on an x64 host).
 */
function currentPlatform(target = {}) {
  const os = target.os || process.platform
  const cpu = target.cpu || process.arch
  const c = target.libc || (os === process.platform ? libc() : os === 'linux' ? 'glibc' : undefined)
  return platforms.find((p) => p.os === os && p.cpu === cpu && p.libc === c)
}

/** The platform package's name: npm installs the one whose os / cpu / libc match. */
const packageName = (p) => `nano-qwen3-serving-${p.suffix}`

/** The addon's file name, in a platform package or as a source build in the main package. */
const binaryName = (suffix) => `nano-qwen3-serving.${suffix}.node`

/** What cargo calls the addon on each OS. */
const cdylibName = (os) =>
  ({ darwin: 'libnano_qwen3_node.dylib', win32: 'nano_qwen3_node.dll' })[os] ?? 'libnano_qwen3_node.so'

/**
 * The name a source build here goes by: the prebuilt target it stands in for, or, on a platform
 * without one (FreeBSD, ...), the bare platform, so a source build works there too.
 */
const localSuffix = () => currentPlatform()?.suffix ?? `${process.platform}-${process.arch}`

/** e.g. "linux-x64 (glibc)", for messages. */
function describePlatform() {
  const c = libc()
  return `${process.platform}-${process.arch}${c ? ` (${c})` : ''}`
}

module.exports = { platforms, currentPlatform, describePlatform, packageName, binaryName, cdylibName, localSuffix }
