// The prebuilt install, as a user gets it: the main package and this platform's package packed with
// `npm pack`, installed into a fresh folder with no cargo on PATH and no network (npm ci --offline),
// then the CLI, an ESM and a CJS script run the embedded model. The platform package holds this
// checkout's own build (the release binaries come from `npm run build:prebuilt`; the packaging is
// the same).
import test from 'ava'
import { execFile } from 'node:child_process'
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { delimiter, join } from 'node:path'
import { promisify } from 'node:util'
import { root } from './helpers.mjs'
import { scratchDir } from './scratch.mjs'

const exec = promisify(execFile)
const { currentPlatform, packageName, binaryName } = createRequire(import.meta.url)('../platform.cjs')
const platform = currentPlatform()
const localBuild = platform && join(root, binaryName(platform.suffix))
const pathWithoutCargo = process.env.PATH.split(delimiter)
  .filter((dir) => !existsSync(join(dir, 'cargo')) && !existsSync(join(dir, 'cargo.exe')))
  .join(delimiter)
const script = (name, ...args) => exec(process.execPath, [join(root, 'scripts', name), ...args], { maxBuffer: 16 << 20 })

const prompt = 'Hello, my dog is cute'
const esm = `import { ModelRunner, defaultModelDir } from 'nano-qwen3-serving'
const runner = await ModelRunner.load({ modelName: defaultModelDir() })
const r = await runner.generate(${JSON.stringify(prompt)}, { maxTokens: 8, temperature: 0, ignoreEos: true })
console.log(JSON.stringify(r.tokenIds))
await runner.dispose()
`
const cjs = `const { ModelRunner, defaultModelDir } = require('nano-qwen3-serving')
ModelRunner.load({ modelName: defaultModelDir() }).then(async (runner) => {
  const r = await runner.generate(${JSON.stringify(prompt)}, { maxTokens: 8, temperature: 0, ignoreEos: true })
  console.log(JSON.stringify(r.tokenIds))
  await runner.dispose()
})
`

const maybe = platform && existsSync(localBuild) ? test : test.skip
maybe('packed tarballs install offline without cargo, and the CLI, ESM and CJS run the embedded model', async (t) => {
  const work = scratchDir('nq3-install-')
  const into = join(work, 'npm')
  const out = join(work, 'tarballs')
  await script('prebuilt.mjs', 'stage', platform.suffix, '--binary', localBuild, '--into', into)
  await script('prebuilt.mjs', 'pack', platform.suffix, '--into', into, '--out', out)
  const tarballs = readdirSync(out)
  const mainTgz = join(out, tarballs.find((f) => /^nano-qwen3-serving-\d/.test(f)))
  const platformTgz = join(out, tarballs.find((f) => f.startsWith(`${packageName(platform)}-`)))

  const app = join(work, 'app')
  const installed = await script('install-offline.mjs', app, mainTgz, platformTgz)
  t.log(installed.stdout.trim())
  const pkgDir = join(app, 'node_modules', 'nano-qwen3-serving')
  // The binary came from the platform package: the install script built nothing.
  t.true(existsSync(join(app, 'node_modules', packageName(platform), binaryName(platform.suffix))))
  t.deepEqual(readdirSync(pkgDir).filter((f) => f.endsWith('.node') || f === 'target'), [])

  const env = { ...process.env, PATH: pathWithoutCargo }
  const cli = await exec('npx', ['--offline', 'nano-qwen3-serving', 'generate', '--max-tokens', '8', 'Hello'], {
    cwd: app,
    env,
    shell: process.platform === 'win32', // npx is npx.cmd there
  })
  t.true(cli.stdout.trim().length > 0)
  t.regex(cli.stderr, /\[length\] 8 tokens/)

  writeFileSync(join(app, 'run.mjs'), esm)
  writeFileSync(join(app, 'run.cjs'), cjs)
  const fromEsm = JSON.parse((await exec(process.execPath, ['run.mjs'], { cwd: app, env })).stdout)
  const fromCjs = JSON.parse((await exec(process.execPath, ['run.cjs'], { cwd: app, env })).stdout)
  // The same greedy tokens as this checkout gives: same model, same engine.
  const { ModelRunner, defaultModelDir } = await import('../dist/index.mjs')
  const here = await ModelRunner.load({ modelName: defaultModelDir() })
  const expected = (await here.generate(prompt, { maxTokens: 8, temperature: 0, ignoreEos: true })).tokenIds
  await here.dispose()
  t.is(expected.length, 8)
  t.deepEqual(fromEsm, expected)
  t.deepEqual(fromCjs, expected)

  // The install hook: nothing to do with the prebuilt present; a forced source build, or a cross
  // install whose package is missing, is refused with the reason (there is no cargo here).
  const hook = (extra) =>
    exec(process.execPath, [join(pkgDir, 'scripts', 'install.mjs')], { cwd: pkgDir, env: { ...env, ...extra } }).then(
      () => ({ code: 0, stderr: '' }),
      (e) => ({ code: e.code, stderr: e.stderr }),
    )
  t.deepEqual(await hook({}), { code: 0, stderr: '' })
  const forced = await hook({ NANO_QWEN3_BUILD_FROM_SOURCE: '1' })
  t.is(forced.code, 1)
  t.regex(forced.stderr, /NANO_QWEN3_BUILD_FROM_SOURCE is set, and building from source needs Rust \(cargo\)/)
  const otherCpu = process.arch === 'arm64' ? 'x64' : 'arm64'
  const cross = await hook({ npm_config_cpu: otherCpu })
  t.is(cross.code, 1)
  t.regex(cross.stderr, new RegExp(`installing for ${process.platform}-${otherCpu} from a ${process.platform}-${process.arch}.*not that one`))

  // Without the platform package the loader says which platform it is and what to do.
  rmSync(join(app, 'node_modules', packageName(platform)), { recursive: true })
  const missingHook = await hook({})
  t.is(missingHook.code, 1)
  t.regex(missingHook.stderr, new RegExp(`${packageName(platform)} is not installed \\(were optional dependencies left out\\?\\)`))
  const missing = await t.throwsAsync(exec(process.execPath, ['run.cjs'], { cwd: app, env }))
  t.regex(missing.stderr, new RegExp(`no native addon could be loaded for ${process.platform}-${process.arch}`))
  t.regex(missing.stderr, new RegExp(`--include=optional.*${packageName(platform)}`))
})

test('on a platform with no prebuilt target, a source build goes by the bare platform name', async (t) => {
  const probe =
    "Object.defineProperty(process, 'arch', { value: 'riscv64' }); const p = require('./platform.cjs');" +
    'console.log(JSON.stringify([p.currentPlatform() ?? null, p.binaryName(p.localSuffix())]))'
  const { stdout } = await exec(process.execPath, ['-e', probe], { cwd: root })
  t.deepEqual(JSON.parse(stdout), [null, `nano-qwen3-serving.${process.platform}-riscv64.node`])
})
