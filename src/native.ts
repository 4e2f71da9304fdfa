import { createRequire } from 'node:module'
import type * as Binding from '../index.js'

export type NativeBinding = typeof Binding
export type NativeEngine = Binding.NativeEngine

let binding: NativeBinding | undefined

/** The napi-rs addon, loaded on first use through the generated loader in the package root. */
export function loadNative(): NativeBinding {
  binding ??= createRequire(import.meta.url)('../index.js') as NativeBinding
  return binding
}
