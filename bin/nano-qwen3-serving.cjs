#!/usr/bin/env node
const { main } = require('../dist/cli.cjs')
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`error${e.code ? ` [${e.code}]` : ''}: ${e.message}`)
    process.exit(1)
  },
)
