"""Geometry of resize / pad / map-back and per-modality intensity handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segmote.errors import InputError
from segmote.intensity import IntensityRange, intensity_range, normalize_modality, parse_window
from segmote.transforms import ResizeGeometry, to_input_tensor


def test_longest_side_and_padding():
    g = ResizeGeometry.for_shape((120, 45), 256)
    assert g.resized_hw == (256, 96)
    x = to_input_tensor(np.random.rand(120, 45).astype(np.float32), g)
    assert x.shape == (3, 256, 256)
    assert float(x[:, :, 96:].abs().max()) == 0.0  # zero padding right
    assert float(x.max()) == pytest.approx(1.0)


def test_prompt_coordinates_scale_with_the_image():
    g = ResizeGeometry.for_shape((512, 384), 256)
    np.testing.assert_allclose(g.boxes_to_input(np.array([[0, 0, 384, 512]])), [[0, 0, 192, 256]])
    np.testing.assert_allclose(g.coords_to_input(np.array([[100.0, 50.0]])), [[50.0, 25.0]])


def test_logits_map_back_exactly_to_the_original_grid():
    """A mask drawn on the original grid survives the round trip to the low-res grid and back."""
    g = ResizeGeometry.for_shape((300, 200), 256)
    mask = np.zeros((300, 200), np.float32)
    mask[100:200, 50:150] = 1
    low = g.mask_to_lowres(mask * 2 - 1, 256)
    assert low.shape == (1, 1, 256, 256)
    back = g.logits_to_original(low)[0, 0].numpy() > 0
    assert back.shape == (300, 200)
    assert (back != (mask > 0)).mean() < 0.01
    assert not back[:, 180:].any() and not back[250:].any()


def test_ct_windows_and_mr_percentiles():
    assert parse_window("lung") == (-1000.0, 400.0)
    assert parse_window("40,400") == (-160.0, 240.0)
    with pytest.raises(InputError):
        parse_window("40")
    with pytest.raises(InputError):
        parse_window("40,-3")
    ct = np.array([[-3000, 0], [200, 3000]], np.int16)
    r = intensity_range(ct, "CT")
    np.testing.assert_array_equal(r.apply(ct), [[-1000, 0], [200, 400]])
    mr = np.arange(10000, dtype=np.float32).reshape(100, 100)
    r = intensity_range(mr, "MRI")
    assert r.lo == pytest.approx(np.percentile(mr, 0.5)) and r.hi == pytest.approx(np.percentile(mr, 99.5))
    assert intensity_range(mr, None) == IntensityRange()


def test_modality_names():
    assert normalize_modality("mri") == "MR" and normalize_modality("CR") == "XRAY"
    with pytest.raises(InputError, match="unknown modality"):
        normalize_modality("banana")


def test_rgb_and_constant_images():
    g = ResizeGeometry.for_shape((64, 64), 256)
    rgb = to_input_tensor(np.random.randint(0, 255, (64, 64, 3), np.uint8), g)
    assert rgb.shape == (3, 256, 256)
    flat = to_input_tensor(np.full((64, 64), 7.0), g)  # no division by zero
    assert torch.isfinite(flat).all()
