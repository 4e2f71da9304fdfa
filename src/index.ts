export {
  type AccelerationConfig,
  type AccelerationConfigInput,
  accelerationConfigSchema,
  type CompileMode,
  type Int4LmHead,
  type KvCacheDtype,
  optionValues,
  createAccelerationConfig,
  type Device,
  type ExecutionPlan,
  ModelAccelerator,
  type PlanItem,
  QuantizationType,
} from './acceleration.js'
export { type ChatMessage, ChatStreamSplitter, parseAssistantOutput, type ToolCall } from './chat.js'
export { AbortError, NanoQwenError } from './errors.js'
export { downloadFromHub, findInCache, hubCacheDir, resolveModel } from './hub.js'
export {
  type ApplyChatTemplateOptions,
  type ChatParams,
  type ChatResult,
  type CalibrationReport,
  type ChatStreamChunk,
  defaultModelDir,
  ModelRunner,
  type ModelInfo,
  type ModelRunnerOptions,
  type QuantizationInfo,
  type WeightCacheInfo,
  type ServingInfo,
  type TensorClass,
} from './model-runner.js'
export { type LoadProgress, loadProgressBar } from './progress.js'
export type { EmbedInput, EmbedOptions, EmbedOutput, RerankItem, RerankOptions, RerankOutput } from './retrieval.js'
export type { AutotuneReport, BenchmarkReport, GenerationDefaults, MemoryUsage, RetrievalInfo, SiteDecision, Stats } from './native.js'
export { generationParamsSchema } from './params.js'
export type { FinishReason, GenerateResult, GenerationParams, StreamChunk, Timings, TokenAlternative, TokenLogprob, Usage } from './params.js'
export { createServer, type NanoQwenServer, type ServerOptions } from './server/index.js'
