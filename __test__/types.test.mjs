import test from 'ava'
import { execFileSync } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')

// The result types come from the binding's Rust structs through index.d.ts; this compiles a file
// that uses them, with @ts-expect-error lines that stop compiling if a type decays to `any`.
test('the published result types are real types, not any', (t) => {
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
  const args = ['--noEmit', '--strict', '--skipLibCheck', '--module', 'esnext', '--moduleResolution', 'bundler', '--target', 'es2022', '--types', 'node', join(root, '__test__', 'types', 'results.ts')]
  try {
    execFileSync(process.execPath, [tsc, ...args], { cwd: root, encoding: 'utf8' })
    t.pass()
  } catch (e) {
    t.fail(`tsc: ${e.stdout}${e.stderr}`)
  }
})
