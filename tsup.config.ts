import { defineConfig } from 'tsup'

export default defineConfig({
  entry: { index: 'src/index.ts', cli: 'src/cli.ts' },
  format: ['esm', 'cjs'],
  dts: { entry: { index: 'src/index.ts' } },
  outExtension: ({ format }) => ({ js: format === 'esm' ? '.mjs' : '.cjs' }),
  shims: true,
  target: 'node20',
  platform: 'node',
  clean: true,
  sourcemap: false,
  external: [/\.\.\/index\.js$/],
})
