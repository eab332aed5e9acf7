// Panel.js — a titled card with a loading indicator, an inline message line and a body.
// `load(work)` runs one request at a time: a newer load aborts the older one.

import { h } from './dom.js';

export function describeError(err) {
  if (err?.name === 'ApiError') return err.message;
  return `Something went wrong in the page: ${err?.message ?? err}`;
}

export class Panel {
  constructor(root, title, { level = 'h2' } = {}) {
    this.root = root;
    root.classList.add('panel');
    this.title = h(level, { class: 'panel-title', text: title });
    this.spinner = h('span', { class: 'spinner', role: 'status', 'aria-label': 'Loading', hidden: true });
    this.tools = h('div', { class: 'panel-tools' });
    this.status = h('div', { class: 'panel-status' });
    this.body = h('div', { class: 'panel-body' });
    root.replaceChildren(
      h('header', { class: 'panel-head' }, h('div', { class: 'panel-heading' }, this.title, this.spinner), this.tools),
      this.status,
      this.body,
    );
    this.controller = null;
    this.busy(false);
  }

  setTitle(text) {
    this.title.textContent = text;
  }

  busy(on) {
    this.root.setAttribute('aria-busy', on ? 'true' : 'false');
    this.root.classList.toggle('is-busy', on);
    this.spinner.hidden = !on;
  }

  /** kind: 'error' | 'empty' | 'info'; no text clears the line. */
  message(kind, text) {
    this.status.replaceChildren();
    if (!text) return;
    this.status.append(h('p', { class: `msg msg-${kind}`, role: kind === 'error' ? 'alert' : null, text }));
  }

  cancel() {
    this.controller?.abort();
    this.controller = null;
    this.busy(false);
  }

  async load(work) {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    this.busy(true);
    this.message(null);
    this.root.classList.remove('has-error');
    try {
      await work(controller.signal);
    } catch (err) {
      if (controller.signal.aborted) return;
      this.root.classList.add('has-error');
      this.message('error', describeError(err));
    } finally {
      if (this.controller === controller) this.busy(false);
    }
  }
}
