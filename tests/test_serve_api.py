"""`segmote serve` HTTP API on the real model and the bundled samples (in-process client).

The label map the API builds equals what `segmote predict` writes for the same prompt; bad input
answers 4xx JSON and the server keeps answering; ids, sessions, tokens and --root are checked.
"""

from __future__ import annotations

import io
import os
import time
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from serve_common import BOX_2D, CT, K, NUCLEI, cli_label, client, read_label, upload

import segmote


@pytest.fixture(scope="module")
def model():
    return segmote.load_model()  # LiteMedSAM + the shipped default adapter, as `serve` loads


def test_box_on_a_volume_equals_the_cli(model, tmp_path):
    with client(model) as c:
        info = upload(c, CT)
        assert info["shape"] == [256, 256, 15] and info["modality"] == "CT"
        assert "tumour" in info["classes"] and len(info["id"]) >= 22
        r = c.post(f"/api/images/{info['id']}/segment", json={"slice": K, "box": BOX_2D})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["label"] == 1 and answer["slices"] == [K] and answer["found"]
        assert 0.3 < answer["score"] <= 1 and answer["ms"] > 0
        nifti = c.get(f"/api/images/{info['id']}/labels.nii.gz")
        png = c.get(f"/api/images/{info['id']}/labels", params={"slice": K})
    path = tmp_path / "api.nii.gz"
    path.write_bytes(nifti.content)
    ours = read_label(path)
    reference = cli_label(tmp_path, CT, "83,93,7,173,162,7", ".nii.gz")
    np.testing.assert_array_equal(ours, reference)
    assert ours[:, :, K].sum() > 1000  # the tumour, not an empty map
    np.testing.assert_allclose(nib.load(path).affine, nib.load(CT).affine)
    slice_png = read_label(_save(tmp_path / "slice.png", png.content))
    np.testing.assert_array_equal(slice_png, reference[:, :, K].T)  # rows = j, as the CLI


def test_2d_image_box_and_download_equal_the_cli(model, tmp_path):
    with client(model) as c:
        sid = upload(c, NUCLEI)["id"]
        r = c.post(f"/api/images/{sid}/segment", json={"box": [416, 350, 446, 374]})
        assert r.status_code == 200 and r.json()["found"]
        assert c.get(f"/api/images/{sid}/labels.nii.gz").status_code == 404  # 2-D: PNG
        png = c.get(f"/api/images/{sid}/labels.png").content
    got = read_label(_save(tmp_path / "api.png", png))
    np.testing.assert_array_equal(got, cli_label(tmp_path, NUCLEI, "416,350,446,374", ".png"))


def test_refine_undo_redo_and_objects(model):
    with client(model) as c:
        sid = upload(c, CT)["id"]
        url = f"/api/images/{sid}"
        box = c.post(f"{url}/segment", json={"slice": K, "box": BOX_2D}).json()
        first = _labels(c, url)
        # a negative click inside the box, with the box's low-res mask as the mask prompt
        r = c.post(f"{url}/segment", json={"slice": K, "box": BOX_2D, "label": box["label"],
                                          "points": [[160, 150, 0]], "refine": True})
        assert r.status_code == 200 and r.json()["label"] == 1
        assert r.json()["encoded"] is False  # the slice's features came from the cache
        refined = _labels(c, url)
        assert not np.array_equal(first, refined)
        second = c.post(f"{url}/segment", json={"slice": K, "points": [[40, 60, 1]]}).json()
        assert second["label"] == 2  # the next free label
        assert c.post(f"{url}/undo").json()["objects"][0]["label"] == 1
        np.testing.assert_array_equal(_labels(c, url), refined)
        c.post(f"{url}/undo")
        np.testing.assert_array_equal(_labels(c, url), first)
        assert c.post(f"{url}/redo").json()["redone"]
        np.testing.assert_array_equal(_labels(c, url), refined)
        assert c.patch(f"{url}/objects/1", json={"name": "tumour"}).json()["name"] == "tumour"
        assert c.delete(f"{url}/objects/1").status_code == 200
        assert not _labels(c, url).any() and c.get(url).json()["objects"] == []
        c.post(f"{url}/undo")
        np.testing.assert_array_equal(_labels(c, url), refined)
        assert c.delete(f"{url}/objects/9").status_code == 404


def test_text_prompt_and_automatic_mode_on_a_slice(model):
    with client(model) as c:
        sid = upload(c, CT)["id"]
        r = c.post(f"/api/images/{sid}/segment", json={"slice": K, "text": "tumour"}).json()
        assert r["found"] and r["name"] == "tumour" and r["label"] == 1
        text_mask = _labels(c, f"/api/images/{sid}") == 1
        assert text_mask.any()  # small: prompt-free tumours are weak (docs/text_and_ppt.md)
        auto = c.post(f"/api/images/{sid}/auto", json={"slice": K, "classes": ["tumour"]})
        assert auto.status_code == 200, auto.text
        assert [o["name"] for o in auto.json()["objects"]] == ["tumour"]
        assert auto.json()["objects"][0]["label"] == 2
        # the same class, the same pass: automatic mode redraws the text prompt's pixels
        np.testing.assert_array_equal(_labels(c, f"/api/images/{sid}") == 2, text_mask)
        nothing = c.post(f"/api/images/{sid}/segment", json={"slice": K, "text": "nuclei"})
        assert nothing.json()["found"] is False and nothing.json()["label"] is None


def test_automatic_mode_on_a_volume(model, tmp_path):
    ct = nib.load(CT)
    part = tmp_path / "ct_two_slices.nii.gz"  # slices 9 and 10: two encoder passes
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj)[:, :, 9:11], ct.affine, ct.header), part)
    with client(model) as c:
        sid = upload(c, part)["id"]
        body = {"slice": None, "classes": ["tumour", "nuclei"]}
        r = c.post(f"/api/images/{sid}/auto", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["slices"] == [0, 1] and answer["classes"] == ["tumour", "nuclei"]
        session = c.app.app.state.store.get(sid)
        seg = segmote.Segmenter(model)
        expected = np.zeros(session.labels.shape, np.uint16)
        for k in range(2):  # the reference: Segmenter.predict_auto on each cached slice
            seg.set_features(session.cache.get((2, k)), (256, 256))
            expected[:, :, k] = seg.predict_auto(["tumour", "nuclei"]).label_map.T
        found = [o["name"] for o in answer["objects"]]
        assert found == ["tumour"]  # the presence head: no nuclei on a CT
        values = {o["name"]: o["label"] for o in answer["objects"]}
        remapped = np.zeros_like(expected)
        for i, name in enumerate(["tumour", "nuclei"], start=1):
            remapped[expected == i] = values.get(name, 0)
        np.testing.assert_array_equal(session.labels, remapped)
        assert c.get(f"/api/images/{sid}/progress").json() == {"progress": None}


def test_bad_requests_answer_4xx_json_and_the_server_keeps_running(model):
    truncated = CT.read_bytes()[:4000]
    with client(model, max_upload_mb=1.5) as c:  # the CT is 1.2 MB
        cases = [
            c.post("/api/images", files={"file": ("notes.txt", b"hello")}),
            c.post("/api/images", files={"file": ("case.nii.gz", truncated)}),
            c.post("/api/images", files={"file": ("big.nii.gz", b"\0" * 1_700_000)}),
            c.post("/api/images", files={"file": ("fake.png", b"not a png")}),
            c.get("/api/images/unknown-id/labels"),
            c.post("/api/images/unknown-id/segment", json={"slice": 0, "box": [0, 0, 1, 1]}),
        ]
        sid = upload(c, CT)["id"]
        url = f"/api/images/{sid}/segment"
        cases += [c.post(url, json={"slice": 99, "box": BOX_2D}),
                  c.post(url, json={"slice": K, "box": [0, 0, 999, 5]}),
                  c.post(url, json={"slice": K, "box": "x"}),
                  c.post(url, json={"slice": K}),
                  c.post(url, json={"slice": K, "box": BOX_2D, "oops": 1}),
                  c.post(url, content=b"{not json", headers={"content-type": "application/json"}),
                  c.get(f"/api/images/{sid}/labels", params={"slice": 3, "axis": 7}),
                  c.post(f"/api/images/{sid}/segment", json={"box": [0, 0, 5, 5], "label": 0})]
        statuses = [r.status_code for r in cases]
        assert statuses == [415, 400, 413, 400, 404, 404, 400, 400, 422, 400, 422, 422, 400,
                            400], [r.text for r in cases]
        assert all(set(r.json()) == {"error"} and r.json()["error"] for r in cases)
        assert "case.nii.gz" in cases[1].json()["error"]  # named as uploaded, no temp path
        assert c.get("/api/health").json()["status"] == "ok"


def test_sessions_are_isolated_random_and_expire(model):
    with client(model, max_sessions=2) as c:
        a, b = upload(c, NUCLEI)["id"], upload(c, NUCLEI)["id"]
        assert a != b and len(a) >= 22
        c.post(f"/api/images/{a}/segment", json={"box": [416, 350, 446, 374]})
        assert _labels(c, f"/api/images/{a}", 0).any()
        assert not _labels(c, f"/api/images/{b}", 0).any()  # b sees nothing of a
        assert c.delete(f"/api/images/{b}").status_code == 200
        assert c.get(f"/api/images/{b}").status_code == 404
        upload(c, NUCLEI), upload(c, NUCLEI)  # past max_sessions: a, the oldest, is closed
        assert c.get(f"/api/images/{a}").status_code == 404
    with client(model, session_ttl_s=0.5) as c:
        sid = upload(c, NUCLEI)["id"]
        assert c.get(f"/api/images/{sid}").status_code == 200
        time.sleep(0.7)
        assert c.get(f"/api/images/{sid}").status_code == 404
        assert c.get("/api/health").json()["sessions"] == 0


def test_token_and_host_checks():
    from segmote.errors import ParameterError
    from segmote.serve import ServeConfig

    with pytest.raises(ParameterError, match="token") as err:
        ServeConfig(host="0.0.0.0")
    assert err.value.render({"host": "--host"}).startswith("--host 0.0.0.0: ")
    model = segmote.load_model(adapter=None)
    with client(model, host="0.0.0.0", token="s3cret", base_url="http://10.1.2.3") as c:
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = c.get("/api/health", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["adapter"] is None
        page = c.get("/?token=s3cret")
        assert page.status_code == 200 and "segmote_token=s3cret" in page.headers["set-cookie"]
        assert c.get("/static/app.js").status_code == 200  # the cookie the page got
        c.cookies.clear()
        assert c.get("/static/app.js").status_code == 401
        assert c.post("/api/images", files={"file": ("a.png", b"x")}).status_code == 401
    with client(model) as c:  # loopback without token: only loopback Host headers
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"Host": "evil.example:8000"}).status_code == 403
        other_site = c.post("/api/images", headers={"Origin": "https://evil.example"},
                            files={"file": ("a.png", b"x")})
        assert other_site.status_code == 403 and "cross-site" in other_site.json()["error"]
        same_site = c.get("/api/health", headers={"Origin": "http://127.0.0.1"})
        assert same_site.status_code == 200
    with client(model, max_image_mb=1.0) as c:  # 1.2 MB of .nii.gz, 1.9 MB of voxels
        r = c.post("/api/images", files={"file": (CT.name, CT.read_bytes())})
        assert r.status_code == 413 and "more than this server takes" in r.json()["error"]


def test_serve_command_fails_in_one_line_on_a_busy_port(capsys):
    import socket

    from segmote.cli.main import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", "--port", str(busy.getsockname()[1])]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("segmote serve: error: --host 127.0.0.1 --port") and "\n" not in err


def test_root_confinement_and_dicom_zip(model, tmp_path):
    from io_helpers import write_series

    root, outside = tmp_path / "root", tmp_path / "secret"
    (root / "cases").mkdir(parents=True)
    outside.mkdir()
    (root / "cases" / "ct.nii.gz").write_bytes(CT.read_bytes())
    (outside / "x.nii.gz").write_bytes(CT.read_bytes())
    os.symlink(outside, root / "link_out")
    os.symlink(outside / "x.nii.gz", root / "cases" / "file_out.nii.gz")
    write_series(root / "series", 3)
    with client(model, root=root) as c:
        listing = c.get("/api/files").json()
        assert [e["name"] for e in listing["entries"]] == ["cases", "series"]
        assert [e["name"] for e in c.get("/api/files?folder=cases").json()["entries"]] == \
            ["ct.nii.gz"]
        for bad in ("../secret/x.nii.gz", "cases/../../secret/x.nii.gz", "link_out/x.nii.gz",
                    "cases/file_out.nii.gz", str(outside / "x.nii.gz"), "missing.nii.gz"):
            r = c.post("/api/images/open", json={"path": bad})
            assert r.status_code == 404 and "error" in r.json(), bad
        assert c.get("/api/files?folder=../secret").status_code == 404
        opened = c.post("/api/images/open", json={"path": "cases/ct.nii.gz"})
        assert opened.status_code == 200 and opened.json()["shape"] == [256, 256, 15]
        series = c.post("/api/images/open", json={"path": "series"}).json()
        assert series["shape"] == [128, 128, 3] and series["modality"] == "CT"
        url = f"/api/images/{series['id']}"
        r = c.post(f"{url}/segment", json={"slice": 1, "box": [30, 30, 90, 90], "name": "lesion"})
        assert r.status_code == 200 and r.json()["found"], r.text
        seg = c.get(f"{url}/labels.dcm")  # DICOM-SEG for a DICOM series, segments named
        assert seg.status_code == 200 and c.get(f"{url}/labels.png").status_code == 404
        ds = pydicom.dcmread(io.BytesIO(seg.content))
        assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == "lesion"
        packed = io.BytesIO()
        with zipfile.ZipFile(packed, "w") as z:
            for f in sorted((root / "series").iterdir()):
                z.write(f, f"export/{f.name}")
        r = c.post("/api/images", files={"file": ("series.zip", packed.getvalue())})
        assert r.status_code == 200 and r.json()["shape"] == [128, 128, 3], r.text
    with client(model) as c:
        assert c.post("/api/images/open", json={"path": "x"}).status_code == 404  # no --root


def test_slices_are_encoded_once_in_the_background_within_the_cache_budget(model):
    # 12.6 MB of features per slice with the default adapter: 30 MB keeps two slices
    with client(model, prefetch=1, cache_mb=30) as c:
        info = upload(c, CT)
        engine = c.app.app.state.engine
        session = c.app.app.state.store.get(info["id"])
        assert engine.idle(timeout=300)
        # encoded in the order 7, 8, 6: the least recently used (7) made room for 6
        assert session.cache.keys() == [(2, 8), (2, 6)]
        assert session.cache.total <= 30 * 2**20
        raw = c.get(f"/api/images/{info['id']}/slice", params={"axis": 1, "k": 100})
        assert raw.headers["x-shape"] == "15,256" and raw.headers["x-dtype"] == "float32"
        pixels = np.frombuffer(raw.content, "<f4").reshape(15, 256)
        np.testing.assert_array_equal(pixels, nib.load(CT).get_fdata()[:, 100, :].T)


def _labels(c, url: str, k: int = K) -> np.ndarray:
    r = c.get(f"{url}/labels", params={"slice": k, "format": "raw"})
    h, w = (int(v) for v in r.headers["x-shape"].split(","))
    return np.frombuffer(r.content, "<u2").reshape(h, w)


def _save(path, data: bytes):
    path.write_bytes(data)
    return path


def test_propagate_through_the_volume_from_the_key_slice(model, tmp_path):
    from segmote.predict.propagation import propagate

    # slices 4..10 of the CT (7 encoder passes instead of 15); the tumour fills them all
    ct = nib.load(CT)
    part = tmp_path / "ct_part.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj)[:, :, 4:11], ct.affine, ct.header), part)
    key = 3
    with client(model) as c:
        sid = upload(c, part)["id"]
        url = f"/api/images/{sid}"
        r = c.post(f"{url}/segment", json={"slice": key, "box": BOX_2D, "propagate": True})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["label"] == 1 and answer["slices"] == list(range(7))
        assert answer["score"] == answer["scores"][str(key)]
        assert c.get(url).json()["objects"][0]["score"] == answer["score"]
        session = c.app.app.state.store.get(sid)
        labels = session.labels.copy()
        # the reference: propagation itself, on the features the session cached
        seg = segmote.Segmenter(model)
        data = segmote.read_image(part)
        image = data.array

        def cached(k: int) -> None:
            seg.set_features(session.cache.get((2, k)), (256, 256))

        reference = propagate(seg, cached, image.shape, key, {"box": BOX_2D},
                              spacing=data.spacing)
        np.testing.assert_array_equal(labels == 1, reference.mask)
        assert all(labels[:, :, k].sum() > 500 for k in range(7))
        # cached features are the encoder's: one slice re-encoded from scratch
        fresh = segmote.Segmenter(model)
        fresh.set_image(image[:, :, 1].T, modality="CT")
        for a, b in zip(fresh.features, session.cache.get((2, 1))):
            assert torch.equal(a, b)
        assert c.post(f"{url}/undo").json()["undone"] and not session.labels.any()


def test_nan_upload_is_replaced_as_the_cli_does(model, tmp_path):
    """An upload holding NaN (issue 21, case 4, in the server): the values are replaced and
    left out of the statistics as `segmote predict` does (before, NaN reached the encoder and
    the mask of the whole slice was foreground), with the warning in the answer; an upload
    with no finite value is refused in one line naming it."""
    from PIL import Image

    grey = np.asarray(Image.open(NUCLEI), np.float32)
    grey[:40, :40] = np.nan
    path = tmp_path / "nan.npy"
    np.save(path, grey)
    np.save(tmp_path / "all_nan.npy", np.full((32, 32), np.nan, np.float32))
    with client(model) as c:
        info = upload(c, path)
        assert info["warnings"] == ["nan.npy: 1600 of 262144 values are NaN or Inf; replaced "
                                    "by the image's finite minimum 0"]
        r = c.post(f"/api/images/{info['id']}/segment", json={"box": [416, 350, 446, 374]})
        assert r.status_code == 200 and r.json()["found"], r.text
        png = c.get(f"/api/images/{info['id']}/labels.png").content
        with open(tmp_path / "all_nan.npy", "rb") as f:
            bad = c.post("/api/images", files={"file": ("all_nan.npy", f)})
    assert bad.status_code == 400
    assert bad.json() == {"error": "all_nan.npy: no finite value (all 1024 values are NaN or "
                                   "Inf)"}
    got = read_label(_save(tmp_path / "api.png", png))
    assert not got[:40, :40].any()
    np.testing.assert_array_equal(got, cli_label(tmp_path, path, "416,350,446,374", ".png"))
