"""`segmote curate` end to end on a small planted dataset (tiny encoder for the embeddings):
manifest + report written, budget honoured, bad input -> one line, exit 1, nothing written."""

from __future__ import annotations

import json

import pytest
from curation_data import planted_dataset
from tiny_models import one_thread, tiny_sam  # noqa: F401 (one_thread: autouse fixture)

import segmote.cli.curate as curate_cli
from segmote.cli.main import main
from segmote.data.cache import EmbeddingCache


@pytest.fixture
def tiny_cache(monkeypatch, tmp_path):
    def fake(args, window):
        return EmbeddingCache(tmp_path / "cache", tiny_sam(), "tiny", window)
    monkeypatch.setattr(curate_cli, "_embedding_cache", fake)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return planted_dataset(tmp_path_factory.mktemp("d") / "Planted")[0]


def test_curate_writes_manifest_and_report(data, tmp_path, tiny_cache, capsys):
    out, report = tmp_path / "m.json", tmp_path / "r.html"
    rc = main(["curate", "--data", str(data), "--budget", "6", "-o", str(out), "--report",
               str(report), "--dup-threshold", "0.99", "-q", "--seed", "1"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert len(m["selected"]) == 6
    assert {e["class"] for e in m["selected"]} == {"organ", "lesion"}
    assert sum(e["class"] == "organ" for e in m["selected"]) == 3  # balanced over the 2 cells
    reasons = {e["reason"] for e in m["rejected"]}
    assert {"blank_image", "tiny", "fragmented", "fills_frame", "empty", "duplicate"} <= reasons
    assert m["config"]["seed"] == 1 and m["summary"]["budget"] == 6
    html = report.read_text()
    assert "data:image/png;base64," in html and "fills_frame" in html and "before" in html
    assert "balanced by modality" in html and m["config"]["balance"] == "modality"
    assert "6 selected" in capsys.readouterr().out
    again = tmp_path / "m2.json"
    main(["curate", "--data", str(data), "--budget", "6", "-o", str(again), "-q", "--seed",
          "1", "--dup-threshold", "0.99"])
    assert json.loads(again.read_text())["selected"] == m["selected"]  # seeded


@pytest.mark.parametrize("argv, message", [
    (["--budget", "lots"], "--budget"),
    (["--budget", "5", "--weight", "liver"], "--weight"),
    (["--budget", "5", "--threshold", "min_pixls=3"], "unknown threshold"),
    (["--budget", "5", "--dup-threshold", "1.5"], "dup_threshold"),
    (["--budget", "5", "--balance-power", "2"], "balance_power"),
    (["--budget", "5", "--balance", "dataset"], "balance must be one of cell, modality"),
])
def test_bad_options_one_line_nothing_written(data, tmp_path, tiny_cache, capsys, argv,
                                              message):
    out = tmp_path / "m.json"
    rc = main(["curate", "--data", str(data), "-o", str(out), "--no-dedup", "-q", *argv])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_data_and_config(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["curate", "--data", str(tmp_path / "nope"), "-o", str(out), "--no-dedup"]) == 1
    assert "dataset folder not found" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("balance_power: half\n")
    assert main(["curate", "--data", str(tmp_path), "-o", str(out), "-c", str(cfg)]) == 1
    assert "balance_power must be a number" in capsys.readouterr().err
    cfg.write_text("balance: dataset\n")
    assert main(["curate", "--data", str(tmp_path), "-o", str(out), "-c", str(cfg)]) == 1
    assert "balance must be one of cell, modality" in capsys.readouterr().err
    cfg.write_text("budjet: 5\n")
    assert main(["curate", "--data", str(tmp_path), "-o", str(out), "-c", str(cfg)]) == 1
    assert "unknown key(s) budjet" in capsys.readouterr().err
    assert main(["curate", "--data", str(tmp_path), "-o", str(tmp_path / "x" / "m.json")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_config_file_and_no_dedup(data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("budget: 100%\nthresholds: {min_pixels: 1}\nweights: ['MR/lesion=0']\n")
    out = tmp_path / "m.json"
    assert main(["curate", "--data", str(data), "-o", str(out), "-c", str(cfg), "--no-dedup",
                 "-q"]) == 0
    m = json.loads(out.read_text())
    assert m["thresholds"]["min_pixels"] == 1 and not m["config"]["dedup"]
    assert {e["class"] for e in m["selected"]} == {"organ"}
    assert "tiny" not in {e["reason"] for e in m["rejected"]}  # min_pixels 1: single pixel ok
    assert "duplicate" not in {e["reason"] for e in m["rejected"]}
