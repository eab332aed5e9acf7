// CollectionsView.js — collections of images: create one, add images (drop files, a folder
// or a .zip/.tar archive), index it through the current model with a progress bar and
// cancel, and read the current layer's statistics over it (dead channels listed).
// Emits cs:option {key: 'coll'} and cs:collections (the list changed).

import * as api from './api.js';
import { emit, h } from './dom.js';
import { describeError, Panel } from './Panel.js';

const ARCHIVE = /\.(zip|tar|tgz|tar\.gz|tar\.bz2|tar\.xz)$/i;

/** Files of a drop, folders walked (webkitGetAsEntry), each with its relative path. */
async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  if (!entries.length) return [...dataTransfer.files].map((file) => ({ file, path: file.name }));
  const out = [];
  const walk = async (entry, prefix) => {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, path: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (!batch.length) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    }
  };
  for (const entry of entries) await walk(entry, '');
  return out;
}

export class CollectionsView {
  constructor(root) {
    this.root = root;
    this.panel = new Panel(root, 'Collections');
    this.name = h('input', { id: 'collection-name', type: 'text', maxlength: 120, placeholder: 'New collection name' });
    const create = h('form', { class: 'collection-create', onsubmit: (e) => { e.preventDefault(); this.create(); } },
      h('label', { class: 'field field-inline', for: 'collection-name' }, h('span', { class: 'field-label', text: 'Name' }), this.name),
      h('button', { type: 'submit', class: 'btn btn-small', text: 'Create' }));
    this.list = h('ul', { class: 'collection-list' });
    this.files = h('input', { id: 'collection-files', type: 'file', multiple: true, accept: 'image/*,.zip,.tar,.tgz,.gz', onchange: (e) => this.add([...e.target.files].map((file) => ({ file, path: file.name }))) });
    this.drop = h('div', { class: 'dropzone', id: 'collection-drop', tabIndex: 0 },
      h('p', { text: 'Drop images, a folder or a .zip / .tar archive here, or ' }),
      h('label', { class: 'btn btn-small', for: 'collection-files', text: 'choose files' }), this.files);
    this.drop.addEventListener('dragover', (e) => { e.preventDefault(); this.drop.classList.add('is-over'); });
    this.drop.addEventListener('dragleave', () => this.drop.classList.remove('is-over'));
    this.drop.addEventListener('drop', async (e) => {
      e.preventDefault();
      this.drop.classList.remove('is-over');
      this.add(await droppedFiles(e.dataTransfer));
    });
    this.report = h('div', { class: 'collection-report', role: 'status' });
    this.progress = h('progress', { id: 'index-progress', max: 1, value: 0, hidden: true });
    this.cancel = h('button', { type: 'button', class: 'btn btn-small btn-ghost', text: 'Cancel', hidden: true, onclick: () => this.job && api.cancelJob(this.job).catch(() => {}) });
    this.indexButton = h('button', { type: 'button', class: 'btn btn-small', id: 'index-button', text: 'Index with this model', onclick: () => this.index() });
    this.stats = h('div', { class: 'collection-stats' });
    this.detail = h('div', { class: 'collection-detail', hidden: true }, this.drop,
      h('div', { class: 'index-row' }, this.indexButton, this.progress, this.cancel), this.report, this.stats);
    this.panel.body.append(create, this.list, this.detail);
    this.args = {};
    this.collections = [];
    this.stopFollowing = null;
  }

  async update(args) {
    this.args = args;
    await this.panel.load(async (signal) => {
      this.collections = await api.listCollections(signal);
      this.renderList();
      this.detail.hidden = !args.coll;
      if (args.coll && args.model && args.layer) await this.loadStats(signal);
    });
  }

  renderList() {
    this.list.replaceChildren(...this.collections.map((c) => h('li', { class: c.id === this.args.coll ? 'is-selected' : '' },
      h('button', { type: 'button', class: 'btn-link', text: `${c.name}`, onclick: () => emit(this.root, 'cs:option', { key: 'coll', value: c.id }) }),
      h('span', { class: 'muted small', text: ` ${c.count} images ` }),
      h('button', { type: 'button', class: 'btn btn-small btn-ghost', text: 'Delete', 'aria-label': `Delete collection ${c.name}`, onclick: () => this.remove(c) }))));
  }

  async loadStats(signal) {
    const { model, coll, layer } = this.args;
    this.stats.replaceChildren();
    try {
      const stats = await api.collectionStats(model, coll, layer, signal);
      const dead = stats.dead;
      const sparsity = stats.channels.reduce((sum, c) => sum + c.sparsity, 0) / Math.max(1, stats.channels.length);
      this.stats.append(
        h('p', { text: `${layer} over ${stats.images} images: ${stats.channels.length} channels, mean sparsity ${(100 * sparsity).toFixed(1)}%, index ${(stats.index_bytes / 1e6).toFixed(1)} MB.` }),
        h('p', { class: 'dead-channels', text: dead.length ? `Dead channels (never > 0): ${dead.join(', ')}` : 'No dead channels.' }),
      );
    } catch (err) {
      if (signal.aborted) return;
      this.stats.append(h('p', { class: 'muted small', text: describeError(err) }));
    }
  }

  async create() {
    const name = this.name.value.trim();
    if (!name) return;
    try {
      const made = await api.createCollection(name);
      this.name.value = '';
      emit(this.root, 'cs:collections', {});
      emit(this.root, 'cs:option', { key: 'coll', value: made.id });
    } catch (err) {
      this.panel.message('error', describeError(err));
    }
  }

  async remove(collection) {
    try {
      await api.deleteCollection(collection.id);
      emit(this.root, 'cs:collections', {});
      if (this.args.coll === collection.id) emit(this.root, 'cs:option', { key: 'coll', value: null });
    } catch (err) {
      this.panel.message('error', describeError(err));
    }
  }

  async add(items) {
    const { coll } = this.args;
    if (!coll || !items.length) return;
    const archives = items.filter(({ file }) => ARCHIVE.test(file.name)).map(({ file }) => file);
    const images = items.filter(({ file }) => !ARCHIVE.test(file.name));
    this.report.replaceChildren(h('p', { text: `Uploading ${items.length} file(s)…` }));
    let added = 0;
    let duplicates = 0;
    const skipped = [];
    try {
      // One request for the images and the first archive, one more per further archive.
      const batches = [[images, archives[0] ?? null], ...archives.slice(1).map((archive) => [[], archive])];
      for (const [files, archive] of batches) {
        const result = await api.addToCollection(coll, files, archive);
        added += result.added;
        duplicates += result.duplicates;
        skipped.push(...result.skipped);
      }
    } catch (err) {
      this.report.replaceChildren(h('p', { class: 'msg msg-error', role: 'alert', text: describeError(err) }));
      return;
    }
    this.report.replaceChildren(
      h('p', { text: `Added ${added}, ${duplicates} already there, ${skipped.length} skipped.` }),
      ...skipped.slice(0, 20).map((s) => h('p', { class: 'muted small', text: `${s.name}: ${s.reason}` })),
    );
    emit(this.root, 'cs:collections', {});
  }

  async index(coll = this.args.coll) {
    const { model } = this.args;
    if (!coll || !model) return;
    this.stopFollowing?.();
    this.report.replaceChildren();
    let job;
    try {
      job = await api.indexCollection(model, coll, {});
    } catch (err) {
      this.report.replaceChildren(h('p', { class: 'msg msg-error', role: 'alert', text: describeError(err) }));
      return;
    }
    this.job = job.id;
    const show = (j) => {
      this.progress.hidden = false;
      this.cancel.hidden = false;
      this.progress.max = Math.max(1, j.total);
      this.progress.value = j.step;
    };
    const end = (j) => {
      this.progress.hidden = true;
      this.cancel.hidden = true;
      this.job = null;
      const text = j.state === 'done' ? 'Index ready.' : j.state === 'cancelled' ? 'Indexing cancelled; the previous index is still served.' : `Indexing failed: ${j.error?.detail ?? ''}`;
      this.report.replaceChildren(h('p', { class: j.state === 'failed' ? 'msg msg-error' : 'msg', text }));
      emit(this.root, 'cs:collections', {});
    };
    show(job);
    if (api.FINISHED.includes(job.state)) end(job);
    else this.stopFollowing = api.followJob(job.id, { onProgress: show, onEnd: end, onError: (err) => end({ state: 'failed', error: { detail: describeError(err) } }) });
  }
}
