// ComparePane.js — two images side by side at the same layer: input, feature maps, top-3.
// Built from the same views as the single view; their events bubble through unchanged.

import { h } from './dom.js';
import { ActivationView } from './ActivationView.js';
import { InputView } from './InputView.js';
import { Predictions } from './Predictions.js';

function column() {
  const name = h('h3', { class: 'compare-name' });
  const input = h('section', { class: 'subpanel' });
  const acts = h('section', { class: 'subpanel compare-acts' });
  const preds = h('section', { class: 'subpanel' });
  return {
    el: h('div', { class: 'compare-col' }, name, h('div', { class: 'compare-top' }, input, preds), acts),
    name,
    input: new InputView(input, { title: 'Input', compact: true }),
    acts: new ActivationView(acts, { title: 'Feature maps', compact: true }),
    preds: new Predictions(preds, { top: 3, compact: true }),
  };
}

export class ComparePane {
  constructor(root) {
    this.root = root;
    this.cols = [column(), column()];
    root.replaceChildren(h('div', { class: 'columns' }, this.cols.map((c) => c.el)));
  }

  update({ model, modelInfo, layer, layerInfo, images, opts, channel }) {
    this.root.hidden = images.length < 2;
    if (this.root.hidden) return;
    images.forEach((image, i) => {
      const c = this.cols[i];
      c.name.textContent = image.name;
      c.input.update({ model, image: image.id, modelInfo });
      c.preds.update({ model, image: image.id, modelInfo });
      c.acts.update({ model, image: image.id, layer, layerInfo, opts, channel });
    });
  }
}
