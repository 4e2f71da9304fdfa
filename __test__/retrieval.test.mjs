// Embeddings and reranking through ModelRunner and the HTTP server, against the references of a
// numpy Qwen3 written apart from the engine (scripts/test-data/qwen3_numpy.py): f32 within 1e-4,
// every quantization mode within the bound its generation path meets; a text's embedding alone
// equals it in a batch of 32 and beside generation; the official openai client round-trips.
import test from 'ava'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { getLlama } from 'node-llama-cpp'
import OpenAI from 'openai'
import { createServer, ModelRunner } from '../dist/index.mjs'
import { fixtureDir, relL2, root } from './helpers.mjs'
import { scratchDir } from './scratch.mjs'

const embDir = join(root, 'fixtures', 'qwen3-embedding-tiny')
const embRef = JSON.parse(readFileSync(join(embDir, 'reference.json'), 'utf8'))
const rerankRef = JSON.parse(readFileSync(join(fixtureDir, 'rerank-reference.json'), 'utf8'))

/** max |a - b| / max |b|; NaN never passes. */
function maxRel(a, b) {
  if (a.length !== b.length) return Infinity
  let err = 0
  let scale = 0
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i])
    if (Number.isNaN(d)) return Infinity
    err = Math.max(err, d)
    scale = Math.max(scale, Math.abs(b[i]))
  }
  return err / scale
}

const byInstruction = (inst) => rerankRef.cases.filter((c) => c.instruction === inst)

async function embedAll(runner) {
  const out = []
  for (const c of embRef.cases) out.push((await runner.embed([c.text], { instruction: c.instruction ?? undefined }))[0])
  return out
}

test('f32: embeddings within 1e-4 of the reference, Matryoshka dimensions and normalize honoured', async (t) => {
  const runner = await ModelRunner.load({ modelName: embDir, threads: 2 })
  t.is(runner.getRetrievalInfo().kind, 'embedding')
  t.is(runner.getRetrievalInfo().pooling, 'last_token')
  t.regex(runner.getAccelerationInfo().items.find((i) => i.option === 'modelKind').detail, /last-token pooling/)
  const got = await embedAll(runner)
  for (const [i, c] of embRef.cases.entries()) {
    t.true(got[i] instanceof Float32Array)
    t.true(maxRel(got[i], c.embedding) < 1e-4, `case ${i}: ${maxRel(got[i], c.embedding)}`)
  }
  const c = embRef.cases[0]
  const [raw] = await runner.embed(c.text, { normalize: false })
  t.true(maxRel(raw, c.pooled) < 1e-4)
  const [d8] = await runner.embed([c.text], { dimensions: 8 })
  const head = c.pooled.slice(0, 8)
  const n = Math.hypot(...head)
  t.true(maxRel(d8, head.map((x) => x / n)) < 1e-4)
  await t.throwsAsync(runner.embed(['x'], { dimensions: 33 }), { code: 'INVALID_ARGUMENT', message: /dimensions = 33: 1 \.\.= 32/ })
  await t.throwsAsync(runner.embed(['x'], { bogus: 1 }), { code: 'INVALID_ARGUMENT', message: /bogus/ })
  await runner.dispose()
})

test('f32: rerank scores within 1e-4 of the reference, on a causal LM, sorted, topN', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir, threads: 2 })
  t.is(runner.getRetrievalInfo().kind, 'generate')
  for (const inst of [null, 'Given a question, find the passage that answers it']) {
    const results = await runner.rerank(rerankRef.query, rerankRef.documents, { instruction: inst ?? undefined })
    t.deepEqual(results.map((r) => r.score), [...results.map((r) => r.score)].sort((a, b) => b - a))
    for (const r of results) {
      const want = byInstruction(inst).find((c) => c.document_index === r.index).score
      t.true(Math.abs(r.score - want) < 1e-4, `doc ${r.index}: ${r.score} vs ${want}`)
    }
    const top = await runner.rerank(rerankRef.query, rerankRef.documents, { instruction: inst ?? undefined, topN: 2 })
    t.deepEqual(top, results.slice(0, 2))
  }
  await runner.dispose()
})

// The bounds the generation path meets on the same fixtures (fixture.test.mjs, quantization.test.mjs).
const modes = [
  ['fp16', {}, 2e-2],
  ['bf16', {}, 2e-2],
  ['dynamic_int8', {}, 5e-2],
  ['static_int8', {}, 5e-2],
  // Without SmoothQuant as the generation path's int4 test; the default (smoothing on) reaches 0.358 on one query here.
  ['int4', { calibration: { smoothing: 0 } }, 0.35],
]
for (const [quantization, extra, bound] of modes) {
  test(`${quantization}: embeddings and rerank scores within ${bound} (relative L2) of the reference`, async (t) => {
    const acc = { quantization, ...extra }
    const emb = await ModelRunner.load({ modelName: embDir, threads: 2, accelerationConfig: acc, weightCache: false })
    const got = await embedAll(emb)
    for (const [i, c] of embRef.cases.entries()) {
      const err = relL2(got[i], c.embedding)
      t.true(err < bound, `embedding ${i}: relative L2 ${err}`)
    }
    await emb.dispose()
    const lm = await ModelRunner.load({ modelName: fixtureDir, threads: 2, accelerationConfig: acc, weightCache: false })
    const results = await lm.rerank(rerankRef.query, rerankRef.documents)
    const got2 = results.map((r) => r.score)
    const want = results.map((r) => byInstruction(null).find((c) => c.document_index === r.index).score)
    t.true(relL2(got2, want) < bound, `rerank: relative L2 ${relL2(got2, want)}`)
    await lm.dispose()
  })
}

test('an embedding alone equals the same text in a batch of 32 mixed lengths, beside concurrent callers and generation', async (t) => {
  const runner = await ModelRunner.load({ modelName: embDir, threads: 2 })
  const long = embRef.cases.at(-1).text
  const target = 'The capital of France is Paris.'
  const [alone] = await runner.embed([target])
  const batch = Array.from({ length: 32 }, (_, i) => (i === 17 ? target : long.slice(0, 1 + ((i * 131) % long.length))))
  const gens = [0, 1, 2].map((i) => runner.generate(long.slice(0, 80 + 40 * i), { maxTokens: 24, temperature: 0, ignoreEos: true }))
  const [inBatch, ...others] = await Promise.all([
    runner.embed(batch),
    runner.embed([target], {}),
    runner.embed(['another caller', target]),
  ])
  const generated = await Promise.all(gens)
  t.deepEqual(generated.map((g) => g.usage.completionTokens), [24, 24, 24])
  t.deepEqual(inBatch[17], alone)
  t.deepEqual(others[0][0], alone)
  t.deepEqual(others[1][1], alone)
  t.true(runner.getModelInfo().serving.steps > 0)
  await runner.dispose()
})

test('the openai client: embeddings.create round-trips as float and base64; errors are OpenAI 400s with the numbers', async (t) => {
  const runner = await ModelRunner.load({ modelName: embDir, threads: 2, maxSeqLength: 64 })
  const server = await createServer({ runner, port: 0, servedModelName: 'emb' })
  t.teardown(async () => {
    await server.close({ graceMs: 0 })
    await runner.dispose()
  })
  const client = new OpenAI({ baseURL: server.baseURL, apiKey: 'none' })
  const texts = ['The capital of France is Paris.', 'Gravity']
  const want = await runner.embed(texts)
  // Asked for base64 the client hands the string over; left to itself it asks for base64 and decodes.
  const decode = (e) => (typeof e === 'string' ? new Float32Array(new Uint8Array(Buffer.from(e, 'base64')).buffer) : Float32Array.from(e))
  for (const encoding_format of ['float', 'base64', undefined]) {
    const r = await client.embeddings.create({ model: 'emb', input: texts, encoding_format })
    t.is(r.object, 'list')
    t.is(r.data.length, 2)
    t.is(typeof r.data[0].embedding, encoding_format === 'base64' ? 'string' : 'object')
    r.data.forEach((d, i) => {
      t.is(d.index, i)
      t.deepEqual(decode(d.embedding), want[i], `${encoding_format} ${i}`)
    })
    const tokens = texts.reduce((n, x) => n + runner.tokenize(x, { addSpecialTokens: true }).length, 0)
    t.deepEqual(r.usage, { prompt_tokens: tokens, total_tokens: tokens })
  }
  // dimensions, a bare string, token ids (used as they are).
  const small = await client.embeddings.create({ model: 'emb', input: texts[0], dimensions: 8, encoding_format: 'float' })
  t.is(small.data[0].embedding.length, 8)
  const ids = runner.tokenize(texts[0], { addSpecialTokens: true })
  const byIds = await client.embeddings.create({ model: 'emb', input: [ids], encoding_format: 'float' })
  t.deepEqual(Float32Array.from(byIds.data[0].embedding), want[0])

  const post = (body) => fetch(`${server.baseURL}/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const cases = [
    [{ input: [] }, /at least one/],
    [{ input: '' }, /input\[0\].*empty/],
    [{ input: Array(2049).fill('a') }, /2049 inputs: at most 2048/],
    [{ input: ['ok', 'word '.repeat(100)] }, /input\[1\].*\d+ tokens: at most 64 tokens/],
    [{ input: 'ok', dimensions: 64 }, /dimensions = 64: 1 \.\.= 32/],
    [{ input: 'ok', encoding_format: 'int8' }, /encoding_format/],
  ]
  for (const [body, message] of cases) {
    const res = await post(body)
    t.is(res.status, 400, JSON.stringify(body).slice(0, 60))
    const e = (await res.json()).error
    t.regex(e.message, message)
    t.is(e.type, 'invalid_request_error')
  }
  t.is((await post({ model: 'other', input: 'x' })).status, 404)
})

test('/v1/rerank and /v1/score answer in vLLM\'s shape with the reference scores', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir, threads: 2 })
  const server = await createServer({ runner, port: 0, servedModelName: 'rr' })
  t.teardown(async () => {
    await server.close({ graceMs: 0 })
    await runner.dispose()
  })
  const post = async (path, body) => {
    const res = await fetch(`${server.baseURL.replace(/\/v1$/, '')}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    return { status: res.status, body: await res.json() }
  }
  const want = (i) => byInstruction(null).find((c) => c.document_index === i).score
  const { status, body } = await post('/v1/rerank', { model: 'rr', query: rerankRef.query, documents: rerankRef.documents, top_n: 3 })
  t.is(status, 200)
  t.regex(body.id, /^rerank-/)
  t.is(body.model, 'rr')
  t.true(body.usage.total_tokens > 0)
  t.is(body.results.length, 3)
  for (const r of body.results) {
    t.deepEqual(Object.keys(r), ['index', 'document', 'relevance_score'])
    t.is(r.document.text, rerankRef.documents[r.index])
    t.true(Math.abs(r.relevance_score - want(r.index)) < 1e-4)
  }
  t.true(body.results[0].relevance_score >= body.results[1].relevance_score)
  // Jina-style documents as objects, top_n 0 = all.
  const all = await post('/rerank', { query: rerankRef.query, documents: rerankRef.documents.map((text) => ({ text })), top_n: 0 })
  t.is(all.body.results.length, rerankRef.documents.length)

  const score = await post('/v1/score', { model: 'rr', text_1: rerankRef.query, text_2: rerankRef.documents })
  t.is(score.status, 200)
  t.is(score.body.object, 'list')
  t.deepEqual(score.body.data.map((d) => [d.index, d.object]), rerankRef.documents.map((_, i) => [i, 'score']))
  score.body.data.forEach((d) => t.true(Math.abs(d.score - want(d.index)) < 1e-4))
  const pairwise = await post('/v1/score', { text_1: [rerankRef.query, rerankRef.query], text_2: rerankRef.documents.slice(0, 2) })
  t.deepEqual(pairwise.body.data.map((d) => d.score), score.body.data.slice(0, 2).map((d) => d.score))

  for (const [path, bad, message] of [
    ['/v1/rerank', { query: 'q', documents: [] }, /documents/],
    ['/v1/rerank', { query: '', documents: ['a'] }, /query/],
    ['/v1/score', { text_1: ['a', 'b', 'c'], text_2: ['x', 'y'] }, /3 texts: one text, or as many as text_2 \(2\)/],
  ]) {
    const r = await post(path, bad)
    t.is(r.status, 400)
    t.regex(r.body.error.message, message)
  }
})

test("llama.cpp's embedding mode on our GGUF export: it pools the last token, appends the EOS itself, and agrees with the reference", async (t) => {
  const runner = await ModelRunner.load({ modelName: embDir, threads: 2, accelerationConfig: { quantization: 'fp32' } })
  const file = join(scratchDir('emb-gguf'), 'emb-f32.gguf')
  await runner.export(file)
  await runner.dispose()
  const llama = await getLlama({ gpu: false, logLevel: 'error' })
  const model = await llama.loadModel({ modelPath: file })
  const ctx = await model.createEmbeddingContext({ contextSize: 1024, threads: 2 })
  for (const c of embRef.cases.slice(0, 5)) {
    const text = c.instruction ? `Instruct: ${c.instruction}\nQuery:${c.text}` : c.text
    // From the text: its tokenizer (rebuilt from our metadata) must append <|endoftext|> (add_eos_token).
    const v = (await ctx.getEmbeddingFor(text)).vector
    // llama.cpp keeps its KV cache in f16: ~1e-3 of the scale.
    t.true(maxRel(v, c.pooled) < 5e-3, `${JSON.stringify(c.text.slice(0, 20))}: ${maxRel(v, c.pooled)}`)
  }
  await ctx.dispose()
  await model.dispose()
})
