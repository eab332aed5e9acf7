// state.js — the whole UI state and its URL form. Pure: no DOM, no fetch.
//
// parse(search) -> state, serialize(state) -> "?model=..&layer=..", patch(state, changes) -> state.
// Every view is a permalink because every choice a user makes lives here.

export const OPTIONS = Object.freeze({
  order: ['index', 'mean'],
  colormap: ['viridis', 'magma', 'inferno', 'gray'],
  normalize: ['channel', 'layer'],
  fnorm: ['auto', 'filter', 'layer'], // auto: the server's choice (layer-wide for 1×1 and reductions)
  limit: [16, 32, 64, 128, 256, 0], // 0 = every channel
  fv: ['quick', 'better'],
  cam: ['gradcam', 'gradcampp', 'scorecam'],
  sal: ['vanilla', 'smoothgrad', 'guided'],
});

/** Feature-visualisation presets; `fvsteps`/`fvsize` in the URL override them (tests, experts). */
export const FV_PRESETS = Object.freeze({
  quick: Object.freeze({ steps: 64, size: 128 }),
  better: Object.freeze({ steps: 256, size: 192 }),
});

export const DEFAULTS = Object.freeze({
  model: null,
  layer: null,
  image: null,
  channel: null,
  compare: null,
  vs: null, // a second model to compare with (issue #12)
  order: 'index',
  colormap: 'viridis',
  normalize: 'channel',
  fnorm: 'auto',
  limit: 64,
  opacity: 0.6,
  fv: 'quick',
  fvsteps: null,
  fvsize: null,
  cam: 'gradcam',
  sal: 'vanilla',
  cls: null,
  alpha: 0.5,
  coll: null, // collection id: dataset examples on the unit page (issue 11)
});

const KEYS = Object.keys(DEFAULTS);

function parseInteger(text) {
  return /^\d{1,6}$/.test(text) ? Number(text) : null;
}

function parseFraction(text, fallback) {
  const value = Number(text);
  return text !== '' && Number.isFinite(value) ? Math.min(1, Math.max(0, value)) : fallback;
}

function parseBounded(text, min, max) {
  const value = parseInteger(text ?? '');
  return value !== null && value >= min && value <= max ? value : null;
}

/** Read a state from a query string; anything unknown or malformed falls back to its default. */
export function parse(search) {
  const params = new URLSearchParams(search);
  const state = { ...DEFAULTS };
  for (const key of ['model', 'layer', 'image', 'compare', 'coll', 'vs']) {
    const value = params.get(key);
    if (value) state[key] = value;
  }
  for (const key of ['order', 'colormap', 'normalize', 'fnorm', 'fv', 'cam', 'sal']) {
    const value = params.get(key);
    if (OPTIONS[key].includes(value)) state[key] = value;
  }
  const limit = parseInteger(params.get('limit') ?? '');
  if (limit !== null && OPTIONS.limit.includes(limit)) state.limit = limit;
  state.channel = parseInteger(params.get('channel') ?? '');
  if (params.has('opacity')) state.opacity = parseFraction(params.get('opacity'), DEFAULTS.opacity);
  if (params.has('alpha')) state.alpha = parseFraction(params.get('alpha'), DEFAULTS.alpha);
  state.cls = parseBounded(params.get('cls'), 0, 99999);
  state.fvsteps = parseBounded(params.get('fvsteps'), 1, 1024);
  state.fvsize = parseBounded(params.get('fvsize'), 16, 512);
  if (state.compare === state.image) state.compare = null;
  return state;
}

/** Write a state as a query string ("" when everything is default). Defaults are left out. */
export function serialize(state) {
  const params = new URLSearchParams();
  for (const key of KEYS) {
    const value = state[key];
    if (value === null || value === undefined || value === DEFAULTS[key]) continue;
    params.set(key, String(value));
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

/**
 * Apply changes and keep the state consistent: a new model forgets the layer,
 * a new layer forgets the channel, an image cannot be compared with itself.
 */
export function patch(state, changes) {
  const next = { ...state, ...changes };
  // Switching models forgets the layer; filling in the default model for a link does not.
  if ('model' in changes && state.model && changes.model !== state.model) {
    next.layer = changes.layer ?? null;
    next.channel = null;
    next.cls = null;
  }
  if ('image' in changes && changes.image !== state.image && !('cls' in changes)) next.cls = null;
  if ('layer' in changes && state.layer && changes.layer !== state.layer && !('channel' in changes)) {
    next.channel = null;
  }
  if (next.compare && next.compare === next.image) next.compare = null;
  if (next.vs && next.vs === next.model) next.vs = null;
  return next;
}

export function equal(a, b) {
  return KEYS.every((key) => a[key] === b[key]);
}

// ---- Derived state: first screen and channel page (issues #9, #13) --------------------------
// main.js asks these instead of reading views' DOM or internals.

const isMapLayer = (layer) => Array.isArray(layer?.output_shape) && layer.output_shape.length === 3;

/**
 * The layer a bare URL opens on: mid-depth, where the feature maps show parts of objects.
 * The middle of the conv layers with a spatial kernel (their filters are pictures too), else
 * the middle conv layer, else the first layer.
 */
export function defaultLayer(layers) {
  const convs = (layers ?? []).filter((l) => l.has_filters && isMapLayer(l) && l.has_activation !== false);
  const spatial = convs.filter((l) => (l.kernel_size ?? []).some((k) => k > 1));
  const pool = spatial.length ? spatial : convs;
  if (pool.length) return pool[Math.floor(pool.length / 2)].name;
  return layers?.[0]?.name ?? null;
}

/** The image a bare URL opens on: the cat sample, else the first sample. */
export function defaultImage(images) {
  const samples = (images ?? []).filter((i) => i.kind === 'sample');
  return (samples.find((i) => i.name === 'cat') ?? samples[0])?.id ?? null;
}

/** Whether the channel page is open for this state and the chosen layer's table row. */
export function channelOpen(state, layerInfo) {
  const out = layerInfo?.output_shape;
  return state.channel !== null && Boolean(state.layer) && isMapLayer(layerInfo) && state.channel < out[0];
}
