// ChannelView.js — the channel page: everything about one channel of one layer.
// Its feature map on the current image (one ChannelMap per image, two in compare mode), its
// filter weights, its optimised image (a server job with live progress) and Grad-CAM for the
// image's top classes. Step through channels, set overlay opacity, download.
// Emits cs:channel {channel|null} and cs:option {key: 'opacity', value, replace: true}.

import * as api from './api.js';
import { download, emit, h, safeName } from './dom.js';
import { CamStrip } from './CamStrip.js';
import { ChannelFilter } from './ChannelFilter.js';
import { ChannelMap } from './ChannelMap.js';
import { DatasetExamples } from './DatasetExamples.js';
import { ExpandedWeights } from './ExpandedWeights.js';
import { FeatureVis } from './FeatureVis.js';
import { Panel } from './Panel.js';
import { channelOpen } from './state.js';

export class ChannelView {
  constructor(root) {
    this.root = root;
    this.panel = new Panel(root, 'Channel');
    this.maps = [];
    this.number = h('input', {
      id: 'channel-number',
      type: 'number',
      min: 0,
      step: 1,
      onchange: () => this.go(Number(this.number.value)),
    });
    this.opacity = h('input', {
      id: 'overlay-opacity',
      type: 'range',
      min: 0,
      max: 100,
      step: 5,
      oninput: () => this.maps.forEach((m) => m.setOpacity(this.opacity.value / 100)),
      onchange: () => emit(root, 'cs:option', { key: 'opacity', value: this.opacity.value / 100, replace: true }),
    });
    this.links = h('div', { class: 'downloads' });
    this.panel.tools.append(
      h('button', { type: 'button', class: 'btn btn-small', 'aria-label': 'Previous channel', text: '‹ Prev', onclick: () => this.go(this.channel - 1) }),
      h('label', { class: 'field field-inline field-narrow', for: 'channel-number' }, h('span', { class: 'field-label', text: 'Channel' }), this.number),
      h('button', { type: 'button', class: 'btn btn-small', 'aria-label': 'Next channel', text: 'Next ›', onclick: () => this.go(this.channel + 1) }),
      h('label', { class: 'field field-inline', for: 'overlay-opacity' }, h('span', { class: 'field-label', text: 'Overlay opacity' }), this.opacity),
      h('button', { type: 'button', class: 'btn btn-small btn-ghost', text: 'Close', onclick: () => emit(root, 'cs:channel', { channel: null }) }),
    );
    this.columns = h('div', { class: 'columns' });
    this.noImage = h('p', { class: 'msg msg-empty', text: 'Pick a sample or upload a photo to see this channel’s feature map.' });
    const maps = h('section', { class: 'cp-maps', 'aria-label': 'Feature map' }, this.noImage, this.columns, this.links);
    const sub = (cls, label) => h('section', { class: `subpanel ${cls}`, 'aria-label': label });
    const fvRoot = sub('cp-fv', 'Optimised image');
    const filterRoot = sub('cp-filter', 'Filter weights');
    const camRoot = sub('cp-cam', 'Grad-CAM');
    fvRoot.id = 'channel-fv';
    filterRoot.id = 'channel-filter';
    camRoot.id = 'channel-cam';
    const expandedRoot = sub('cp-expanded', 'Expanded weights');
    expandedRoot.id = 'channel-expanded';
    this.expanded = new ExpandedWeights(expandedRoot);
    this.fv = new FeatureVis(fvRoot);
    this.filter = new ChannelFilter(filterRoot);
    this.cams = new CamStrip(camRoot, { top: 3 });
    this.page = h('div', { class: 'channel-page' }, maps, fvRoot, filterRoot, expandedRoot, camRoot);
    // The unit page's dataset examples (issue 11): below the grid, the width of the page.
    const examplesRoot = sub('cp-examples', 'Dataset examples');
    examplesRoot.id = 'channel-examples';
    this.examples = new DatasetExamples(examplesRoot);
    this.panel.body.append(this.page, examplesRoot);
  }

  go(channel) {
    if (Number.isInteger(channel) && channel >= 0 && channel < this.count) emit(this.root, 'cs:channel', { channel });
  }

  update({ model, modelInfo, images, layer, layers, layerInfo, channel, opts, fv, fvsteps, fvsize, fnorm, coll = null, collections = 0 }) {
    const out = layerInfo?.output_shape;
    const open = channelOpen({ channel, layer }, layerInfo);
    this.root.hidden = !open;
    if (!open) return;
    this.channel = channel;
    this.count = out[0];
    this.panel.setTitle(`Channel ${channel} of ${layer}`);
    this.number.max = String(this.count - 1);
    this.number.value = String(channel);
    this.opacity.value = String(Math.round(opts.opacity * 100));
    this.page.classList.toggle('two-images', images.length === 2);
    this.fv.update({ model, layer, layerInfo, channel, fv, fvsteps, fvsize });
    this.filter.update({ model, layer, layerInfo, channel, fnorm });
    this.expanded.update({ model, layer, layers, channel });
    this.examples.update({ model, layer, channel, coll, version: collections });
    this.cams.update({ model, image: images[0]?.id ?? null, imageName: images.length === 2 ? images[0].name : null, modelInfo });
    this.noImage.hidden = images.length > 0;
    this.links.hidden = images.length === 0;
    if (!images.length) {
      this.maps.forEach((m) => m.panel.cancel());
      this.maps = [];
      this.columns.replaceChildren();
      return;
    }

    if (this.maps.length !== images.length) {
      this.maps = images.map(() => new ChannelMap(h('section', { class: 'subpanel' }), { title: '' }));
      this.columns.replaceChildren(...this.maps.map((m) => m.panel.root));
    }
    images.forEach(({ id, name }, i) => {
      this.maps[i].panel.setTitle(`Feature map on ${name}`);
      this.maps[i].update({ model, image: id, layer, channel, colormap: opts.colormap, normalize: opts.normalize, opacity: opts.opacity, height: out[1] });
    });
    const first = images[0].id;
    const base = safeName(`${model}_${layer}_c${channel}_${first}`);
    this.links.replaceChildren(
      download(api.urls.activations(model, first, layer, { format: 'png', channels: channel, colormap: opts.colormap, normalize: opts.normalize, scale: 8, padding: 0 }), 'PNG', `${base}.png`),
      download(api.urls.activations(model, first, layer, { format: 'npy', channels: channel }), 'NPY', `${base}.npy`),
    );
  }
}
