"""The weights shipped inside the package: load, metadata, and a real image upscaled better than bicubic."""

import json

import torch
from conftest import need_data

import vdsr_fast
from vdsr_fast.engine import Engine
from vdsr_fast.evaluate import evaluate
from vdsr_fast.weights import default_weights_path


def test_shipped_weights_load_with_metadata():
    assert default_weights_path().is_file(), "the package must ship vdsr_fast/weights/vdsr_x234.safetensors"
    m = vdsr_fast.load()
    assert (m.depth, m.channels) == (20, 64)
    meta = m.metadata
    assert meta["arch"] == "vdsr" and meta["format"] == "vdsr_fast"
    assert json.loads(meta["scales"]) == [2, 3, 4]
    assert int(meta["steps"]) > 0 and "recipe" in meta and "training_data" in meta
    assert all(torch.isfinite(w).all() for w in m.weights)


def test_shipped_weights_beat_bicubic_on_set5():
    """Set5 with the paper's protocol (images from ../shared/data, skipped when absent).

    The margins are what the shipped short CPU run reaches (TRAINING.md: +0.2 / +1.3 / +1.1 dB over
    bicubic); a corrupt, mis-ordered or untrained weights file lands far below bicubic.
    """
    folder = need_data("eval", "Set5")
    engine = Engine(vdsr_fast.load(), backend="torch", device="cpu")
    for scale, margin in ((2, 0.1), (3, 0.8), (4, 0.8)):
        r = evaluate(folder, scale, engine)
        gain = r.mean("psnr") - r.mean("bicubic_psnr")
        assert gain > margin, f"x{scale}: VDSR {r.mean('psnr'):.2f} dB vs bicubic {r.mean('bicubic_psnr'):.2f} dB"
