// Draws bench results as an SVG bar chart: for each configuration, this engine next to llama.cpp,
// prefill and decode tokens/s side by side. Used by bench/run.mjs; plain SVG, no dependencies.
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;')

/** rows: [{ label, ours: { prefill, decode }, peer?: { label, prefill, decode } }] */
export function comparisonSvg(rows, title) {
  const panels = [
    ['prefill tokens/s (512-token prompt)', 'prefill'],
    ['decode tokens/s (batch 1)', 'decode'],
  ]
  const W = 860
  const panelW = 400
  const H = 90 + rows.length * 44
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`]
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`)
  out.push(`<text x="20" y="24" font-size="15" font-weight="bold">${esc(title)}</text>`)
  out.push(`<rect x="20" y="34" width="12" height="12" fill="#2b6cb0"/><text x="38" y="45">nano-qwen3-serving</text>`)
  out.push(`<rect x="180" y="34" width="12" height="12" fill="#c05621"/><text x="198" y="45">llama.cpp (node-llama-cpp), same weights</text>`)
  panels.forEach(([name, key], p) => {
    const x0 = 20 + p * (panelW + 40)
    const max = Math.max(1, ...rows.flatMap((r) => [r.ours[key], r.peer?.[key] ?? 0]))
    out.push(`<text x="${x0}" y="72" font-weight="bold">${esc(name)}</text>`)
    rows.forEach((r, i) => {
      const y = 84 + i * 44
      const scale = (v) => ((panelW - 220) * v) / max
      out.push(`<text x="${x0}" y="${y + 14}">${esc(r.label)}</text>`)
      out.push(`<rect x="${x0 + 110}" y="${y}" width="${scale(r.ours[key]).toFixed(1)}" height="16" fill="#2b6cb0"/>`)
      out.push(`<text x="${(x0 + 114 + scale(r.ours[key])).toFixed(1)}" y="${y + 12}">${r.ours[key].toFixed(1)}</text>`)
      if (r.peer) {
        out.push(`<rect x="${x0 + 110}" y="${y + 18}" width="${scale(r.peer[key]).toFixed(1)}" height="16" fill="#c05621"/>`)
        out.push(
          `<text x="${(x0 + 114 + scale(r.peer[key])).toFixed(1)}" y="${y + 30}">${r.peer[key].toFixed(1)} ${esc(r.peer.label)} (${(r.ours[key] / r.peer[key]).toFixed(2)}x)</text>`,
        )
      }
    })
  })
  out.push('</svg>')
  return out.join('\n')
}
