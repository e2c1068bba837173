"""benchmarks/ship_weights.py: the decision (higher PSNR in every cell, as README prints it) and the shipping
(metadata and README's table kept in step), on a copy of the shipped file and of README: no data needed."""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from safetensors import safe_open

import vdsr_fast
from benchmarks import ship_weights as sw
from vdsr_fast.weights import default_weights_path


def _meta(path) -> dict[str, str]:
    with safe_open(path, "pt") as f:
        return dict(f.metadata())


SHIPPED = json.loads(_meta(default_weights_path())["psnr"])


def _table(delta: float, cell: tuple[str, str] | None = None, cell_delta: float = 0.0) -> dict:
    """The shipped table with ``delta`` dB added to every PSNR (``cell_delta`` to ``cell``'s) and SSIM + 0.001."""
    return {s: {x: {"psnr": c["psnr"] + (cell_delta if (s, x) == cell else delta), "ssim": c["ssim"] + 0.001}
                for x, c in SHIPPED[s].items()} for s in sw.SETS}  # fmt: skip


def test_readme_is_parsed_and_rewritten_unchanged_from_the_shipped_table():
    """README's nine rows parse, and rewriting its shipped column from the metadata's table gives README back: the
    script reads and writes the table test_default_weights holds to the metadata."""
    text = (ROOT / "README.md").read_text()
    rows = sw.readme_table(text)
    assert {k: v["shipped"] for k, v in rows.items()} == {
        (s, int(x[1])): (c["psnr"], c["ssim"]) for s in sw.SETS for x, c in SHIPPED[s].items()}
    date = sw.DATE.search(text)[1]
    assert sw.new_readme(text, SHIPPED, date) == text
    assert sw.new_readme(text, SHIPPED, "2031-01-02") == text.replace(f"backend, {date}, these", "backend, 2031-01-02, these")


def test_the_decision_needs_a_higher_psnr_as_printed_in_every_cell():
    assert sw.decide(_table(0.011), SHIPPED) == (True, [])
    # 0.004 dB more rounds to the same two decimals: not higher there
    assert sw.decide(_table(0.05, ("BSD100", "x4"), 0.004), SHIPPED) == (False, ["BSD100 x4"])
    assert sw.decide(_table(0.05, ("Set14", "x3"), -0.2), SHIPPED) == (False, ["Set14 x3"])


def test_the_quality_line_says_the_gap_to_the_paper():
    readme = sw.readme_table((ROOT / "README.md").read_text())
    paper = {s: {f"x{k}": {"psnr": readme[s, k]["paper"][0] + 0.01, "ssim": 0.9} for k in sw.SCALES} for s in sw.SETS}
    assert sw.quality_line(paper, readme).startswith("above bicubic on every set and scale, at or above the paper")
    assert sw.quality_line(SHIPPED, readme) == _meta(default_weights_path())["quality"]


def _setup(tmp_path, table: dict, init: str | None = "shipped"):
    """A candidate (random weights saved as a run saves them: from the shipped file by default, ``init=None`` from
    scratch, else from that sha256), a copy of the shipped file and of README, empty set folders and the candidate's
    scores already saved (so nothing is scored)."""
    model = vdsr_fast.VDSR()
    torch.nn.init.normal_(model.weights[0], std=0.1)
    cand = tmp_path / "run" / "vdsr_x234.safetensors"
    cand.parent.mkdir(parents=True)
    shipped, readme = tmp_path / "shipped.safetensors", tmp_path / "README.md"
    shutil.copy(default_weights_path(), shipped)
    shutil.copy(ROOT / "README.md", readme)
    recipe = {"patch": 96, "lr": 1e-4, "init": "" if init is None else "vdsr_fast/weights/vdsr_x234.safetensors"}
    digest = None if init is None else sw.sha256(shipped) if init == "shipped" else init
    vdsr_fast.save(model, cand, {"steps": 4000, "recipe": recipe, "init_sha256": digest,
                                 **({"training_data": ["cache y291.npz"]} if init is None else {})})
    for s in sw.SETS:
        (tmp_path / "data" / s).mkdir(parents=True)
    scores = tmp_path / "scores.json"
    key = {"candidate": str(cand.resolve()), "sha256": sw.sha256(cand), "data": str((tmp_path / "data").resolve())}
    scores.write_text(json.dumps({**key, **table}))
    argv = [str(cand), "--data", str(tmp_path / "data"), "--scores", str(scores), "--readme", str(readme),
            "--shipped", str(shipped)]  # fmt: skip
    return model, argv, shipped, readme


def test_write_ships_the_candidate_with_its_metadata_and_readme_in_step(tmp_path, capsys):
    model, argv, shipped, readme = _setup(tmp_path, _table(0.03))
    before = _meta(shipped)
    assert sw.main([*argv, "--write", "--note", "run test (4000 steps)"]) == 0
    out = capsys.readouterr().out
    assert "ship: yes" in out and "| Set5 | x2 | 37.28 / 0.9582 | 37.25 / 0.9572 | +0.03 | 37.53 / 0.9587 |" in out, out
    got = vdsr_fast.load(shipped)
    assert all(torch.equal(a, b) for a, b in zip(got.weights + got.biases, model.weights + model.biases))
    meta = _meta(shipped)
    table = json.loads(meta["psnr"])
    rows = sw.readme_table(readme.read_text())
    assert all(table[s][f"x{k}"] == {"psnr": rows[s, k]["shipped"][0], "ssim": rows[s, k]["shipped"][1]}
               for s in sw.SETS for k in sw.SCALES)  # fmt: skip
    today = datetime.date.today().isoformat()
    assert table["protocol"].endswith(today) and meta["date"] == today and f"backend, {today}, these" in readme.read_text()
    assert int(meta["steps"]) == int(before["steps"]) + 4000 and json.loads(meta["recipe"])["patch"] == 96
    assert meta["training"] == before["training"] + ". Then run test (4000 steps)"
    assert json.loads(meta["psnr_set5"])["x2"] == table["Set5"]["x2"]["psnr"]
    assert meta["quality"] == "above bicubic on every set and scale, 0.03-0.25 dB below the paper's VDSR (README, TRAINING.md)"
    updated = {"date", "steps", "recipe", "psnr", "psnr_set5", "quality", "training"}
    assert meta.keys() == before.keys() and all(meta[k] == before[k] for k in before.keys() - updated)  # the rest kept


def test_a_candidate_not_higher_everywhere_is_not_shipped(tmp_path, capsys):
    _, argv, shipped, readme = _setup(tmp_path, _table(0.1, ("Set5", "x4"), 0.0))
    files = shipped.read_bytes(), readme.read_text()
    assert sw.main([*argv, "--write", "--note", "n"]) == 1
    assert "ship: no (not higher in Set5 x4)" in capsys.readouterr().out
    assert (shipped.read_bytes(), readme.read_text()) == files


def test_write_needs_a_note_and_scores_belong_to_their_file_wherever_it_is(tmp_path):
    _, argv, _, _ = _setup(tmp_path, _table(0.1))
    with pytest.raises(SystemExit):
        sw.main([*argv, "--write"])
    other = tmp_path / "other.safetensors"
    shutil.copy(argv[0], other)
    assert sw.main([str(other), *argv[1:]]) == 0  # the same bytes elsewhere: its scores (nothing scored again)


def test_a_run_from_scratch_replaces_the_steps_and_training_and_one_from_other_weights_is_refused(tmp_path):
    """The shipped steps and training are carried on only by a run that began from the shipped file (by the sha256
    the trainer records): a review found a run from scratch shipped with the shipped steps added."""
    _, argv, shipped, _ = _setup(tmp_path / "a", _table(0.03), init=None)
    assert sw.main([*argv, "--write", "--note", "run s (4000 steps from scratch)"]) == 0
    meta = _meta(shipped)
    assert meta["steps"] == "4000" and meta["training"] == "vdsr-fast train: run s (4000 steps from scratch)"
    assert json.loads(meta["training_data"]) == ["cache y291.npz"]  # what it trained on, not the shipped run's
    _, argv, shipped, readme = _setup(tmp_path / "b", _table(0.03), init="0" * 64)
    files = shipped.read_bytes(), readme.read_text()
    with pytest.raises(SystemExit, match="which is not the shipped file"):
        sw.main([*argv, "--write", "--note", "n"])
    assert (shipped.read_bytes(), readme.read_text()) == files
    assert sw.main(argv) == 0  # without --write: the decision alone


def test_scores_are_of_the_file_scored_not_of_its_path(tmp_path):
    """Each run writes its weights to the same path: the scores saved for one run's file are not another's (a review
    shipped a 1 dB worse run on its predecessor's scores)."""
    model, argv, _, _ = _setup(tmp_path, _table(0.1))
    torch.nn.init.normal_(model.weights[1], std=0.1)
    vdsr_fast.save(model, argv[0], {"steps": 4000, "recipe": {"init": ""}})  # the next run, at the same path
    with pytest.raises(SystemExit, match="holds the scores of another file or sets \\(sha256 "):
        sw.main(argv)


@pytest.mark.parametrize("fails", ["readme", "weights"])
def test_a_failed_write_leaves_readme_and_the_shipped_file_as_they_were(tmp_path, monkeypatch, fails):
    """README is written first, to a temporary, and renamed into place only once the weights are saved: a full disk
    while writing either leaves both as they were (before, README was rewritten in place after the weights were
    shipped, and cut short there: a review)."""
    _, argv, shipped, readme = _setup(tmp_path, _table(0.03))
    files = shipped.read_bytes(), readme.read_text()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if fails == "weights":
        monkeypatch.setattr(vdsr_fast, "save", full)
    else:  # README's text, wherever it is written
        write_text = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full() if "README" in self.name
                            else write_text(self, *a, **k))  # fmt: skip
    with pytest.raises(OSError, match="No space left"):
        sw.main([*argv, "--write", "--note", "n"])
    assert (shipped.read_bytes(), readme.read_text()) == files and sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md", "data", "run", "scores.json", "shipped.safetensors"]
