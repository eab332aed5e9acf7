// ChannelMap.js — one channel of one image, large: the map in the chosen colormap with the
// value under the cursor, and the same map laid over the network input with adjustable opacity.

import * as api from './api.js';
import { h } from './dom.js';
import { Legend } from './Legend.js';
import { Panel } from './Panel.js';

const fmt = (x) => (Number.isFinite(x) ? x.toFixed(4) : '—');

export class ChannelMap {
  constructor(root, { title }) {
    this.panel = new Panel(root, title, { level: 'h3' });
    this.map = h('img', { class: 'channel-img', alt: 'Channel activation map', draggable: 'false' });
    this.readout = h('output', { class: 'readout', text: 'Point at the map to read values.' });
    this.base = h('img', { class: 'overlay-base', alt: 'Network input' });
    this.top = h('img', { class: 'overlay-top', alt: '' });
    this.stats = h('dl', { class: 'stats' });
    this.values = null;
    this.legend = new Legend({ unit: 'channel' });
    this.map.addEventListener('pointermove', (e) => this.point(e));
    this.map.addEventListener('pointerleave', () => {
      this.readout.textContent = 'Point at the map to read values.';
    });
    this.panel.body.append(
      h(
        'div',
        { class: 'channel-maps' },
        h('figure', { class: 'channel-figure' }, this.map, h('figcaption', {}, this.legend.el, this.readout)),
        h('figure', { class: 'channel-figure overlay' }, h('div', { class: 'overlay-stack' }, this.base, this.top), h('figcaption', { class: 'muted small', text: 'Over the network input' })),
      ),
      this.stats,
    );
    this.key = null;
  }

  setOpacity(opacity) {
    this.top.style.opacity = String(opacity);
  }

  point(event) {
    const v = this.values;
    if (!v?.width) return;
    const box = this.map.getBoundingClientRect();
    const x = Math.min(v.width - 1, Math.max(0, Math.floor(((event.clientX - box.left) / box.width) * v.width)));
    const y = Math.min(v.height - 1, Math.max(0, Math.floor(((event.clientY - box.top) / box.height) * v.height)));
    this.readout.textContent = `x ${x}, y ${y}: ${fmt(v.values[y * v.width + x])}`;
  }

  swap(img, url) {
    const old = img.src;
    img.src = url;
    if (old.startsWith('blob:')) URL.revokeObjectURL(old);
  }

  update({ model, image, layer, channel, colormap, normalize, opacity, height }) {
    this.setOpacity(opacity);
    const key = JSON.stringify([model, image, layer, channel, colormap, normalize]);
    if (key === this.key) return;
    this.key = key;
    const one = { channels: String(channel), colormap, normalize, padding: 0 };
    const scale = Math.max(1, Math.min(32, Math.floor(280 / Math.max(1, height ?? 28))));
    this.panel.load(async (signal) => {
      const [big, soft, values] = await Promise.all([
        api.activationGrid(model, image, layer, { ...one, scale }, signal),
        api.activationGrid(model, image, layer, { ...one, scale: 1 }, signal),
        api.channelValues(model, image, layer, channel, signal),
      ]);
      this.values = values;
      this.swap(this.map, big.url);
      this.legend.show(big.scale);
      this.swap(this.top, soft.url);
      this.base.src = api.urls.input(model, image);
      this.stats.replaceChildren(
        ...[['min', values.min], ['max', values.max], ['mean', values.mean], ['std', values.std]].flatMap(([k, x]) => [
          h('dt', { text: k }),
          h('dd', { text: fmt(x) }),
        ]),
      );
    });
  }
}
