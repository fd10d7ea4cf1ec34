// segmote page: state and actions (open, scroll, prompt, refine, propagate, automatic mode,
// undo / redo, download). Mouse and keyboard wiring is in input.js.
"use strict";

(() => {
const { $, api, guard, fetchArray, download, showError } = window.SegmoteApi;
const CT_PRESETS = { lung: [-300, 1400], soft_tissue: [40, 400], bone: [400, 1800], brain: [40, 80] };

const S = {
  info: null, axis: 2, k: 0, active: null, objects: [], seq: 0,
  prompts: new Map(),     // `${label}:${axis}:${k}` -> {box, points}: what drew each object
  keySlice: new Map(),    // label -> [axis, k] of its latest prompt (propagation starts there)
  viewer: new Viewer($("canvas")),
};
const V = S.viewer;
const base = () => `/api/images/${S.info.id}`;
const promptKey = (label) => `${label}:${S.axis}:${S.k}`;

// -- opening --------------------------------------------------------------------------------
async function opened(info) {
  if (S.info) api("DELETE", base()).catch(() => {});   // the previous image's session
  Object.assign(S, { info, active: null, objects: [], prompts: new Map(), keySlice: new Map() });
  V.colours.clear(); V.hidden.clear(); V.prompt = null;
  $("image-name").textContent = `${info.name} — ${info.shape.join(" × ")}` +
    (info.modality ? ` · ${info.modality}` : "") + (info.is_volume ? "" : " · 2-D");
  $("hint").hidden = true;
  $("status").textContent = ""; $("cursor").textContent = "";
  $("undo").disabled = $("redo").disabled = true;
  for (const b of document.querySelectorAll("#axes button")) b.disabled = !info.is_volume;
  $("auto-volume").disabled = !info.is_volume;
  $("download").disabled = false;
  $("download").textContent = info.is_volume ? "Download NIfTI" : "Download PNG";
  $("download-seg").hidden = !(info.is_volume && info.format === "dicom");
  $("preset").value = info.channels > 1 ? "full" : info.modality === "CT" ? "lung" : "auto";
  fillClasses(info.classes);
  await setAxis(2, info.is_volume ? Math.floor(info.shape[2] / 2) : 0);
  renderObjects();
}

async function uploadFile(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  await opened(await api("POST", "/api/images", form, { task: `reading ${file.name}` }));
}

// -- slices and window / level --------------------------------------------------------------
function depth(axis) { return S.info.is_volume ? S.info.shape[axis] : 1; }

async function setAxis(axis, k) {
  S.axis = axis;
  for (const b of document.querySelectorAll("#axes button")) b.classList.toggle("on", +b.dataset.axis === axis);
  $("slider").max = depth(axis) - 1;
  await setSlice(k === undefined ? Math.floor(depth(axis) / 2) : k, true);
}

async function setSlice(k, force) {
  if (!S.info) return;
  k = Math.max(0, Math.min(depth(S.axis) - 1, k));
  if (k === S.k && !force) return;
  S.k = k; $("slider").value = k;
  $("slice-label").textContent = `${k} / ${depth(S.axis) - 1}`;  // 0-based, as the API
  V.prompt = S.prompts.get(promptKey(S.active)) || null;
  const seq = ++S.seq;   // scrolling fast: drop answers for slices already left
  const image = await fetchArray(`${base()}/slice?axis=${S.axis}&k=${k}`);
  if (seq !== S.seq) return;
  const sp = S.info.spacing, inPlane = [0, 1, 2].filter((a) => a !== S.axis);
  const aspect = S.info.is_volume ? sp[inPlane[1]] / sp[inPlane[0]] : sp[0] / sp[1];
  V.setImage(image, aspect, S.info.is_volume && S.axis !== 2);
  applyPreset(false);
  await reloadLabels(seq);
}

async function reloadLabels(seq) {
  const lab = await fetchArray(`${base()}/labels?slice=${S.k}&axis=${S.axis}&format=raw`);
  if (seq === undefined || seq === S.seq) V.setLabels(lab.data);
}

function percentiles(data, lo, hi) {
  const step = Math.max(1, Math.floor(data.length / 20000)), sample = [];
  for (let i = 0; i < data.length; i += step) sample.push(data[i]);
  sample.sort((a, b) => a - b);
  const at = (q) => sample[Math.min(sample.length - 1, Math.floor(q * sample.length))];
  return [at(lo), at(hi)];
}

// presets: CT windows in HU; "auto" is MR-style auto-contrast on the shown slice
function applyPreset(userChose) {
  const p = $("preset").value, im = V.image; if (!im) return;
  let lo, hi;
  if (CT_PRESETS[p]) { const [l, w] = CT_PRESETS[p]; lo = l - w / 2; hi = l + w / 2; }
  else if (p === "auto") [lo, hi] = percentiles(im.data, 0.005, 0.995);
  else if (p === "full") {
    const st = S.info.intensity;
    [lo, hi] = im.c > 1 ? [0, 255] : [st.min, st.max];
  } else if (!userChose) return;   // custom: keep what the user set
  V.level = (lo + hi) / 2; V.width = Math.max(hi - lo, 1e-6);
  $("level").value = +V.level.toFixed(1); $("width").value = +V.width.toFixed(1);
  V.renderImage(); V.draw();
}

function setWindow(level, width) {
  V.level = level; V.width = Math.max(width, 1e-6);
  $("preset").value = "custom";
  $("level").value = +V.level.toFixed(1); $("width").value = +V.width.toFixed(1);
  V.renderImage(); V.draw();
}

// -- prompts --------------------------------------------------------------------------------
// a prompt for object `label` (null: a new one) on the shown slice; refine: its earlier low-res
// mask goes in as the mask prompt (clicks added to a box or to earlier clicks)
async function segment(prompt, label, refine) {
  const body = { slice: S.k, axis: S.axis, points: prompt.points || [], refine: !!refine };
  if (prompt.box) body.box = prompt.box.map((v) => +v.toFixed(1));
  if (label !== null) body.label = label;
  V.prompt = prompt; V.draw();
  const r = await api("POST", `${base()}/segment`, body, { task: "segmenting" });
  S.active = r.label;
  S.prompts.set(promptKey(r.label), prompt);
  S.keySlice.set(r.label, [S.axis, S.k]);
  $("status").textContent = `object ${r.label}: IoU ${r.score.toFixed(2)} · ${r.ms.toFixed(0)} ms` +
    (r.encoded ? " (slice encoded first)" : "") + (r.found ? "" : " · empty mask");
  await afterEdit();
}

async function boxDrawn(box, redrawActive) {
  const [x0, x1] = [box[0], box[2]].sort((a, b) => a - b), [y0, y1] = [box[1], box[3]].sort((a, b) => a - b);
  const im = V.image, clamp = (v, m) => Math.max(0, Math.min(m - 1, v));
  const b = [clamp(x0, im.w), clamp(y0, im.h), clamp(x1, im.w), clamp(y1, im.h)];
  await segment({ box: b, points: [] }, redrawActive ? S.active : null, false);
}

async function pointClicked(x, y, positive) {
  const prev = S.active !== null ? S.prompts.get(promptKey(S.active)) : null;
  const point = [+x.toFixed(1), +y.toFixed(1), positive ? 1 : 0];
  if (prev) await segment({ box: prev.box, points: [...prev.points, point] }, S.active, true);
  else if (positive) await segment({ box: null, points: [point] }, null, false);
  else showError("a negative click refines an object: make one first (box or positive click)");
}

async function findText() {
  const text = $("text").value.trim();
  if (!text) throw new Error("type a class name first");
  const r = await api("POST", `${base()}/segment`, { slice: S.k, axis: S.axis, text },
    { task: `looking for ${text}` });
  $("status").textContent = r.found ? `${text}: object ${r.label}, confidence ${r.score.toFixed(2)}`
    : `${text}: not found on this slice (confidence ${r.score.toFixed(2)})`;
  if (r.found) S.active = r.label;
  await afterEdit();
}

async function propagate(label) {
  const key = S.keySlice.get(label);
  const prompt = key && S.prompts.get(`${label}:${key[0]}:${key[1]}`);
  if (!prompt) throw new Error("propagation starts from a box or clicks: prompt this object first");
  const body = { slice: key[1], axis: key[0], points: prompt.points, label, propagate: true };
  if (prompt.box) body.box = prompt.box;
  const r = await api("POST", `${base()}/segment`, body,
    { task: "propagating through the volume", progressOf: `${base()}/progress` });
  $("status").textContent = `object ${label} on ${r.slices.length} slices (${(r.ms / 1000).toFixed(1)} s)`;
  await afterEdit();
}

async function auto(wholeVolume) {
  const classes = [...document.querySelectorAll("#classes input:checked")].map((c) => c.value);
  if (!classes.length && !confirm(`No class ticked: segment all ${S.info.classes.length} classes` +
    " the adapter knows? (slow on a CPU)")) return;
  const body = { axis: S.axis, slice: wholeVolume ? null : S.k, classes: classes.length ? classes : null };
  const r = await api("POST", `${base()}/auto`, body, {
    task: wholeVolume ? "automatic segmentation of the volume" : "automatic segmentation",
    progressOf: `${base()}/progress` });
  $("status").textContent = r.objects.length ?
    `found ${r.objects.map((o) => o.name).join(", ")} (${(r.ms / 1000).toFixed(1)} s)` :
    `none of ${r.classes.length} classes found (${(r.ms / 1000).toFixed(1)} s)`;
  await afterEdit();
}

async function undoRedo(which) {
  const r = await api("POST", `${base()}/${which}`);
  await afterEdit(r);
}

async function afterEdit(summary) {
  const s = summary || await api("GET", base());
  S.objects = s.objects;
  if (!S.objects.some((o) => o.label === S.active)) S.active = null;
  $("undo").disabled = !s.can_undo; $("redo").disabled = !s.can_redo;
  V.prompt = S.active !== null ? S.prompts.get(promptKey(S.active)) || null : null;
  renderObjects();
  await reloadLabels();
}

function select(label) {   // null: the next prompt starts a new object
  S.active = label;
  V.prompt = label !== null ? S.prompts.get(promptKey(label)) || null : null;
  V.draw(); renderObjects();
}
const newObject = () => select(null);

window.SegmoteApp = { S, V, opened, uploadFile, setAxis, setSlice, applyPreset, setWindow,
  boxDrawn, pointClicked, findText, propagate, auto, undoRedo, afterEdit, newObject, select,
  base };
})();
