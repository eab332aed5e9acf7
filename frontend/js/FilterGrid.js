// FilterGrid.js — the learned kernels of a conv layer, one tile per output channel.
// Hover names the filter (tile position from the JSON layout); click enlarges it.
// Emits cs:option {key: 'fnorm'}.

import * as api from './api.js';
import { download, emit, h, safeName, select } from './dom.js';
import { GridImage, gridSize } from './GridImage.js';
import { Legend } from './Legend.js';
import { Panel } from './Panel.js';

const fmt = (x) => (Number.isFinite(x) ? x.toPrecision(3) : '—');

export class FilterGrid {
  constructor(root) {
    this.root = root;
    this.panel = new Panel(root, 'Filters');
    this.grid = new GridImage({
      label: 'Conv filters, one tile per output channel',
      describe: (i) => `filter ${i}`,
      onPick: (i) => this.enlarge(i),
      onCursor: (i) => this.legend.focus(i),
    });
    this.legend = new Legend({ unit: 'filter' });
    this.canvas = h('canvas', { class: 'filter-zoom', width: 160, height: 160, 'aria-label': 'Enlarged filter' });
    this.zoomText = h('p', { class: 'small' });
    this.zoom = h('figure', { class: 'zoom', hidden: true }, this.canvas, h('figcaption', {}, this.zoomText));
    this.caption = h('p', { class: 'muted small' });
    this.links = h('div', { class: 'downloads' });
    this.norm = h('div');
    this.panel.tools.append(this.norm, this.links);
    this.panel.body.append(this.caption, this.legend.el, h('div', { class: 'filters-body' }, this.grid.el, this.zoom));
    this.key = null;
  }

  empty(text) {
    this.key = null;
    this.panel.setTitle('Filters');
    this.legend.show(null);
    this.caption.textContent = '';
    this.panel.cancel();
    this.panel.body.hidden = true;
    this.norm.replaceChildren();
    this.links.replaceChildren();
    this.grid.clear();
    this.panel.message('empty', text);
  }

  update({ model, layer, layerInfo, fnorm }) {
    if (!layer || !layerInfo) return this.empty('Pick a layer to see its filters.');
    if (!layerInfo.has_filters) {
      return this.empty(`${layer} is a ${layerInfo.type}, which has no filters. Conv layers are marked with a dot in the list.`);
    }
    const k = layerInfo.kernel_size?.[0] ?? layerInfo.kernel_size ?? 3;
    // A 1×1 kernel normalised on its own is always one flat colour: compare across the layer.
    const pointwise = (layerInfo.kernel_size ?? [k]).every((n) => n === 1);
    // 'auto' leaves it to the server: per filter where a tile is a picture, layer-wide for
    // 1×1 kernels and reductions over input channels (per tile those show only signs).
    const normalize = pointwise ? 'layer' : fnorm === 'auto' ? null : fnorm;
    const params = { normalize, scale: Math.max(1, Math.min(16, Math.floor(28 / k))), background: api.GRID_BACKGROUND };
    const key = JSON.stringify([model, layer, params]);
    if (key === this.key) return;
    this.key = key;
    this.model = model;
    this.layer = layer;
    this.panel.body.hidden = false;
    this.panel.setTitle(`Filters of ${layer}`);
    this.norm.replaceChildren(
      select({
        id: 'opt-fnorm',
        label: 'Normalise',
        value: normalize ?? 'auto',
        options: [['auto', 'Automatic'], ['filter', 'Per filter'], ['layer', 'Across the layer']],
        onchange: (value) => emit(this.root, 'cs:option', { key: 'fnorm', value }),
      }),
    );
    this.norm.querySelector('select').disabled = pointwise;
    this.zoom.hidden = true;
    this.params = params;
    this.values = null;
    if (layerInfo.out_channels) {
      const [kh, kw] = layerInfo.kernel_size ?? [k, k];
      this.grid.expect(gridSize(layerInfo.out_channels, kh * params.scale, kw * params.scale, 1));
    }
    this.panel.load(async (signal) => {
      const { url, channels, grid, scale } = await api.filterGrid(model, layer, params, signal);
      this.channels = channels;
      await this.grid.show(url, grid, channels.length);
      signal.throwIfAborted();
      this.legend.show(scale, { names: channels });
      const size = layerInfo.kernel_size?.join('×') ?? k;
      const how = layerInfo.depthwise || layerInfo.groups > 1
        ? 'depthwise, one input channel each'
        : layerInfo.in_channels === 3 ? 'shown as RGB' : `averaged over ${layerInfo.in_channels} input channels`;
      this.caption.textContent = `${channels.length} filters of ${size}, ${how}. Click a filter to enlarge it.`;
      const base = safeName(`${model}_${layer}_filters`);
      this.links.replaceChildren(
        download(api.urls.filters(model, layer, { ...params, format: 'png' }), 'PNG', `${base}.png`),
        download(api.urls.filters(model, layer, { format: 'npy' }), 'NPY', `${base}.npy`),
      );
    });
  }

  enlarge(index) {
    const L = this.grid.layout;
    if (!L) return;
    this.grid.select(index);
    const ctx = this.canvas.getContext('2d');
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    const col = index % L.cols;
    const row = Math.floor(index / L.cols);
    const sx = L.offset + col * (L.tileWidth + L.padding);
    const sy = L.offset + row * (L.tileHeight + L.padding);
    ctx.drawImage(this.grid.img, sx, sy, L.tileWidth, L.tileHeight, 0, 0, this.canvas.width, this.canvas.height);
    const filter = this.channels?.[index] ?? index;
    this.zoomText.textContent = `Filter ${filter}`;
    this.zoom.hidden = false;
    this.loadRange(index, filter);
  }

  /** Weight range of one filter, from the JSON stats (fetched once per layer, on demand). */
  async loadRange(index, filter) {
    const key = this.key;
    try {
      this.values ??= api.filterValues(this.model, this.layer, this.params);
      const info = await this.values;
      const stats = info.filter_stats;
      if (key !== this.key || !stats) return;
      const at = info.channels?.indexOf(filter) ?? index;
      this.zoomText.textContent = `Filter ${filter}: weights from ${fmt(stats.min[at])} to ${fmt(stats.max[at])}, mean ${fmt(stats.mean[at])}`;
    } catch {
      this.values = null; // the enlarged tile is still useful without its numbers
    }
  }
}
