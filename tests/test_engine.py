"""CPU engines (segmote.engine): the exported encoder on onnxruntime / openvino reproduces PyTorch,
the graph cache rebuilds stale or damaged entries, the decoder graphs equal the PyTorch decode,
and `segmote export` writes checked graphs. Real weights, real bundled samples."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from segmote.build import load_model, weights_sha256
from segmote.engine import resolve_engine, use_engine
from segmote.engine.export import check_samples, graph_inputs
from segmote.engine.graphs import BaseDecoderGraph, SegMoTEDecoderGraph
from segmote.engine.store import encoder_graph, entry_dir, is_current
from segmote.errors import InputError
from segmote.predict.segmenter import Segmenter
from segmote.samples import bundled_sample_path, bundled_samples

SHA = weights_sha256("litemedsam", None)


@pytest.fixture(scope="module")
def default_model():
    return load_model()


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_engine_encoder_matches_torch(engine, base_model):
    model = use_engine(load_model(adapter=None), engine, "litemedsam", SHA)
    assert type(model.image_encoder).__name__ == "EngineEncoder"
    x = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))  # dynamic batch
    with torch.no_grad():
        want, got = base_model.encode(x), model.encode(x)
    for w, g in zip(want, got):
        assert g.shape == w.shape and g.dtype == torch.float32
        assert float((g - w).abs().max()) < 1e-4
    # the product path: the same mask on the bundled nuclei image
    entry = bundled_samples()["nuclei"]
    from segmote.io import read_image
    image = read_image(bundled_sample_path("nuclei")).array
    masks = []
    for m in (base_model, model):
        seg = Segmenter(m)
        seg.set_image(image)
        masks.append(seg.predict(box=entry["box"]).mask)
    assert masks[0].sum() > 50 and np.array_equal(masks[0], masks[1])


def test_unknown_or_missing_engine(monkeypatch):
    with pytest.raises(InputError, match="engine 'tensorrt': unknown"):
        resolve_engine("tensorrt")
    with pytest.raises(InputError, match="precision bf16: offered with engine openvino only"):
        load_model(adapter=None, engine="onnxruntime", precision="bf16")
    import segmote.engine.runtimes as rt
    real = rt.importlib.util.find_spec
    monkeypatch.setattr(rt.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnxruntime", "openvino")
                        else real(name, *a))
    with pytest.raises(InputError, match=r"engine openvino: not installed; pip install"):
        resolve_engine("openvino")
    assert resolve_engine("auto") == "torch"


def test_graph_cache_rebuilds_stale_and_damaged(base_model, tmp_path, monkeypatch):
    encoder_graph(base_model, "litemedsam", SHA)  # the shared cache entry
    src = entry_dir("litemedsam", SHA)
    monkeypatch.setenv("SEGMOTE_HOME", str(tmp_path))
    folder = entry_dir("litemedsam", SHA)
    shutil.copytree(src, folder)
    assert is_current(folder, SHA) and not is_current(folder, "0" * 64)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format": 0}))
    assert not is_current(folder, SHA)  # stale: another export format
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with open(folder / "encoder.onnx", "r+b") as f:  # damaged: one byte changed
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert not is_current(folder, SHA)
    messages: list[str] = []
    path = encoder_graph(base_model, "litemedsam", SHA, progress=messages.append)
    assert is_current(folder, SHA) and path == folder / "encoder.onnx"
    assert "rebuilding a stale or damaged litemedsam encoder graph" in messages[0]
    assert "encoder graph ready" in messages[-1]
    assert list(tmp_path.joinpath("engine").iterdir()) == [folder]  # no temporary leftovers


def _inputs(graph, sample, text=None):
    return graph_inputs(graph, sample, text, 256)


def test_decoder_graph_modules_equal_the_pytorch_decode(base_model, default_model):
    """What is exported is the product's decode: the graph modules, run in PyTorch, give the
    masks of `Sam.decode` / `SegMoTE.decode` (box, box + text, prompt-free)."""
    sample = check_samples(base_model)[0]
    with torch.no_grad():
        got = BaseDecoderGraph(base_model)(**_inputs(BaseDecoderGraph(base_model), sample))
        want = base_model.decode(sample.embedding, boxes=sample.box)
        assert torch.allclose(got[0], want.masks, atol=1e-5)
        text = Segmenter(default_model).embed_text(["tumour"])
        from segmote.modeling.encoder_output import EncoderOutput
        feats = default_model.prepare_image(EncoderOutput(sample.embedding, sample.early))
        for kind in ("box", "text", "auto"):
            graph = SegMoTEDecoderGraph(default_model, text=kind == "text", auto=kind == "auto")
            got = graph(**_inputs(graph, sample, text if kind != "box" else None))
            want = default_model.decode(feats, boxes=None if kind == "auto" else sample.box,
                                        text=None if kind == "box" else text,
                                        auto=kind == "auto")
            assert torch.allclose(got[0], want.masks, atol=1e-4), kind
            assert torch.allclose(got[2], want.base_masks, atol=1e-4), kind
            assert ((got[0] > 0) == (want.masks > 0)).all(), kind


def test_training_embedding_cache_with_engine(base_model, samples_home, tmp_path):
    """`segmote train --engine`: the cache's entries encoded by openvino equal PyTorch's."""
    from pathlib import Path

    from segmote.data.cache import EmbeddingCache
    from segmote.data.datasets import discover, slice_samples
    (d,) = discover([Path(samples_home) / "samples" / "pyradiomics/Dataset002_PyradiomicsMR"])
    samples = slice_samples([d], {d.name: {"train": ["breast1"], "val": []}}, axis=2).samples
    sample = samples[len(samples) // 2]
    engine_model = use_engine(load_model(adapter="new"), "openvino", "litemedsam", SHA)
    got = EmbeddingCache(tmp_path / "e", engine_model, "litemedsam").get(sample)
    want = EmbeddingCache(tmp_path / "t", base_model, "litemedsam").get(sample)
    torch.testing.assert_close(got.image_embedding, want.image_embedding, rtol=2e-3, atol=1e-3)
    torch.testing.assert_close(got.early_features, want.early_features, rtol=2e-3, atol=1e-3)


def test_serve_engine_flag_and_threads(tmp_path, monkeypatch):
    """`segmote serve --engine openvino`: the served encoder runs on OpenVINO, its answer equals
    PyTorch's `segmote predict`, and the encoder is safe to call from two threads at once (the
    server's background prefetch encodes beside the requests)."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import uvicorn
    from fastapi.testclient import TestClient
    from serve_common import CT, K, cli_label, read_label, upload

    from segmote.cli.main import main

    with socket.socket() as probe:  # a free port: `serve` checks it before loading the model
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.setdefault("app", app))
    assert main(["serve", "--engine", "openvino", "--adapter", "none", "--port", port]) == 0
    with TestClient(served["app"], base_url="http://127.0.0.1") as c:
        encoder = c.app.app.state.engine.seg.model.image_encoder
        assert type(encoder).__name__ == "EngineEncoder" and encoder.engine == "openvino"
        x = torch.rand(4, 3, 256, 256, generator=torch.Generator().manual_seed(2))
        alone = [encoder(x[i:i + 1]).image_embedding for i in range(4)]
        with ThreadPoolExecutor(2) as pool:  # one infer request shared would raise "busy"
            both = list(pool.map(lambda i: encoder(x[i:i + 1]).image_embedding, range(4)))
        assert all(torch.equal(a, b) for a, b in zip(alone, both))
        sid = upload(c, CT)["id"]
        r = c.post(f"/api/images/{sid}/segment", json={"slice": K, "box": [83, 93, 173, 162]})
        assert r.status_code == 200 and r.json()["found"], r.text
        (tmp_path / "api.nii.gz").write_bytes(c.get(f"/api/images/{sid}/labels.nii.gz").content)
    want = cli_label(tmp_path, CT, "83,93,7,173,162,7", ".nii.gz", "--engine", "torch",
                     "--adapter", "none")
    np.testing.assert_array_equal(read_label(tmp_path / "api.nii.gz"), want)


def test_predict_keeps_the_engine_in_fp32():
    """OpenVINO bf16 moved Dice by more than the 0.005 it may cost (docs/engine.md), so
    `--precision bf16` (PyTorch's autocast) leaves the engine's encoder in fp32."""
    from segmote.predict.options import PredictOptions
    from segmote.predict.pipeline import _model_for

    _, model = _model_for(PredictOptions(adapter=None, engine="openvino", precision="bf16"),
                          auto=False)
    assert model.image_encoder.engine == "openvino"
    assert model.image_encoder.precision == "fp32"
