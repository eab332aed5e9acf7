// api.js — the only module that calls fetch. Everything else asks it for data or URLs.
//
// Errors become ApiError with the server's plain-words `detail` (and its machine `code`).
// Every loader takes an AbortSignal so a view can drop a request it no longer needs.

export class ApiError extends Error {
  constructor(status, detail, code) {
    super(detail);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

const enc = encodeURIComponent;

function query(params = {}) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

function detailOf(body) {
  if (typeof body?.detail === 'string') return body.detail;
  if (Array.isArray(body?.detail)) {
    // FastAPI validation errors: [{loc: [...], msg: "..."}]
    return body.detail.map((d) => [d.loc?.slice(1).join('.'), d.msg].filter(Boolean).join(': ')).join('; ');
  }
  return null;
}

async function request(path, { signal, method = 'GET', body, headers } = {}) {
  let response;
  try {
    response = await fetch(path, { method, body, signal, headers });
  } catch (err) {
    if (signal?.aborted) throw err;
    throw new ApiError(0, 'Cannot reach the convscope server. Check that it is running, then reload.', 'network');
  }
  if (!response.ok) {
    let detail = null;
    let code = `http_${response.status}`;
    try {
      const payload = await response.json();
      detail = detailOf(payload);
      code = payload.code ?? code;
    } catch {
      // not JSON: fall through to the status line
    }
    throw new ApiError(response.status, detail ?? `The server answered ${response.status} ${response.statusText}.`, code);
  }
  return response;
}

// Job control tokens: a job's submitter gets one in the answer that started it (an optimize
// POST, a 202 from an attribution GET); DELETE /api/jobs/{id} needs it (X-Job-Token).
const jobTokens = new Map();

async function json(path, options) {
  const response = await request(path, options);
  const data = await response.json();
  if (data && typeof data.id === 'string' && typeof data.token === 'string') {
    // Asking again for the same work gives another token for the same job: keep them all.
    const held = jobTokens.get(data.id) || [];
    jobTokens.set(data.id, [...held, data.token].slice(-64));
  }
  options?.signal?.throwIfAborted();
  return data;
}

async function blob(path, options) {
  const response = await request(path, options);
  const data = await response.blob();
  options?.signal?.throwIfAborted();
  return { url: URL.createObjectURL(data), headers: response.headers };
}

// ---- URLs (for <img src>, download links) --------------------------------------------------

const modelPath = (model) => `/api/models/${enc(model)}`;
const imagePath = (model, image) => `${modelPath(model)}/images/${enc(image)}`;

/** Grey level (0..255) of grid padding and empty cells: the panels' dark background. */
export const GRID_BACKGROUND = 24;

export const urls = {
  image: (id) => `/api/images/${enc(id)}`,
  cam: (model, image, params) => `${imagePath(model, image)}/cam${query(params)}`,
  saliency: (model, image, params) => `${imagePath(model, image)}/saliency${query(params)}`,
  jobPreview: (id, version) => `/api/jobs/${enc(id)}/preview.png${query({ v: version })}`,
  jobResult: (id) => `/api/jobs/${enc(id)}/result.png`,
  input: (model, image, format = 'png') => `${imagePath(model, image)}/input${query({ format })}`,
  filters: (model, layer, params) => `${modelPath(model)}/layers/${enc(layer)}/filters${query(params)}`,
  activations: (model, image, layer, params) =>
    `${imagePath(model, image)}/activations/${enc(layer)}${query(params)}`,
};

// ---- Loaders ---------------------------------------------------------------------------------

export const listModels = (signal) => json('/api/models', { signal });
export const listLayers = (model, signal) => json(`${modelPath(model)}/layers`, { signal });
export const listImages = (signal) => json('/api/images', { signal });

export function uploadImage(file, signal) {
  const form = new FormData();
  form.append('file', file, file.name || 'pasted-image.png');
  return json('/api/images', { method: 'POST', body: form, signal });
}

/** Delete one of this browser's uploads (204); others who uploaded the same bytes keep theirs. */
export async function deleteImage(id, signal) {
  await request(urls.image(id), { method: 'DELETE', signal });
}

export const inputImage = (model, image, signal) => blob(urls.input(model, image), { signal });

export const predictions = (model, image, top, signal) =>
  json(`${imagePath(model, image)}/predictions${query({ top })}`, { signal });

export const channelStats = (model, image, layer, top, signal) =>
  json(`${imagePath(model, image)}/channels/${enc(layer)}${query({ top })}`, { signal });

/** Filter grid PNG plus its layout (from the X-Convscope-Grid header). */
export async function filterGrid(model, layer, params, signal) {
  const { url, headers } = await blob(urls.filters(model, layer, { ...params, format: 'png' }), { signal });
  return { url, channels: channelList(headers), grid: parseGridHeader(headers.get('X-Convscope-Grid')), scale: scaleOf(headers) };
}

/** Filter weights and per-filter stats as JSON (can be megabytes for wide 1×1 convs). */
export const filterValues = (model, layer, params, signal) =>
  json(urls.filters(model, layer, { ...params, format: 'json' }), { signal });

/**
 * The colour scale of a colour-mapped PNG: `X-Convscope-Scale: low,high;low,high...` (one pair
 * per tile, or one for a layer-wide or single map), `X-Convscope-Scale-Mode` and
 * `X-Convscope-Colormap`. Null when the server sent none.
 */
export function scaleOf(headers) {
  const text = headers.get('X-Convscope-Scale');
  if (!text) return null;
  const low = [];
  const high = [];
  for (const pair of text.split(';')) {
    const [lo, hi] = pair.split(',').map(Number);
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) continue;
    low.push(lo);
    high.push(hi);
  }
  const mode = headers.get('X-Convscope-Scale-Mode') ?? (low.length > 1 ? 'channel' : 'layer');
  return { mode, colormap: headers.get('X-Convscope-Colormap') ?? 'gray', low, high };
}

function channelList(headers) {
  return (headers.get('X-Convscope-Channels') ?? '')
    .split(',')
    .filter((s) => s.trim() !== '')
    .map(Number);
}

/** Parse `X-Convscope-Grid: nrow=2;ncol=4;tile=7x7;padding=2` into numbers. */
export function parseGridHeader(text) {
  const out = {};
  for (const part of (text ?? '').split(';')) {
    const [key, value] = part.split('=').map((s) => s?.trim());
    if (!key || value === undefined) continue;
    if (key === 'tile') {
      const [h, w] = value.split('x').map(Number);
      out.tileHeight = h;
      out.tileWidth = w;
    } else {
      out[key] = Number(value);
    }
  }
  return out;
}

export async function activationGrid(model, image, layer, params, signal) {
  const { url, headers } = await blob(urls.activations(model, image, layer, { ...params, format: 'png' }), { signal });
  return { url, channels: channelList(headers), grid: parseGridHeader(headers.get('X-Convscope-Grid')), scale: scaleOf(headers) };
}

function flatten(values) {
  return Array.isArray(values) ? values.flat(Infinity) : [];
}

function decodeFloat32(data) {
  if (typeof data !== 'string') return Float32Array.from(flatten(data));
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

/** One channel's raw float32 values: {index, min, max, mean, std, width, height, values}. */
export async function channelValues(model, image, layer, channel, signal) {
  const params = { format: 'json', channels: channel, dtype: 'float32' };
  const body = await json(urls.activations(model, image, layer, params), { signal });
  const entry = body.channels?.[0];
  if (!entry) throw new ApiError(200, `The server sent no values for channel ${channel}.`, 'empty');
  const [, height, width] = body.shape ?? [];
  return { ...entry, width, height, values: decodeFloat32(entry.data) };
}

// ---- Attribution ----------------------------------------------------------------------------

/**
 * A PNG that the server may compute as a job (Score-CAM, SmoothGrad): a 202 answer carries the
 * job; `onJob(job)` hears its progress until it is done, then the same URL is asked again and
 * answers with the picture. A failed or cancelled job rejects with an ApiError.
 */
async function slowBlob(path, { signal, onJob }) {
  for (let attempt = 0; attempt < 5; attempt++) {
    const response = await request(path, { signal });
    if (response.status !== 202) {
      const data = await response.blob();
      signal?.throwIfAborted();
      return { url: URL.createObjectURL(data), headers: response.headers };
    }
    const job = await response.json();
    if (typeof job.token === 'string') {
      // to cancel it; tokens for one job are kept as a list (see json())
      jobTokens.set(job.id, [...(jobTokens.get(job.id) || []), job.token].slice(-64));
    }
    onJob?.(job);
    await finished(job, { signal, onJob });
  }
  throw new ApiError(0, 'The server kept answering that the job is still running.', 'job_loop');
}

/**
 * Resolve when job `job` is done; reject when it failed, was cancelled, or `signal` aborts
 * (which also cancels this page's share of the job).
 */
function finished(job, { signal, onJob }) {
  const end = (j) => {
    if (j.state === 'done') return null;
    if (j.state === 'cancelled') return new ApiError(0, 'Cancelled.', 'cancelled');
    return new ApiError(0, j.error?.detail ?? 'The job failed.', j.error?.code ?? 'job_failed');
  };
  if (FINISHED.includes(job.state)) {
    const err = end(job);
    return err ? Promise.reject(err) : Promise.resolve();
  }
  return new Promise((resolve, reject) => {
    const stop = followJob(job.id, {
      onProgress: (j) => onJob?.(j),
      onEnd: (j) => {
        signal?.removeEventListener('abort', abort);
        onJob?.(j);
        const err = end(j);
        if (err) reject(err);
        else resolve();
      },
      onError: (err) => {
        signal?.removeEventListener('abort', abort);
        reject(err);
      },
    });
    // A view that no longer wants the picture (another method, image or class) gives up its
    // share of the job: the server stops it once every submitter has cancelled, so an
    // abandoned Score-CAM does not hold a worker that the next request needs.
    const abort = () => {
      stop();
      cancelJob(job.id).catch(() => {});
      reject(signal.reason ?? new DOMException('Aborted', 'AbortError'));
    };
    signal?.addEventListener('abort', abort, { once: true });
  });
}

/** Grad-CAM (or Grad-CAM++ / Score-CAM) PNG; the server names the class and layer it used. */
export async function camImage(model, image, params, signal, onJob) {
  const { url, headers } = await slowBlob(urls.cam(model, image, { ...params, format: 'png' }), { signal, onJob });
  return { url, classIndex: numberHeader(headers, 'X-Convscope-Class'), layer: headers.get('X-Convscope-Layer'), scale: scaleOf(headers) };
}

/** Saliency map PNG (vanilla gradient, SmoothGrad or guided backprop). */
export async function saliencyImage(model, image, params, signal, onJob) {
  const { url, headers } = await slowBlob(urls.saliency(model, image, { ...params, format: 'png' }), { signal, onJob });
  return { url, classIndex: numberHeader(headers, 'X-Convscope-Class'), scale: scaleOf(headers) };
}

function numberHeader(headers, name) {
  const text = headers.get(name);
  return text === null || text === '' ? null : Number(text);
}

// ---- Jobs (feature visualisation) -----------------------------------------------------------

/** Start (or find, when the server already has it) an optimisation job: the job JSON. */
export const startOptimize = (model, body, signal) =>
  json(`${modelPath(model)}/optimize`, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' },
    signal,
  });

export const getJob = (id, signal) => json(`/api/jobs/${enc(id)}`, { signal });

export const cancelJob = (id, signal) =>
  json(`/api/jobs/${enc(id)}`, {
    method: 'DELETE',
    headers: { 'X-Job-Token': (jobTokens.get(id) || []).join(',') },
    signal,
  });

export const FINISHED = Object.freeze(['done', 'failed', 'cancelled']);

/**
 * Follow a job's server-sent events: onProgress(job) on every change, then onEnd(job) once.
 * The stream is closed at the end (an EventSource would otherwise reconnect forever); if the
 * connection drops before, the job is asked for once and followed again while it runs.
 * Returns a function that stops following.
 */
export function followJob(id, { onProgress, onEnd, onError }) {
  let source = null;
  let stopped = false;
  let retries = 0;
  const stop = () => {
    stopped = true;
    source?.close();
    source = null;
  };
  const open = () => {
    if (stopped) return;
    source = new EventSource(`/api/jobs/${enc(id)}/events`);
    const read = (event) => {
      try {
        return JSON.parse(event.data);
      } catch {
        return null;
      }
    };
    source.addEventListener('progress', (event) => {
      retries = 0;
      const job = read(event);
      if (job && !stopped) onProgress(job);
    });
    source.addEventListener('end', (event) => {
      const job = read(event);
      stop();
      if (job) onEnd(job);
    });
    source.onerror = async () => {
      source?.close();
      source = null;
      if (stopped) return;
      try {
        const job = await getJob(id);
        if (stopped) return;
        if (FINISHED.includes(job.state)) {
          stop();
          onEnd(job);
        } else if (retries++ < 5) {
          onProgress(job);
          setTimeout(open, 500 * retries);
        } else {
          stop();
          onError(new ApiError(0, 'Lost the connection to the server while following the job.', 'network'));
        }
      } catch (err) {
        stop();
        onError(err);
      }
    };
  };
  open();
  return stop;
}

// ---- Collections and dataset examples (issue 11) ---------------------------------------------

const collectionPath = (cid) => `/api/collections/${enc(cid)}`;
const indexPath = (model, cid) => `${modelPath(model)}/collections/${enc(cid)}`;

export const collectionUrls = {
  examples: (model, cid, layer, params) => `${indexPath(model, cid)}/examples/${enc(layer)}${query(params)}`,
  stats: (model, cid, layer, params) => `${indexPath(model, cid)}/stats/${enc(layer)}${query(params)}`,
};

export const listCollections = (signal) => json('/api/collections', { signal });
export const getCollection = (cid, signal) => json(collectionPath(cid), { signal });

export const createCollection = (name, signal) =>
  json('/api/collections', {
    method: 'POST',
    body: JSON.stringify({ name }),
    headers: { 'Content-Type': 'application/json' },
    signal,
  });

export async function deleteCollection(cid, signal) {
  await request(collectionPath(cid), { method: 'DELETE', signal });
}

/** Add files ({file, path}) and archives: {added, duplicates, skipped: [{name, reason}]}. */
export function addToCollection(cid, files, archive, signal) {
  const form = new FormData();
  for (const { file, path } of files) form.append('files', file, path || file.name);
  if (archive) form.append('archive', archive, archive.name);
  return json(`${collectionPath(cid)}/images`, { method: 'POST', body: form, signal });
}

export const indexCollection = (model, cid, body, signal) =>
  json(`${indexPath(model, cid)}/index`, {
    method: 'POST',
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' },
    signal,
  });

export const datasetExamples = (model, cid, layer, params, signal) =>
  json(collectionUrls.examples(model, cid, layer, { ...params, format: 'json' }), { signal });

export const collectionStats = (model, cid, layer, signal) =>
  json(collectionUrls.stats(model, cid, layer), { signal });

// ---- Weights that read (issue #12): expanded weights, model compare ---------------------------

urls.expanded = (model, layer, params) => `${modelPath(model)}/layers/${enc(layer)}/expanded${query(params)}`;

/** Expanded weights PNG of one channel: {url, channels (tile order), box [top, left, bottom, right]}. */
export async function expandedImage(model, layer, params, signal) {
  const { url, headers } = await blob(urls.expanded(model, layer, { ...params, format: 'png' }), { signal });
  const box = (headers.get('X-Convscope-Box') ?? '').split(',').filter(Boolean).map(Number);
  return { url, channels: channelList(headers), box };
}

/** Per-layer differences of two models: weight change, filter cosine, with an image CKA. */
export const compareModels = (a, b, image, signal) =>
  json(`${modelPath(a)}/compare/${enc(b)}${query({ image })}`, { signal });
