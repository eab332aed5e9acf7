// ImagePicker.js — bundled samples and uploads as thumbnails; upload by button, drag and drop
// or paste. Also picks the second image for compare mode.
// Uploads are private to the browser that sent them (the server keys them to it) and can be
// deleted from here. Emits cs:image {image}, cs:uploaded {image}, cs:deleted {image},
// cs:compare {image|null}.

import * as api from './api.js';
import { emit, h } from './dom.js';
import { describeError, Panel } from './Panel.js';

export class ImagePicker {
  constructor(root) {
    this.root = root;
    this.panel = new Panel(root, 'Image');
    root.classList.add('keeps-body');
    this.images = null;
    this.key = null;
    this.selected = null;
    this.file = h('input', {
      id: 'image-file',
      class: 'visually-hidden',
      type: 'file',
      accept: 'image/*',
      onchange: () => {
        if (this.file.files?.[0]) this.upload(this.file.files[0]);
        this.file.value = '';
      },
    });
    this.compare = h('select', {
      id: 'compare-select',
      onchange: (e) => emit(root, 'cs:compare', { image: e.target.value || null }),
    });
    this.thumbs = h('ul', { class: 'thumbs', 'aria-label': 'Images' });
    this.drop = h(
      'div',
      { class: 'dropzone' },
      this.file,
      h('label', { for: 'image-file', class: 'btn btn-primary', text: 'Upload a photo' }),
      h('span', { class: 'muted small', text: 'or drop an image here, or paste one (Ctrl+V)' }),
    );
    this.panel.tools.append(
      h('label', { class: 'field field-inline', for: 'compare-select' }, h('span', { class: 'field-label', text: 'Compare with' }), this.compare),
    );
    this.panel.body.append(h('div', { class: 'image-row' }, this.thumbs, this.drop));

    for (const type of ['dragenter', 'dragover']) {
      root.addEventListener(type, (e) => {
        if (![...(e.dataTransfer?.types ?? [])].includes('Files')) return;
        e.preventDefault();
        root.classList.add('is-dragging');
      });
    }
    root.addEventListener('dragleave', (e) => {
      if (!root.contains(e.relatedTarget)) root.classList.remove('is-dragging');
    });
    root.addEventListener('drop', (e) => {
      e.preventDefault();
      root.classList.remove('is-dragging');
      const file = e.dataTransfer?.files?.[0];
      if (file) this.upload(file);
    });
    window.addEventListener('paste', (e) => {
      const file = [...(e.clipboardData?.files ?? [])].find((f) => f.type.startsWith('image/'));
      if (!file) return;
      e.preventDefault();
      this.upload(file);
    });
  }

  async upload(file) {
    await this.panel.load(async (signal) => {
      const image = await api.uploadImage(file, signal);
      emit(this.root, 'cs:uploaded', { image: image.id });
    });
  }

  async remove(image) {
    await this.panel.load(async (signal) => {
      await api.deleteImage(image.id, signal);
      emit(this.root, 'cs:deleted', { image: image.id });
    });
  }

  update({ images, selected, compare, error }) {
    if (error) this.panel.message('error', describeError(error));
    if (!images) return;
    const key = JSON.stringify([images, selected, compare]);
    if (key === this.key) return;
    this.key = key;
    // The hint never replaces an error on screen (an upload refused while the list loaded).
    const showing = this.panel.status.querySelector('.msg');
    if (!selected && !showing?.classList.contains('msg-error')) {
      this.panel.message('empty', 'Pick a sample or upload a photo to see what the network sees in it.');
    } else if (selected && (showing?.classList.contains('msg-empty') || (this.selected !== null && selected !== this.selected))) {
      // An image is showing: the hint, or a refusal older than a newly picked image, is done
      // (the default sample, filled in when the listing lands, is not a new pick).
      this.panel.message(null);
      this.root.classList.remove('has-error');
    }
    this.selected = selected;

    this.thumbs.replaceChildren(
      ...images.map((image) =>
        h(
          'li',
          {},
          h(
            'button',
            {
              type: 'button',
              class: 'thumb',
              'aria-pressed': String(image.id === selected),
              title: `${image.name} (${image.width}×${image.height})`,
              dataset: { image: image.id },
              onclick: () => emit(this.root, 'cs:image', { image: image.id }),
            },
            h('img', { src: api.urls.image(image.id), alt: '', loading: 'lazy', decoding: 'async' }),
            h('span', { class: 'thumb-name', text: image.name }),
            image.kind === 'upload' ? h('span', { class: 'badge', text: 'upload' }) : null,
          ),
          // Only the uploader's listing has its uploads; `owned: false` would mark any other.
          image.kind === 'upload' && image.owned !== false
            ? h('button', {
                type: 'button',
                class: 'thumb-delete',
                'aria-label': `Delete the upload ${image.name}`,
                title: `Delete ${image.name} from the server`,
                text: '×',
                dataset: { delete: image.id },
                onclick: () => this.remove(image),
              })
            : null,
        ),
      ),
    );

    this.compare.replaceChildren(
      h('option', { value: '', text: 'Nothing (single view)' }),
      ...images.filter((i) => i.id !== selected).map((i) => h('option', { value: i.id, text: i.name })),
    );
    this.compare.value = compare ?? '';
    this.compare.disabled = !selected;
  }
}
