// Attribution.js — which pixels the prediction depends on, for the current image:
// Grad-CAM (or Grad-CAM++ / Score-CAM) laid over the input with adjustable opacity, and a
// gradient saliency map (vanilla, SmoothGrad, guided backprop), both for a class picked from
// the top-5 predictions. Emits cs:option for cam, sal, cls and alpha.

import * as api from './api.js';
import { download, emit, h, safeName, select } from './dom.js';
import { Panel } from './Panel.js';
import { percent } from './CamStrip.js';
import { JobBar } from './JobBar.js';
import { Legend } from './Legend.js';

const CAM_METHODS = [['gradcam', 'Grad-CAM'], ['gradcampp', 'Grad-CAM++'], ['scorecam', 'Score-CAM (slow)']];
const SAL_METHODS = [['vanilla', 'Gradient'], ['smoothgrad', 'SmoothGrad (slower)'], ['guided', 'Guided backprop']];

function swap(img, url) {
  const old = img.getAttribute('src') ?? '';
  img.src = url;
  if (old.startsWith('blob:')) URL.revokeObjectURL(old);
}

export class Attribution {
  constructor(root) {
    this.root = root;
    this.panel = new Panel(root, 'Attribution');
    root.classList.add('keeps-body');
    this.classField = h('div');
    this.panel.tools.append(this.classField);
    this.intro = h('p', { class: 'muted small', text: 'Which parts of the picture the chosen class depends on.' });

    // Grad-CAM
    const camRoot = h('section', { class: 'subpanel', id: 'cam-panel' });
    this.cam = new Panel(camRoot, 'Class activation map', { level: 'h3' });
    this.camMethod = h('div');
    this.alpha = h('input', {
      id: 'cam-opacity',
      type: 'range',
      min: 0,
      max: 100,
      step: 5,
      oninput: () => this.setAlpha(this.alpha.value / 100),
      onchange: () => emit(root, 'cs:option', { key: 'alpha', value: this.alpha.value / 100, replace: true }),
    });
    this.camBase = h('img', { class: 'overlay-base', alt: 'Network input' });
    this.camTop = h('img', { class: 'overlay-top cam-top', alt: 'Class activation map' });
    this.camCaption = h('p', { class: 'muted small' });
    this.camLinks = h('div', { class: 'downloads' });
    this.cam.tools.append(
      this.camMethod,
      h('label', { class: 'field field-inline', for: 'cam-opacity' }, h('span', { class: 'field-label', text: 'Opacity' }), this.alpha),
    );
    this.camJob = new JobBar('cam-progress', 'Class activation map');
    this.camLegend = new Legend();
    this.camRetry = h('button', { type: 'button', class: 'btn btn-small', text: 'Run again', hidden: true, onclick: () => this.retry('cam') });
    this.cam.body.append(
      this.camJob.el,
      this.camRetry,
      h('div', { class: 'overlay-stack attr-stack' }, this.camBase, this.camTop),
      this.camLegend.el,
      this.camCaption,
      this.camLinks,
    );

    // Saliency
    const salRoot = h('section', { class: 'subpanel', id: 'saliency-panel' });
    this.sal = new Panel(salRoot, 'Saliency', { level: 'h3' });
    this.salMethod = h('div');
    this.sal.tools.append(this.salMethod);
    this.salImg = h('img', { class: 'attr-img', alt: 'Saliency map' });
    this.salCaption = h('p', { class: 'muted small' });
    this.salLinks = h('div', { class: 'downloads' });
    this.salJob = new JobBar('saliency-progress', 'Saliency');
    this.salLegend = new Legend();
    this.salRetry = h('button', { type: 'button', class: 'btn btn-small', text: 'Run again', hidden: true, onclick: () => this.retry('sal') });
    this.sal.body.append(this.salJob.el, this.salRetry, h('div', { class: 'attr-frame' }, this.salImg), this.salLegend.el, this.salCaption, this.salLinks);

    this.panel.body.append(this.intro, h('div', { class: 'columns attr-columns' }, camRoot, salRoot));
    this.keys = { rows: null, cam: null, sal: null };
    this.rows = null;
  }

  setAlpha(alpha) {
    this.camTop.style.opacity = String(alpha);
  }

  /** Ask again for a picture whose job was cancelled. */
  retry(which) {
    this.keys[which] = null;
    if (this.last) this.update(this.last);
  }

  /** Run `work`; a cancelled job ends in a note and a "Run again" button, not an error. */
  async job(panel, bar, retryButton, what, work) {
    retryButton.hidden = true;
    await panel.load(async (signal) => {
      try {
        await work(signal, (job) => bar.show(job));
      } catch (err) {
        if (err?.code !== 'cancelled' || signal.aborted) throw err;
        panel.message('info', `${what} cancelled.`);
        retryButton.hidden = false;
      } finally {
        bar.hide();
      }
    });
  }

  update(args) {
    this.last = args;
    const { model, image, imageName, modelInfo, cam, sal, cls, alpha } = args;
    this.root.hidden = !image || !model;
    if (this.root.hidden) {
      this.keys = { rows: null, cam: null, sal: null };
      this.cam.cancel();
      this.sal.cancel();
      this.panel.cancel();
      return;
    }
    this.alpha.value = String(Math.round(alpha * 100));
    this.setAlpha(alpha);
    this.panel.setTitle(`Attribution${imageName ? ` for ${imageName}` : ''}`);
    this.camMethod.replaceChildren(
      select({ id: 'cam-method', label: 'Method', value: cam, options: CAM_METHODS, className: 'field field-inline', onchange: (value) => emit(this.root, 'cs:option', { key: 'cam', value }) }),
    );
    this.salMethod.replaceChildren(
      select({ id: 'saliency-method', label: 'Method', value: sal, options: SAL_METHODS, className: 'field field-inline', onchange: (value) => emit(this.root, 'cs:option', { key: 'sal', value }) }),
    );
    if (modelInfo && !modelInfo.num_classes) {
      this.panel.message('info', 'This model has no classes, so there is nothing to attribute.');
      this.panel.body.hidden = true;
      return;
    }
    this.panel.body.hidden = false;
    this.cls = cls;
    const rowsKey = JSON.stringify([model, image]);
    if (rowsKey !== this.keys.rows) {
      this.keys.rows = rowsKey;
      this.rows = null;
      this.classField.replaceChildren();
      this.panel.message(null);
      const rowsPromise = api.predictions(model, image, 5).then((rows) => {
        if (this.keys.rows !== rowsKey) return rows;
        this.rows = rows;
        this.renderClasses(this.cls);
        return rows;
      });
      this.rowsPromise = rowsPromise.catch((err) => {
        if (this.keys.rows === rowsKey) this.panel.message('error', `Could not list the top classes: ${err.message}`);
        return null;
      });
    } else if (this.rows) {
      this.renderClasses(cls);
    }

    const klass = cls ?? undefined;
    const base = safeName(`${model}_${image}_${cls ?? 'top1'}`);
    const camKey = JSON.stringify([model, image, cam, cls]);
    if (camKey !== this.keys.cam) {
      this.keys.cam = camKey;
      this.camCaption.textContent = cam === 'scorecam' ? 'Score-CAM runs the network once per channel: this takes a while…' : '';
      this.job(this.cam, this.camJob, this.camRetry, 'Score-CAM', async (signal, onJob) => {
        const [result] = await Promise.all([
          api.camImage(model, image, { method: cam, class_index: klass, alpha: 1 }, signal, onJob),
          this.rowsPromise,
        ]);
        this.camBase.src = api.urls.input(model, image);
        swap(this.camTop, result.url);
        this.camLegend.show(result.scale);
        this.camCaption.textContent = `${this.className(result.classIndex)} · layer ${result.layer ?? '?'} · red: raises the score.`;
        const alphaNow = Number(this.alpha.value) / 100;
        this.camLinks.replaceChildren(
          download(api.urls.cam(model, image, { method: cam, class_index: klass, alpha: alphaNow, format: 'png' }), 'PNG', `${base}_${cam}.png`),
          download(api.urls.cam(model, image, { method: cam, class_index: klass, format: 'npy' }), 'NPY', `${base}_${cam}.npy`),
        );
      });
    }
    const salKey = JSON.stringify([model, image, sal, cls]);
    if (salKey !== this.keys.sal) {
      this.keys.sal = salKey;
      this.salCaption.textContent = '';
      this.job(this.sal, this.salJob, this.salRetry, 'SmoothGrad', async (signal, onJob) => {
        const [result] = await Promise.all([
          api.saliencyImage(model, image, { method: sal, class_index: klass }, signal, onJob),
          this.rowsPromise,
        ]);
        swap(this.salImg, result.url);
        this.salLegend.show(result.scale);
        this.salCaption.textContent = `${this.className(result.classIndex)} · bright: pixels whose change moves the score most.`;
        this.salLinks.replaceChildren(
          download(api.urls.saliency(model, image, { method: sal, class_index: klass, format: 'png' }), 'PNG', `${base}_${sal}.png`),
          download(api.urls.saliency(model, image, { method: sal, class_index: klass, format: 'npy' }), 'NPY', `${base}_${sal}.npy`),
        );
      });
    }
  }

  className(index) {
    const row = this.rows?.find((r) => r.index === index);
    if (row) return `${row.label ?? `class ${row.index}`} (${percent(row.probability)})`;
    return index === null || index === undefined ? 'top class' : `class ${index}`;
  }

  renderClasses(cls) {
    const rows = this.rows ?? [];
    const options = rows.map((r, i) => [i === 0 ? '' : String(r.index), `${r.label ?? `class ${r.index}`} · ${percent(r.probability)}`]);
    if (cls !== null && !rows.slice(1).some((r) => r.index === cls)) {
      if (rows[0]?.index !== cls) options.push([String(cls), `class ${cls}`]);
    }
    const value = cls === null || rows[0]?.index === cls ? '' : String(cls);
    this.classField.replaceChildren(
      select({
        id: 'attr-class',
        label: 'Class',
        value,
        options,
        className: 'field field-inline',
        onchange: (v) => emit(this.root, 'cs:option', { key: 'cls', value: v === '' ? null : Number(v) }),
      }),
    );
  }
}
