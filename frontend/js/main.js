// main.js — owns the state. Views get data passed down; their CustomEvents come back up here,
// become a new state, a new URL (pushState) and a render. popstate restores an older state.

import * as api from './api.js';
import { ActivationView } from './ActivationView.js';
import { Attribution } from './Attribution.js';
import { ChannelView } from './ChannelView.js';
import { CollectionsView } from './CollectionsView.js';
import { ComparePane } from './ComparePane.js';
import { CompareView } from './CompareView.js';
import { Controls } from './Controls.js';
import { FilterGrid } from './FilterGrid.js';
import { ImagePicker } from './ImagePicker.js';
import { InputView } from './InputView.js';
import { LayerList } from './LayerList.js';
import { ModelPicker } from './ModelPicker.js';
import { describeError } from './Panel.js';
import { Predictions } from './Predictions.js';
import { channelOpen, defaultImage, defaultLayer, parse, patch, serialize } from './state.js';

const $ = (id) => document.getElementById(id);

const views = {
  models: new ModelPicker($('model-picker')),
  layers: new LayerList($('layers')),
  images: new ImagePicker($('images')),
  input: new InputView($('input')),
  predictions: new Predictions($('predictions')),
  controls: new Controls($('controls')),
  activations: new ActivationView($('activations')),
  compare: new ComparePane($('compare')),
  channel: new ChannelView($('channel')),
  filters: new FilterGrid($('filters')),
  attribution: new Attribution($('attribution')),
  collections: new CollectionsView($('collections')),
  models2: new CompareView($('models-compare')),
};

let state = parse(location.search);
// What the last render showed, kept here (not read back from the views' DOM or internals).
const shown = { layers: [], channelOpen: false };

// Lists that rarely change, cached as promises so concurrent renders share one request.
const cache = { models: null, images: null, layers: new Map() };

function cached(holder, key, load) {
  if (!holder.has(key)) {
    const promise = load();
    holder.set(key, promise);
    promise.catch(() => holder.delete(key));
  }
  return holder.get(key);
}

const once = {
  models: () => (cache.models ??= api.listModels().catch((e) => ((cache.models = null), Promise.reject(e)))),
  images: () => (cache.images ??= api.listImages().catch((e) => ((cache.images = null), Promise.reject(e)))),
  layers: (model) => cached(cache.layers, model, () => api.listLayers(model)),
};

function writeUrl(push) {
  const search = serialize(state);
  if (search === location.search) return;
  const url = `${location.pathname}${search}`;
  if (push) history.pushState(null, '', url);
  else history.replaceState(null, '', url);
}

function commit(changes, { replace = false } = {}) {
  state = patch(state, changes);
  writeUrl(!replace);
  render({ user: true });
}

const on = (type, handler) => document.addEventListener(type, (e) => handler(e.detail));
on('cs:model', ({ model }) => commit({ model }));
on('cs:layer', ({ layer }) => commit({ layer }));
on('cs:image', ({ image }) => commit({ image }));
on('cs:compare', ({ image }) => commit({ compare: image }));
on('cs:channel', ({ channel }) => commit({ channel }));
on('cs:goto', ({ layer, channel }) => commit({ layer, channel }));
on('cs:option', ({ key, value, replace }) => commit({ [key]: value }, { replace }));
// Collections (issue 11): the list changed, or the unit page asks to index a collection.
let collectionsVersion = 0;
on('cs:collections', () => {
  collectionsVersion += 1;
  render();
});
on('cs:index', ({ coll }) => views.collections.index(coll));
on('cs:uploaded', ({ image }) => {
  cache.images = null;
  commit({ image });
});
on('cs:deleted', ({ image }) => {
  cache.images = null;
  const changes = {};
  if (state.image === image) changes.image = null; // render() falls back to the sample
  if (state.compare === image) changes.compare = null;
  commit(changes, { replace: true });
});
window.addEventListener('popstate', () => {
  state = parse(location.search);
  render();
});

// No broken-image icon or alt text, ever: a picture shows once it has loaded (its box is kept
// meanwhile, so the layout does not jump), and one that fails leaves the page (the panel says
// what went wrong). CSS: `.layout img:not(.has-picture)` and `img:not([src])` are invisible.
document.addEventListener(
  'load',
  (e) => {
    if (e.target instanceof HTMLImageElement) e.target.classList.add('has-picture');
  },
  true,
);
document.addEventListener(
  'error',
  (e) => {
    if (!(e.target instanceof HTMLImageElement)) return;
    e.target.classList.remove('has-picture');
    if (e.target.getAttribute('src')) e.target.removeAttribute('src');
  },
  true,
);

let generation = 0;

// `user`: in answer to a user action (not a first load or the back button).
async function render({ user = false } = {}) {
  const gen = ++generation;
  const stale = () => gen !== generation;

  // 1. Models: fill in the default, or say that the link's model is unknown.
  let models;
  try {
    models = await once.models();
  } catch (err) {
    views.models.update({ error: `Could not list models: ${describeError(err)}` });
    return;
  }
  if (stale()) return;
  let modelNote = null;
  if (!models.some((m) => m.name === state.model)) {
    const fallback = models.find((m) => m.default && m.available) ?? models.find((m) => m.available);
    if (state.model) modelNote = `This server has no model “${state.model}”; showing ${fallback?.name ?? 'nothing'} instead.`;
    state = patch(state, { model: fallback?.name ?? null });
    writeUrl(false);
  }
  const modelInfo = models.find((m) => m.name === state.model) ?? null;
  views.models.update({ models, selected: state.model, error: modelNote });

  // 2. Layers of that model; default to a mid-depth conv layer.
  let layers = [];
  views.layers.update({ layers: shown.layers, selected: state.layer, busy: true });
  try {
    layers = state.model ? await once.layers(state.model) : [];
    views.layers.message(null);
  } catch (err) {
    views.layers.message('error', describeError(err));
  }
  if (stale()) return;
  if (!state.layer && layers.length) {
    state = patch(state, { layer: defaultLayer(layers) });
    writeUrl(false);
  }
  const layerInfo = layers.find((l) => l.name === state.layer) ?? null;
  if (state.layer && layers.length && !layerInfo) {
    views.layers.message('error', `${state.model} has no layer “${state.layer}”. Pick one from the list.`);
  }
  views.layers.update({ layers, selected: state.layer, busy: false });
  shown.layers = layers;

  // 3. Images: samples and uploads.
  let images = null;
  let imageError = null;
  try {
    images = await once.images();
  } catch (err) {
    imageError = err;
  }
  if (stale()) return;
  // A bare URL opens on a sample photo, so the first screen already shows something.
  if (images && !state.image && defaultImage(images)) {
    state = patch(state, { image: defaultImage(images) });
    writeUrl(false);
  }
  const byId = new Map((images ?? []).map((i) => [i.id, i]));
  const image = byId.get(state.image) ?? null;
  const other = byId.get(state.compare) ?? null;
  views.images.update({ images, selected: image?.id ?? null, compare: other?.id ?? null, error: imageError });
  if (images && state.image && !image) {
    views.images.panel.message('error', 'The image in this link is no longer on the server. Pick a sample or upload a photo.');
  }

  // 4. Everything that depends on the choices above.
  const model = state.model;
  const opts = { order: state.order, limit: state.limit, normalize: state.normalize, colormap: state.colormap, opacity: state.opacity };
  const pair = [image, other].filter(Boolean);
  const id = image?.id ?? null;
  document.body.classList.toggle('compare-on', pair.length === 2);
  const wasOpen = shown.channelOpen;
  document.title = ['convscope', model, state.layer].filter(Boolean).join(' · ');
  views.controls.update(state);
  views.input.update({ model, image: id, modelInfo });
  views.predictions.update({ model, image: id, modelInfo });
  if (pair.length === 2) {
    views.compare.update({ model, modelInfo, layer: state.layer, layerInfo, images: pair, opts, channel: state.channel });
  } else {
    views.compare.update({ images: [] });
    views.activations.update({ model, image: id, layer: state.layer, layerInfo, opts, channel: state.channel });
  }
  views.channel.update({
    model,
    modelInfo,
    images: pair,
    layer: state.layer,
    layers,
    layerInfo,
    channel: state.channel,
    opts,
    fv: state.fv,
    fvsteps: state.fvsteps,
    fvsize: state.fvsize,
    fnorm: state.fnorm,
    coll: state.coll,
    collections: collectionsVersion,
  });
  views.collections.update({ model, layer: state.layer, coll: state.coll, version: collectionsVersion });
  const open = channelOpen(state, layerInfo);
  shown.channelOpen = open;
  document.body.classList.toggle('channel-on', open);
  // Opening the channel page (not stepping through channels) brings it into view.
  if (open && !wasOpen && user) views.channel.root.scrollIntoView({ block: 'start' });
  views.attribution.update({
    model,
    image: pair.length === 2 ? null : id,
    imageName: image?.name ?? null,
    modelInfo,
    cam: state.cam,
    sal: state.sal,
    cls: state.cls,
    alpha: state.alpha,
  });
  views.filters.update({ model, layer: state.layer, layerInfo, fnorm: state.fnorm });
  views.models2.update({ model, models, vs: state.vs, image: id, layer: state.layer, layerInfo, channel: state.channel, channelOpen: open });
}

render();
