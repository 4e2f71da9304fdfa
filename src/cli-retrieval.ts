// The CLI's embed and rerank commands: texts from the arguments, or one per line on stdin.
import { createInterface } from 'node:readline'
import { NanoQwenError } from './errors.js'
import type { ModelRunner } from './model-runner.js'

async function stdinLines(): Promise<string[]> {
  const lines: string[] = []
  for await (const line of createInterface({ input: process.stdin })) if (line.trim()) lines.push(line)
  return lines
}

function int(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined
  const n = Number(v)
  if (!Number.isInteger(n) || n < 1) throw new NanoQwenError('INVALID_ARGUMENT', `--${name} ${JSON.stringify(v)}: an integer >= 1`)
  return n
}

/** One JSON line per text: {"index", "text", "embedding"}. */
export async function embedCommand(runner: ModelRunner, texts: string[], o: { instruction?: string; dimensions?: string; normalize: boolean }): Promise<number> {
  const inputs = texts.length ? texts : await stdinLines()
  if (!inputs.length) throw new NanoQwenError('INVALID_ARGUMENT', 'embed needs texts: nano-qwen3-serving embed "first text" "second text" (or one per line on stdin)')
  const out = await runner.embedWithUsage(inputs, { instruction: o.instruction, dimensions: int('dimensions', o.dimensions), normalize: o.normalize })
  out.embeddings.forEach((v, index) => process.stdout.write(JSON.stringify({ index, text: inputs[index], embedding: Array.from(v) }) + '\n'))
  process.stderr.write(`${inputs.length} embeddings of ${out.embeddings[0]?.length ?? 0} dimensions, ${out.promptTokens} tokens\n`)
  return 0
}

/** Best first: score, index and document, tab-separated. */
export async function rerankCommand(runner: ModelRunner, args: string[], o: { instruction?: string; topN?: string }): Promise<number> {
  const [query, ...given] = args
  const documents = given.length ? given : await stdinLines()
  if (!query || !documents.length) {
    throw new NanoQwenError('INVALID_ARGUMENT', 'rerank needs a query and documents: nano-qwen3-serving rerank "query" "doc 1" "doc 2" (or documents one per line on stdin)')
  }
  const results = await runner.rerank(query, documents, { instruction: o.instruction, topN: int('top-n', o.topN) })
  for (const r of results) process.stdout.write(`${r.score.toFixed(6)}\t${r.index}\t${documents[r.index]}\n`)
  return 0
}
