// CompareView.js — two checkpoints of one architecture, layer by layer (issue #12).
// A table of where the weights and (on the current image) the activations differ, the first
// changed layer marked; a row opens that layer. With a channel open: the same channel's filter,
// feature map and expanded weights for both models side by side.
// Emits cs:option {key: 'vs', value} and cs:layer {layer}.

import * as api from './api.js';
import { emit, h } from './dom.js';
import { Panel } from './Panel.js';

const num = (x, digits = 3) => (Number.isFinite(x) ? x.toPrecision(digits) : '—');

export class CompareView {
  constructor(root) {
    this.root = root;
    this.panel = new Panel(root, 'Compare two models');
    this.picker = h('select', { id: 'vs-model', onchange: (e) => emit(root, 'cs:option', { key: 'vs', value: e.target.value || null }) });
    this.panel.tools.append(h('label', { class: 'field field-inline', for: 'vs-model' }, h('span', { class: 'field-label', text: 'against' }), this.picker));
    this.summary = h('p', { class: 'muted small' });
    this.side = h('div', { class: 'mc-side' });
    this.table = h('table', { class: 'mc-table' });
    this.panel.body.append(this.summary, this.side, h('div', { class: 'mc-scroll' }, this.table));
    this.key = null;
  }

  update({ model, models, vs, image, layer, layerInfo, channel, channelOpen }) {
    const options = (models ?? []).filter((m) => m.available && m.name !== model);
    this.picker.replaceChildren(h('option', { value: '', text: '— pick a model —' }), ...options.map((m) => h('option', { value: m.name, text: m.name })));
    this.picker.value = vs ?? '';
    this.root.classList.toggle('mc-off', !vs);
    this.renderSide({ model, vs, image, layer, channel, channelOpen, hasFilters: Boolean(layerInfo?.has_filters) });
    if (!vs) {
      this.key = null;
      this.table.replaceChildren();
      this.summary.textContent = 'Pick a second checkpoint of the same architecture (a fine-tuned model, another epoch) to see where it differs.';
      return;
    }
    const key = JSON.stringify([model, vs, image]);
    if (key === this.key) return this.mark(layer);
    this.key = key;
    this.panel.load(async (signal) => {
      const result = await api.compareModels(model, vs, image, signal);
      const first = result.first_weight_change ?? 'none';
      const firstAct = result.first_activation_change ?? 'none';
      this.summary.textContent = `Weights first differ at ${first}; activations${image ? ' on this image' : ''} first differ at ${firstAct}. Click a row to open the layer.`;
      const head = h('tr', {}, ...['layer', 'weight change', 'filter cosine', 'CKA', 'activation change'].map((t) => h('th', { text: t })));
      const rows = result.layers.map((r) =>
        h(
          'tr',
          {
            class: [r.layer === result.first_weight_change || r.layer === result.first_activation_change ? 'mc-first' : '', (r.weight_change ?? 0) > 0 || (r.activation_change ?? 0) > 0 ? 'mc-changed' : ''].join(' ').trim(),
            dataset: { layer: r.layer },
            tabIndex: 0,
            onclick: () => emit(this.root, 'cs:layer', { layer: r.layer }),
            onkeydown: (e) => e.key === 'Enter' && emit(this.root, 'cs:layer', { layer: r.layer }),
          },
          h('td', { text: r.layer }),
          h('td', { text: r.weight_change === undefined ? '' : num(r.weight_change) }),
          h('td', { text: r.filter_cosine === undefined || r.filter_cosine === null ? '' : num(r.filter_cosine, 5) }),
          h('td', { text: r.cka === undefined || r.cka === null ? '' : num(r.cka, 5) }),
          h('td', { text: r.activation_change === undefined ? '' : num(r.activation_change) }),
        ),
      );
      this.table.replaceChildren(h('thead', {}, head), h('tbody', {}, ...rows));
      this.mark(layer);
    });
  }

  mark(layer) {
    for (const row of this.table.querySelectorAll('tbody tr')) row.classList.toggle('mc-selected', row.dataset.layer === layer);
  }

  renderSide({ model, vs, image, layer, channel, channelOpen, hasFilters }) {
    if (!vs || !channelOpen) {
      this.side.replaceChildren();
      return;
    }
    const column = (name) => {
      const imgs = [h('img', { class: 'mc-img', alt: `Expanded weights of ${name}`, src: api.urls.expanded(name, layer, { channel, format: 'png' }) })];
      if (hasFilters) imgs.push(h('img', { class: 'mc-img', alt: `Filter of ${name}`, src: api.urls.filters(name, layer, { channels: channel, format: 'png', scale: 16 }) }));
      if (image) imgs.push(h('img', { class: 'mc-img', alt: `Feature map of ${name}`, src: api.urls.activations(name, image, layer, { format: 'png', channels: channel, scale: 4, padding: 0 }) }));
      return h('figure', { class: 'mc-col' }, h('figcaption', { text: `${name}: channel ${channel} of ${layer}` }), ...imgs);
    };
    this.side.replaceChildren(column(model), column(vs));
  }
}
