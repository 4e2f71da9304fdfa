import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { z } from 'zod'
import {
  type AccelerationConfig,
  type AccelerationConfigInput,
  createAccelerationConfig,
  deviceSchema,
  type Device,
  type ExecutionPlan,
  type KvCacheDtype,
  type QuantizationType,
} from './acceleration.js'
import { ChatStreamSplitter, chatInputSchema, type ChatMessage, parseAssistantOutput, type ToolCall } from './chat.js'
import { AbortError, fromNative, NanoQwenError, native } from './errors.js'
import { resolveModel, type ResolveOptions } from './hub.js'
import {
  type BenchmarkReport,
  type CalibrationReport,
  loadNative,
  type MemoryUsage,
  type NativeEngine,
  type NativeModelInfo,
  type NativeQuantizationInfo,
  type NativeServingInfo,
  type NativeWeightCacheInfo,
  type RetrievalInfo,
  type TensorClass,
} from './native.js'
import { type GenerateResult, type GenerationParams, type StreamChunk, toEngineRequest } from './params.js'
import { type LoadProgress, loadProgressBar } from './progress.js'
import {
  embed as embedInputs,
  type EmbedInput,
  type EmbedOptions,
  type EmbedOutput,
  rerank as rerankDocuments,
  type RerankItem,
  type RerankOptions,
  type RerankOutput,
} from './retrieval.js'
import { parseOrThrow } from './validation.js'

const loadOptionsSchema = z
  .object({
    modelName: z.string().min(1),
    device: deviceSchema.default('auto'),
    accelerationConfig: z.any().optional(),
    maxSeqLength: z.number().int().positive().optional(),
    threads: z.number().int().positive().optional(),
    kvCacheMemory: z.number().int().positive().optional(),
    maxBatchTokens: z.number().int().positive().max(2 ** 32 - 1).optional(),
    maxConcurrentSequences: z.number().int().positive().max(2 ** 32 - 1).optional(),
    enablePrefixCaching: z.boolean().optional(),
    weightCache: z.boolean().optional(),
    modelKind: z.enum(['auto', 'generate', 'embedding', 'reranker']).optional(),
    revision: z.string().optional(),
    onDownloadProgress: z.union([z.function(), z.literal(false)]).optional(),
    onLoadProgress: z.union([z.function(), z.literal(false)]).optional(),
  })
  .strict()

export interface ModelRunnerOptions {
  /** A model folder, or a Hugging Face id such as "Qwen/Qwen3-0.6B". */
  modelName: string
  device?: Device
  accelerationConfig?: AccelerationConfig | AccelerationConfigInput
  /** Context length; defaults to the model's max_position_embeddings. */
  maxSeqLength?: number
  /** CPU threads; defaults to the number of physical cores. */
  threads?: number
  /** Bytes of the KV cache pool shared by all requests. Default: the KV of one maxSeqLength-token
   * sequence, capped at a quarter of the available memory and at 4 GiB. */
  kvCacheMemory?: number
  /** Tokens per engine step: every running request's next token plus prefill chunks (default 256). While requests decode, prompt tokens per step are also held to what keeps their inter-token time within 3x (fitted from measured step times). */
  maxBatchTokens?: number
  /** Requests in one batch at most (default 64); more wait their turn. */
  maxConcurrentSequences?: number
  /** Reuse the KV of prompt prefixes seen before (default true). */
  enablePrefixCaching?: boolean
  /** static_int8 and int4 compute their weights at load (calibration, scale search): keep the result
   * in a disk cache and reuse it on the next load of the same checkpoint and options (default true;
   * `NANO_QWEN3_WEIGHT_CACHE=0` also turns it off, `NANO_QWEN3_WEIGHT_CACHE_DIR` moves it).
   * `getModelInfo().weightCache` says what happened. */
  weightCache?: boolean
  /** What the checkpoint is for (default 'auto': sentence-transformers files or GGUF pooling_type
   * say). Any kind still generates, embeds (last-token pooling) and reranks; the plan's
   * `modelKind` item says which pooling and scoring run. */
  modelKind?: 'auto' | 'generate' | 'embedding' | 'reranker'
  revision?: string
  onDownloadProgress?: ResolveOptions['onProgress']
  /** Quantization / calibration progress while loading. Default: a bar on stderr when it is a terminal; `false` silences it. */
  onLoadProgress?: ((p: LoadProgress) => void) | false
}

export interface ChatParams extends GenerationParams {
  enableThinking?: boolean
  tools?: unknown[]
}

export interface ChatResult extends GenerateResult {
  content: string
  reasoningContent: string
  toolCalls: ToolCall[]
}

export interface ChatStreamChunk extends StreamChunk {
  content: string
  reasoningContent: string
  toolCalls: ToolCall[]
}

export interface ApplyChatTemplateOptions {
  addGenerationPrompt?: boolean
  enableThinking?: boolean
  tools?: unknown[]
}

export type { CalibrationReport, TensorClass }

/** What the prepared-weights disk cache did for this load (static_int8 and int4 compute at load). */
export type WeightCacheInfo = Omit<NativeWeightCacheInfo, 'status'> & {
  status: 'hit' | 'written' | 'rebuilt' | 'off' | 'not used' | 'error'
}

/** The quantization mode as loaded: which tensors are in which format. */
export type QuantizationInfo = Omit<NativeQuantizationInfo, 'mode'> & { mode: QuantizationType }

/** The serving loop as of its last step: KV pool, batch limits, sequences, prefix cache. */
export type ServingInfo = Omit<NativeServingInfo, 'kvCacheDtype'> & { kvCacheDtype: KvCacheDtype }

/** The loaded model (the binding's fields with enumerated names narrowed), plus what this runner was given. */
export type ModelInfo = Omit<NativeModelInfo, 'quantization' | 'weightCache' | 'serving'> & {
  quantization: QuantizationInfo
  weightCache: WeightCacheInfo
  serving: ServingInfo
  modelName: string
  accelerationConfig: AccelerationConfig
  acceleration: ExecutionPlan
  memoryUsage: MemoryUsage
}

/** The package's embedded model: a tiny Qwen3 with random weights and the real tokenizer. */
export function defaultModelDir(): string {
  const here = dirname(fileURLToPath(import.meta.url))
  // In a packaged Electron app this file lies in app.asar, which only Electron's patched fs reads;
  // the engine reads the model from the unpacked copy (asarUnpack, see the README's Electron part).
  return join(here, '..', 'fixtures', 'qwen3-tiny').replace(/\.asar([\\/])/, '.asar.unpacked$1')
}

let nextRequestId = 1

/** A loaded Qwen3 model. Create with `await ModelRunner.load(opts)` or `new ModelRunner(opts)` + `await runner.ready`. */
export class ModelRunner {
  readonly ready: Promise<void>
  private engine?: NativeEngine
  private options: ModelRunnerOptions & { device: Device }
  private config: AccelerationConfig
  private modelDir?: string
  private disposed = false

  constructor(options: ModelRunnerOptions) {
    const o = parseOrThrow(loadOptionsSchema, options, 'options', 'INVALID_ARGUMENT')
    this.config = createAccelerationConfig(o.accelerationConfig ?? {})
    this.options = { ...options, device: o.device as Device }
    this.ready = this.init()
    // The caller may never await `ready`; don't let a load error become an unhandled rejection.
    this.ready.catch(() => {})
  }

  static async load(options: ModelRunnerOptions): Promise<ModelRunner> {
    const runner = new ModelRunner(options)
    await runner.ready
    return runner
  }

  private async init(): Promise<void> {
    this.modelDir = await resolveModel(this.options.modelName, {
      revision: this.options.revision,
      onProgress: this.options.onDownloadProgress,
    })
    this.engine = await this.loadEngine(this.config)
  }

  private async loadEngine(config: AccelerationConfig): Promise<NativeEngine> {
    if (this.modelDir && !existsSync(this.modelDir)) {
      throw new NanoQwenError('MODEL_NOT_FOUND', `model folder ${this.modelDir} no longer exists`)
    }
    const report = this.options.onLoadProgress === false ? undefined : (this.options.onLoadProgress ?? loadProgressBar())
    try {
      return await loadNative().loadEngine(
        this.modelDir!,
        {
          device: this.options.device,
          acceleration: config,
          maxSeqLength: this.options.maxSeqLength,
          threads: this.options.threads,
          kvCacheMemory: this.options.kvCacheMemory,
          maxBatchTokens: this.options.maxBatchTokens,
          maxConcurrentSequences: this.options.maxConcurrentSequences,
          enablePrefixCaching: this.options.enablePrefixCaching,
          weightCache: this.options.weightCache,
          modelKind: this.options.modelKind,
        },
        report,
      )
    } catch (e) {
      throw fromNative(e)
    }
  }

  private get native(): NativeEngine {
    if (this.disposed) throw new NanoQwenError('DISPOSED', 'this runner has been disposed')
    if (!this.engine) throw new NanoQwenError('NOT_READY', 'the model is still loading (or failed to load): await runner.ready first')
    return this.engine
  }

  tokenize(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return native(() => this.native.tokenize(text, opts.addSpecialTokens ?? false))
  }

  detokenize(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    if (!Array.isArray(ids) || !ids.every((x) => Number.isInteger(x) && x >= 0 && x <= 0xffffffff)) {
      throw new NanoQwenError('INVALID_ARGUMENT', `invalid ids = ${JSON.stringify(ids)?.slice(0, 80)}: an array of token ids (integers >= 0)`)
    }
    return native(() => this.native.detokenize(ids, opts.skipSpecialTokens ?? false))
  }

  /** Renders tokenizer_config.json's chat template exactly as transformers' apply_chat_template. */
  applyChatTemplate(messages: ChatMessage[], opts: ApplyChatTemplateOptions = {}): string {
    parseOrThrow(chatInputSchema, { messages, tools: opts.tools }, 'chat', 'INVALID_ARGUMENT')
    return native(() =>
      this.native.applyChatTemplate(messages, opts.addGenerationPrompt ?? false, opts.enableThinking, opts.tools),
    )
  }

  private toIds(input: string | number[]): number[] {
    if (typeof input === 'string') return native(() => this.native.encodePrompt(input))
    if (Array.isArray(input) && input.every((x) => Number.isInteger(x) && x >= 0)) return input
    throw new NanoQwenError('INVALID_ARGUMENT', `invalid prompt = ${JSON.stringify(input)?.slice(0, 80)}: a string or an array of token ids`)
  }

  /** Logits of the last position ([vocab]) or, with allPositions, of every position ([n * vocab], row-major). */
  async computeLogits(input: string | number[], opts: { allPositions?: boolean } = {}): Promise<Float32Array> {
    const ids = this.toIds(input)
    try {
      return await this.native.computeLogits(ids, opts.allPositions ?? false)
    } catch (e) {
      throw fromNative(e)
    }
  }

  /** Runs one generation; `onChunk` sees the streamed pieces. */
  private async run(
    prompt: string | number[],
    params: GenerationParams | undefined,
    onChunk?: (c: StreamChunk) => void,
  ): Promise<GenerateResult & { chunkCount: number }> {
    const engine = this.native
    const { request, signal } = toEngineRequest(params)
    const ids = this.toIds(prompt)
    if (signal?.aborted) throw new AbortError()
    const id = nextRequestId++
    const abort = () => engine.cancel(id)
    signal?.addEventListener('abort', abort, { once: true })
    try {
      // Events arrive in order on one callback: every chunk, then the end.
      return await new Promise((resolve, reject) => {
        engine.generate(ids, request, id, (e) => {
          if (e.kind === 'chunk') onChunk?.(e.chunk!)
          else if (e.kind === 'done') resolve(e.result as GenerateResult & { chunkCount: number })
          else reject(new Error(e.error))
        })
      })
    } catch (e) {
      throw fromNative(e)
    } finally {
      signal?.removeEventListener('abort', abort)
    }
  }

  async generate(prompt: string | number[], params?: GenerationParams): Promise<GenerateResult> {
    const { chunkCount: _, ...result } = await this.run(prompt, params)
    return result
  }

  /** Streams text as it is generated; text never splits a UTF-8 character and stop strings never leak. */
  stream(prompt: string | number[], params?: GenerationParams): AsyncIterable<StreamChunk> & { result: Promise<GenerateResult> } {
    const queue: StreamChunk[] = []
    let wake: (() => void) | undefined
    let settled: { ok: true; value: GenerateResult & { chunkCount: number } } | { ok: false; error: unknown } | undefined
    // Abort our own request if the consumer stops iterating early.
    const controller = new AbortController()
    const userSignal = params?.signal
    if (userSignal) userSignal.addEventListener('abort', () => controller.abort(), { once: true })
    const signal = userSignal?.aborted ? userSignal : controller.signal
    const result = this.run(prompt, { ...params, signal }, (c) => {
      queue.push(c)
      wake?.()
    })
    result.then(
      (value) => ((settled = { ok: true, value }), wake?.()),
      (error) => ((settled = { ok: false, error }), wake?.()),
    )
    const done = result.then(({ chunkCount: _, ...r }) => r)
    done.catch(() => {})
    async function* iterate(): AsyncGenerator<StreamChunk> {
      let received = 0
      try {
        for (;;) {
          // An abort wins even when the generation had already finished with chunks still queued;
          // either way the request has ended (its KV cache released) before the error is thrown.
          if (userSignal?.aborted) {
            await result.then(
              () => {},
              () => {},
            )
            throw settled && !settled.ok ? settled.error : new AbortError()
          }
          if (queue.length) {
            received++
            yield queue.shift()!
            continue
          }
          if (settled && !settled.ok) throw settled.error
          // Chunks and the final result travel separately: stop once every chunk is in.
          if (settled?.ok && received >= settled.value.chunkCount) return
          await new Promise<void>((r) => (wake = r))
          wake = undefined
        }
      } finally {
        if (!settled) controller.abort()
      }
    }
    return { [Symbol.asyncIterator]: iterate, result: done }
  }

  private chatPrompt(messages: ChatMessage[], params: ChatParams | undefined): [string, GenerationParams] {
    const { enableThinking, tools, ...rest } = params ?? {}
    return [this.applyChatTemplate(messages, { addGenerationPrompt: true, enableThinking, tools }), rest]
  }

  /** Chat completion: reasoning (<think>) and tool calls are split out of the content. */
  async chat(messages: ChatMessage[], params?: ChatParams): Promise<ChatResult> {
    const [prompt, rest] = this.chatPrompt(messages, params)
    const result = await this.generate(prompt, rest)
    return { ...result, ...parseAssistantOutput(result.text) }
  }

  chatStream(messages: ChatMessage[], params?: ChatParams): AsyncIterable<ChatStreamChunk> & { result: Promise<ChatResult> } {
    const [prompt, rest] = this.chatPrompt(messages, params)
    const inner = this.stream(prompt, rest)
    const result = inner.result.then((r) => ({ ...r, ...parseAssistantOutput(r.text) }))
    result.catch(() => {})
    async function* iterate(): AsyncGenerator<ChatStreamChunk> {
      const splitter = new ChatStreamSplitter()
      for await (const chunk of inner) yield { ...chunk, ...splitter.push(chunk.text) }
      const tail = splitter.finish()
      if (tail.content || tail.reasoningContent) yield { text: '', tokenIds: [], ...tail }
    }
    return { [Symbol.asyncIterator]: iterate, result }
  }

  /** Embeds each text: last-token pooling of the final hidden state, L2-normalised (see EmbedOptions). */
  async embed(texts: string | string[], opts?: EmbedOptions): Promise<Float32Array[]> {
    return (await embedInputs(this.native, texts, opts)).embeddings
  }

  /** `embed` for texts or token-id arrays, with the tokens counted (the HTTP endpoint's usage). */
  async embedWithUsage(input: EmbedInput, opts?: EmbedOptions): Promise<EmbedOutput> {
    return embedInputs(this.native, input, opts)
  }

  /** Scores each document for `query` with Qwen3-Reranker's template; best first. */
  async rerank(query: string, documents: string[], opts?: RerankOptions): Promise<RerankItem[]> {
    return (await rerankDocuments(this.native, query, documents, opts)).results
  }

  /** `rerank` with the tokens counted. */
  async rerankWithUsage(query: string, documents: string[], opts?: RerankOptions): Promise<RerankOutput> {
    return rerankDocuments(this.native, query, documents, opts)
  }

  /** What the checkpoint is for and how it pools, as read from its files (or the modelKind option). */
  getRetrievalInfo(): RetrievalInfo {
    return native(() => this.native.retrievalInfo())
  }

  getAccelerationInfo(): ExecutionPlan {
    return native(() => this.native.accelerationInfo()) as ExecutionPlan
  }

  getModelInfo(): ModelInfo {
    const info = native(() => this.native.modelInfo()) as Omit<ModelInfo, 'modelName' | 'accelerationConfig' | 'acceleration' | 'memoryUsage'>
    return {
      ...info,
      modelName: this.options.modelName,
      accelerationConfig: this.config,
      acceleration: this.getAccelerationInfo(),
      memoryUsage: this.estimateMemoryUsage(),
    }
  }

  /** Measured bytes: weights as loaded, KV cache allocated now, and KV cost per token. */
  estimateMemoryUsage(): MemoryUsage {
    return native(() => this.native.memoryUsage())
  }

  /** Warm-up, then `numIterations` x (prefill sampleText + decode `decodeTokens` tokens), timed separately. */
  async benchmarkPerformance(opts: { sampleText?: string; numIterations?: number; decodeTokens?: number } = {}): Promise<BenchmarkReport> {
    const numIterations = opts.numIterations ?? 10
    const decodeTokens = opts.decodeTokens ?? 32
    for (const [name, v] of [['numIterations', numIterations], ['decodeTokens', decodeTokens]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new NanoQwenError('INVALID_ARGUMENT', `invalid ${name} = ${v}: an integer >= 1`)
    }
    try {
      return await this.native.benchmark(opts.sampleText ?? 'Hello, how are you?', numIterations, decodeTokens)
    } catch (e) {
      throw fromNative(e)
    }
  }

  /**
   * Writes the model as loaded (with its quantization) to a GGUF file that llama.cpp-based tools
   * read: f32/bf16/f16 as is, dynamic_int8 as Q8_0. Returns the bytes written.
   */
  async export(path: string): Promise<number> {
    if (!path.endsWith('.gguf')) throw new NanoQwenError('INVALID_ARGUMENT', `invalid export path = ${JSON.stringify(path)}: a file name ending in .gguf`)
    try {
      return await this.native.exportGguf(path)
    } catch (e) {
      throw fromNative(e)
    }
  }

  /** Reloads the model with a new config. If that fails, the current model keeps serving. */
  async updateAccelerationConfig(config: AccelerationConfig | AccelerationConfigInput): Promise<void> {
    const next = createAccelerationConfig(config)
    await this.ready
    const old = this.native
    const engine = await this.loadEngine(next)
    this.engine = engine
    this.config = next
    old.dispose()
  }

  /**
   * (Re)calibrates static int8 on `texts` and reloads: SmoothQuant factors and activation scales
   * are measured on these texts. Works from any mode (switches to static_int8); on failure the
   * current model keeps serving. Returns the calibration report.
   */
  async calibrate(texts: string[], opts: { maxTokens?: number } = {}): Promise<CalibrationReport> {
    if (!Array.isArray(texts) || texts.length === 0 || texts.some((t) => typeof t !== 'string' || t.length === 0)) {
      throw new NanoQwenError('INVALID_ARGUMENT', `invalid texts = ${JSON.stringify(texts)?.slice(0, 80)}: a non-empty array of non-empty strings`)
    }
    await this.updateAccelerationConfig({ ...this.config, quantization: 'static_int8', calibration: { texts, maxTokens: opts.maxTokens } })
    return this.getModelInfo().quantization.calibration!
  }

  get accelerationConfig(): AccelerationConfig {
    return this.config
  }

  /** Frees the model; later calls throw DISPOSED. Running generations are stopped. */
  async dispose(): Promise<void> {
    await this.ready.catch(() => {})
    this.engine?.dispose()
    this.engine = undefined
    this.disposed = true
  }
}
