// The CLI, run as a user would.
import test from 'ava'
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { root } from './helpers.mjs'
import { scratchDir } from './scratch.mjs'

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
  const out = join(scratchDir('nq3-cli-'), 'tiny-q8.gguf')
  const { stderr } = await run('quantize', '--quantization', 'dynamic_int8', '-o', out)
  t.regex(stderr, /wrote .*tiny-q8\.gguf .* q8_0 weights/)
  t.is(readFileSync(out).subarray(0, 4).toString(), 'GGUF')
})

test('bad options fail with a clear message', async (t) => {
  const e = await t.throwsAsync(run('generate', '--quantization', 'int9', 'x'))
  t.regex(e.stderr, /quantization = "int9"/)
  t.is(e.code, 1)
})

test('serve --help lists every serve flag', async (t) => {
  const { stdout } = await run('serve', '--help')
  for (const f of ['--host', '--port', '--api-key', '--served-model-name', '--max-queue', '--grace', '--kv-cache-memory', '--max-batch-tokens', '--max-concurrent-sequences', '--quantization']) {
    t.true(stdout.includes(f), f)
  }
})

test('serve: prints where it listens, answers, and on SIGTERM finishes the request in flight and exits 0', async (t) => {
  const { spawn } = await import('node:child_process')
  const child = spawn(process.execPath, [join(root, 'bin', 'nano-qwen3-serving.cjs'), 'serve', '--port', '0', '--api-key', 'k', '--grace', '20'])
  let stderr = ''
  const url = await new Promise((resolve, reject) => {
    child.stderr.on('data', (d) => {
      stderr += d
      const m = /at (http:\/\/127\.0\.0\.1:\d+\/v1)/.exec(stderr)
      if (m && /KV pool/.test(stderr)) resolve(m[1])
    })
    child.on('exit', () => reject(new Error(stderr)))
  })
  t.regex(stderr, /KV pool: \d+ blocks x 16 tokens/)
  t.regex(stderr, /plan: none weights/)
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)))
  // A streamed request: SIGTERM goes once its first chunk arrived, so it is surely in flight.
  const res = await fetch(`${url}/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer k' },
    body: JSON.stringify({ prompt: 'Hello', max_tokens: 300, ignore_eos: true, temperature: 0, stream: true, stream_options: { include_usage: true } }),
  })
  t.is(res.status, 200)
  let raw = ''
  const decoder = new TextDecoder()
  for await (const bytes of res.body) {
    if (!raw) child.kill('SIGTERM')
    raw += decoder.decode(bytes, { stream: true })
  }
  t.true(raw.endsWith('data: [DONE]\n\n'))
  const events = raw.trim().split('\n\n')
  t.is(JSON.parse(events.at(-2).slice(6)).usage.completion_tokens, 300)
  const answered = Date.now()
  t.is(await exited, 0)
  // Not held open by the client's idle keep-alive connection (72 s).
  t.true(Date.now() - answered < 10_000, `exited ${Date.now() - answered} ms after the answer`)
  t.regex(stderr, /shutting down/)
})
