// ExpandedWeights.js — how one channel connects to the image and to the previous block.
// Expanded weights (Voss et al., Distill 2021): the weights of the layers in between multiplied
// out, nonlinearities set aside. Onto the image: one RGB tile over the receptive field. Onto the
// previous block: its strongest channels as blue/white/red maps, each a link to its own page.
// Emits cs:goto {layer, channel}.

import * as api from './api.js';
import { download, emit, h, safeName } from './dom.js';
import { Panel } from './Panel.js';

const isMap = (l) => Array.isArray(l?.output_shape) && l.output_shape.length === 3;

/**
 * The block before `layer`: starting at the layer itself when it is a container (other layer
 * names start with its name), else at its parent, the previous sibling with a spatial output;
 * failing that, the same one level up. Null for the first layers (they read the image).
 */
export function previousBlock(layers, layer) {
  const names = new Set(layers.map((l) => l.name));
  const index = new Map(layers.map((l) => [l.name, l.index]));
  const at = index.get(layer);
  const isContainer = layers.some((l) => l.name.startsWith(`${layer}.`));
  let node = isContainer || !layer.includes('.') ? layer : layer.slice(0, layer.lastIndexOf('.'));
  while (node) {
    const parent = node.includes('.') ? node.slice(0, node.lastIndexOf('.')) : '';
    const siblings = layers.filter((l) => {
      const p = l.name.includes('.') ? l.name.slice(0, l.name.lastIndexOf('.')) : '';
      return p === parent && l.name !== node && l.name !== 'output' && isMap(l) && l.index < (index.get(node) ?? at) && l.index < at;
    });
    if (siblings.length) return siblings[siblings.length - 1].name;
    if (!parent || !names.has(parent)) return null;
    node = parent;
  }
  return null;
}

export class ExpandedWeights {
  constructor(root) {
    this.root = root;
    this.panel = new Panel(root, 'Expanded weights', { level: 'h3' });
    this.imageFig = h('img', { class: 'ew-img', alt: 'Expanded weights onto the image' });
    this.imageCaption = h('p', { class: 'muted small' });
    this.ontoTitle = h('h4', { class: 'ew-title' });
    this.ontoFig = h('img', { class: 'ew-img ew-onto', alt: 'Expanded weights onto the previous block' });
    this.ontoLinks = h('div', { class: 'ew-links' });
    this.ontoCaption = h('p', { class: 'muted small' });
    this.onto = h('div', { class: 'ew-part' }, this.ontoTitle, this.ontoFig, this.ontoLinks, this.ontoCaption);
    this.links = h('div', { class: 'downloads' });
    this.panel.body.append(
      h('div', { class: 'ew-part' }, h('h4', { class: 'ew-title', text: 'onto the image' }), this.imageFig, this.imageCaption),
      this.onto,
      this.links,
    );
    this.key = null;
  }

  update({ model, layer, layers, channel }) {
    const key = JSON.stringify([model, layer, channel]);
    if (key === this.key) return;
    this.key = key;
    const prev = previousBlock(layers ?? [], layer);
    this.onto.hidden = !prev;
    this.panel.load(async (signal) => {
      const [image, onto] = await Promise.all([
        api.expandedImage(model, layer, { channel }, signal),
        prev ? api.expandedImage(model, layer, { channel, onto: prev, top: 8 }, signal) : null,
      ]);
      this.imageFig.src = image.url;
      const [top, left, bottom, right] = image.box;
      this.imageCaption.textContent = `Receptive field ${bottom - top}×${right - left} px at the centre (rows ${top}–${bottom - 1}, columns ${left}–${right - 1}); zero is grey.`;
      const base = safeName(`${model}_${layer}_c${channel}_expanded`);
      const dl = [download(api.urls.expanded(model, layer, { channel, format: 'npy' }), 'NPY', `${base}.npy`)];
      if (onto) {
        this.ontoTitle.textContent = `onto ${prev}, strongest channels`;
        this.ontoFig.src = onto.url;
        this.ontoLinks.replaceChildren(
          ...onto.channels.map((c) =>
            h('button', { type: 'button', class: 'btn btn-small ew-link', text: `${c}`, title: `Open channel ${c} of ${prev}`, onclick: () => emit(this.root, 'cs:goto', { layer: prev, channel: c }) }),
          ),
        );
        this.ontoCaption.textContent = 'Blue: negative, white: zero, red: positive. Tiles left to right, strongest first; click a number to open that channel.';
        dl.push(download(api.urls.expanded(model, layer, { channel, onto: prev, format: 'npy' }), `NPY onto ${prev}`, `${base}_onto_${safeName(prev)}.npy`));
      }
      this.links.replaceChildren(...dl);
    });
  }
}
