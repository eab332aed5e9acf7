// CamStrip.js — Grad-CAM of the image for its top classes, side by side, each labelled with
// the class name and probability: where the network looked for each of its best guesses.

import * as api from './api.js';
import { h } from './dom.js';
import { Panel } from './Panel.js';

export const percent = (p) => `${(p * 100).toFixed(p >= 0.1 ? 0 : 1)}%`;

export class CamStrip {
  constructor(root, { top = 3 } = {}) {
    this.top = top;
    this.panel = new Panel(root, `Grad-CAM for the top ${top} classes`, { level: 'h3' });
    this.figures = h('div', { class: 'cam-strip' });
    this.caption = h('p', { class: 'muted small' });
    this.panel.body.append(this.figures, this.caption);
    this.key = null;
    this.urls = [];
  }

  clear() {
    this.urls.forEach((u) => URL.revokeObjectURL(u));
    this.urls = [];
    this.figures.replaceChildren();
  }

  update({ model, image, imageName, modelInfo }) {
    const key = JSON.stringify([model, image]);
    if (key === this.key) return;
    this.key = key;
    this.clear();
    this.caption.textContent = '';
    if (!image) {
      this.panel.cancel();
      this.panel.message('empty', 'Pick an image to see where the network looks for its top classes.');
      return;
    }
    if (modelInfo && !modelInfo.num_classes) {
      this.panel.cancel();
      this.panel.message('info', 'This model has no classes, so there is no Grad-CAM.');
      return;
    }
    this.panel.setTitle(`Grad-CAM for the top ${this.top} classes${imageName ? ` of ${imageName}` : ''}`);
    this.panel.load(async (signal) => {
      const rows = await api.predictions(model, image, this.top, signal);
      const cams = await Promise.all(rows.map((row) => api.camImage(model, image, { class_index: row.index, alpha: 0.5 }, signal)));
      this.urls = cams.map((c) => c.url);
      this.figures.replaceChildren(
        ...rows.map((row, i) => {
          const name = row.label ?? `class ${row.index}`;
          return h(
            'figure',
            { class: 'cam-figure' },
            h('img', { class: 'cam-img', src: cams[i].url, alt: `Grad-CAM for ${name}` }),
            h('figcaption', {}, h('span', { class: 'cam-label', text: name }), h('span', { class: 'cam-prob', text: percent(row.probability) })),
          );
        }),
      );
      const layer = cams[0]?.layer;
      this.caption.textContent = `Red: regions that raise the class score${layer ? `, seen at layer ${layer}` : ''}.`;
    });
  }
}
