// Embed every paragraph of a folder's .md/.txt files, find the closest ones to a question by cosine
// similarity, then rerank those with a reranker. Runs on the tiny random fixtures by default
// (their scores are meaningless); pass real models for real answers:
//   node examples/search-folder.mjs <folder> "<question>" [embedding model] [reranker model]
//   node examples/search-folder.mjs docs "how do I quantize?" Qwen/Qwen3-Embedding-0.6B Qwen/Qwen3-Reranker-0.6B
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { ModelRunner } from 'nano-qwen3-serving'

const [folder = '.', question = 'How are requests batched?', embModel = 'fixtures/qwen3-embedding-tiny', rerankModel = 'fixtures/qwen3-tiny'] = process.argv.slice(2)

// .md / .txt files under `dir`, skipping hidden folders, dependencies and build output.
const walk = (dir) =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? (/^(\.|node_modules$|target$|dist$)/.test(e.name) ? [] : walk(join(dir, e.name))) : /\.(md|txt)$/.test(e.name) ? [join(dir, e.name)] : [],
  )

const paragraphs = walk(folder)
  .flatMap((f) => readFileSync(f, 'utf8').split(/\n\s*\n/).map((text) => ({ file: f, text: text.trim() })))
  .filter((p) => p.text.length > 40)
  .slice(0, 2048)

// Paragraphs cut to 240 characters: at most 4 tokens a character, within the 1,024-token context.
const embedder = await ModelRunner.load({ modelName: embModel, maxSeqLength: 1024 })
// Documents as they are; the question with its task, as Qwen3-Embedding's model card does.
const docs = await embedder.embed(paragraphs.map((p) => p.text.slice(0, 240)))
const [q] = await embedder.embed([question], { instruction: 'Given a question, retrieve passages that answer it' })
const dot = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0) // unit vectors: the cosine
const nearest = docs.map((d, i) => ({ i, sim: dot(q, d) })).sort((a, b) => b.sim - a.sim).slice(0, 10)
await embedder.dispose()

const reranker = await ModelRunner.load({ modelName: rerankModel, maxSeqLength: 2048 })
const ranked = await reranker.rerank(question, nearest.map(({ i }) => paragraphs[i].text.slice(0, 400)), { topN: 3 })
for (const { index, score } of ranked) {
  const p = paragraphs[nearest[index].i]
  console.log(`${score.toFixed(3)}  ${p.file}: ${p.text.slice(0, 100).replace(/\s+/g, ' ')}...`)
}
await reranker.dispose()
