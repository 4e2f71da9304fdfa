// Compiled by __test__/types.test.mjs (tsc --noEmit against the built dist/index.d.ts): the result
// types are real, not `any`. Each @ts-expect-error must meet an error, so if a type decays to
// `any` (or loses a field) this file stops compiling.
import type { GenerateResult, ModelInfo, ModelRunner, StreamChunk } from '../../dist/index.mjs'

declare const runner: ModelRunner
const info: ModelInfo = runner.getModelInfo()
const blocks: number = info.serving.blocksUsed
const chunk: number | null = info.serving.maxPrefillChunk
const mode: 'none' | 'fp32' | 'fp16' | 'bf16' | 'dynamic_int8' | 'static_int8' | 'int4' = info.quantization.mode
const calibrated: string[] | undefined = info.quantization.calibration?.smoothedSites
const weightDtype: string = info.acceleration.weightDtype
// @ts-expect-error a count is a number
const wrong: string = info.serving.blocksUsed
// @ts-expect-error no such field
info.serving.noSuchField
// @ts-expect-error the KV dtype is one of the engine's names
const kv: 'f64' = info.serving.kvCacheDtype

declare const result: GenerateResult
const finish: 'stop' | 'length' = result.finishReason
const cached: number = result.usage.cachedTokens
// @ts-expect-error the stream's chunk count is internal
result.chunkCount
declare const piece: StreamChunk
const ids: number[] = piece.tokenIds
const top: number | undefined = piece.logprobs?.[0]?.top[0]?.logprob

export const used = [blocks, chunk, mode, calibrated, weightDtype, wrong, kv, finish, cached, ids, top]
