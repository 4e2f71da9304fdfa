import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { createAccelerationConfig, optionValues } from './acceleration.js'
import { embedCommand, rerankCommand } from './cli-retrieval.js'
import type { ChatMessage } from './chat.js'
import { NanoQwenError } from './errors.js'
import { defaultModelDir, ModelRunner } from './model-runner.js'
import { createServer } from './server/index.js'

const HELP = `nano-qwen3-serving: run Qwen3 models locally

Usage:
  nano-qwen3-serving generate [options] <prompt>      stream a completion of <prompt>
  nano-qwen3-serving chat [options] [message]         chat (one message, or interactive from stdin)
  nano-qwen3-serving bench [options]                  prefill and decode tokens/s
  nano-qwen3-serving info [options]                   model, acceleration plan and memory
  nano-qwen3-serving quantize [options] -o out.gguf   write the model, as loaded, to GGUF (llama.cpp's format)
  nano-qwen3-serving serve [options]                  OpenAI-compatible HTTP server (/v1/chat/completions, ...)
  nano-qwen3-serving embed [options] [text...]        embeddings, one JSON line per text (texts: arguments or stdin lines)
  nano-qwen3-serving rerank [options] <query> [doc...] documents best first: score, index, text (docs: arguments or stdin lines)
  nano-qwen3-serving <command> --help

Common options:
  --model <dir|file|org/name>  model folder, .gguf file or Hugging Face id (default: the embedded tiny
                            model, random weights: its text is gibberish, useful to try the tool)
  --quantization <mode>     ${optionValues().quantization.join(' | ')}
  --calibration <file>      static_int8: calibration texts, separated by blank lines (default: built-in set)
  --device <device>         auto | cpu | gpu | gpu:N | vulkan | metal | dx12 (auto: a hardware GPU if the model fits, else cpu)
  --threads <n>             CPU threads (default: physical cores)

Generation options (generate, chat):
  --max-tokens <n>  --temperature <t>  --top-p <p>  --top-k <k>  --min-p <p>
  --repetition-penalty <r>  --seed <n>  --stop <text> (repeatable)  --ignore-eos
Chat options:   --system <text>  --no-think
Embed options:  --instruction <task> (a query: "Instruct: <task>\nQuery:<text>")  --dimensions <n>  --no-normalize
Rerank options: --instruction <task>  --top-n <n>
Model kind:     --model-kind auto | generate | embedding | reranker (default auto: from the checkpoint's files)
Bench options:  --iterations <n> (default 5)  --decode-tokens <n> (default 32)  --sample-text <text>
Serve options:
  --host <addr>             address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)
  --port <n>                port (default 8000)
  --api-key <key>           clients must send "Authorization: Bearer <key>" (default: no key)
  --served-model-name <id>  the model id clients send and /v1/models lists (default: --model)
  --max-queue <n>           sequences that may wait for the batch before 429 (default 256)
  --grace <seconds>         on SIGINT/SIGTERM, time in-flight requests get to finish (default 10)
  --no-strict-schemas       structured outputs may add object keys a schema does not name (JSON Schema's
                            default; by default they generate only the named ones, so answers always close)
Serving engine (serve, and any command):
  --max-seq-length <n>  --kv-cache-memory <bytes>  --max-batch-tokens <n>  --max-concurrent-sequences <n>
  --no-prefix-caching
Quantize:       -o, --output <file.gguf>   (fp32 -> F32, fp16 -> F16, dynamic_int8 / static_int8 -> Q8_0, int4 -> Q4_0, none -> as loaded)
`

const options = {
  help: { type: 'boolean', short: 'h' },
  model: { type: 'string', short: 'm' },
  quantization: { type: 'string', short: 'q' },
  device: { type: 'string' },
  threads: { type: 'string' },
  'max-tokens': { type: 'string', short: 'n' },
  temperature: { type: 'string', short: 't' },
  'top-p': { type: 'string' },
  'top-k': { type: 'string' },
  'min-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
  'ignore-eos': { type: 'boolean' },
  system: { type: 'string' },
  'no-think': { type: 'boolean' },
  iterations: { type: 'string' },
  'decode-tokens': { type: 'string' },
  'sample-text': { type: 'string' },
  output: { type: 'string', short: 'o' },
  calibration: { type: 'string' },
  host: { type: 'string' },
  port: { type: 'string' },
  'api-key': { type: 'string' },
  'served-model-name': { type: 'string' },
  'max-queue': { type: 'string' },
  grace: { type: 'string' },
  'no-strict-schemas': { type: 'boolean' },
  'max-seq-length': { type: 'string' },
  'kv-cache-memory': { type: 'string' },
  'max-batch-tokens': { type: 'string' },
  'max-concurrent-sequences': { type: 'string' },
  'no-prefix-caching': { type: 'boolean' },
  instruction: { type: 'string' },
  dimensions: { type: 'string' },
  'no-normalize': { type: 'boolean' },
  'top-n': { type: 'string' },
  'model-kind': { type: 'string' },
} as const

function num(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined
  const n = Number(v)
  if (!Number.isFinite(n)) throw new NanoQwenError('INVALID_ARGUMENT', `--${name} ${JSON.stringify(v)} is not a number`)
  return n
}

function readCalibrationTexts(file: string): string[] {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw new NanoQwenError('INVALID_ARGUMENT', `--calibration ${JSON.stringify(file)}: cannot read it (${(e as Error).message})`)
  }
  return text.split(/\n\s*\n/).map((t) => t.trim()).filter((t) => t.length > 0)
}

export async function main(argv: string[]): Promise<number> {
  const { values: o, positionals } = parseArgs({ args: argv, options, allowPositionals: true })
  const [command, ...rest] = positionals
  if (!command || o.help || !['generate', 'chat', 'bench', 'info', 'quantize', 'serve', 'embed', 'rerank'].includes(command)) {
    process.stdout.write(HELP)
    return command && !o.help ? 2 : 0
  }
  if (!o.model) process.stderr.write('(using the embedded tiny model: random weights, so its text is gibberish; pass --model)\n')
  const runner = await ModelRunner.load({
    modelName: o.model ?? defaultModelDir(),
    device: (o.device ?? 'auto') as any,
    threads: num('threads', o.threads),
    maxSeqLength: num('max-seq-length', o['max-seq-length']),
    kvCacheMemory: num('kv-cache-memory', o['kv-cache-memory']),
    maxBatchTokens: num('max-batch-tokens', o['max-batch-tokens']),
    maxConcurrentSequences: num('max-concurrent-sequences', o['max-concurrent-sequences']),
    enablePrefixCaching: o['no-prefix-caching'] ? false : undefined,
    modelKind: o['model-kind'] as any,
    accelerationConfig: createAccelerationConfig({
      quantization: (o.quantization ?? 'none') as any,
      calibration: o.calibration ? { texts: readCalibrationTexts(o.calibration) } : undefined,
    }),
  })
  const params = {
    maxTokens: num('max-tokens', o['max-tokens']),
    temperature: num('temperature', o.temperature),
    topP: num('top-p', o['top-p']),
    topK: num('top-k', o['top-k']),
    minP: num('min-p', o['min-p']),
    repetitionPenalty: num('repetition-penalty', o['repetition-penalty']),
    seed: num('seed', o.seed),
    stop: o.stop,
    ignoreEos: o['ignore-eos'],
  }
  const clean = Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined))
  try {
    switch (command) {
      case 'generate': {
        const prompt = rest.join(' ')
        if (!prompt) throw new NanoQwenError('INVALID_ARGUMENT', 'generate needs a prompt: nano-qwen3-serving generate "Why is the sky blue?"')
        const s = runner.stream(prompt, clean)
        for await (const chunk of s) process.stdout.write(chunk.text)
        const r = await s.result
        process.stdout.write('\n')
        process.stderr.write(
          `[${r.finishReason}] ${r.usage.completionTokens} tokens, prefill ${r.timings.prefillTokensPerSecond.toFixed(1)} tok/s, decode ${r.timings.decodeTokensPerSecond.toFixed(1)} tok/s\n`,
        )
        return 0
      }
      case 'chat': {
        const history: ChatMessage[] = o.system ? [{ role: 'system', content: o.system }] : []
        const turn = async (message: string) => {
          history.push({ role: 'user', content: message })
          const s = runner.chatStream(history, { ...clean, enableThinking: o['no-think'] ? false : undefined })
          for await (const c of s) {
            if (c.reasoningContent) process.stdout.write(`\x1b[2m${c.reasoningContent}\x1b[0m`)
            if (c.content) process.stdout.write(c.content)
          }
          const r = await s.result
          for (const call of r.toolCalls) process.stdout.write(`\n[tool call] ${JSON.stringify(call.function)}`)
          process.stdout.write('\n')
          history.push({ role: 'assistant', content: r.content })
        }
        if (rest.length) {
          await turn(rest.join(' '))
          return 0
        }
        const rl = createInterface({ input: process.stdin, output: process.stdout, prompt: '> ' })
        rl.prompt()
        for await (const line of rl) {
          if (line.trim()) await turn(line)
          rl.prompt()
        }
        return 0
      }
      case 'bench': {
        const r = await runner.benchmarkPerformance({
          numIterations: num('iterations', o.iterations) ?? 5,
          decodeTokens: num('decode-tokens', o['decode-tokens']) ?? 32,
          sampleText: o['sample-text'],
        })
        console.log(JSON.stringify(r, null, 2))
        return 0
      }
      case 'quantize': {
        if (!o.output) throw new NanoQwenError('INVALID_ARGUMENT', 'quantize needs an output file: -o model.gguf')
        const bytes = await runner.export(o.output)
        process.stderr.write(`wrote ${o.output} (${(bytes / 2 ** 20).toFixed(1)} MB, ${(runner.getModelInfo() as Record<string, unknown>).dtype} weights)\n`)
        return 0
      }
      case 'serve':
        return await serve(runner, o)
      case 'embed':
        return await embedCommand(runner, rest, { instruction: o.instruction, dimensions: o.dimensions, normalize: !o['no-normalize'] })
      case 'rerank':
        return await rerankCommand(runner, rest, { instruction: o.instruction, topN: o['top-n'] })
      default: {
        console.log(JSON.stringify(runner.getModelInfo(), null, 2))
        return 0
      }
    }
  } finally {
    await runner.dispose()
  }
}

/** Serves until SIGINT/SIGTERM, then stops accepting, gives in-flight requests --grace seconds, exits 0. */
async function serve(runner: ModelRunner, o: Record<string, string | boolean | string[] | undefined>): Promise<number> {
  const str = (k: string) => o[k] as string | undefined
  const server = await createServer({
    runner,
    host: str('host') ?? '127.0.0.1',
    port: num('port', str('port')) ?? 8000,
    apiKey: str('api-key'),
    maxQueue: num('max-queue', str('max-queue')),
    servedModelName: str('served-model-name') ?? str('model') ?? 'qwen3-tiny',
    strictSchemas: !o['no-strict-schemas'],
  })
  const info = runner.getModelInfo()
  const s = info.serving
  const log = (line: string) => process.stderr.write(line + '\n')
  log(`serving ${JSON.stringify(str('served-model-name') ?? str('model') ?? 'qwen3-tiny')} at ${server.baseURL}${str('api-key') ? ' (API key required)' : ''}`)
  log(`plan: ${info.acceleration.quantization} weights (${info.acceleration.weightDtype}), applied: ${info.acceleration.appliedOptimizations.join(', ') || 'none'}`)
  log(`KV pool: ${s.blocksTotal} blocks x ${s.blockTokens} tokens (${(s.kvCacheBytes / 2 ** 20).toFixed(0)} MiB ${s.kvCacheDtype}), batch <= ${s.maxConcurrentSequences} sequences, ${s.maxBatchTokens} tokens/step, prefix cache ${s.prefixCaching ? 'on' : 'off'}`)
  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve())
    process.once('SIGTERM', () => resolve())
  })
  log('shutting down: finishing in-flight requests')
  await server.close({ graceMs: (num('grace', str('grace')) ?? 10) * 1000 })
  return 0
}
