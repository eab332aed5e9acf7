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
    root.replaceChildren(
      h('label', { class: 'field field-inline', for: 'model-select' }, h('span', { class: 'field-label', text: 'Model' }), this.select),
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
        const label = `${m.title || m.name} · ${SOURCE[m.source] ?? m.source}`;
        return h('option', {
          value: m.name,
          disabled: !m.available,
          title: m.available ? `${m.name}, input ${m.input_size?.join('×')}` : [m.error, m.hint].filter(Boolean).join(' — '),
          text: m.available ? label : `${label} (unavailable)`,
        });
      }),
    );
    this.select.value = selected ?? '';
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
