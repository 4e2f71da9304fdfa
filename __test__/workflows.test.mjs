// The GitHub workflows stay valid: each one against GitHub's workflow schema (action-validator), every
// `needs` names a job of its file, and the release workflow tests every target of platforms.json.
import test from 'ava'
import { validateWorkflow } from '@action-validator/core'
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { root } from './helpers.mjs'

const dir = join(root, '.github', 'workflows')
const workflows = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f))

test('every workflow passes the GitHub workflow schema', (t) => {
  t.true(workflows.length > 0)
  for (const file of workflows) {
    const { errors } = validateWorkflow(readFileSync(join(dir, file), 'utf8'))
    t.deepEqual(errors, [], file)
  }
})

test('the validator refuses a broken workflow (so the check above can fail)', (t) => {
  const broken = 'name: x\non: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo hi\n        bad: 1\n'
  t.true(validateWorkflow(broken).errors.length > 0)
})

test('needs name jobs of the same workflow', (t) => {
  for (const file of workflows) {
    const text = readFileSync(join(dir, file), 'utf8')
    const jobs = new Set([...text.split(/^jobs:$/m)[1].matchAll(/^ {2}([\w-]+):$/gm)].map((m) => m[1]))
    for (const [, need] of text.matchAll(/^\s+needs: ([\w-]+)$/gm)) t.true(jobs.has(need), `${file}: needs ${need}`)
  }
})

test('the release workflow runs every prebuilt target on its own OS', (t) => {
  const text = readFileSync(join(dir, 'release.yml'), 'utf8')
  const { platforms } = JSON.parse(readFileSync(join(root, 'platforms.json'), 'utf8'))
  const tested = [...text.matchAll(/- \{ suffix: ([\w-]+),/g)].map((m) => m[1])
  t.deepEqual(tested.sort(), platforms.map((p) => p.suffix).sort())
})

test('macOS binaries are built on macOS (Metal needs Apple SDK), the rest cross-built on Linux', (t) => {
  const text = readFileSync(join(dir, 'release.yml'), 'utf8')
  const { platforms } = JSON.parse(readFileSync(join(root, 'platforms.json'), 'utf8'))
  for (const p of platforms) t.is(p.buildOn !== undefined, p.os === 'darwin', p.suffix)
  for (const p of platforms.filter((q) => q.buildOn)) t.regex(p.buildOn, /^macos-\d+$/, p.suffix)
  // The build job takes each target's runner from that list, and zig only where it cross-builds.
  const build = text.split(/^ {2}build:$/m)[1].split(/^ {2}\w+:$/m)[0]
  t.regex(build, /runs-on: \$\{\{ matrix\.target\.runner \}\}/)
  t.regex(build, /zigbuild[^\n]*\n\s+if: runner\.os == 'Linux'/)
  // The Metal GPU tests run on the Apple-silicon runner and may not skip there.
  t.regex(text, /suffix: darwin-arm64, runner: macos-14, gpu: __test__\/gpu\.test\.mjs, requireGpu: '1'/)
})

test('prebuilt.mjs refuses to cross-build a macOS binary (it would fail to link Metal late)', (t) => {
  if (process.platform === 'darwin') return t.pass()
  const r = spawnSync(process.execPath, [join(root, 'scripts', 'prebuilt.mjs'), 'build', 'darwin-arm64'], { encoding: 'utf8' })
  t.is(r.status, 1)
  t.regex(r.stderr, /darwin-arm64 links darwin's GPU framework, which needs its SDK: build it on darwin \(the release workflow uses macos-14\)/)
})
