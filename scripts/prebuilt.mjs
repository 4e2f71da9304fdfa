#!/usr/bin/env node
// The prebuilt platform packages (npm run build:prebuilt), from one list: platforms.json.
//
//   node scripts/prebuilt.mjs build [suffix...]   cross-build each target (cargo-zigbuild; release, stripped)
//                                                 and stage it in npm/<suffix>/
//   node scripts/prebuilt.mjs stage <suffix> --binary <file>
//                                                 stage a binary built elsewhere (tests stage the dev build)
//   node scripts/prebuilt.mjs check [suffix...]   what can be checked without running a binary: format and
//                                                 architecture, the napi_register_module_v1 export, the
//                                                 libraries it needs (only ones every target machine has),
//                                                 the oldest glibc, the size
//   node scripts/prebuilt.mjs pack [suffix...] [--out dir]
//                                                 npm pack each staged package, and the main package with
//                                                 every platform package in optionalDependencies
//   --into <dir> (any command): stage in <dir>/<suffix>/ instead of npm/<suffix>/
//
// Needs for `build`: rustup, cargo-zigbuild (cargo install --locked cargo-zigbuild) and zig
// (pip install ziglang); for `check`: rustup's llvm-tools component. No `-C target-cpu`: the kernels
// choose their instruction set at run time, so one binary per architecture is fast on every CPU.
import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { platforms, packageName, cdylibName, binaryName: binaryFor } = createRequire(import.meta.url)('../platform.cjs')
const mainPackage = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))

const [command, ...rest] = process.argv.slice(2)
const flags = {}
const names = []
for (let i = 0; i < rest.length; i++) {
  if (rest[i].startsWith('--')) flags[rest[i].slice(2)] = rest[++i]
  else names.push(rest[i])
}
const chosen = names.length ? names.map(platformNamed) : platforms

function platformNamed(suffix) {
  const p = platforms.find((q) => q.suffix === suffix)
  if (!p) fail(`unknown target "${suffix}"; known: ${platforms.map((q) => q.suffix).join(', ')}`)
  return p
}

function fail(message) {
  console.error(`prebuilt: ${message}`)
  process.exit(1)
}

const packageDir = (p) => join(flags.into ? resolve(flags.into) : join(root, 'npm'), p.suffix)
const binaryName = (p) => binaryFor(p.suffix)

function build(p) {
  const env = { ...process.env }
  const triple = p.rustTarget.toUpperCase().replaceAll('-', '_')
  // A musl cdylib must link libc dynamically (Rust's musl targets default to a static C runtime,
  // which cannot make a shared library).
  if (p.libc === 'musl') env[`CARGO_TARGET_${triple}_RUSTFLAGS`] = '-C target-feature=-crt-static'
  if (p.macosMin) env.MACOSX_DEPLOYMENT_TARGET = p.macosMin
  if (p.os === 'win32') env.LIBNODE_PATH = windowsNodeStub()
  // A target with `buildOn` links its OS's own SDK (macOS: the Metal framework wgpu uses), which zig
  // does not ship: plain cargo on that OS, never a cross build.
  const native = Boolean(p.buildOn)
  if (native && process.platform !== p.os) {
    fail(`${p.suffix} links ${p.os}'s GPU framework, which needs its SDK: build it on ${p.os} (the release workflow uses ${p.buildOn})`)
  }
  execFileSync('rustup', ['target', 'add', p.rustTarget], { stdio: 'inherit' })
  const args = [native ? 'build' : 'zigbuild', '--locked', '--profile', 'prebuilt', '-p', 'nano-qwen3-node', '--target', native ? p.rustTarget : p.zigTarget]
  console.error(`prebuilt: cargo ${args.join(' ')}`)
  const started = Date.now()
  execFileSync('cargo', args, { cwd: root, env, stdio: 'inherit' })
  console.error(`prebuilt: ${p.suffix} built in ${((Date.now() - started) / 1000).toFixed(0)} s`)
  stage(p, join(root, 'target', p.rustTarget, 'prebuilt', cdylibName(p.os)))
}

/**
 * napi's build script, on a MinGW target, insists on linking a libnode.dll (MSYS2's Node). Ours loads
 * Node-API from the host process instead (`dyn-symbols`, see crates/node/build.rs), so it gets an
 * import library that exports nothing: any Node-API symbol still linked statically fails the link,
 * and the binary imports nothing from a libnode.dll, which the official Node and Electron lack.
 */
function windowsNodeStub() {
  const dir = join(root, 'target', 'windows-libnode-stub')
  mkdirSync(dir, { recursive: true })
  writeFileSync(join(dir, 'libnode.dll'), '') // napi-build checks only that it exists
  writeFileSync(join(dir, 'node.def'), 'LIBRARY libnode.dll\nEXPORTS\n')
  execFileSync('python3', ['-m', 'ziglang', 'dlltool', '-m', 'i386:x86-64', '-d', join(dir, 'node.def'), '-l', join(dir, 'libnode.a')], {
    stdio: 'inherit',
  })
  return dir
}

/** npm/<suffix>/: the binary and a package.json that lets npm install it only where it runs. */
function stage(p, binary) {
  if (!existsSync(binary)) fail(`${binary} does not exist (build it first)`)
  const dir = packageDir(p)
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  copyFileSync(binary, join(dir, binaryName(p)))
  const pkg = {
    name: packageName(p),
    version: mainPackage.version,
    description: `The ${p.suffix} native addon of ${mainPackage.name} (prebuilt; installed by it as an optional dependency)`,
    license: mainPackage.license,
    main: binaryName(p),
    files: [binaryName(p)],
    os: [p.os],
    cpu: [p.cpu],
    ...(p.libc ? { libc: [p.libc] } : {}),
    engines: mainPackage.engines,
  }
  writeFileSync(join(dir, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`)
  console.error(`prebuilt: staged ${dir}`)
}

/** An LLVM tool from rustup's llvm-tools component (reads ELF, Mach-O and PE alike). */
let llvmBin
const tool = (name) => {
  if (!llvmBin) {
    const sysroot = execFileSync('rustc', ['--print', 'sysroot'], { encoding: 'utf8' }).trim()
    const host = execFileSync('rustc', ['-vV'], { encoding: 'utf8' }).match(/host: (\S+)/)[1]
    llvmBin = join(sysroot, 'lib', 'rustlib', host, 'bin')
  }
  const path = join(llvmBin, name)
  if (!existsSync(path)) fail(`${path} is missing: rustup component add llvm-tools`)
  return path
}
const run = (file, args) =>
  execFileSync(file, args, { encoding: 'utf8', maxBuffer: 64 << 20, shell: process.platform === 'win32' && file === 'npm' })

// What each target's machines are sure to have. Anything else a binary needs is a defect.
const allowedLibraries = {
  'linux-glibc': /^(libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libgcc_s\.so\.1|ld-linux-(x86-64|aarch64)\.so\.[12])$/,
  'linux-musl': /^(libc\.so|libc\.musl-(x86_64|aarch64)\.so\.1)$/,
  // macOS: its system libraries, and (wgpu's Metal backend) system frameworks and the ObjC runtime.
  darwin: /^(\/usr\/lib\/(libSystem\.B|libiconv\.2|libcharset\.1|libresolv\.9|libc\+\+\.1|libobjc\.A)\.dylib|\/System\/Library\/Frameworks\/[A-Za-z0-9]+\.framework\/Versions\/[A-Z]\/[A-Za-z0-9]+)$/,
  // Windows: system DLLs; dxgi, user32 and setupapi come with wgpu (DX12 / Vulkan adapter discovery;
  // d3d12.dll and vulkan-1.dll are opened at run time).
  win32:
    /^(kernel32|ntdll|advapi32|bcrypt|bcryptprimitives|userenv|ws2_32|msvcrt|ucrtbase|api-ms-win-[a-z0-9-]+|synchronization|shell32|ole32|oleaut32|secur32|crypt32|dxgi|d3d12|user32|setupapi)\.dll$/i,
}
const expected = {
  'linux-x64': /Format: elf64-x86-64/,
  'linux-arm64': /Format: elf64-(little)?aarch64/,
  'darwin-x64': /Format: Mach-O 64-bit x86-64/,
  'darwin-arm64': /Format: Mach-O (64-bit )?arm64/,
  'win32-x64': /Format: COFF-x86-64/,
}

/** Every check on one binary; returns a row for the report, or throws naming what is wrong. */
function check(p) {
  const file = join(packageDir(p), binaryName(p))
  if (!existsSync(file)) fail(`${file} is missing: run \`node scripts/prebuilt.mjs build ${p.suffix}\``)
  const readobj = tool('llvm-readobj')
  const headers = run(readobj, ['--file-headers', file])
  const want = expected[`${p.os}-${p.cpu}`]
  if (!want.test(headers)) throw new Error(`${p.suffix}: wrong format, expected ${want}:\n${headers.slice(0, 400)}`)
  const sharedLibrary = { linux: /Type: SharedObject/, darwin: /FileType: DynamicLibrary/, win32: /IMAGE_FILE_DLL/ }[p.os]
  if (!sharedLibrary.test(headers)) throw new Error(`${p.suffix}: not a shared library (${sharedLibrary} not in its headers)`)
  let exportsNapi
  let libraries
  let minimum = ''
  if (p.os === 'linux') {
    exportsNapi = /\bnapi_register_module_v1\b/.test(run(tool('llvm-nm'), ['-D', '--defined-only', file]))
    libraries = [...run(readobj, ['--needed-libs', file]).matchAll(/^\s+(\S+\.so\S*)$/gm)].map((m) => m[1])
    const versions = [...run(readobj, ['--version-info', file]).matchAll(/GLIBC_(\d+)\.(\d+)/g)].map((m) => [+m[1], +m[2]])
    if (p.libc === 'glibc') {
      const [major, minor] = versions.reduce((a, b) => (b[0] > a[0] || (b[0] === a[0] && b[1] > a[1]) ? b : a), [0, 0])
      minimum = `glibc ${major}.${minor}`
      if (major > 2 || (major === 2 && minor > 17)) throw new Error(`${p.suffix}: needs ${minimum}, more than the 2.17 floor`)
    } else if (versions.length) throw new Error(`${p.suffix}: a musl binary asks for glibc symbol versions`)
  } else if (p.os === 'darwin') {
    exportsNapi = /\b_napi_register_module_v1\b/.test(run(tool('llvm-nm'), ['--extern-only', '--defined-only', file]))
    // --dylibs-used lists the binary's own install name too (LC_ID_DYLIB): not a dependency.
    const own = run(tool('llvm-objdump'), ['--macho', '--dylib-id', file]).trim().split('\n').pop().trim()
    libraries = [...run(tool('llvm-objdump'), ['--macho', '--dylibs-used', file]).matchAll(/^\s+(\S+) \(compat/gm)]
      .map((m) => m[1])
      .filter((l) => l !== own)
    const minos = run(tool('llvm-objdump'), ['--macho', '--private-headers', file]).match(/\n\s*minos (\d+\.\d+)/)?.[1]
    if (minos !== p.macosMin) throw new Error(`${p.suffix}: built for macOS ${minos}, not ${p.macosMin}`)
    minimum = `macOS ${minos}`
  } else {
    exportsNapi = /\bnapi_register_module_v1\b/.test(run(readobj, ['--coff-exports', file]))
    libraries = [...run(readobj, ['--coff-imports', file]).matchAll(/Name: (\S+\.dll)/gi)].map((m) => m[1])
  }
  if (!exportsNapi) throw new Error(`${p.suffix}: does not export napi_register_module_v1`)
  const allowed = allowedLibraries[p.os === 'linux' ? `linux-${p.libc}` : p.os]
  const foreign = [...new Set(libraries)].filter((l) => !allowed.test(l))
  if (foreign.length) throw new Error(`${p.suffix}: needs libraries its target may lack: ${foreign.join(', ')}`)
  return {
    target: p.suffix,
    format: headers.match(/Format: (.*)/)[1],
    libraries: [...new Set(libraries)].join(' '),
    minimum,
    megabytes: (statSync(file).size / 1e6).toFixed(1),
  }
}

function pack(selected, out) {
  mkdirSync(out, { recursive: true })
  const files = []
  for (const p of selected) {
    if (!existsSync(join(packageDir(p), 'package.json'))) fail(`npm/${p.suffix} is not staged (run build first)`)
    files.push(run('npm', ['pack', '--silent', '--pack-destination', out, packageDir(p)]).trim().split('\n').pop())
  }
  // The main package lists every platform package; npm installs the one matching os / cpu / libc.
  const { prepare, ...scripts } = mainPackage.scripts // prepare builds dist/ in a checkout; a user has it built
  const withOptional = {
    ...mainPackage,
    scripts,
    optionalDependencies: Object.fromEntries(platforms.map((p) => [packageName(p), mainPackage.version])),
  }
  // npm packs the package.json it finds, so it is swapped for the packing; each swap is a rename,
  // so a process reading it meanwhile (the loader reads the version) never sees half a file.
  const file = join(root, 'package.json')
  const swap = (text) => {
    writeFileSync(`${file}.tmp`, text)
    renameSync(`${file}.tmp`, file)
  }
  const original = readFileSync(file, 'utf8')
  try {
    swap(`${JSON.stringify(withOptional, null, 2)}\n`)
    // dist/ is built by `npm run build:ts` (the caller's job); the scripts would rebuild it.
    files.push(run('npm', ['pack', '--silent', '--ignore-scripts', '--pack-destination', out, root]).trim().split('\n').pop())
  } finally {
    swap(original)
  }
  for (const f of files) console.log(`${join(out, f)}\t${(statSync(join(out, f)).size / 1e6).toFixed(1)} MB`)
}

switch (command) {
  case 'build':
    for (const p of chosen) build(p)
    break
  case 'stage':
    if (chosen.length !== 1 || !flags.binary) fail('usage: stage <suffix> --binary <file>')
    stage(chosen[0], resolve(flags.binary))
    break
  case 'check': {
    const rows = []
    let failed = false
    for (const p of chosen) {
      try {
        rows.push(check(p))
      } catch (e) {
        failed = true
        console.error(`prebuilt: ${e.message}`)
      }
    }
    console.table(rows)
    if (failed) process.exit(1)
    break
  }
  case 'pack':
    pack(chosen, resolve(flags.out ?? join(root, 'dist-packages')))
    break
  default:
    fail('usage: prebuilt.mjs build|stage|check|pack [suffix...] (see the comment at the top)')
}
