#!/usr/bin/env node
// `npm run mutants [-- SCOPE...]`: mutation testing of the files where rules live, with
// cargo-mutants (installed on first use). Each mutant (an operator flipped, a return value
// replaced, ...) is built and the scope's unit tests run; a mutant they do not catch is a rule no
// test pins. Slow (a build per mutant), so not part of `npm test`.
// Writes target/mutants/<scope>/ (cargo-mutants' own output) and target/mutants/report.md: per
// scope, caught / missed / timeout / unviable and the score (caught + timeout) / viable (a mutant
// that hangs the tests counts as caught),
// then every missed mutant.
//   npm run mutants                      every scope
//   npm run mutants -- sampler stop      chosen scopes
//   MUTANTS_JOBS=2                       parallel builds (each needs its own copy of the tree)
//   MUTANTS_IN_PLACE=1                   mutate this tree and reuse target/ (no copy and no cold build
//                                        of the dependencies; leave the tree alone while it runs)
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')

/** Where the rules live (the list), and the unit tests that pin them. */
const SCOPES = {
  sampler: { pkg: 'nano-qwen3-engine', files: ['crates/engine/src/serve/sampler.rs'], tests: ['--lib'] },
  stop: { pkg: 'nano-qwen3-engine', files: ['crates/engine/src/serve/request.rs'], tests: ['--lib'] },
  kv: { pkg: 'nano-qwen3-engine', files: ['crates/engine/src/model/kv_pool.rs'], tests: ['--lib'] },
  quantizers: { pkg: 'nano-qwen3-kernels', files: ['crates/kernels/src/q8/mod.rs', 'crates/kernels/src/q4/mod.rs'], tests: ['--lib'] },
  gguf: { pkg: 'nano-qwen3-engine', files: ['crates/engine/src/source/gguf_meta.rs', 'crates/engine/src/source/gguf_export.rs'], tests: ['--test', 'gguf_import'] },
  config: { pkg: 'nano-qwen3-engine', files: ['crates/engine/src/model/config.rs'], tests: ['--lib', '--test', 'fixture'] },
}

const wanted = process.argv.slice(2)
for (const s of wanted) if (!(s in SCOPES)) throw new Error(`unknown scope ${s}: one of ${Object.keys(SCOPES).join(', ')}`)
const scopes = wanted.length ? wanted : Object.keys(SCOPES)

const hasMutants = spawnSync('cargo', ['mutants', '--version'], { stdio: 'ignore' }).status === 0
if (!hasMutants) {
  console.error('installing cargo-mutants (once)...')
  execFileSync('cargo', ['install', 'cargo-mutants', '--locked'], { stdio: 'inherit' })
}

const out = join(root, 'target', 'mutants')
mkdirSync(out, { recursive: true })
const rows = []
for (const name of scopes) {
  const { pkg, files, tests } = SCOPES[name]
  const dir = join(out, name)
  const args = ['mutants', '--package', pkg, '--output', dir, '--timeout', '300']
  // In place there is one tree, so one build at a time.
  if (process.env.MUTANTS_IN_PLACE === '1') args.push('--in-place')
  else args.push('--jobs', process.env.MUTANTS_JOBS ?? '1')
  for (const f of files) args.push('--file', f)
  args.push('--', ...tests)
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
