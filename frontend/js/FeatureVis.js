// FeatureVis.js — the channel's optimised image: an input synthesised to excite it.
// "Visualise" starts a server job; a progress bar and the live preview follow its events;
// Cancel stops it. The server caches results, so asking again for the same channel is instant.
// Jobs already started in this page are remembered per channel and picked up again on return.
// Emits cs:option {key: 'fv'} for the quality preset.

import * as api from './api.js';
import { describeError, Panel } from './Panel.js';
import { download, emit, h, safeName, select } from './dom.js';
import { FV_PRESETS } from './state.js';

export class FeatureVis {
  constructor(root) {
    this.root = root;
    this.panel = new Panel(root, 'Optimised image', { level: 'h3' });
    this.root.classList.add('keeps-body');
    this.jobs = new Map(); // key -> last job JSON seen for that channel and setting
    this.img = h('img', { class: 'fv-img', alt: '' });
    this.placeholder = h('p', { class: 'fv-placeholder muted small', text: 'Not visualised yet.' });
    this.progress = h('progress', { class: 'fv-progress', max: 1, value: 0, id: 'fv-progress', 'aria-label': 'Optimisation progress' });
    this.progressText = h('output', { class: 'small muted', for: 'fv-progress', 'aria-live': 'polite' });
    this.bar = h('div', { class: 'fv-bar', hidden: true }, this.progress, this.progressText);
    this.start = h('button', { type: 'button', class: 'btn btn-primary btn-small', text: 'Visualise', onclick: () => this.run() });
    this.stop = h('button', { type: 'button', class: 'btn btn-small', text: 'Cancel', hidden: true, onclick: () => this.cancel() });
    this.quality = h('div');
    this.caption = h('p', { class: 'muted small' });
    this.links = h('div', { class: 'downloads' });
    this.panel.body.append(
      h('figure', { class: 'fv-figure' }, h('div', { class: 'fv-frame' }, this.img, this.placeholder), h('figcaption', {}, this.bar, this.caption)),
      h('div', { class: 'fv-actions' }, this.start, this.stop, this.quality, this.links),
    );
    this.key = null;
    this.unfollow = null;
    this.previewBusy = false;
    this.previewWanted = null;
    this.img.addEventListener('load', () => this.previewDone());
    this.img.addEventListener('error', () => this.previewDone());
  }

  update({ model, layer, layerInfo, channel, fv, fvsteps, fvsize }) {
    const out = layerInfo?.output_shape;
    const preset = FV_PRESETS[fv] ?? FV_PRESETS.quick;
    const steps = fvsteps ?? preset.steps;
    const size = fvsize ?? preset.size;
    const key = JSON.stringify([model, layer, channel, steps, size]);
    this.quality.replaceChildren(
      select({
        id: 'fv-quality',
        label: 'Quality',
        value: fv,
        className: 'field field-inline',
        options: [['quick', 'Quick'], ['better', 'Better (slower)']],
        onchange: (value) => emit(this.root, 'cs:option', { key: 'fv', value }),
      }),
    );
    if (key === this.key) return;
    this.key = key;
    this.follow(null);
    this.request = { model, body: { layer, channels: [channel], steps, size, seed: 0 } };
    this.label = `${layer} channel ${channel}`;
    this.base = safeName(`${model}_${layer}_c${channel}_fv${steps}`);
    this.img.alt = `Optimised image for ${this.label}`;
    this.panel.message(null);
    this.steps = steps;
    this.size = size;
    if (!Array.isArray(out) || out.length !== 3) {
      this.show(null);
      this.panel.message('info', `${layer} has no spatial channels to optimise.`);
      this.start.disabled = true;
      return;
    }
    const known = this.jobs.get(key);
    this.show(known ?? null);
    if (known && !api.FINISHED.includes(known.state)) this.follow(known.id);
  }

  /** Render a job (or nothing) into the panel. */
  show(job) {
    const running = job && !api.FINISHED.includes(job.state);
    this.start.hidden = Boolean(running);
    this.start.disabled = false;
    this.stop.hidden = !running;
    this.stop.disabled = false;
    this.bar.hidden = !running;
    this.root.setAttribute('aria-busy', running ? 'true' : 'false');
    this.root.dataset.state = job?.state ?? 'idle';
    this.links.replaceChildren();
    if (!job) {
      this.setImage(null);
      this.start.textContent = 'Visualise';
      this.caption.textContent = `Synthesises an input that excites ${this.label} (${this.steps} steps, ${this.size} px). Takes a few seconds to a minute on a CPU.`;
      return;
    }
    if (running) {
      this.progress.max = Math.max(1, job.total ?? 1);
      this.progress.value = job.step ?? 0;
      this.progressText.textContent =
        job.state === 'queued'
          ? `Waiting in the queue${job.queue_position ? ` (${job.queue_position} ahead)` : ''}…`
          : `Step ${job.step} of ${job.total}`;
      this.caption.textContent = 'The preview updates as the image is optimised.';
      if (job.has_preview) this.preview(api.urls.jobPreview(job.id, job.version));
      else if (!this.img.getAttribute('src')) this.setImage(null, 'Starting…');
      return;
    }
    this.start.textContent = 'Visualise again';
    if (job.state === 'done') {
      this.setImage(api.urls.jobResult(job.id));
      const secs = job.started && job.finished ? ` in ${(job.finished - job.started).toFixed(1)} s` : '';
      this.caption.textContent = job.cached ? `From the cache: ${job.total} steps.` : `Done: ${job.total} steps${secs}.`;
      this.links.replaceChildren(download(api.urls.jobResult(job.id), 'PNG', `${this.base}.png`));
      this.start.hidden = true;
    } else if (job.state === 'cancelled') {
      this.setImage(null, 'Cancelled.');
      this.caption.textContent = `Cancelled at step ${job.step} of ${job.total}.`;
    } else {
      this.setImage(null, 'Failed.');
      this.caption.textContent = '';
      this.panel.message('error', job.error?.detail ?? 'The optimisation failed.');
    }
  }

  setImage(url, text = 'Not visualised yet.') {
    this.previewWanted = null;
    this.previewBusy = false;
    if (url) {
      this.img.src = url;
      this.img.hidden = false;
      this.placeholder.hidden = true;
    } else {
      this.img.removeAttribute('src');
      this.img.hidden = true;
      this.placeholder.hidden = false;
      this.placeholder.textContent = text;
    }
  }

  /** Show a preview URL, at most one loading at a time (the newest wins). */
  preview(url) {
    this.img.hidden = false;
    this.placeholder.hidden = true;
    if (this.previewBusy) {
      this.previewWanted = url;
      return;
    }
    this.previewBusy = true;
    this.img.src = url;
  }

  previewDone() {
    this.previewBusy = false;
    const next = this.previewWanted;
    this.previewWanted = null;
    if (next) this.preview(next);
  }

  remember(key, job) {
    this.jobs.set(key, job);
    if (key === this.key) this.show(job);
  }

  follow(id) {
    this.unfollow?.();
    this.unfollow = null;
    if (!id) return;
    const key = this.key;
    this.unfollow = api.followJob(id, {
      onProgress: (job) => this.remember(key, job),
      onEnd: (job) => {
        this.remember(key, job);
        if (this.key === key) this.unfollow = null;
      },
      onError: (err) => {
        this.jobs.delete(key);
        if (this.key !== key) return;
        this.show(null);
        this.panel.message('error', describeError(err));
      },
    });
  }

  async run() {
    const key = this.key;
    this.panel.message(null);
    this.start.disabled = true;
    try {
      const job = await api.startOptimize(this.request.model, this.request.body);
      this.remember(key, job);
      if (key === this.key && !api.FINISHED.includes(job.state)) this.follow(job.id);
    } catch (err) {
      if (key !== this.key) return;
      this.start.disabled = false;
      this.panel.message('error', describeError(err));
    }
  }

  async cancel() {
    const job = this.jobs.get(this.key);
    if (!job) return;
    this.stop.disabled = true;
    try {
      const after = await api.cancelJob(job.id);
      if (api.FINISHED.includes(after.state)) this.remember(this.key, after);
    } catch (err) {
      this.stop.disabled = false;
      this.panel.message('error', describeError(err));
    }
  }
}
