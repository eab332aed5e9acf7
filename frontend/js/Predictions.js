// Predictions.js — the model's top-k classes for the image, as labelled bars.

import * as api from './api.js';
import { h } from './dom.js';
import { Panel } from './Panel.js';

const percent = (p) => `${(p * 100).toFixed(p >= 0.1 ? 0 : 1)}%`;

export class Predictions {
  constructor(root, { top = 5, compact = false } = {}) {
    this.top = top;
    this.panel = new Panel(root, `Top-${top} predictions`, { level: compact ? 'h3' : 'h2' });
    this.list = h('ol', { class: 'predictions' });
    this.panel.body.append(this.list);
    this.key = null;
  }

  update({ model, image, modelInfo }) {
    const key = JSON.stringify([model, image]);
    if (key === this.key) return;
    this.key = key;
    this.list.replaceChildren();
    if (!model || !image) {
      this.list.style.minHeight = '';
      this.panel.cancel();
      this.panel.message('empty', 'Predictions appear once you pick an image.');
      return;
    }
    if (modelInfo && !modelInfo.num_classes) {
      this.list.style.minHeight = '';
      this.panel.message('info', 'This model has no class labels.');
      return;
    }
    // While the rows load, the list keeps their height (a row is 2.6em with the gap).
    this.list.style.minHeight = `calc(${this.top} * 2.6em - 0.6em)`;
    this.panel.load(async (signal) => {
      const rows = await api.predictions(model, image, this.top, signal);
      this.list.replaceChildren(
        ...rows.map((row) => {
          const bar = h('span', { class: 'bar-fill' });
          bar.style.width = `${Math.max(0.5, row.probability * 100)}%`;
          return h(
            'li',
            { class: 'prediction', title: `class ${row.index}` },
            h('span', { class: 'prediction-label', text: row.label ?? `class ${row.index}` }),
            h('span', { class: 'prediction-value', text: percent(row.probability) }),
            h('span', { class: 'bar', 'aria-hidden': 'true' }, bar),
          );
        }),
      );
    });
  }
}
