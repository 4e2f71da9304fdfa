// The CLI, run as a user would.
import test from 'ava'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { root } from './helpers.mjs'

const run = (...args) => promisify(execFile)(process.execPath, [join(root, 'bin', 'nano-qwen3-serving.cjs'), ...args])

test('--help lists the commands', async (t) => {
  const { stdout } = await run('--help')
  for (const c of ['generate', 'chat', 'bench', 'info', 'quantize']) t.true(stdout.includes(`nano-qwen3-serving ${c}`), c)
})

test('generate streams text from the embedded model', async (t) => {
  const { stdout, stderr } = await run('generate', '--max-tokens', '8', '--temperature', '0', '--ignore-eos', 'Hello, my dog is cute')
  t.true(stdout.trim().length > 0)
  t.regex(stderr, /random weights/)
  t.regex(stderr, /\[length\] 8 tokens/)
})

test('chat, info and bench run', async (t) => {
  const chat = await run('chat', '--max-tokens', '4', '--no-think', 'Hi')
  t.true(chat.stdout.length > 0)
  const info = JSON.parse((await run('info', '--quantization', 'bf16')).stdout)
  t.is(info.quantization.mode, 'bf16')
  t.true(info.quantization.tensors.some((c) => c.class === 'qkv_proj (fused q/k/v)' && c.format === 'bf16'))
  const bench = JSON.parse((await run('bench', '--iterations', '1', '--decode-tokens', '4')).stdout)
  t.true(bench.decodeTokensPerSecond.avg > 0)
})

test('quantize writes a GGUF file', async (t) => {
  const out = join(mkdtempSync(join(tmpdir(), 'nq3-cli-')), 'tiny-q8.gguf')
  const { stderr } = await run('quantize', '--quantization', 'dynamic_int8', '-o', out)
  t.regex(stderr, /wrote .*tiny-q8\.gguf .* q8_0 weights/)
  t.is(readFileSync(out).subarray(0, 4).toString(), 'GGUF')
})

test('bad options fail with a clear message', async (t) => {
  const e = await t.throwsAsync(run('generate', '--quantization', 'int9', 'x'))
  t.regex(e.stderr, /quantization = "int9"/)
  t.is(e.code, 1)
})
