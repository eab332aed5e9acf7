// ModelPicker.js — choose the network. Unavailable models stay visible but disabled, with why.
// Emits cs:model {model}.

import { emit, h } from './dom.js';

const SOURCE = { embedded: 'built in', torchvision: 'torchvision', user: 'your model', untrained: 'untrained' };

export class ModelPicker {
  constructor(root) {
    this.root = root;
    this.select = h('select', {
      id: 'model-select',
      onchange: (event) => emit(root, 'cs:model', { model: event.target.value }),
    });
    this.notes = h('details', { class: 'model-notes', hidden: true });
    this.error = h('p', { class: 'msg msg-error', role: 'alert', hidden: true });
    this.warning = h('span', {
      id: 'model-unverified',
      class: 'badge-warn',
      hidden: true,
      text: 'Unverified weights',
      title: 'The server could not verify these weights (hash check off or no known hash): they may be random or not what the name says.',
    });
    root.replaceChildren(
      h('label', { class: 'field field-inline', for: 'model-select' }, h('span', { class: 'field-label', text: 'Model' }), this.select),
      this.warning,
      this.notes,
      this.error,
    );
    this.key = null;
  }

  update({ models, selected, error }) {
    this.error.hidden = !error;
    this.error.textContent = error ?? '';
    if (!models) return;
    const key = JSON.stringify([models, selected]);
    if (key === this.key) return;
    this.key = key;
    this.select.replaceChildren(
      ...models.map((m) => {
        // `verified: false`: weights whose hash or origin the server could not check.
        const unverified = m.verified === false;
        const label = `${m.title || m.name} · ${SOURCE[m.source] ?? m.source}${unverified ? ' · unverified weights' : ''}`;
        const about = `${m.name}, input ${m.input_size?.join('×')}${unverified ? '; the weights were not verified: predictions may be meaningless' : ''}`;
        return h('option', {
          value: m.name,
          disabled: !m.available,
          dataset: { verified: String(!unverified) },
          title: m.available ? about : [m.error, m.hint].filter(Boolean).join(' — '),
          text: m.available ? label : `${label} (unavailable)`,
        });
      }),
    );
    this.select.value = selected ?? '';
    const chosen = models.find((m) => m.name === selected);
    this.warning.hidden = chosen?.verified !== false;
    const missing = models.filter((m) => !m.available);
    this.notes.hidden = missing.length === 0;
    this.notes.replaceChildren(
      h('summary', { text: `${missing.length} unavailable` }),
      h(
        'ul',
        {},
        missing.map((m) =>
          h('li', {}, h('strong', { text: m.name }), ': ', m.error ?? 'not available', m.hint ? h('span', { class: 'hint', text: ` ${m.hint}` }) : null),
        ),
      ),
    );
  }
}
