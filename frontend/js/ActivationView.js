// ActivationView.js — the feature maps of one layer for one image, as a grid of channels.
// Hover names a channel, click (or Enter) opens it. Emits cs:channel {channel}.

import * as api from './api.js';
import { download, emit, h, safeName } from './dom.js';
import { GridImage, gridSize } from './GridImage.js';
import { Legend } from './Legend.js';
import { Panel } from './Panel.js';

const fmt = (x) => (typeof x === 'number' ? x.toPrecision(3) : '?');

/** Server-side upscaling so that small maps (7×7) stay visible and crisp. */
export function tileScale(height, target) {
  return Math.max(1, Math.min(8, Math.floor(target / Math.max(1, height))));
}

export class ActivationView {
  constructor(root, { title = 'Activations', compact = false } = {}) {
    this.root = root;
    this.compact = compact;
    this.title = title;
    this.panel = new Panel(root, title, { level: compact ? 'h3' : 'h2' });
    this.channels = [];
    this.stats = new Map();
    this.grid = new GridImage({
      label: 'Activation maps, one tile per channel',
      describe: (i) => this.describe(this.channels[i]),
      onPick: (i) => emit(root, 'cs:channel', { channel: this.channels[i] }),
      onCursor: (i) => this.legend.focus(i),
    });
    this.legend = new Legend({ unit: 'channel' });
    this.caption = h('p', { class: 'muted small' });
    this.links = h('div', { class: 'downloads' });
    this.panel.tools.append(this.links);
    this.panel.body.append(this.caption, this.legend.el, this.grid.el);
    this.key = null;
  }

  describe(channel) {
    const s = this.stats.get(channel);
    return s ? `channel ${channel} · mean ${fmt(s.mean)} · max ${fmt(s.max)}` : `channel ${channel}`;
  }

  empty(text) {
    this.key = null;
    this.panel.setTitle(this.title);
    this.panel.cancel();
    this.panel.body.hidden = true;
    this.links.replaceChildren();
    this.grid.clear();
    this.legend.show(null);
    this.panel.message('empty', text);
  }

  update({ model, image, layer, layerInfo, opts, channel }) {
    if (!image) return this.empty('Pick a sample or upload a photo to see this layer’s feature maps.');
    if (!layer || !layerInfo) return this.empty('Pick a layer from the list to see its feature maps.');
    const out = layerInfo.output_shape;
    if (layerInfo.has_activation === false) {
      return this.empty(`${layer} is never called in the forward pass, so it has no feature maps. Pick another layer.`);
    }
    if (Array.isArray(out) && out.length !== 3) {
      return this.empty(`${layer} outputs ${out.join('×')} values, not maps. Pick a convolution, activation or pooling layer above it.`);
    }
    const params = {
      order: opts.order,
      normalize: opts.normalize,
      colormap: opts.colormap,
      limit: opts.limit || null,
      scale: tileScale(out?.[1] ?? 8, this.compact ? 24 : 40),
      background: api.GRID_BACKGROUND,
    };
    const key = JSON.stringify([model, image, layer, params]);
    if (key !== this.key) {
      this.key = key;
      this.panel.body.hidden = false;
      if (!this.compact) this.panel.setTitle(`Feature maps of ${layer}`);
      if (Array.isArray(out)) {
        const count = params.limit ? Math.min(params.limit, out[0]) : out[0];
        this.grid.expect(gridSize(count, out[1] * params.scale, out[2] * params.scale, 2));
      }
      this.load(model, image, layer, out, params);
    }
    this.selected = channel;
    this.grid.select(this.channels.indexOf(channel));
  }

  load(model, image, layer, out, params) {
    this.panel.load(async (signal) => {
      const [grid, stats] = await Promise.all([
        api.activationGrid(model, image, layer, params, signal),
        api.channelStats(model, image, layer, 1, signal),
      ]);
      this.stats = new Map((stats.channels ?? []).map((c) => [c.index, c]));
      this.channels = grid.channels;
      const total = out?.[0] ?? stats.shape?.[0] ?? grid.channels.length;
      await this.grid.show(grid.url, grid.grid, grid.channels.length);
      signal.throwIfAborted();
      this.legend.show(grid.scale, { names: grid.channels });
      this.grid.select(this.channels.indexOf(this.selected));
      const order = params.order === 'mean' ? 'strongest mean activation first' : 'by channel index';
      const map = out ? `${out[1]}×${out[2]}` : '';
      this.caption.textContent = `${grid.channels.length} of ${total} channels, ${order}. Each map is ${map}. Hover to identify a channel, click to open it.`;
      const base = safeName(`${model}_${layer}_${image}`);
      const { scale, ...npyParams } = params;
      this.links.replaceChildren(
        download(api.urls.activations(model, image, layer, { ...params, format: 'png' }), 'PNG', `${base}.png`),
        download(api.urls.activations(model, image, layer, { ...npyParams, format: 'npy' }), 'NPY', `${base}.npy`),
      );
    });
  }
}
