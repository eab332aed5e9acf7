// Controls.js — display options shared by every activation view: channel order, how many,
// normalisation and colormap. Emits cs:option {key, value}.

import { emit, h, select } from './dom.js';
import { OPTIONS } from './state.js';

const LABELS = {
  order: { index: 'Channel index', mean: 'Mean, highest first' },
  normalize: { channel: 'Per channel', layer: 'Across the layer' },
  colormap: { viridis: 'Viridis', magma: 'Magma', inferno: 'Inferno', gray: 'Gray' },
};

export class Controls {
  constructor(root) {
    this.root = root;
    this.key = null;
  }

  field(key, label, value, options) {
    return select({
      id: `opt-${key}`,
      label,
      value,
      options,
      className: 'field field-inline',
      onchange: (v) => emit(this.root, 'cs:option', { key, value: key === 'limit' ? Number(v) : v }),
    });
  }

  update(state) {
    const key = JSON.stringify([state.order, state.limit, state.normalize, state.colormap]);
    if (key === this.key) return;
    this.key = key;
    const named = (name) => OPTIONS[name].map((v) => [v, LABELS[name][v]]);
    this.root.replaceChildren(
      this.field('order', 'Sort by', state.order, named('order')),
      this.field('limit', 'Show', state.limit, OPTIONS.limit.map((n) => [n, n ? `${n} channels` : 'All channels'])),
      this.field('normalize', 'Normalise', state.normalize, named('normalize')),
      this.field('colormap', 'Colormap', state.colormap, named('colormap')),
    );
  }
}
