// segmote page: the panels (objects, classes, the --root browser) and the mouse / keyboard.
"use strict";

(() => {
  const { $, api, guard, download } = window.SegmoteApi;
  const A = window.SegmoteApp, S = A.S, V = A.V;

  // -- objects panel ------------------------------------------------------------------------
  window.renderObjects = function renderObjects() {
    const ul = $("objects"); ul.textContent = "";
    for (const o of S.objects) ul.appendChild(objectRow(o));
  };

  function objectRow(o) {
    const li = document.createElement("li");
    li.classList.toggle("active", o.label === S.active);
    li.dataset.label = o.label;
    const colour = document.createElement("input");
    colour.type = "color"; colour.value = V.colour(o.label); colour.title = "colour";
    colour.oninput = () => { V.colours.set(o.label, colour.value); V.renderLabels(); };
    const name = document.createElement("input");
    name.className = "name"; name.value = o.name; name.title = "name (Enter to keep)";
    name.onchange = guard(async () => {
      await api("PATCH", `${A.base()}/objects/${o.label}`, { name: name.value });
      await A.afterEdit();
    });
    const actions = document.createElement("span"); actions.className = "actions";
    const button = (text, title, fn) => {
      const b = document.createElement("button"); b.textContent = text; b.title = title;
      b.onclick = guard(async (e) => { e.stopPropagation(); await fn(); });
      actions.appendChild(b); return b;
    };
    button(V.hidden.has(o.label) ? "show" : "hide", "show / hide in the overlay", async () => {
      V.hidden.has(o.label) ? V.hidden.delete(o.label) : V.hidden.add(o.label);
      V.renderLabels(); window.renderObjects();
    });
    if (S.info && S.info.is_volume) {
      const p = button("3-D", "propagate through the volume from its prompted slice",
        () => A.propagate(o.label));
      p.disabled = !S.keySlice.has(o.label);
    }
    button("✕", "delete this object (undoable)", async () => {
      const r = await api("DELETE", `${A.base()}/objects/${o.label}`);
      await A.afterEdit({ ...r, can_undo: true, can_redo: false });
    });
    const meta = document.createElement("span"); meta.className = "meta";
    meta.textContent = `label ${o.label}` + (o.score !== null ? ` · predicted IoU ${o.score.toFixed(2)}` : "");
    li.append(colour, name, actions, meta);
    li.onclick = (e) => { if (!e.target.closest("input, button")) A.select(o.label); };
    return li;
  }

  // -- classes (text prompt and automatic mode) --------------------------------------------
  window.fillClasses = function fillClasses(classes) {
    $("class-list").textContent = ""; $("classes").textContent = "";
    for (const c of classes) {
      const opt = document.createElement("option"); opt.value = c; $("class-list").appendChild(opt);
      const label = document.createElement("label"), box = document.createElement("input");
      box.type = "checkbox"; box.value = c; label.append(box, " " + c); $("classes").appendChild(label);
    }
    if (!classes.length) $("classes").textContent = "this model has no text classes";
    for (const id of ["text", "text-go", "auto-slice"]) $(id).disabled = !classes.length;
    if (!classes.length) $("auto-volume").disabled = true;
  };
  function setupClassFilter() {
    $("class-filter").oninput = () => {
      const q = $("class-filter").value.toLowerCase();
      for (const l of $("classes").children) l.hidden = !l.textContent.toLowerCase().includes(q);
    };
  }

  // -- the --root browser -------------------------------------------------------------------
  let folder = "";
  async function listFolder(path) {
    const r = await api("GET", `/api/files?folder=${encodeURIComponent(path)}`);
    folder = r.folder; $("browser-path").textContent = "/" + folder;
    const ul = $("browser-list"); ul.textContent = "";
    const entries = folder ? [{ name: "..", type: "up" }, ...r.entries] : r.entries;
    for (const e of entries) {
      const li = document.createElement("li");
      li.textContent = (e.type === "file" ? "🗎 " : "📁 ") + e.name;
      const rel = e.type === "up" ? folder.split("/").slice(0, -1).join("/") : (folder ? folder + "/" : "") + e.name;
      li.onclick = guard(async () => e.type === "file" ? openPath(rel) : listFolder(rel));
      ul.appendChild(li);
    }
  }
  async function openPath(path) {
    $("browser").close();
    await A.opened(await api("POST", "/api/images/open", { path }, { task: `reading ${path}` }));
  }
  function setupBrowser() {
    $("browse").onclick = guard(async () => { await listFolder(folder); $("browser").showModal(); });
    $("browser-close").onclick = () => $("browser").close();
    $("browser-open-folder").onclick = guard(() => openPath(folder));
    // the button appears only when the server has a --root
    api("GET", "/api/health").then((h) => { $("browse").hidden = !h.root; })
      .catch((e) => window.SegmoteApi.showError(e.message));
  }

  // -- controls -----------------------------------------------------------------------------
  let tool = "box";
  function setTool(t) {
    tool = t;
    for (const b of document.querySelectorAll("#tools button")) b.classList.toggle("on", b.dataset.tool === t);
    $("canvas").style.cursor = t === "pan" ? "grab" : t === "wl" ? "ns-resize" : "crosshair";
  }
  function setupControls() {
    for (const b of document.querySelectorAll("#tools button")) b.onclick = () => setTool(b.dataset.tool);
    for (const b of document.querySelectorAll("#axes button")) b.onclick = guard(() => A.setAxis(+b.dataset.axis));
    $("file").onchange = guard(async () => { if ($("file").files[0]) await A.uploadFile($("file").files[0]); $("file").value = ""; });
    $("slider").oninput = guard(() => A.setSlice(+$("slider").value));
    $("preset").onchange = () => A.applyPreset(true);
    $("level").onchange = $("width").onchange = () => A.setWindow(+$("level").value, +$("width").value);
    $("opacity").oninput = () => { V.opacity = +$("opacity").value; V.renderLabels(); };
    $("outline").onchange = () => { V.outline = $("outline").checked; V.renderLabels(); };
    $("fit").onclick = () => V.fit();
    $("undo").onclick = guard(() => A.undoRedo("undo"));
    $("redo").onclick = guard(() => A.undoRedo("redo"));
    $("new-object").onclick = () => A.newObject();
    $("text-go").onclick = guard(() => A.findText());
    $("text").onkeydown = (e) => { if (e.key === "Enter") guard(() => A.findText())(); };
    $("auto-slice").onclick = guard(() => A.auto(false));
    $("auto-volume").onclick = guard(() => A.auto(true));
    $("error-close").onclick = () => { $("error").hidden = true; };
    $("download").onclick = guard(() => S.info.is_volume ? download(`${A.base()}/labels.nii.gz`, "labels.nii.gz")
      : download(`${A.base()}/labels.png`, "labels.png"));
    $("download-seg").onclick = guard(() => download(`${A.base()}/labels.dcm`, "labels.dcm"));
    window.addEventListener("resize", () => V.draw());
  }

  // -- mouse on the canvas ------------------------------------------------------------------
  const canvas = $("canvas");
  let drag = null;
  const local = (e) => { const r = canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  function setupMouse() {
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("pointerdown", (e) => {
      if (!S.info) return;
      canvas.setPointerCapture(e.pointerId);
      const [sx, sy] = local(e), [x, y] = V.toImage(sx, sy);
      const mode = e.button === 1 || tool === "pan" ? "pan" : tool === "wl" ? "wl"
        : e.button === 2 ? "negative" : tool === "point" ? "point" : "box";
      drag = { mode, sx, sy, x, y, level: V.level, width: V.width, panX: V.panX, panY: V.panY,
        shift: e.shiftKey, alt: e.altKey };
      if (mode === "box") V.prompt = { box: [x, y, x, y], points: [], dragging: true };
    });
    canvas.addEventListener("pointermove", pointerMove);
    canvas.addEventListener("pointerup", guard(pointerUp));
    canvas.addEventListener("wheel", guard(async (e) => {
      e.preventDefault();
      if (!S.info) return;
      if (e.ctrlKey || e.metaKey) { const [sx, sy] = local(e); V.zoomAt(sx, sy, e.deltaY < 0 ? 1.15 : 1 / 1.15); }
      else await A.setSlice(S.k + (e.deltaY > 0 ? 1 : -1));
    }), { passive: false });
  }

  function pointerMove(e) {
    if (!S.info || !V.image) return;
    const [sx, sy] = local(e), [x, y] = V.toImage(sx, sy);
    if (V.inside(x, y)) {
      const i = Math.floor(x), j = Math.floor(y), im = V.image;
      const v = im.c === 1 ? im.data[Math.min(im.h - 1, j) * im.w + Math.min(im.w - 1, i)] : "";
      $("cursor").textContent = `x ${i}  y ${j}  slice ${S.k}` + (v !== "" ? `  value ${+v.toFixed(1)}` : "");
    }
    if (!drag) return;
    if (drag.mode === "pan") { V.panX = drag.panX + sx - drag.sx; V.panY = drag.panY + sy - drag.sy; V.draw(); }
    else if (drag.mode === "wl") {
      const scale = drag.width / 300;
      A.setWindow(drag.level - (sy - drag.sy) * scale, drag.width + (sx - drag.sx) * scale);
    } else if (drag.mode === "box") { V.prompt.box = [drag.x, drag.y, x, y]; V.draw(); }
  }

  async function pointerUp(e) {
    if (!drag) return;
    const d = drag; drag = null;
    const [sx, sy] = local(e), [x, y] = V.toImage(sx, sy);
    const moved = Math.hypot(sx - d.sx, sy - d.sy) > 4;
    if (d.mode === "box" && moved) return A.boxDrawn([d.x, d.y, x, y], d.alt && S.active !== null);
    if (d.mode === "box" || d.mode === "point" || d.mode === "negative") {
      if (!V.inside(x, y)) { V.prompt = null; V.draw(); return; }
      return A.pointClicked(x, y, d.mode !== "negative" && !d.shift && !e.shiftKey);
    }
  }

  // -- keyboard -----------------------------------------------------------------------------
  async function keyDown(e) {
    if (!S.info || e.target.matches("input, select, textarea")) return;
    const ctrl = e.ctrlKey || e.metaKey, key = e.key.toLowerCase();
    if (ctrl && key === "z") { e.preventDefault(); return A.undoRedo(e.shiftKey ? "redo" : "undo"); }
    if (ctrl && key === "y") { e.preventDefault(); return A.undoRedo("redo"); }
    if (ctrl) return;
    const step = { arrowup: 1, arrowdown: -1, pageup: 5, pagedown: -5 }[key];
    if (step) { e.preventDefault(); return A.setSlice(S.k + step); }
    if (key === "home") return A.setSlice(0);
    if (key === "end") return A.setSlice(1e9);
    if (["1", "2", "3"].includes(key) && S.info.is_volume) return A.setAxis({ 1: 2, 2: 1, 3: 0 }[key]);
    if (key === "escape") return A.newObject();
    if (key === "0" || key === "f") return V.fit();
    if (key === "+" || key === "=") return V.zoomAt(canvas.clientWidth / 2, canvas.clientHeight / 2, 1.25);
    if (key === "-") return V.zoomAt(canvas.clientWidth / 2, canvas.clientHeight / 2, 0.8);
    const t = { b: "box", p: "point", h: "pan", w: "wl" }[key];
    if (t) setTool(t);
  }

  setupClassFilter();
  setupBrowser();
  setupControls();
  setupMouse();
  document.addEventListener("keydown", guard(keyDown));
})();
