"""`segmote export`: every graph of the default SegMoTE model (decoder, text, prompt-free) and of
the base model reproduces PyTorch on the bundled samples, run here by onnxruntime and openvino;
bad output paths fail with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segmote.cli.main import main
from segmote.engine.export import check_samples, graph_inputs
from segmote.engine.graphs import SegMoTEDecoderGraph
from segmote.engine.manifest import Manifest
from segmote.engine.runtimes import open_session


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`segmote export` of the default model (adapter with text and PPT): folder, stdout."""
    import contextlib
    import io
    out = tmp_path_factory.mktemp("export") / "graphs"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["export", "--onnx", str(out)]) == 0
    return out, buf.getvalue()


def test_export_default_adapter(exported):
    out, printed = exported
    manifest = Manifest.read(out / "manifest.json")
    assert set(manifest.graphs) == {"encoder", "decoder", "decoder_text", "decoder_auto"}
    assert manifest.adapter_sha256 and manifest.adapter.get("vocabulary")
    for name, g in manifest.graphs.items():
        assert (out / g.file).is_file() and g.max_abs_diff < 1e-3, name
        assert g.mask_pixels_differing in (None, 0), name
        assert f"{g.file}" in printed
    assert json.loads((out / "manifest.json").read_text())["opset"] == 18
    assert [p.name for p in out.parent.iterdir()] == ["graphs"]  # no temporary folder left


def test_exported_decoder_batch_on_openvino(exported):
    """The exported SegMoTE decoder on the other runtime, a batch of 2 prompts of 3 points."""
    from segmote.build import load_model
    model = load_model()
    sample = check_samples(model)[1]
    graph = SegMoTEDecoderGraph(model)
    x = graph_inputs(graph, sample, None, 256)
    x = {k: v.expand(2, *v.shape[1:]).clone() for k, v in x.items()}
    x["point_coords"] = torch.tensor([[[100.0, 120.0], [0, 0], [0, 0]],
                                      [[130.0, 90.0], [140.0, 95.0], [0, 0]]])
    x["point_labels"] = torch.tensor([[1.0, -1, -1], [1, 0, -1]])
    got = open_session(exported[0] / "decoder.onnx", "openvino").run(
        {k: v.numpy() for k, v in x.items()})
    with torch.no_grad():
        want = graph(**x)
    assert got[0].shape == (2, 1, 256, 256)
    assert np.abs(got[0] - want[0].numpy()).max() < 1e-3
    assert np.array_equal(got[0] > 0, want[0].numpy() > 0)


def test_export_base_model_and_bad_output(tmp_path, capsys):
    assert main(["export", "--onnx", str(tmp_path / "base"), "-a", "none"]) == 0
    manifest = Manifest.read(tmp_path / "base" / "manifest.json")
    assert set(manifest.graphs) == {"encoder", "decoder"} and manifest.adapter_sha256 is None
    assert manifest.graphs["decoder"].mask_pixels_differing == 0
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    capsys.readouterr()
    assert main(["export", "--onnx", str(blocker), "-a", "none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"segmote export: error: {blocker}: exists and is not a folder"]
