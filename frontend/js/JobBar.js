// JobBar.js — a server job's progress (queued, step of total) with a Cancel button, for views
// whose picture the server computes as a job (Score-CAM, SmoothGrad).

import * as api from './api.js';
import { h } from './dom.js';

export class JobBar {
  constructor(id, what) {
    this.what = what;
    this.job = null;
    this.progress = h('progress', { id, max: 1, value: 0, 'aria-label': `${what} progress` });
    this.text = h('output', { class: 'small muted', for: id, 'aria-live': 'polite' });
    this.cancel = h('button', {
      type: 'button',
      class: 'btn btn-small job-cancel',
      text: 'Cancel',
      onclick: () => this.stop(),
    });
    this.el = h('div', { class: 'job-bar', hidden: true }, this.progress, this.text, this.cancel);
  }

  show(job) {
    this.job = job;
    this.el.hidden = false;
    this.el.dataset.state = job.state;
    this.cancel.disabled = api.FINISHED.includes(job.state);
    if (job.state === 'queued') {
      this.progress.removeAttribute('value'); // indeterminate while waiting
      this.text.textContent = job.queue_position ? `queued, ${job.queue_position} ahead` : 'queued';
    } else {
      this.progress.max = Math.max(1, job.total || 1);
      this.progress.value = Math.min(job.step ?? 0, this.progress.max);
      this.text.textContent = job.total ? `${job.step} of ${job.total}` : job.state;
    }
  }

  hide() {
    this.job = null;
    this.el.hidden = true;
  }

  async stop() {
    if (!this.job) return;
    this.cancel.disabled = true;
    this.text.textContent = 'cancelling…';
    try {
      await api.cancelJob(this.job.id);
    } catch {
      // the job may have just finished: its end event says what happened
    }
  }
}
