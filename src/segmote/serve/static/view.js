// segmote viewer: draws one slice (window/level), its label overlay and the prompt being made
// on a canvas, with zoom, pan and the pixel aspect of the voxel spacing. Plain canvas 2-D, no
// dependencies. Image coordinates: x = column, y = row of the slice as the API sends it;
// coronal and sagittal slices are shown upside down (k grows upwards) so the head is on top.
"use strict";

const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
  "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
  "#808000", "#ffd8b1", "#000075", "#ffe119"];

function defaultColour(label) { return PALETTE[(label - 1) % PALETTE.length]; }

function hexToRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

class Viewer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.image = null;      // {w, h, c, data: Float32Array | Uint8Array}
    this.labels = null;     // Uint16Array (h * w)
    this.colours = new Map();   // label -> "#rrggbb"
    this.hidden = new Set();    // labels not drawn
    this.opacity = 0.5;
    this.outline = false;
    this.level = 0; this.width = 1;
    this.zoom = 1; this.panX = 0; this.panY = 0;
    this.aspect = 1;        // row spacing / column spacing
    this.flipY = false;
    this.prompt = null;     // {box: [x0, y0, x1, y1] | null, points: [[x, y, l]], active: bool}
    this.imageLayer = document.createElement("canvas");
    this.labelLayer = document.createElement("canvas");
  }

  colour(label) { return this.colours.get(label) || defaultColour(label); }

  setImage(image, aspect, flipY) {
    const sizeChanged = !this.image || this.image.w !== image.w || this.image.h !== image.h ||
      this.aspect !== aspect || this.flipY !== flipY;
    this.image = image; this.aspect = aspect; this.flipY = flipY;
    this.imageLayer.width = this.labelLayer.width = image.w;
    this.imageLayer.height = this.labelLayer.height = image.h;
    this.renderImage();
    if (sizeChanged) this.fit();
  }

  setLabels(labels) { this.labels = labels; this.renderLabels(); }

  // window/level: grey values -> 0..255 through a linear ramp
  renderImage() {
    const im = this.image; if (!im) return;
    const out = new ImageData(im.w, im.h);
    const px = out.data, lo = this.level - this.width / 2, scale = 255 / Math.max(this.width, 1e-6);
    if (im.c === 1) {
      for (let i = 0, n = im.w * im.h; i < n; i++) {
        let v = (im.data[i] - lo) * scale;
        v = v < 0 ? 0 : v > 255 ? 255 : v;
        px[4 * i] = px[4 * i + 1] = px[4 * i + 2] = v; px[4 * i + 3] = 255;
      }
    } else {
      for (let i = 0, n = im.w * im.h; i < n; i++) {
        for (let ch = 0; ch < 3; ch++) {
          let v = (im.data[i * im.c + Math.min(ch, im.c - 1)] - lo) * scale;
          px[4 * i + ch] = v < 0 ? 0 : v > 255 ? 255 : v;
        }
        px[4 * i + 3] = 255;
      }
    }
    this.imageLayer.getContext("2d").putImageData(out, 0, 0);
  }

  renderLabels() {
    const im = this.image, lab = this.labels; if (!im) return;
    const out = new ImageData(im.w, im.h), px = out.data;
    if (lab) {
      const rgb = new Map(), alpha = Math.round(255 * this.opacity);
      for (let i = 0, n = im.w * im.h; i < n; i++) {
        const v = lab[i]; if (!v || this.hidden.has(v)) continue;
        if (this.outline) {
          const x = i % im.w, y = (i - x) / im.w;
          const edge = x === 0 || y === 0 || x === im.w - 1 || y === im.h - 1 ||
            lab[i - 1] !== v || lab[i + 1] !== v || lab[i - im.w] !== v || lab[i + im.w] !== v;
          if (!edge) continue;
        }
        if (!rgb.has(v)) rgb.set(v, hexToRgb(this.colour(v)));
        const c = rgb.get(v);
        px[4 * i] = c[0]; px[4 * i + 1] = c[1]; px[4 * i + 2] = c[2];
        px[4 * i + 3] = this.outline ? 255 : alpha;
      }
    }
    this.labelLayer.getContext("2d").putImageData(out, 0, 0);
    this.draw();
  }

  fit() {
    const r = this.canvas.getBoundingClientRect(), im = this.image; if (!im) return;
    this.zoom = 0.95 * Math.min(r.width / im.w, r.height / (im.h * this.aspect));
    this.panX = (r.width - im.w * this.zoom) / 2;
    this.panY = (r.height - im.h * this.aspect * this.zoom) / 2;
    this.draw();
  }

  // image (x, y) -> canvas CSS pixels, and back
  toScreen(x, y) {
    const yy = this.flipY ? this.image.h - y : y;
    return [this.panX + x * this.zoom, this.panY + yy * this.aspect * this.zoom];
  }
  toImage(sx, sy) {
    const x = (sx - this.panX) / this.zoom, yy = (sy - this.panY) / (this.aspect * this.zoom);
    return [x, this.flipY ? this.image.h - yy : yy];
  }
  inside(x, y) { return this.image && x >= 0 && y >= 0 && x <= this.image.w && y <= this.image.h; }

  zoomAt(sx, sy, factor) {
    const [x, y] = this.toImage(sx, sy);
    this.zoom = Math.min(Math.max(this.zoom * factor, 0.05), 80);
    const [nx, ny] = this.toScreen(x, y);
    this.panX += sx - nx; this.panY += sy - ny;
    this.draw();
  }

  draw() {
    const c = this.canvas, ctx = this.ctx, dpr = window.devicePixelRatio || 1;
    const r = c.getBoundingClientRect();
    if (c.width !== Math.round(r.width * dpr) || c.height !== Math.round(r.height * dpr)) {
      c.width = Math.round(r.width * dpr); c.height = Math.round(r.height * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, r.width, r.height);
    const im = this.image; if (!im) return;
    ctx.save();
    ctx.translate(this.panX, this.panY);
    ctx.scale(this.zoom, this.zoom * this.aspect);
    if (this.flipY) { ctx.translate(0, im.h); ctx.scale(1, -1); }
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.imageLayer, 0, 0);
    ctx.drawImage(this.labelLayer, 0, 0);
    ctx.restore();
    this.drawPrompt();
  }

  drawPrompt() {
    const p = this.prompt, ctx = this.ctx; if (!p) return;
    if (p.box) {
      const [x0, y0] = this.toScreen(p.box[0], p.box[1]), [x1, y1] = this.toScreen(p.box[2], p.box[3]);
      ctx.strokeStyle = "#ffd400"; ctx.lineWidth = 1.5; ctx.setLineDash(p.dragging ? [5, 4] : []);
      ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
      ctx.setLineDash([]);
    }
    for (const [x, y, l] of p.points || []) {
      const [sx, sy] = this.toScreen(x, y);
      ctx.beginPath(); ctx.arc(sx, sy, 5, 0, 2 * Math.PI);
      ctx.fillStyle = l ? "#2ecc40" : "#ff4136"; ctx.fill();
      ctx.lineWidth = 1.5; ctx.strokeStyle = "#fff"; ctx.stroke();
    }
  }
}

window.Viewer = Viewer;
window.defaultColour = defaultColour;
