// segmote page: talking to the HTTP API (docs/api.md) with a progress indicator for anything
// slower than half a second and every error shown in the page.
"use strict";

(() => {
const $ = (id) => document.getElementById(id);

const Busy = {
  count: 0, timer: null, ticker: null, started: 0, text: "",
  // show the indicator only when a request is still running after 0.5 s
  start(text, progressOf) {
    this.count++; this.text = text;
    if (this.count > 1) return;
    this.started = performance.now();
    this.timer = setTimeout(() => {
      $("busy").hidden = false;
      const tick = async () => {
        const s = ((performance.now() - this.started) / 1000).toFixed(1);
        let extra = "";
        if (progressOf) {
          try {
            const p = (await (await fetch(progressOf)).json()).progress;
            if (p) extra = ` — slice ${p.done + 1} of ${p.total}`;
          } catch (e) { /* the progress line is a nicety */ }
        }
        $("busy-text").textContent = `${this.text}${extra} (${s} s)`;
      };
      tick(); this.ticker = setInterval(tick, 500);
    }, 500);
  },
  stop() {
    this.count = Math.max(0, this.count - 1);
    if (this.count) return;
    clearTimeout(this.timer); clearInterval(this.ticker);
    $("busy").hidden = true;
  },
};

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}
function clearError() { $("error").hidden = true; }

// one call of the API: JSON in, JSON (or the Response with raw: true) out; throws Error(message)
async function api(method, path, body, opts = {}) {
  const init = { method, headers: {} };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  if (opts.task) Busy.start(opts.task, opts.progressOf);
  try {
    let response;
    try { response = await fetch(path, init); } catch (e) {
      throw new Error("the segmote server does not answer (is it still running?)");
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return opts.raw ? response : response.json();
  } finally {
    if (opts.task) Busy.stop();
  }
}

// run an event handler; any error lands in the page's error bar
function guard(fn) {
  return async (...args) => {
    try { clearError(); await fn(...args); } catch (e) { showError(e.message || String(e)); }
  };
}

async function fetchArray(path, task) {
  const r = await api("GET", path, undefined, { raw: true, task });
  const shape = r.headers.get("X-Shape").split(",").map(Number);
  const dtype = r.headers.get("X-Dtype");
  const buf = await r.arrayBuffer();
  const data = dtype === "float32" ? new Float32Array(buf)
    : dtype === "uint16" ? new Uint16Array(buf) : new Uint8Array(buf);
  return { h: shape[0], w: shape[1], c: shape[2] || 1, data };
}

async function download(path, fallbackName) {
  const r = await api("GET", path, undefined, { raw: true, task: "writing the label map" });
  const m = /filename="([^"]+)"/.exec(r.headers.get("Content-Disposition") || "");
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url; a.download = m ? m[1] : fallbackName;
  document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

window.SegmoteApi = { $, api, guard, fetchArray, download, showError, clearError };
})();
