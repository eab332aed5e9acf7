// InputView.js — the picture exactly as the network sees it (after resize and crop).

import * as api from './api.js';
import { download, h, safeName } from './dom.js';
import { Panel } from './Panel.js';

export class InputView {
  constructor(root, { title = 'Network input', compact = false } = {}) {
    this.panel = new Panel(root, title, { level: compact ? 'h3' : 'h2' });
    this.img = h('img', { class: 'input-img', alt: 'The image after the model’s preprocessing' });
    this.caption = h('p', { class: 'muted small' });
    this.links = h('div', { class: 'downloads' });
    this.panel.body.append(h('figure', { class: 'input-figure' }, this.img, h('figcaption', {}, this.caption, this.links)));
    this.key = null;
  }

  update({ model, image, modelInfo }) {
    const key = JSON.stringify([model, image]);
    if (key === this.key) return;
    this.key = key;
    this.panel.body.hidden = !image;
    if (!model || !image) {
      this.panel.cancel();
      this.panel.message('empty', 'Pick a sample or upload a photo, and the resized, cropped input appears here.');
      return;
    }
    this.panel.load(async (signal) => {
      const { url } = await api.inputImage(model, image, signal);
      const old = this.img.src;
      this.img.src = url;
      if (old.startsWith('blob:')) URL.revokeObjectURL(old);
      const size = modelInfo?.input_size?.join('×');
      this.caption.textContent = size ? `${size} pixels, after resize and center crop` : 'after resize and crop';
      const base = safeName(`${model}_${image}_input`);
      this.links.replaceChildren(
        download(api.urls.input(model, image, 'png'), 'PNG', `${base}.png`),
        download(api.urls.input(model, image, 'npy'), 'NPY', `${base}.npy`),
      );
    });
  }
}
