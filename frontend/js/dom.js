// dom.js — tiny helpers to build DOM without ever parsing strings as HTML.

const PROPS = new Set(['value', 'checked', 'selected', 'disabled', 'hidden', 'tabIndex']);

/**
 * h('button', {class: 'btn', onclick: fn, text: 'Go'}, child, 'more text')
 * Strings always become text nodes; attributes are set with setAttribute, never as markup.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (PROPS.has(key)) el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Bubble an action up to whoever owns the state. */
export function emit(el, type, detail) {
  el.dispatchEvent(new CustomEvent(type, { detail, bubbles: true }));
}

/** A labelled <select>; `onchange` receives the chosen value. */
export function select({ label, id, value, options, onchange, className = 'field' }) {
  const control = h(
    'select',
    { id, onchange: (event) => onchange(event.target.value) },
    options.map(([optionValue, text]) => h('option', { value: String(optionValue), text })),
  );
  control.value = String(value);
  return h('label', { class: className, for: id }, h('span', { class: 'field-label', text: label }), control);
}

/** A download link that looks like a small button. */
export function download(href, text, filename) {
  return h('a', { class: 'btn btn-small', href, download: filename ?? true, text });
}

export const shape = (dims) => (Array.isArray(dims) && dims.length ? dims.join('×') : '—');

export const safeName = (text) => String(text).replace(/[^A-Za-z0-9._-]+/g, '_');
