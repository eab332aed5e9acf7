// ChannelView.js — the opened channel: step through channels, set overlay opacity, download.
// Shows one ChannelMap per image (two in compare mode).
// Emits cs:channel {channel|null} and cs:option {key: 'opacity', value, replace: true}.

import * as api from './api.js';
import { download, emit, h, safeName } from './dom.js';
import { ChannelMap } from './ChannelMap.js';
import { Panel } from './Panel.js';

export class ChannelView {
  constructor(root) {
    this.root = root;
    this.panel = new Panel(root, 'Channel');
    this.maps = [];
    this.number = h('input', {
      id: 'channel-number',
      type: 'number',
      min: 0,
      step: 1,
      onchange: () => this.go(Number(this.number.value)),
    });
    this.opacity = h('input', {
      id: 'overlay-opacity',
      type: 'range',
      min: 0,
      max: 100,
      step: 5,
      oninput: () => this.maps.forEach((m) => m.setOpacity(this.opacity.value / 100)),
      onchange: () => emit(root, 'cs:option', { key: 'opacity', value: this.opacity.value / 100, replace: true }),
    });
    this.links = h('div', { class: 'downloads' });
    this.panel.tools.append(
      h('button', { type: 'button', class: 'btn btn-small', 'aria-label': 'Previous channel', text: '‹ Prev', onclick: () => this.go(this.channel - 1) }),
      h('label', { class: 'field field-inline field-narrow', for: 'channel-number' }, h('span', { class: 'field-label', text: 'Channel' }), this.number),
      h('button', { type: 'button', class: 'btn btn-small', 'aria-label': 'Next channel', text: 'Next ›', onclick: () => this.go(this.channel + 1) }),
      h('label', { class: 'field field-inline', for: 'overlay-opacity' }, h('span', { class: 'field-label', text: 'Overlay opacity' }), this.opacity),
      h('button', { type: 'button', class: 'btn btn-small btn-ghost', text: 'Close', onclick: () => emit(root, 'cs:channel', { channel: null }) }),
    );
    this.columns = h('div', { class: 'columns' });
    this.panel.body.append(this.columns, this.links);
  }

  go(channel) {
    if (Number.isInteger(channel) && channel >= 0 && channel < this.count) emit(this.root, 'cs:channel', { channel });
  }

  update({ model, images, layer, layerInfo, channel, opts }) {
    const out = layerInfo?.output_shape;
    const open = channel !== null && images.length > 0 && layer && Array.isArray(out) && out.length === 3;
    this.root.hidden = !open;
    if (!open) return;
    this.channel = channel;
    this.count = out[0];
    this.panel.setTitle(`Channel ${channel} of ${layer}`);
    this.number.max = String(this.count - 1);
    this.number.value = String(channel);
    this.opacity.value = String(Math.round(opts.opacity * 100));

    if (this.maps.length !== images.length) {
      this.maps = images.map(() => new ChannelMap(h('section', { class: 'subpanel' }), { title: '' }));
      this.columns.replaceChildren(...this.maps.map((m) => m.panel.root));
    }
    images.forEach(({ id, name }, i) => {
      this.maps[i].panel.setTitle(name);
      this.maps[i].update({ model, image: id, layer, channel, colormap: opts.colormap, normalize: opts.normalize, opacity: opts.opacity, height: out[1] });
    });
    const first = images[0].id;
    const base = safeName(`${model}_${layer}_c${channel}_${first}`);
    this.links.replaceChildren(
      download(api.urls.activations(model, first, layer, { format: 'png', channels: channel, colormap: opts.colormap, normalize: opts.normalize, scale: 8, padding: 0 }), 'PNG', `${base}.png`),
      download(api.urls.activations(model, first, layer, { format: 'npy', channels: channel }), 'NPY', `${base}.npy`),
    );
  }
}
