// ChannelFilter.js — the learned weights of ONE output channel of a conv layer.
// RGB first layers: the channel's single colour tile. Deeper convs: one tile per input channel
// (the slice of the kernel that reads that input). Other layers: says they have no weights.

import * as api from './api.js';
import { download, h, safeName } from './dom.js';
import { GridImage } from './GridImage.js';
import { Legend } from './Legend.js';
import { Panel } from './Panel.js';

const fmt = (x) => (Number.isFinite(x) ? x.toPrecision(3) : '—');

export class ChannelFilter {
  constructor(root) {
    this.panel = new Panel(root, 'Filter weights', { level: 'h3' });
    this.grid = new GridImage({
      label: 'Weights of this channel, one tile per input channel',
      describe: (i) => this.describe(i),
      onPick: (i) => this.grid.select(i),
      onCursor: (i) => this.legend.focus(i),
    });
    this.caption = h('p', { class: 'muted small' });
    this.links = h('div', { class: 'downloads' });
    this.legend = new Legend({ unit: 'input channel' });
    this.panel.body.append(this.grid.el, this.legend.el, this.caption, this.links);
    this.key = null;
    this.stats = null;
  }

  describe(i) {
    const input = this.inputs?.[i] ?? i;
    const s = this.stats;
    if (!s || this.mode === 'rgb') return this.mode === 'rgb' ? 'RGB kernel' : `input channel ${input}`;
    return `input channel ${input}: weights ${fmt(s.min[i])} to ${fmt(s.max[i])}`;
  }

  empty(kind, text) {
    this.key = null;
    this.panel.cancel();
    this.panel.body.hidden = true;
    this.grid.clear();
    this.panel.message(kind, text);
  }

  update({ model, layer, layerInfo, channel, fnorm }) {
    if (!layerInfo) return this.empty('empty', 'Pick a layer.');
    if (!layerInfo.has_filters) {
      return this.empty('info', `${layer} is a ${layerInfo.type}: it has no weights of its own. Its channels come from the conv layer before it.`);
    }
    const kernel = layerInfo.kernel_size ?? [3, 3];
    const k = Math.max(...kernel);
    const pointwise = kernel.every((n) => n === 1);
    const rgb = layerInfo.in_channels === 3 && !layerInfo.depthwise && (layerInfo.groups ?? 1) === 1;
    const params = rgb
      ? { channels: channel, scale: Math.max(1, Math.min(32, Math.floor(144 / k))), background: api.GRID_BACKGROUND }
      : { filter: channel, normalize: pointwise ? 'layer' : fnorm === 'auto' ? null : fnorm, scale: Math.max(1, Math.min(24, Math.floor(24 / k))), background: api.GRID_BACKGROUND };
    const key = JSON.stringify([model, layer, params]);
    if (key === this.key) return;
    this.key = key;
    this.panel.body.hidden = false;
    this.mode = rgb ? 'rgb' : 'slices';
    this.stats = null;
    this.panel.load(async (signal) => {
      const [grid, info] = await Promise.all([
        api.filterGrid(model, layer, params, signal),
        rgb ? null : api.filterValues(model, layer, { filter: channel, normalize: params.normalize, values: false }, signal),
      ]);
      this.inputs = grid.channels;
      this.stats = info?.filter_stats ?? null;
      await this.grid.show(grid.url, grid.grid, grid.channels.length);
      signal.throwIfAborted();
      this.legend.show(grid.scale);
      const size = kernel.join('×');
      if (rgb) {
        this.caption.textContent = `The ${size} kernel of channel ${channel}, its three input slices shown as one RGB tile.`;
      } else if (layerInfo.depthwise) {
        this.caption.textContent = `Depthwise ${size} kernel: channel ${channel} reads only its own input channel.`;
      } else {
        const how = pointwise ? '1×1 weights, shaded across the filter' : `${size} slices`;
        this.caption.textContent = `${grid.channels.length} input channels, ${how}. Hover a tile for its weight range.`;
      }
      const base = safeName(`${model}_${layer}_filter${channel}`);
      this.links.replaceChildren(download(api.urls.filters(model, layer, { ...params, format: 'png' }), 'PNG', `${base}.png`));
    });
  }
}
