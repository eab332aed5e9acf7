// LayerList.js — every layer in forward order with its type and output shape.
// A filter box narrows the list; Up/Down/Home/End move the selection. Emits cs:layer {layer}.

import { emit, h, shape } from './dom.js';

const optionId = (index) => `layer-${index}`;

export class LayerList {
  constructor(root) {
    this.root = root;
    this.layers = [];
    this.selected = null;
    this.filter = h('input', {
      id: 'layer-filter',
      type: 'search',
      placeholder: 'Filter by name or type',
      autocomplete: 'off',
      oninput: () => this.applyFilter(),
      onkeydown: (e) => {
        if (e.key === 'ArrowDown') {
          e.preventDefault();
          this.list.focus();
          this.move(1);
        }
      },
    });
    this.count = h('span', { class: 'muted small', 'aria-live': 'polite' });
    this.status = h('div', { class: 'panel-status' });
    this.list = h('ul', {
      id: 'layer-list',
      class: 'layer-list',
      role: 'listbox',
      tabindex: 0,
      'aria-label': 'Layers in forward order',
      onkeydown: (e) => this.key(e),
      onclick: (e) => {
        const item = e.target.closest('li[data-name]');
        if (item) this.choose(item.dataset.name);
      },
    });
    root.replaceChildren(
      h('div', { class: 'layers-head' }, h('h2', { class: 'panel-title', text: 'Layers' }), this.count),
      h('label', { class: 'field', for: 'layer-filter' }, h('span', { class: 'field-label', text: 'Filter layers' }), this.filter),
      this.status,
      this.list,
    );
  }

  /** kind: 'error' | 'info'; no text clears the line. */
  message(kind, text) {
    this.status.replaceChildren();
    if (text) this.status.append(h('p', { class: `msg msg-${kind}`, role: kind === 'error' ? 'alert' : null, text }));
  }

  update({ layers, selected, busy = false }) {
    this.root.setAttribute('aria-busy', String(busy));
    this.root.classList.toggle('is-busy', busy);
    const fresh = layers !== this.layers;
    if (fresh) {
      this.layers = layers ?? [];
      this.list.replaceChildren(...this.layers.map((layer) => this.item(layer)));
      this.applyFilter();
    }
    if (!fresh && selected === this.selected) return;
    this.selected = selected;
    for (const item of this.list.children) {
      item.setAttribute('aria-selected', String(item.dataset.name === selected));
    }
    const current = this.current();
    if (current) {
      this.list.setAttribute('aria-activedescendant', current.id);
      // Scroll the list only, never the page.
      const top = current.offsetTop; // the list is the offsetParent (position: relative)
      if (top < this.list.scrollTop || top + current.offsetHeight > this.list.scrollTop + this.list.clientHeight) {
        this.list.scrollTop = top - this.list.clientHeight / 2;
      }
    } else {
      this.list.removeAttribute('aria-activedescendant');
    }
  }

  item(layer) {
    const item = h(
      'li',
      {
        id: optionId(layer.index),
        role: 'option',
        'aria-selected': 'false',
        class: ['layer', layer.has_filters && 'has-filters', layer.has_activation === false && 'unused'].filter(Boolean).join(' '),
        dataset: { name: layer.name, search: `${layer.name} ${layer.type}`.toLowerCase() },
        title: layer.name,
      },
      h('span', { class: 'layer-name', text: layer.name }),
      h('span', { class: 'layer-type', text: layer.type }),
      h('span', { class: 'layer-shape', text: shape(layer.output_shape) }),
    );
    item.style.paddingLeft = `${16 + Math.min(5, Math.max(0, (layer.depth ?? 1) - 1)) * 6}px`;
    return item;
  }

  current() {
    return [...this.list.children].find((item) => item.dataset.name === this.selected) ?? null;
  }

  visible() {
    return [...this.list.children].filter((item) => !item.hidden);
  }

  applyFilter() {
    const words = this.filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    for (const item of this.list.children) {
      item.hidden = !words.every((w) => item.dataset.search.includes(w));
    }
    const shown = this.visible().length;
    this.count.textContent = words.length ? `${shown} of ${this.layers.length}` : `${this.layers.length}`;
  }

  choose(name) {
    if (name && name !== this.selected) emit(this.root, 'cs:layer', { layer: name });
  }

  move(step) {
    const items = this.visible();
    if (!items.length) return;
    const at = items.indexOf(this.current());
    const next = at < 0 ? (step > 0 ? 0 : items.length - 1) : Math.min(items.length - 1, Math.max(0, at + step));
    this.choose(items[next].dataset.name);
  }

  key(event) {
    const steps = { ArrowDown: 1, ArrowUp: -1, PageDown: 10, PageUp: -10, Home: -Infinity, End: Infinity };
    if (!(event.key in steps)) return;
    event.preventDefault();
    const step = steps[event.key];
    if (Number.isFinite(step)) this.move(step);
    else {
      const items = this.visible();
      if (items.length) this.choose(items[step > 0 ? items.length - 1 : 0].dataset.name);
    }
  }
}
