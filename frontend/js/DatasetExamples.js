// DatasetExamples.js — the unit page's dataset examples: the real images and patches of a
// collection that excite this channel most (from the collection's index for the model).
// Patches are cut client-side from the network-input view with the receptive-field box;
// a click shows the whole image with the box and the channel's activation overlaid.
// Emits cs:option {key: 'coll'} (collection picked) and cs:index {coll} (build the index).

import * as api from './api.js';
import { emit, h } from './dom.js';
import { Panel } from './Panel.js';

const TILE = 96;
const K = 9;

export class DatasetExamples {
  constructor(root) {
    this.root = root;
    this.panel = new Panel(root, 'Dataset examples', { level: 'h3' });
    this.picker = h('select', {
      id: 'examples-collection',
      onchange: (e) => emit(root, 'cs:option', { key: 'coll', value: e.target.value || null }),
    });
    this.by = h('select', { id: 'examples-by', onchange: () => this.reload() }, h('option', { value: 'max', text: 'by max' }), h('option', { value: 'mean', text: 'by mean' }));
    this.action = h('button', { type: 'button', class: 'btn btn-small', text: 'Index this collection', hidden: true, onclick: () => emit(root, 'cs:index', { coll: this.args?.coll }) });
    this.panel.tools.append(
      h('label', { class: 'field field-inline', for: 'examples-collection' }, h('span', { class: 'field-label', text: 'Collection' }), this.picker),
      this.by,
      this.action,
    );
    this.grid = h('div', { class: 'examples-grid', role: 'list' });
    this.detail = h('figure', { class: 'examples-detail', hidden: true });
    this.panel.body.append(this.grid, this.detail);
    this.key = null;
    this.collections = null;
  }

  async update(args) {
    this.args = args;
    const { model, layer, channel, coll, version } = args;
    const key = JSON.stringify([model, layer, channel, coll, version, this.by.value]);
    if (key === this.key) return;
    this.key = key;
    this.detail.hidden = true;
    await this.panel.load(async (signal) => {
      if (!this.collections || this.collectionsVersion !== version) {
        this.collections = await api.listCollections(signal);
        this.collectionsVersion = version;
      }
      this.picker.replaceChildren(
        h('option', { value: '', text: '— pick a collection —' }),
        ...this.collections.map((c) => h('option', { value: c.id, text: `${c.name} (${c.count})` })),
      );
      this.picker.value = coll ?? '';
      this.grid.replaceChildren();
      this.action.hidden = true;
      if (!coll) {
        this.panel.message('empty', 'Pick a collection to see the images that excite this channel most.');
        return;
      }
      let found;
      try {
        found = await api.datasetExamples(model, coll, layer, { channel, k: K, by: this.by.value }, signal);
      } catch (err) {
        if (err.code === 'index_not_found' || err.code === 'layer_not_indexed') this.action.hidden = false;
        throw err;
      }
      this.grid.replaceChildren(...found.map((entry, rank) => this.tile(model, coll, layer, channel, entry, rank)));
    });
  }

  reload() {
    this.key = null;
    if (this.args) this.update(this.args);
  }

  tile(model, coll, layer, channel, entry, rank) {
    const [top, left, bottom, right] = entry.box;
    const scale = TILE / Math.max(bottom - top, right - left, 1);
    const img = h('img', { src: api.urls.input(model, entry.image_id), alt: '', draggable: 'false' });
    // CSSOM, not a style attribute: allowed by the Content-Security-Policy.
    img.style.width = `${224 * scale}px`;
    img.style.left = `${-left * scale}px`;
    img.style.top = `${-top * scale}px`;
    return h(
      'button',
      {
        type: 'button',
        class: 'example-tile',
        role: 'listitem',
        title: `score ${entry.score.toFixed(3)} at (${entry.y}, ${entry.x})`,
        'aria-label': `Example ${rank + 1}: score ${entry.score.toFixed(2)}`,
        onclick: () => this.show(model, coll, layer, channel, entry, rank),
      },
      h('span', { class: 'example-patch' }, img),
      h('span', { class: 'example-score', text: entry.score.toFixed(2) }),
    );
  }

  show(model, coll, layer, channel, entry, rank) {
    const src = api.collectionUrls.examples(model, coll, layer, { channel, k: K, by: this.by.value, format: 'png', show: 'overlay', rank });
    this.detail.replaceChildren(
      h('img', { src, alt: `Whole image ${rank + 1} with the receptive field and the activation` }),
      h('figcaption', { class: 'muted small', text: `Rank ${rank + 1}: score ${entry.score.toFixed(3)} at (${entry.y}, ${entry.x}); box ${entry.box.join(', ')} in input pixels.` }),
    );
    this.detail.hidden = false;
  }
}
