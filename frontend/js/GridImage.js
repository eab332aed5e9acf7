// GridImage.js — a PNG grid of tiles (filters or channel maps) you can point at.
//
// Hover or arrow keys move a cursor over tiles, click or Enter picks one. Tile geometry comes
// from the server's layout (tile size and padding), checked against the PNG's real size.

import { h } from './dom.js';

/** Work out rows/columns and tile offsets from the server layout and the PNG size. */
export function tileLayout({ tileWidth, tileHeight, padding = 0, nrow, ncol }, width, height) {
  const fit = (size, tile, pad, outer) => (size - (outer ? pad : -pad)) / (tile + pad);
  for (const outer of [true, false]) {
    const cols = fit(width, tileWidth, padding, outer);
    const rows = fit(height, tileHeight, padding, outer);
    if (Number.isInteger(cols) && Number.isInteger(rows) && cols > 0 && rows > 0) {
      return { cols, rows, tileWidth, tileHeight, padding, offset: outer ? padding : 0, width, height };
    }
  }
  // Fall back on the declared counts and spread tiles evenly over the image.
  const cols = Math.max(1, ncol || 1);
  const rows = Math.max(1, nrow || 1);
  return { cols, rows, tileWidth: width / cols - padding, tileHeight: height / rows - padding, padding, offset: 0, width, height };
}

/**
 * The pixel size of a server grid of `count` tiles of `tileHeight`×`tileWidth` (padding
 * between and around), laid out as the server does (render/grid.py default_ncol): a roughly
 * 4:3 landscape grid. Lets a view reserve the final size before the PNG arrives.
 */
export function gridSize(count, tileHeight, tileWidth, padding) {
  if (count < 1) return null;
  const pad = count === 1 ? 0 : padding;
  const ncol = Math.max(1, Math.min(count, Math.ceil(Math.sqrt(((count * 4) / 3) * (tileHeight / Math.max(tileWidth, 1))))));
  const rows = Math.ceil(count / ncol);
  return { width: ncol * (tileWidth + pad) + pad, height: rows * (tileHeight + pad) + pad };
}

export class GridImage {
  /**
   * @param {object} o
   * @param {string} o.label  accessible name of the grid
   * @param {(i:number)=>string} o.describe  text for tile i (tooltip and live region)
   * @param {(i:number)=>void} o.onPick  called when tile i is clicked or chosen with Enter
   */
  constructor({ label, describe, onPick, onCursor }) {
    this.describe = describe;
    this.onPick = onPick;
    this.onCursor = onCursor;
    this.count = 0;
    this.cursor = -1;
    this.layout = null;
    // No alt text: the frame carries the name, and a missing picture must never show words.
    this.img = h('img', { class: 'grid-img', alt: '', draggable: 'false' });
    this.hoverMark = h('div', { class: 'tile-mark tile-hover', hidden: true });
    this.selectMark = h('div', { class: 'tile-mark tile-selected', hidden: true });
    this.tip = h('div', { class: 'tile-tip', 'aria-live': 'polite' });
    this.frame = h(
      'div',
      {
        class: 'grid-frame',
        tabindex: 0,
        role: 'group',
        'aria-label': `${label}. Arrow keys move, Enter opens.`,
        onpointermove: (e) => this.point(e),
        onpointerleave: () => this.moveCursor(-1),
        onclick: (e) => this.pick(this.indexAt(e)),
        onkeydown: (e) => this.key(e),
      },
      this.img,
      this.hoverMark,
      this.selectMark,
    );
    this.el = h('div', { class: 'grid' }, this.frame, this.tip);
    this.frame.classList.add('is-empty');
  }

  /** Reserve the final size (`gridSize`) while nothing is shown yet; a shown grid stays. */
  expect(size) {
    if (this.img.getAttribute('src') || !size) return;
    this.frame.style.aspectRatio = `${size.width} / ${size.height}`;
  }

  /** Show a new grid. `layout` as in tileLayout; `count` tiles are real. */
  async show(url, layout, count) {
    const old = this.img.src;
    this.img.src = url;
    await this.img.decode().catch(() => {});
    if (old.startsWith('blob:')) URL.revokeObjectURL(old);
    this.frame.classList.remove('is-empty');
    if (this.img.naturalWidth) {
      this.frame.style.aspectRatio = `${this.img.naturalWidth} / ${this.img.naturalHeight}`;
    }
    this.layout = tileLayout(layout, this.img.naturalWidth, this.img.naturalHeight);
    this.count = count;
    this.cursor = -1;
    this.hoverMark.hidden = true;
    this.tip.textContent = '';
    this.select(this.selected ?? -1);
  }

  indexAt(event) {
    const L = this.layout;
    if (!L) return -1;
    const box = this.img.getBoundingClientRect();
    const x = ((event.clientX - box.left) / box.width) * L.width - L.offset;
    const y = ((event.clientY - box.top) / box.height) * L.height - L.offset;
    const col = Math.floor(x / (L.tileWidth + L.padding));
    const row = Math.floor(y / (L.tileHeight + L.padding));
    if (col < 0 || row < 0 || col >= L.cols || row >= L.rows) return -1;
    const index = row * L.cols + col;
    return index < this.count ? index : -1;
  }

  place(mark, index) {
    const L = this.layout;
    if (!L || index < 0 || index >= this.count) {
      mark.hidden = true;
      return;
    }
    const col = index % L.cols;
    const row = Math.floor(index / L.cols);
    const pad = L.padding / 2;
    mark.style.left = `${((L.offset + col * (L.tileWidth + L.padding) - pad) / L.width) * 100}%`;
    mark.style.top = `${((L.offset + row * (L.tileHeight + L.padding) - pad) / L.height) * 100}%`;
    mark.style.width = `${((L.tileWidth + L.padding) / L.width) * 100}%`;
    mark.style.height = `${((L.tileHeight + L.padding) / L.height) * 100}%`;
    mark.hidden = false;
  }

  moveCursor(index) {
    this.cursor = index;
    this.place(this.hoverMark, index);
    this.tip.textContent = index >= 0 ? this.describe(index) : '';
    this.onCursor?.(index);
  }

  point(event) {
    const index = this.indexAt(event);
    if (index !== this.cursor) this.moveCursor(index);
  }

  pick(index) {
    if (index >= 0) this.onPick(index);
  }

  /** Mark tile `index` as the chosen one (-1: none). */
  select(index) {
    this.selected = index;
    this.place(this.selectMark, index);
  }

  key(event) {
    if (!this.layout || !this.count) return;
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: this.layout.cols, ArrowUp: -this.layout.cols }[event.key];
    if (step !== undefined) {
      event.preventDefault();
      const start = this.cursor >= 0 ? this.cursor : Math.max(0, this.selected ?? 0);
      const next = this.cursor < 0 ? start : Math.min(this.count - 1, Math.max(0, start + step));
      this.moveCursor(next);
    } else if ((event.key === 'Enter' || event.key === ' ') && this.cursor >= 0) {
      event.preventDefault();
      this.pick(this.cursor);
    } else if (event.key === 'Escape') {
      this.moveCursor(-1);
    }
  }

  clear() {
    if (this.img.src.startsWith('blob:')) URL.revokeObjectURL(this.img.src);
    this.img.removeAttribute('src');
    this.frame.classList.add('is-empty');
    this.frame.style.aspectRatio = '';
    this.layout = null;
    this.count = 0;
    this.moveCursor(-1);
    this.select(-1);
  }
}
