#!/usr/bin/env node
// Installs packed tarballs into a fresh app folder the way a user's project with a lockfile would,
// with no network (npm --offline: every other package comes from npm's cache) and no cargo on PATH,
// and prints the seconds `npm ci` took. Used by the install test, scripts/test-prebuilt-arm64.sh and
// the README's install figure.
//
//   node scripts/install-offline.mjs <app dir> <main .tgz> <platform .tgz>
//
// The lockfile carries the main package's dependency tree from this repo's package-lock.json (so
// npm needs only tarballs it already has) and the other platform packages as optional entries for
// other os / cpu, which npm skips without fetching, as it does in a real cross-platform lockfile.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { basename, delimiter, dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const [appArg, mainArg, platformArg] = process.argv.slice(2)
if (!platformArg) {
  console.error('usage: install-offline.mjs <app dir> <main .tgz> <platform .tgz>')
  process.exit(1)
}
const app = resolve(appArg)
mkdirSync(app, { recursive: true })
const main = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const { platforms, packageName } = createRequire(import.meta.url)('../platform.cjs')
const platform = platforms.find((p) => basename(platformArg) === `${packageName(p)}-${main.version}.tgz`)
if (!platform) throw new Error(`${platformArg}: not a platform package tarball of version ${main.version}`)

const spec = (file) => `file:${relative(app, resolve(file))}`
const platformEntry = (p, resolved) => ({
  version: main.version,
  resolved,
  optional: true,
  os: [p.os],
  cpu: [p.cpu],
  ...(p.libc ? { libc: [p.libc] } : {}),
})
const repoLock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8')).packages
const runtimeTree = Object.fromEntries(
  Object.entries(repoLock).filter(([key, entry]) => key.startsWith('node_modules/') && !entry.dev && !entry.devOptional),
)
const name = main.name
const optionalDependencies = Object.fromEntries(platforms.map((p) => [packageName(p), main.version]))
// The app depends on the main package only, as a user's does; the platform package comes in as its
// optional dependency, here resolved to the local tarball.
const dependencies = { [name]: spec(mainArg) }
const lock = {
  name: 'app',
  lockfileVersion: 3,
  requires: true,
  packages: {
    '': { name: 'app', dependencies },
    [`node_modules/${name}`]: {
      version: main.version,
      resolved: spec(mainArg),
      hasInstallScript: true,
      license: main.license,
      dependencies: main.dependencies,
      optionalDependencies,
      bin: main.bin,
      engines: main.engines,
    },
    ...Object.fromEntries(
      platforms.map((p) => [
        `node_modules/${packageName(p)}`,
        platformEntry(
          p,
          p === platform
            ? spec(platformArg)
            : `https://registry.npmjs.org/${packageName(p)}/-/${packageName(p)}-${main.version}.tgz`,
        ),
      ]),
    ),
    ...runtimeTree,
  },
}
writeFileSync(join(app, 'package.json'), `${JSON.stringify({ name: 'app', private: true, dependencies }, null, 2)}\n`)
writeFileSync(join(app, 'package-lock.json'), `${JSON.stringify(lock, null, 2)}\n`)

// No cargo: a source build would fail, so a finished install proves the prebuilt binary was used.
const path = process.env.PATH.split(delimiter)
  .filter((dir) => !existsSync(join(dir, 'cargo')) && !existsSync(join(dir, 'cargo.exe')))
  .join(delimiter)
const started = process.hrtime.bigint()
// --os / --cpu / --libc: the platform package's target, which may not be this machine's (the arm64
// package is installed here and run under QEMU).
const targetFlags = [`--os=${platform.os}`, `--cpu=${platform.cpu}`, ...(platform.libc ? [`--libc=${platform.libc}`] : [])]
execFileSync('npm', ['ci', '--offline', '--no-audit', '--no-fund', '--foreground-scripts', ...targetFlags], {
  cwd: app,
  env: { ...process.env, PATH: path, CARGO: '', RUSTUP_HOME: '/nonexistent' },
  stdio: ['ignore', 'inherit', 'inherit'],
  shell: process.platform === 'win32', // npm is npm.cmd there
})
console.log(`installed in ${(Number(process.hrtime.bigint() - started) / 1e9).toFixed(1)} s`)
