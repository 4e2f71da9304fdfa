import { z } from 'zod'
import { native } from './errors.js'
import { loadNative, type NativeExecutionPlan, type OptionValues, type PlanItem } from './native.js'
import { parseOrThrow } from './validation.js'

/** Quantization modes, with the Python project's names. */
export const QuantizationType = {
  NONE: 'none',
  FP32: 'fp32',
  FP16: 'fp16',
  BF16: 'bf16',
  DYNAMIC_INT8: 'dynamic_int8',
  STATIC_INT8: 'static_int8',
  INT4: 'int4',
} as const
export type QuantizationType = (typeof QuantizationType)[keyof typeof QuantizationType]
export type CompileMode = 'default' | 'reduce-overhead' | 'max-autotune'
export type KvCacheDtype = 'f32' | 'f16' | 'bf16'
export type Int4LmHead = 'q8_0' | 'q4_0'

/** The engine's lists of allowed values (the one source of the names; a test keeps the types above in step). */
let values: OptionValues | undefined
export function optionValues(): OptionValues {
  values ??= loadNative().optionValues()
  return values
}

/** A value from the engine's list for `option`, typed as `T`. */
function oneOf<T extends string | number>(option: keyof ReturnType<typeof optionValues>) {
  return z.custom<T>((v) => (optionValues()[option] as unknown[]).includes(v), {
    message: `allowed ${optionValues()[option].map((v) => JSON.stringify(v)).join(', ')}`,
  })
}

export const accelerationConfigSchema = z
  .object({
    quantization: oneOf<QuantizationType>('quantization').default('none'),
    useFlashAttention: z.boolean().default(true),
    useTorchCompile: z.boolean().default(false),
    compileMode: oneOf<CompileMode>('compileMode').default('default'),
    useChannelsLast: z.boolean().default(true),
    useGradientCheckpointing: z.boolean().default(false),
    useFusedKernels: z.boolean().default(true),
    /** KV cache element type: f32 (exact), f16 or bf16 (half the memory; widened to f32 in the attention kernel). */
    kvCacheDtype: oneOf<KvCacheDtype>('kvCacheDtype').default('f32'),
    /** int4: weights sharing one scale: 32 (Q4_0), 64 or 128 (4.25 / 4.125 bits per weight instead of 4.5 when repacked, a little more error). */
    int4GroupSize: oneOf<32 | 64 | 128>('int4GroupSize').default(32),
    /** int4: the lm_head's format (or the embedding's, when tied): 'q8_0' (default; llama.cpp's 4-bit files keep it at 6-8 bits too) or 'q4_0' (smallest). */
    int4LmHead: oneOf<Int4LmHead>('int4LmHead').default('q8_0'),
    /** static_int8 and int4: texts to calibrate on (default: a small built-in mixed set) and tokens used per text (default 128). */
    calibration: z
      .object({
        texts: z.array(z.string().min(1, 'a non-empty text')).min(1, 'at least one text (or leave texts out for the built-in set)').optional(),
        maxTokens: z.number().int().positive().optional(),
        /** In [0, 1], 0 turns it off: static_int8's SmoothQuant migration strength (default 0.5); int4's activation-aware scaling exponent (default 0.35). */
        smoothing: z.number().min(0).max(1).optional(),
      })
      .strict()
      .optional(),
  })
  .strict()

export type AccelerationConfig = Readonly<z.output<typeof accelerationConfigSchema>>
export type AccelerationConfigInput = z.input<typeof accelerationConfigSchema>

// The Python API's snake_case names are accepted too.
const snakeToCamel: Record<string, string> = {
  use_flash_attention: 'useFlashAttention',
  use_torch_compile: 'useTorchCompile',
  compile_mode: 'compileMode',
  use_channels_last: 'useChannelsLast',
  use_gradient_checkpointing: 'useGradientCheckpointing',
  use_fused_kernels: 'useFusedKernels',
  kv_cache_dtype: 'kvCacheDtype',
  int4_group_size: 'int4GroupSize',
  int4_lm_head: 'int4LmHead',
}

/** Validated, frozen acceleration config. Unknown keys or values throw; nothing falls back silently. */
export function createAccelerationConfig(opts: AccelerationConfigInput = {}): AccelerationConfig {
  const input: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(opts ?? {})) input[snakeToCamel[k] ?? k] = v
  return Object.freeze(parseOrThrow(accelerationConfigSchema, input, 'accelerationConfig', 'INVALID_CONFIG'))
}

/** Where the model runs: `auto` takes a hardware GPU adapter when there is one and the model fits
 * it, else the CPU (never a software adapter); `gpu` / `gpu:N` any adapter (software included);
 * `vulkan` / `metal` / `dx12` an adapter of that API. `cuda` / `cuda:N` answer an error naming
 * `gpu` (NVIDIA cards run through their Vulkan driver). */
export type Device = 'auto' | 'cpu' | 'gpu' | `gpu:${number}` | 'vulkan' | 'metal' | 'dx12' | 'cuda' | `cuda:${number}`

/** The device spellings the engine accepts (cuda is accepted here so that the engine answers it
 * with its pointer to `gpu`). */
export const deviceSchema = z
  .string()
  .regex(/^(auto|cpu|gpu|gpu:\d+|vulkan|metal|dx12|cuda|cuda:\d+)$/, 'allowed: auto, cpu, gpu, gpu:N, vulkan, metal, dx12')

export type { PlanItem }

/** What a config does on a device (fields from the binding's type, the mode narrowed to its names). */
export type ExecutionPlan = Omit<NativeExecutionPlan, 'quantization'> & { quantization: QuantizationType }

/** Config + device -> the plan of what is applied and what is skipped (with the reason). */
export class ModelAccelerator {
  readonly config: AccelerationConfig
  readonly device: Device

  constructor(config: AccelerationConfigInput | AccelerationConfig = {}, device: Device = 'auto') {
    this.config = createAccelerationConfig(config)
    this.device = parseOrThrow(deviceSchema, device, 'device', 'INVALID_ARGUMENT') as Device
  }

  /** Throws when the config cannot run on the device at all (e.g. a mode this build lacks). */
  plan(): ExecutionPlan {
    return native(() => loadNative().planAcceleration(this.config, this.device)) as ExecutionPlan
  }

  getAppliedOptimizations(): string[] {
    return this.plan().appliedOptimizations
  }
}
