// LayerList.js — every layer in forward order with its type and output shape.
// A filter box narrows the list; Up/Down/Home/End move the selection, Left/Right collapse and
// expand the selected block. Pass-through modules (see passThrough) are hidden by default, and
// the list says how many. Emits cs:layer {layer}.

import { emit, h, shape } from './dom.js';

const optionId = (index) => `layer-${index}`;

// Modules that return their input unchanged at inference (eval mode).
const IDENTITY_TYPES = /^(Identity|Dropout[123]?d?|AlphaDropout|FeatureAlphaDropout|DropPath|DropBlock2d|StochasticDepth)$/;

const parentName = (name) => (name.includes('.') ? name.slice(0, name.lastIndexOf('.')) : null);
const sameShape = (a, b) => Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((n, i) => n === b[i]);
const hasParams = (layer) => Object.keys(layer?.params ?? {}).length > 0;

/**
 * The layers whose output adds nothing to the list, as name -> reason. Pure (layer table in).
 *
 * - identity at inference: Identity, Dropout*, DropPath, DropBlock2d, StochasticDepth;
 * - the last child of a module that computes with its own parameters and then applies its
 *   children (timm's BatchNormAct2d: bn, then `drop`, then `act`), when that child is a
 *   parameter-free leaf with the parent's output shape: its output IS the parent's output,
 *   which the list already shows on the parent's row.
 */
export function passThrough(layers) {
  const out = new Map();
  const byName = new Map(layers.map((l) => [l.name, l]));
  const children = new Map();
  for (const layer of layers) {
    const parent = parentName(layer.name);
    if (parent !== null && byName.has(parent)) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(layer);
    }
  }
  for (const layer of layers) {
    if (IDENTITY_TYPES.test(layer.type)) out.set(layer.name, 'returns its input unchanged');
  }
  for (const [name, kids] of children) {
    const parent = byName.get(name);
    const last = kids.at(-1);
    if (
      hasParams(parent) &&
      !children.has(last.name) &&
      !hasParams(last) &&
      sameShape(last.output_shape, parent.output_shape) &&
      !out.has(last.name)
    ) {
      out.set(last.name, `its output is ${name}’s output`);
    }
  }
  return out;
}

export class LayerList {
  constructor(root) {
    this.root = root;
    this.layers = [];
    this.selected = null;
    this.skip = new Map();
    this.collapsed = new Set();
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
    this.hidePass = h('input', { id: 'layer-passthrough', type: 'checkbox', checked: true, onchange: () => this.applyFilter() });
    this.hiddenCount = h('span', { class: 'muted small', id: 'layer-hidden-count' });
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
        if (!item) return;
        if (e.target.closest('.layer-fold')) this.fold(item.dataset.name);
        else this.choose(item.dataset.name);
      },
    });
    root.replaceChildren(
      h('div', { class: 'layers-head' }, h('h2', { class: 'panel-title', text: 'Layers' }), this.count),
      h('label', { class: 'field', for: 'layer-filter' }, h('span', { class: 'field-label', text: 'Filter layers' }), this.filter),
      h(
        'div',
        { class: 'layers-options' },
        h('label', { class: 'check', for: 'layer-passthrough', title: 'Identity, dropout, and activations whose output their parent row already shows' }, this.hidePass, h('span', { text: 'Hide pass-through modules' })),
        this.hiddenCount,
      ),
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
      this.skip = passThrough(this.layers);
      this.collapsed = new Set();
      const blocks = this.blocks();
      this.list.replaceChildren(...this.layers.map((layer) => this.item(layer, blocks.has(layer.name))));
    }
    if (!fresh && selected === this.selected) return;
    this.selected = selected;
    for (const item of this.list.children) {
      item.setAttribute('aria-selected', String(item.dataset.name === selected));
    }
    this.applyFilter();
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

  /** Rows with descendants other than pass-through ones: those can be collapsed. */
  blocks() {
    const out = new Set();
    for (const layer of this.layers) {
      if (this.skip.has(layer.name)) continue;
      for (let parent = parentName(layer.name); parent !== null; parent = parentName(parent)) out.add(parent);
    }
    return out;
  }

  item(layer, block) {
    const reason = this.skip.get(layer.name);
    const item = h(
      'li',
      {
        id: optionId(layer.index),
        role: 'option',
        'aria-selected': 'false',
        'aria-expanded': block ? 'true' : null,
        class: ['layer', layer.has_filters && 'has-filters', layer.has_activation === false && 'unused', block && 'block', reason && 'pass-through']
          .filter(Boolean)
          .join(' '),
        dataset: { name: layer.name, search: `${layer.name} ${layer.type}`.toLowerCase() },
        title: reason ? `${layer.name}: pass-through, ${reason}` : layer.name,
      },
      block ? h('span', { class: 'layer-fold', 'aria-hidden': 'true', title: 'Collapse or expand this block' }) : null,
      h('span', { class: 'layer-name', text: layer.name }),
      h('span', { class: 'layer-type', text: layer.type }),
      h('span', { class: 'layer-shape', text: shape(layer.output_shape) }),
    );
    item.style.paddingLeft = `${20 + Math.min(5, Math.max(0, (layer.depth ?? 1) - 1)) * 6}px`;
    return item;
  }

  current() {
    return [...this.list.children].find((item) => item.dataset.name === this.selected) ?? null;
  }

  visible() {
    return [...this.list.children].filter((item) => !item.hidden);
  }

  /** Collapse (or expand) the block `name`: its descendants leave (or rejoin) the list. */
  fold(name, open = this.collapsed.has(name)) {
    if (open) this.collapsed.delete(name);
    else this.collapsed.add(name);
    this.applyFilter();
  }

  insideCollapsed(name) {
    for (let parent = parentName(name); parent !== null; parent = parentName(parent)) {
      if (this.collapsed.has(parent)) return true;
    }
    return false;
  }

  applyFilter() {
    const words = this.filter.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const hidePass = this.hidePass.checked;
    let passHidden = 0;
    let folded = 0;
    for (const item of this.list.children) {
      const name = item.dataset.name;
      const match = words.every((w) => item.dataset.search.includes(w));
      // The selected layer always stays in the list, whatever hides its kind.
      const pass = hidePass && this.skip.has(name) && name !== this.selected;
      // Typing a filter searches inside collapsed blocks too.
      const fold = !words.length && this.insideCollapsed(name) && name !== this.selected;
      item.hidden = !match || pass || fold;
      if (match && pass) passHidden += 1;
      else if (match && fold) folded += 1;
      if (item.hasAttribute('aria-expanded')) item.setAttribute('aria-expanded', String(!this.collapsed.has(name)));
    }
    const shown = this.visible().length;
    const total = this.layers.length;
    this.count.textContent = shown === total ? `${total}` : `${shown} of ${total}`;
    const parts = [];
    if (passHidden) parts.push(`${passHidden} pass-through hidden`);
    if (folded) parts.push(`${folded} in collapsed blocks`);
    this.hiddenCount.textContent = parts.join(' · ');
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
    const current = this.current();
    if ((event.key === 'ArrowLeft' || event.key === 'ArrowRight') && current?.classList.contains('block')) {
      event.preventDefault();
      this.fold(current.dataset.name, event.key === 'ArrowRight');
      return;
    }
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
