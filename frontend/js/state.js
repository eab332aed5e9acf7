// state.js — the whole UI state and its URL form. Pure: no DOM, no fetch.
//
// parse(search) -> state, serialize(state) -> "?model=..&layer=..", patch(state, changes) -> state.
// Every view is a permalink because every choice a user makes lives here.

export const OPTIONS = Object.freeze({
  order: ['index', 'mean'],
  colormap: ['viridis', 'magma', 'inferno', 'gray'],
  normalize: ['channel', 'layer'],
  fnorm: ['filter', 'layer'],
  limit: [16, 32, 64, 128, 256, 0], // 0 = every channel
});

export const DEFAULTS = Object.freeze({
  model: null,
  layer: null,
  image: null,
  channel: null,
  compare: null,
  order: 'index',
  colormap: 'viridis',
  normalize: 'channel',
  fnorm: 'filter',
  limit: 64,
  opacity: 0.6,
});

const KEYS = Object.keys(DEFAULTS);

function parseInteger(text) {
  return /^\d{1,6}$/.test(text) ? Number(text) : null;
}

function parseOpacity(text) {
  const value = Number(text);
  return Number.isFinite(value) ? Math.min(1, Math.max(0, value)) : DEFAULTS.opacity;
}

/** Read a state from a query string; anything unknown or malformed falls back to its default. */
export function parse(search) {
  const params = new URLSearchParams(search);
  const state = { ...DEFAULTS };
  for (const key of ['model', 'layer', 'image', 'compare']) {
    const value = params.get(key);
    if (value) state[key] = value;
  }
  for (const key of ['order', 'colormap', 'normalize', 'fnorm']) {
    const value = params.get(key);
    if (OPTIONS[key].includes(value)) state[key] = value;
  }
  const limit = parseInteger(params.get('limit') ?? '');
  if (limit !== null && OPTIONS.limit.includes(limit)) state.limit = limit;
  state.channel = parseInteger(params.get('channel') ?? '');
  if (params.has('opacity')) state.opacity = parseOpacity(params.get('opacity'));
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
  }
  if ('layer' in changes && state.layer && changes.layer !== state.layer && !('channel' in changes)) {
    next.channel = null;
  }
  if (next.compare && next.compare === next.image) next.compare = null;
  return next;
}

export function equal(a, b) {
  return KEYS.every((key) => a[key] === b[key]);
}
