// Legend.js — what a view's colours mean in numbers: a colour bar between the values at its
// two ends, read from the server's X-Convscope-Scale headers (api.scaleOf). One range for a
// layer-wide or single map; one per tile otherwise, shown for the tile under the cursor.

import { colourAt } from './colormaps.js';
import { h } from './dom.js';

export const fmt = (x) => {
  if (!Number.isFinite(x)) return '—';
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? x.toExponential(2) : String(Number(x.toPrecision(3)));
};

export class Legend {
  constructor({ unit = 'tile' } = {}) {
    this.unit = unit;
    this.scale = null;
    this.canvas = h('canvas', { width: 128, height: 1, 'aria-hidden': 'true' });
    this.low = h('span', { class: 'legend-low' });
    this.high = h('span', { class: 'legend-high' });
    this.label = h('span', { class: 'legend-label' });
    this.el = h('div', { class: 'legend', role: 'img', hidden: true }, this.low, this.canvas, this.high, this.label);
  }

  /** Draw `scale` ({mode, colormap, low: number[], high: number[]}); null hides the legend. */
  show(scale, { names } = {}) {
    this.scale = scale;
    this.names = names ?? null;
    this.el.hidden = !scale || !scale.low.length;
    if (this.el.hidden) return;
    this.el.dataset.mode = scale.mode;
    this.el.dataset.colormap = scale.colormap;
    const ctx = this.canvas.getContext('2d');
    const image = ctx.createImageData(this.canvas.width, 1);
    for (let x = 0; x < this.canvas.width; x++) {
      const [r, g, b] = colourAt(scale.colormap, x / (this.canvas.width - 1));
      image.data.set([r, g, b, 255], x * 4);
    }
    ctx.putImageData(image, 0, 0);
    this.focus(-1);
  }

  /** Show the range of tile `index` (per-tile scales), or the whole picture for -1. */
  focus(index) {
    const s = this.scale;
    if (!s) return;
    const perTile = s.low.length > 1 || s.mode === 'channel' || s.mode === 'filter';
    let low;
    let high;
    let label;
    const what = this.unit;
    if (!perTile) {
      [low, high] = [s.low[0], s.high[0]];
      label = s.mode === 'layer' ? 'one scale for the whole layer' : '';
    } else if (index >= 0 && index < s.low.length) {
      [low, high] = [s.low[index], s.high[index]];
      label = `${what} ${this.names?.[index] ?? index}`;
    } else if (s.low.length === 1) {
      [low, high] = [s.low[0], s.high[0]];
      label = '';
    } else {
      low = Math.min(...s.low);
      high = Math.max(...s.high);
      label = `each ${what} scaled to its own range; hover a tile for its numbers`;
    }
    this.low.textContent = fmt(low);
    this.high.textContent = fmt(high);
    this.label.textContent = label;
    this.el.dataset.low = String(low);
    this.el.dataset.high = String(high);
    this.el.setAttribute('aria-label', `Colour scale from ${fmt(low)} to ${fmt(high)}${label ? `, ${label}` : ''}`);
  }
}
