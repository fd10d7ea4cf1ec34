"""`segmote predict --routing / --attention`: the SegMoTE router made visible from the CLI."""

from __future__ import annotations

import torch
from PIL import Image

from segmote.cli.main import main
from segmote.io import read_image
from segmote.samples import bundled_sample_path, bundled_samples

LUNG = bundled_sample_path("lung2_ct_crop")
NUCLEI = bundled_sample_path("nuclei")
NUCLEI_BOX = ",".join(map(str, bundled_samples()["nuclei"]["box"]))


def _table(stdout: str) -> list[list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:2] in (["LABEL", "TOKEN"], ["LABEL", "SLICE"]), stdout
    return [line.split() for line in lines[1:-1]]  # the last line is the output path


def test_routing_and_attention_on_an_image(tmp_path, capsys):
    out, att = tmp_path / "mask.png", tmp_path / "att.png"
    rc = main(["predict", "-q", "-i", str(NUCLEI), "-o", str(out), "--box", NUCLEI_BOX,
               "--box", "100,100,160,150", "--adapter", "new", "--routing",
               "--attention", str(att)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rows = _table(cap.out)
    assert [r[0] for r in rows] == ["1", "2"]  # one row per object, by output label
    for r in rows:
        token, conf = int(r[1]), float(r[2])
        assert 0 <= token < 4 and 0.0 < conf <= 1.0
        probs = [float(p) for p in r[-4:]]  # E = 4 experts
        assert abs(sum(probs) - 1) < 0.02 and abs(max(probs) - conf) < 0.006
    # one panel for the image + one per expert token (T = 4), 260 px each at dpi 100
    w, h = Image.open(att).size
    assert w == 5 * 260 and h == 280
    assert read_image(out).array.shape == read_image(NUCLEI).array.shape


def test_routing_per_slice_in_a_volume(tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    torch.manual_seed(0)  # "new" draws the expert tokens and router at random
    rc = main(["predict", "-q", "-i", str(LUNG), "-o", str(out), "--box", "83,93,6,173,162,8",
               "--adapter", "new", "--routing"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rows = _table(cap.out)
    assert [(r[0], r[1]) for r in rows] == [("1", "6"), ("1", "7"), ("1", "8")]
    # eval routing is deterministic: the same adapter prints the same table
    torch.manual_seed(0)
    main(["predict", "-q", "-i", str(LUNG), "-o", str(out), "--box", "83,93,6,173,162,8",
          "--adapter", "new", "--routing"])
    assert _table(capsys.readouterr().out) == rows


def test_routing_needs_an_adapter(tmp_path, capsys):
    out, att = tmp_path / "mask.png", tmp_path / "att.png"
    for flags in (["--routing"], ["--attention", str(att)]):
        rc = main(["predict", "-q", "-i", str(NUCLEI), "-o", str(out), "--box", NUCLEI_BOX,
                   "--adapter", "none"] + flags)
        err = capsys.readouterr().err
        assert rc == 1 and len(err.strip().splitlines()) == 1 and "adapter" in err
        assert not out.exists() and not att.exists()


def test_attention_must_be_png(tmp_path, capsys):
    rc = main(["predict", "-q", "-i", str(NUCLEI), "-o", str(tmp_path / "m.png"),
               "--box", NUCLEI_BOX, "--adapter", "new", "--attention", str(tmp_path / "a.jpg")])
    assert rc == 1 and "--attention must be a .png" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()
