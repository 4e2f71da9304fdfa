#!/usr/bin/env node
// `npm run mutants [-- SCOPE...]`: mutation testing of the files where rules live, with
// cargo-mutants for Rust and StrykerJS for TypeScript (both installed on first use). Each mutant
// (an operator flipped, a return value replaced, ...) is built and the scope's tests run; a mutant
// they do not catch is a rule no test pins. Slow (a build or a test run per mutant), so not part of
// `npm test`.
// Writes target/mutants/<scope>/ (cargo-mutants' own output) and target/mutants/report.md: per
// scope, caught / missed / timeout / unviable and the score (caught + timeout) / viable (a mutant
// that hangs the tests counts as caught),
// then every missed mutant.
//   npm run mutants                      every scope
//   npm run mutants -- sampler stop      chosen scopes
//   MUTANTS_JOBS=2                       parallel builds (each needs its own copy of the tree)
//   MUTANTS_TIMEOUT=300                  seconds before a mutant's test run counts as a timeout
//   MUTANTS_IN_PLACE=1                   mutate this tree and reuse target/ (no copy and no cold build
//                                        of the dependencies; leave the tree alone while it runs)
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')

/** Where the rules live (the list), and the tests that pin them. */
const SCOPES = {
  // TypeScript: Stryker instruments every mutant at once, tsup builds dist/ once, and each run
  // switches one mutant on (the tests import dist/).
  'ts-chat': { stryker: ['src/chat.ts'], tests: ['__test__/chat.test.mjs', '__test__/errors.test.mjs'] }, // errors: the chat input schema
  'ts-options': {
    stryker: ['src/params.ts', 'src/acceleration.ts', 'src/validation.ts'],
    tests: ['__test__/params.test.mjs', '__test__/errors.test.mjs'],
  },
  sampler: { pkg: 'nano-qwen3-engine', files: ['crates/engine/src/serve/sampler.rs'], tests: ['--lib'] },
  stop: { pkg: 'nano-qwen3-engine', files: ['crates/engine/src/serve/request.rs'], tests: ['--lib'] },
  kv: { pkg: 'nano-qwen3-engine', files: ['crates/engine/src/model/kv_pool.rs'], tests: ['--lib'] },
  attention: { pkg: 'nano-qwen3-kernels', files: ['crates/kernels/src/attention/mod.rs'], tests: ['--lib'] },
  quantizers: { pkg: 'nano-qwen3-kernels', files: ['crates/kernels/src/q8/mod.rs', 'crates/kernels/src/q4/mod.rs'], tests: ['--lib'] },
  gguf: { pkg: 'nano-qwen3-engine', files: ['crates/engine/src/source/gguf_meta.rs', 'crates/engine/src/source/gguf_export.rs'], tests: ['--test=gguf_import', '--test=qwen2'] },
  config: { pkg: 'nano-qwen3-engine', files: ['crates/engine/src/model/config.rs'], tests: ['--lib'] },
}

const wanted = process.argv.slice(2)
for (const s of wanted) if (!(s in SCOPES)) throw new Error(`unknown scope ${s}: one of ${Object.keys(SCOPES).join(', ')}`)
const scopes = wanted.length ? wanted : Object.keys(SCOPES)

const STRYKER = '@stryker-mutator/core@9.5.1'
if (scopes.some((s) => !SCOPES[s].stryker)) {
  const hasMutants = spawnSync('cargo', ['mutants', '--version'], { stdio: 'ignore' }).status === 0
  if (!hasMutants) {
    console.error('installing cargo-mutants (once)...')
    execFileSync('cargo', ['install', 'cargo-mutants', '--locked'], { stdio: 'inherit' })
  }
}

/** Stryker in its own folder under target/ (with the TypeScript its tsconfig step imports), once. */
function strykerBin() {
  const prefix = join(root, 'target', 'stryker-tool')
  const bin = join(prefix, 'node_modules', '@stryker-mutator', 'core', 'bin', 'stryker.js')
  if (!existsSync(bin)) {
    console.error(`installing ${STRYKER} (once)...`)
    mkdirSync(prefix, { recursive: true })
    execFileSync('npm', ['install', '--prefix', prefix, '--no-audit', '--no-fund', '--no-save', STRYKER, 'typescript@5.9.3'], { stdio: 'inherit' })
  }
  return bin
}

/** One Stryker scope; returns its row. Survivors are listed as file:line mutator (replacement). */
function runStryker(name, { stryker: files, tests }, dir) {
  mkdirSync(dir, { recursive: true })
  const report = join(dir, 'mutation.json')
  const config = {
    testRunner: 'command',
    commandRunner: { command: `npx ava ${tests.join(' ')}` },
    mutate: files,
    // dist/ is what the tests import: built once from the instrumented sources (types are not needed).
    buildCommand: 'npx tsup --silent --no-dts',
    coverageAnalysis: 'off',
    concurrency: 1,
    timeoutMS: 15000, // on top of 1.5x the dry run's time: a mutant that loops forever costs little
    reporters: ['json', 'progress'],
    jsonReporter: { fileName: report },
    tempDirName: join('target', 'stryker-tmp'),
    ignorePatterns: ['target', 'bench', 'deploy', 'examples', '.bench-models', 'fixtures/gguf'],
    cleanTempDir: true,
  }
  const configFile = join(dir, 'stryker.config.json')
  writeFileSync(configFile, JSON.stringify(config, null, 2))
  console.error(`\n== ${name}: stryker run ${configFile}`)
  spawnSync(process.execPath, [strykerBin(), 'run', configFile], { cwd: root, stdio: 'inherit' })
  if (!existsSync(report)) return { name, error: 'no mutation.json (the dry run failed?)' }
  const counts = { Killed: 0, Survived: 0, NoCoverage: 0, Timeout: 0, CompileError: 0, RuntimeError: 0, Ignored: 0 }
  const list = []
  for (const [file, { mutants }] of Object.entries(JSON.parse(readFileSync(report, 'utf8')).files)) {
    for (const m of mutants) {
      counts[m.status] = (counts[m.status] ?? 0) + 1
      if (m.status === 'Survived' || m.status === 'NoCoverage')
        list.push(`${file}:${m.location.start.line} ${m.mutatorName}: ${JSON.stringify(m.replacement ?? '')}`)
    }
  }
  return {
    name,
    caught: counts.Killed,
    missed: counts.Survived + counts.NoCoverage,
    timeout: counts.Timeout,
    unviable: counts.CompileError + counts.RuntimeError,
    list,
  }
}

const out = join(root, 'target', 'mutants')
mkdirSync(out, { recursive: true })
const rows = []
for (const name of scopes) {
  const dir = join(out, name)
  if (SCOPES[name].stryker) {
    rows.push(runStryker(name, SCOPES[name], dir))
    continue
  }
  const { pkg, files, tests } = SCOPES[name]
  const args = ['mutants', '--package', pkg, '--output', dir, '--timeout', process.env.MUTANTS_TIMEOUT ?? '300']
  // In place there is one tree, so one build at a time.
  if (process.env.MUTANTS_IN_PLACE === '1') args.push('--in-place')
  else args.push('--jobs', process.env.MUTANTS_JOBS ?? '1')
  for (const f of files) args.push('--file', f)
  // The test targets go to the build as well as the test run (`--cargo-arg`): otherwise each
  // mutant relinks every test binary and example of the package, minutes per mutant for the engine.
  for (const t of tests) args.push(`--cargo-arg=${t}`)
  console.error(`\n== ${name}: cargo ${args.join(' ')}`)
  // cargo-mutants exits non-zero when mutants are missed: that is a result, not a failure.
  spawnSync('cargo', args, { cwd: root, stdio: 'inherit' })
  const outcomes = join(dir, 'mutants.out', 'outcomes.json')
  if (!existsSync(outcomes)) {
    rows.push({ name, error: 'no outcomes.json (the baseline build or tests failed?)' })
    continue
  }
  const o = JSON.parse(readFileSync(outcomes, 'utf8'))
  const count = (k) => o[k] ?? 0
  const missedFile = join(dir, 'mutants.out', 'missed.txt')
  const missed = existsSync(missedFile) ? readFileSync(missedFile, 'utf8').trim().split('\n').filter(Boolean) : []
  rows.push({ name, caught: count('caught'), missed: count('missed'), timeout: count('timeout'), unviable: count('unviable'), list: missed })
}

const lines = ['# Mutation testing', '', `\`npm run mutants -- ${scopes.join(' ')}\` (${new Date().toISOString()})`, '']
lines.push('| scope | caught | missed | timeout | unviable | score |', '|---|---|---|---|---|---|')
for (const r of rows) {
  if (r.error) {
    lines.push(`| ${r.name} | ${r.error} | | | | |`)
    continue
  }
  const viable = r.caught + r.missed + r.timeout
  lines.push(`| ${r.name} | ${r.caught} | ${r.missed} | ${r.timeout} | ${r.unviable} | ${viable ? ((100 * (r.caught + r.timeout)) / viable).toFixed(1) : '-'}% |`)
}
for (const r of rows.filter((r) => r.list?.length)) lines.push('', `## ${r.name}: missed`, '', ...r.list.map((m) => `- ${m}`))
writeFileSync(join(out, 'report.md'), lines.join('\n') + '\n')
console.log(lines.join('\n'))
