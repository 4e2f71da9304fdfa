import { createRequire } from 'node:module'
import type * as Binding from '../index.js'

export type NativeBinding = typeof Binding
export type NativeEngine = Binding.NativeEngine
// The result types, generated from the binding's Rust structs (index.d.ts): the one source of their fields.
export type {
  AutotuneReport,
  BenchmarkReport,
  CalibrationReport,
  ExecutionPlan as NativeExecutionPlan,
  GenerateEvent,
  GenerateResult as NativeGenerateResult,
  GenerationDefaults,
  LoadProgress,
  MemoryUsage,
  ModelInfo as NativeModelInfo,
  OptionValues,
  PlanItem,
  QuantizationInfo as NativeQuantizationInfo,
  RetrievalInfo,
  ServingInfo as NativeServingInfo,
  SiteDecision,
  Stats,
  StreamChunk,
  TensorClass,
  Timings,
  TokenAlternative,
  TokenLogprob,
  Usage,
  WeightCacheInfo as NativeWeightCacheInfo,
} from '../index.js'

let binding: NativeBinding | undefined

/** The napi-rs addon, loaded on first use through the generated loader in the package root. */
export function loadNative(): NativeBinding {
  binding ??= createRequire(import.meta.url)('../index.js') as NativeBinding
  return binding
}
