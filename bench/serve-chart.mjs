// Draws the serving benchmark as an SVG: for each weight type, aggregate decode tokens/s against the
// number of concurrent streams, this engine next to llama.cpp. Used by bench/serve.mjs; plain SVG, no
// dependencies (same style as bench/chart.mjs).
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;')
const OURS = '#2b6cb0'
// 1, 2 or 5 times a power of ten, at least x.
function niceStep(x) {
  const p = 10 ** Math.floor(Math.log10(x))
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= x)
}
const PEER = '#c05621'

/** panels: [{ label, peerLabel?, points: [{ streams, ours?, peer? }] }] (tokens/s) */
export function serveSvg(panels, title, subtitle) {
  const panelW = 400
  const panelH = 260
  const cols = Math.min(3, Math.max(1, panels.length))
  const rows = Math.ceil(panels.length / cols)
  const W = Math.max(1000, 40 + cols * (panelW + 30))
  const H = 100 + rows * (panelH + 84)
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`]
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`)
  out.push(`<text x="20" y="24" font-size="15" font-weight="bold">${esc(title)}</text>`)
  out.push(`<text x="20" y="42">${esc(subtitle)}</text>`)
  out.push(`<rect x="20" y="52" width="12" height="12" fill="${OURS}"/><text x="38" y="63">nano-qwen3-serving (one runner, concurrent stream() calls)</text>`)
  out.push(`<rect x="440" y="52" width="12" height="12" fill="${PEER}"/><text x="458" y="63">llama.cpp (node-llama-cpp, one context, a sequence per stream), same weights</text>`)
  panels.forEach((panel, k) => {
    const x0 = 20 + (k % cols) * (panelW + 30)
    const y0 = 90 + Math.floor(k / cols) * (panelH + 84)
    const left = x0 + 50
    const right = x0 + panelW - 10
    const top = y0 + 30
    const bottom = y0 + panelH
    const pts = panel.points
    const step = niceStep(Math.max(1e-9, ...pts.flatMap((p) => [p.ours ?? 0, p.peer ?? 0])) / 4)
    const max = step * Math.max(1, Math.ceil(Math.max(0, ...pts.flatMap((p) => [p.ours ?? 0, p.peer ?? 0])) / step))
    // Streams on evenly spaced positions (1, 4, 8, 16, 32 are close to log-spaced).
    const x = (i) => (pts.length === 1 ? (left + right) / 2 : left + ((right - left) * i) / (pts.length - 1))
    const y = (v) => bottom - ((bottom - top) * v) / max
    out.push(`<text x="${x0}" y="${y0 + 14}" font-weight="bold">${esc(panel.label)}${panel.peerLabel ? ` vs ${esc(panel.peerLabel)}` : ''}: decode tokens/s, all streams</text>`)
    out.push(`<line x1="${left}" y1="${bottom}" x2="${right}" y2="${bottom}" stroke="#888"/>`)
    out.push(`<line x1="${left}" y1="${top}" x2="${left}" y2="${bottom}" stroke="#888"/>`)
    for (let v = 0; v <= max + step / 2; v += step) {
      out.push(`<line x1="${left - 4}" y1="${y(v).toFixed(1)}" x2="${right}" y2="${y(v).toFixed(1)}" stroke="#eee"/>`)
      out.push(`<text x="${left - 8}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${+v.toFixed(6)}</text>`)
    }
    pts.forEach((p, i) => {
      out.push(`<text x="${x(i).toFixed(1)}" y="${bottom + 16}" text-anchor="middle">${p.streams}</text>`)
      // ours / peer under each stream count.
      if (p.ours !== undefined && p.peer) out.push(`<text x="${x(i).toFixed(1)}" y="${bottom + 30}" text-anchor="middle" fill="#555">${(p.ours / p.peer).toFixed(2)}x</text>`)
    })
    out.push(`<text x="${(left + right) / 2}" y="${bottom + 48}" text-anchor="middle">concurrent streams (below: ours / llama.cpp)</text>`)
    for (const [key, other, color] of [
      ['ours', 'peer', OURS],
      ['peer', 'ours', PEER],
    ]) {
      const line = pts.map((p, i) => [i, p[key]]).filter(([, v]) => v !== undefined)
      if (!line.length) continue
      out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${line.map(([i, v]) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ')}"/>`)
      for (const [i, v] of line) {
        // The higher of the two values labelled above its point, the lower below.
        const dy = v >= (pts[i][other] ?? -Infinity) ? -8 : 16
        out.push(`<circle cx="${x(i).toFixed(1)}" cy="${y(v).toFixed(1)}" r="3" fill="${color}"/>`)
        // The first point's label right of it, clear of the axis.
        const [lx, anchor] = i === 0 && line.length > 1 ? [x(i) + 5, 'start'] : [x(i), 'middle']
        out.push(`<text x="${lx.toFixed(1)}" y="${(y(v) + dy).toFixed(1)}" text-anchor="${anchor}" fill="${color}">${v.toFixed(1)}</text>`)
      }
    }
  })
  out.push('</svg>')
  return out.join('\n')
}
