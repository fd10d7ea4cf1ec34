"""`segmote serve` in a real browser: Playwright driving Debian's chromium against a real server
process (`segmote serve`), with real mouse events. Screenshots are kept as test artifacts
(the folder is printed; SEGMOTE_TEST_ARTIFACTS overrides it).

Needs /usr/bin/chromium (`bash scripts/setup.sh --test` installs it); without it the test fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from serve_common import CT, cli_label, read_label

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SEGMOTE_TEST_ARTIFACTS",
                                Path(__file__).resolve().parents[1] / "tmp" / "artifacts"))
TIMEOUT_MS = 180_000  # an encoder pass takes seconds on a busy 2-core CPU


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`segmote serve` on a free port, with a --root holding the bundled CT."""
    root = tmp_path_factory.mktemp("root")
    (root / "ct.nii.gz").write_bytes(CT.read_bytes())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "segmote.cli.main", "serve", "--port",
                             str(port), "--root", str(root), "--prefetch", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("segmote serve did not start")
        yield url
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
        assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup.sh --test` (installs "
                    "Debian's chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test screenshots: {ARTIFACTS}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 850}, accept_downloads=True)
        tab.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(server)
        yield tab
        browser.close()
    assert not errors, errors


def _labels(tab) -> np.ndarray:
    """The label slice the page shows (rows, cols)."""
    h, w, flat = tab.evaluate("[SegmoteApp.V.image.h, SegmoteApp.V.image.w, "
                              "Array.from(SegmoteApp.V.labels)]")
    return np.array(flat, np.uint16).reshape(h, w)


def _mouse(tab, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of image pixel (x, y)."""
    box = tab.locator("#canvas").bounding_box()
    sx, sy = tab.evaluate(f"SegmoteApp.V.toScreen({x}, {y})")
    return box["x"] + sx, box["y"] + sy


def _drawn_overlay(tab, label: np.ndarray) -> float:
    """Agreement between the canvas pixels (screenshot) and the label map: label pixels look
    red (the first object's colour at 50 % opacity), the rest grey."""
    shot = tab.locator("#canvas").screenshot(path=str(ARTIFACTS / "overlay_canvas.png"))
    rgb = np.asarray(Image.open(ARTIFACTS / "overlay_canvas.png").convert("RGB")).astype(int)
    assert shot
    box = tab.locator("#canvas").bounding_box()
    j, i = np.mgrid[0:label.shape[0], 0:label.shape[1]]
    zoom, pan_x, pan_y, aspect = tab.evaluate(
        "[SegmoteApp.V.zoom, SegmoteApp.V.panX, SegmoteApp.V.panY, SegmoteApp.V.aspect]")
    scale = rgb.shape[1] / box["width"]  # device pixels per CSS pixel
    sx = ((pan_x + (i + 0.5) * zoom) * scale).astype(int)
    sy = ((pan_y + (j + 0.5) * zoom * aspect) * scale).astype(int)
    px = rgb[sy, sx]
    reddish = px[..., 0] - px[..., 1] > 40
    return float((reddish == (label > 0)).mean())


def test_segment_in_the_browser_matches_the_cli(page, server, tmp_path):
    tab = page
    tab.set_input_files("#file", str(CT))
    tab.wait_for_function("SegmoteApp.S.info && SegmoteApp.V.image")
    assert tab.evaluate("SegmoteApp.S.k") == 7  # opens on the middle slice
    x, y = _mouse(tab, 128, 128)
    tab.mouse.move(x, y)
    for _ in range(3):  # three wheel notches forward, then one key press back
        tab.mouse.wheel(0, 120)
        tab.wait_for_timeout(150)
    tab.wait_for_function("SegmoteApp.S.k === 10")
    tab.keyboard.press("ArrowDown")
    tab.wait_for_function("SegmoteApp.S.k === 9")
    k = 9
    tab.screenshot(path=str(ARTIFACTS / "01_opened.png"))

    # drag a box around the tumour with real mouse events
    tab.mouse.move(*_mouse(tab, 83, 93))
    tab.mouse.down()
    tab.mouse.move(*_mouse(tab, 130, 130), steps=4)
    tab.mouse.move(*_mouse(tab, 173, 162), steps=4)
    tab.mouse.up()
    tab.wait_for_function("SegmoteApp.S.objects.length === 1 && "
                          "SegmoteApp.V.labels.some(v => v === 1)")
    tab.screenshot(path=str(ARTIFACTS / "02_box.png"))
    sent = tab.evaluate(f"SegmoteApp.S.prompts.get('1:2:{k}').box")
    assert np.allclose(sent, [83, 93, 173, 162], atol=0.6)  # the drag, in voxel indices
    box = ",".join(f"{v:g}" for v in (sent[0], sent[1], k, sent[2], sent[3], k))
    reference = cli_label(tmp_path, CT, box, ".nii.gz")
    shown = _labels(tab)
    np.testing.assert_array_equal(shown, reference[:, :, k].T)
    assert shown.sum() > 1000
    assert _drawn_overlay(tab, shown) > 0.97

    # the download is the CLI's label map, with the input's geometry
    with tab.expect_download() as info:
        tab.click("#download")
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    assert path.name == "lung2_ct_crop_seg.nii.gz"
    np.testing.assert_array_equal(read_label(path), reference)
    np.testing.assert_allclose(nib.load(path).affine, nib.load(CT).affine)

    # a negative click (right button) inside the mask refines it; undo brings the box back
    tab.mouse.click(*_mouse(tab, 165, 155), button="right")
    tab.wait_for_function("SegmoteApp.S.prompts.get('1:2:9').points.length === 1 && "
                          "!document.querySelector('#undo').disabled")
    tab.wait_for_function(f"SegmoteApp.V.labels.filter(v => v === 1).length !== {shown.sum()}")
    tab.screenshot(path=str(ARTIFACTS / "03_refined.png"))
    tab.keyboard.press("Control+z")
    tab.wait_for_function(f"SegmoteApp.V.labels.filter(v => v === 1).length === {shown.sum()}")
    np.testing.assert_array_equal(_labels(tab), reference[:, :, k].T)

    # Esc, then a positive click: a second object with its own label and colour
    tab.keyboard.press("Escape")
    tab.mouse.click(*_mouse(tab, 60, 200))
    tab.wait_for_function("SegmoteApp.S.objects.length === 2")
    assert tab.locator("#objects li").count() == 2
    assert "predicted IoU" in tab.locator("#objects li").nth(1).inner_text()

    # coronal view: anisotropic voxels shown with their spacing
    tab.keyboard.press("2")
    tab.wait_for_function("SegmoteApp.S.axis === 1 && SegmoteApp.V.image.h === 15")
    assert abs(tab.evaluate("SegmoteApp.V.aspect") - 5.0 / 0.626953125) < 1e-3
    tab.screenshot(path=str(ARTIFACTS / "04_coronal.png"))


def test_view_controls(page):
    tab = page  # the CT of the test above is still open, coronal
    tab.keyboard.press("1")
    # the axial slice (256 x 256) must have arrived: S.axis changes first, and a zoom read
    # while the coronal slice is still shown is the coronal fit (seen on a loaded machine)
    tab.wait_for_function("SegmoteApp.S.axis === 2 && SegmoteApp.V.image.h === 256 && "
                          "SegmoteApp.V.aspect === 1")
    tab.select_option("#preset", "bone")
    assert tab.evaluate("[SegmoteApp.V.level, SegmoteApp.V.width]") == [400, 1800]
    zoom = tab.evaluate("SegmoteApp.V.zoom")
    tab.mouse.move(*_mouse(tab, 128, 128))
    tab.keyboard.down("Control")
    tab.mouse.wheel(0, -120)
    tab.keyboard.up("Control")
    tab.wait_for_function(f"SegmoteApp.V.zoom > {zoom}")
    pan = tab.evaluate("SegmoteApp.V.panX")
    x, y = _mouse(tab, 128, 128)
    tab.mouse.move(x, y)
    tab.mouse.down(button="middle")
    tab.mouse.move(x + 60, y, steps=3)
    tab.mouse.up(button="middle")
    assert abs(tab.evaluate("SegmoteApp.V.panX") - pan - 60) < 1
    tab.click("#tools button[data-tool=wl]")  # W/L tool: drag up raises the level
    tab.mouse.move(x, y)
    tab.mouse.down()
    tab.mouse.move(x, y - 50, steps=3)
    tab.mouse.up()
    assert tab.evaluate("SegmoteApp.V.level") > 400 and tab.input_value("#preset") == "custom"
    tab.click("#tools button[data-tool=box]")
    tab.keyboard.press("f")
    assert tab.evaluate("SegmoteApp.V.zoom") == pytest.approx(zoom)
    tab.screenshot(path=str(ARTIFACTS / "05_controls.png"))


def test_errors_are_shown_in_the_page(page, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(CT.read_bytes()[:3000])
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])")
    assert "broken.nii.gz" in page.inner_text("#error-text")
    page.screenshot(path=str(ARTIFACTS / "06_error.png"))
    page.click("#error-close")
    assert page.locator("#error").is_hidden()
