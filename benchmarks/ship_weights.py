"""Decide whether a training run's weights replace the shipped ones, and ship them (issue 3; TRAINING.md).

    python -m benchmarks.ship_weights runs/gpu_out/vdsr_x234.safetensors            # score, compare, decide
    python -m benchmarks.ship_weights CANDIDATE --run gpu28 --note "..." --write    # and ship them

Scores the candidate as README's quality table is measured (``vdsr-fast eval``: Set5, Set14 and BSD100 at x2, x3 and
x4, paper protocol, the fp32 reference backend on the CPU; ~25 minutes here), each cell saved to ``--scores`` as it
is done (a rerun scores only the cells missing), then prints the candidate beside the shipped weights (their
metadata's table, which is README's) and the paper, and the decision: they ship only if their PSNR, as README prints
it (two decimals), is higher in every cell (exit status 0; 1 if not). ``--write`` (only then) saves them as the shipped file with the shipped
metadata brought up to date (date, steps, the run's recipe, the table, ``psnr_set5``, ``quality``, ``training``) and
rewrites README's table column and date. A run that continued the shipped weights (``--init`` with the shipped file,
as the trainer records its sha256) adds its steps to theirs and "Then NOTE" to their training; a run from scratch
replaces both; a run from other weights is refused (its history is not the shipped file's: write that by hand). The prose (README's Weights
paragraph, TRAINING.md's run, ``benchmarks/results/README.md``) is left to the person shipping: it prints the list.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ("Set5", "Set14", "BSD100")
SCALES = (2, 3, 4)
# README's quality table: | set | xS | bicubic (ours) | shipped VDSR (ours) | paper bicubic | paper VDSR |
ROW = re.compile(r"^\| (Set5|Set14|BSD100) \| x(\d) \| ([\d.]+) / ([\d.]+) \| ([\d.]+) / ([\d.]+) \| "
                 r"([\d.]+) / ([\d.]+) \| ([\d.]+) / ([\d.]+) \|$")  # fmt: skip
DATE = re.compile(r"\(CPU, fp32 reference backend, (\d{4}-\d\d-\d\d), these weights;")

Table = dict[str, dict[str, dict[str, float]]]  # set -> "xS" -> {"psnr", "ssim"} (the metadata's: and "protocol")


def readme_table(text: str) -> dict[tuple[str, int], dict[str, tuple[float, float]]]:
    """README's nine rows: (set, scale) -> {"bicubic", "shipped", "paper_bicubic", "paper"}: (PSNR, SSIM)."""
    rows = {}
    for line in text.splitlines():
        if m := ROW.match(line):
            v = [float(x) for x in m.groups()[2:]]
            rows[m[1], int(m[2])] = dict(zip(("bicubic", "shipped", "paper_bicubic", "paper"), zip(v[::2], v[1::2])))
    if len(rows) != len(SETS) * len(SCALES) or DATE.search(text) is None:
        raise SystemExit("ship_weights: README.md's quality table (nine rows and its date) is not where it was")
    return rows


def rounded(table: Table) -> Table:
    """As README prints them: PSNR to 2 decimals, SSIM to 4."""
    return {s: {f"x{k}": {"psnr": round(table[s][f"x{k}"]["psnr"], 2), "ssim": round(table[s][f"x{k}"]["ssim"], 4)}
                for k in SCALES} for s in SETS}  # fmt: skip


def decide(candidate: Table, shipped: Table) -> tuple[bool, list[str]]:
    """(ship?, the cells where the candidate is not higher): higher PSNR, as printed, in every cell."""
    cand = rounded(candidate)
    worse = [f"{s} x{k}" for s in SETS for k in SCALES if cand[s][f"x{k}"]["psnr"] <= shipped[s][f"x{k}"]["psnr"]]
    return not worse, worse


def quality_line(candidate: Table, readme: dict) -> str:
    """The metadata's ``quality``: against bicubic and the paper's VDSR on every cell."""
    cand = rounded(candidate)
    gaps = [cand[s][f"x{k}"]["psnr"] - readme[s, k]["paper"][0] for s in SETS for k in SCALES]
    above = all(cand[s][f"x{k}"]["psnr"] > readme[s, k]["bicubic"][0] for s in SETS for k in SCALES)
    head = "above bicubic on every set and scale" if above else "NOT above bicubic on every set and scale"
    if min(gaps) >= 0:
        return f"{head}, at or above the paper's VDSR on every one ({min(gaps):+.2f} to {max(gaps):+.2f} dB; README)"
    below = sorted(-g for g in gaps if g < 0)
    return f"{head}, {below[0]:.2f}-{below[-1]:.2f} dB below the paper's VDSR (README, TRAINING.md)" + (
        f" in {len(below)} of 9 cells" if len(below) < len(gaps) else "")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def continues_shipped(cand: dict[str, str], shipped_sha256: str) -> bool:
    """Whether the candidate's run began from the shipped weights (True) or from scratch (False), by its metadata
    (``cand``: as the trainer wrote it); SystemExit for a run from other weights, whose steps and history are not
    the shipped file's to carry on."""
    init = json.loads(cand["recipe"]).get("init") or ""
    if not init:
        return False
    if cand.get("init_sha256") == shipped_sha256:
        return True
    raise SystemExit(f"ship_weights: the candidate's run began from --init {init}, which is not the shipped file (the "
                     f"run recorded sha256 {cand.get('init_sha256')}, the shipped file's is {shipped_sha256}; runs "
                     "before 2026-11-30 recorded none): the metadata's steps and training cannot carry on "
                     "from the shipped ones; ship it by hand")


def new_metadata(shipped: dict[str, str], cand: dict[str, str], table: Table, readme: dict, note: str,
                 today: str, continued: bool) -> dict[str, str]:  # fmt: skip
    """The shipped file's metadata brought up to date for the candidate (``cand``: its own, as the trainer wrote it):
    its steps and the note added to the shipped ones if its run ``continued`` them, else in their place."""
    t = rounded(table)
    meta = dict(shipped)
    meta.update({
        "date": today,
        "steps": str(int(shipped["steps"]) * continued + int(cand["steps"])),
        "recipe": cand["recipe"],
        "psnr": json.dumps({**t, "protocol": re.sub(r"\d{4}-\d\d-\d\d", today, json.loads(shipped["psnr"])["protocol"])}),
        "psnr_set5": json.dumps({**{f"x{k}": t["Set5"][f"x{k}"]["psnr"] for k in SCALES},
                                 "protocol": json.loads(shipped["psnr_set5"])["protocol"]}),  # fmt: skip
        "quality": quality_line(table, readme),
        "training": f"{shipped['training'].rstrip('.')}. Then {note}" if continued else f"vdsr-fast train: {note}",
    })
    # what the run trained on: beside the shipped file's if it continued them, else in their place (if it says)
    data = json.loads(cand.get("training_data") or "[]")
    before = json.loads(shipped.get("training_data", "[]")) if continued or not data else []
    meta["training_data"] = json.dumps(list(dict.fromkeys(before + data)))
    return meta


def new_readme(text: str, table: Table, today: str) -> str:
    """README with the shipped VDSR column and the table's date replaced."""
    t = rounded(table)

    def row(m: re.Match) -> str:
        c = t[m[1]][f"x{m[2]}"]
        return (f"| {m[1]} | x{m[2]} | {m[3]} / {m[4]} | {c['psnr']:.2f} / {c['ssim']:.4f} | {m[7]} / {m[8]} | "
                f"{m[9]} / {m[10]} |")

    text = "\n".join(ROW.sub(row, line) for line in text.split("\n"))
    return DATE.sub(lambda m: m[0].replace(m[1], today), text, count=1)


def score(candidate: Path, data: Path, scores: Path, digest: str) -> Table:
    """Every cell, each saved to ``scores`` as it is done; cells already there are not scored again if they are of
    this file (by its sha256: each run writes its weights to the same path) and these sets."""
    import torch

    import vdsr_fast
    from vdsr_fast.engine import Engine
    from vdsr_fast.evaluate import evaluate

    done: Table = json.loads(scores.read_text()) if scores.is_file() else {}
    key = {"sha256": digest, "data": str(data.resolve())}  # (the file's path may hold another run's weights later)
    if done and {k: done.get(k) for k in key} != key:
        was = ", ".join(f"{k} {done.get(k)}" for k in key if done.get(k) != key[k])
        raise SystemExit(f"ship_weights: {scores} holds the scores of another file or sets ({was}); delete it or pass "
                         "another --scores")
    done.update(key, candidate=str(candidate.resolve()))
    engine = Engine(vdsr_fast.load(candidate), backend="torch", dtype=torch.float32, device="cpu")
    for s in SETS:
        for k in SCALES:
            if f"x{k}" in done.get(s, {}):
                continue
            r = evaluate(data / s, k, engine, progress=True)
            done.setdefault(s, {})[f"x{k}"] = {"psnr": r.mean("psnr"), "ssim": r.mean("ssim")}
            scores.parent.mkdir(parents=True, exist_ok=True)
            scores.write_text(json.dumps(done, indent=1))
            print(f"{s} x{k}: {r.mean('psnr'):.3f} dB / {r.mean('ssim'):.4f}", file=sys.stderr, flush=True)
    return {s: done[s] for s in SETS}


def report(candidate: Table, shipped: Table, readme: dict) -> str:
    cand = rounded(candidate)
    lines = ["| set | scale | candidate | shipped | Δ PSNR (dB) | paper VDSR |", "|---|---|---|---|---|---|"]
    for s in SETS:
        for k in SCALES:
            c, o, p = cand[s][f"x{k}"], shipped[s][f"x{k}"], readme[s, k]["paper"]
            lines.append(f"| {s} | x{k} | {c['psnr']:.2f} / {c['ssim']:.4f} | {o['psnr']:.2f} / {o['ssim']:.4f} | "
                         f"{c['psnr'] - o['psnr']:+.2f} | {p[0]:.2f} / {p[1]:.4f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("candidate", type=Path, help="the run's weights (e.g. runs/gpu_out/vdsr_x234.safetensors)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "eval", help="folder of the sets")
    ap.add_argument("--scores", type=Path, default=ROOT / "runs" / "ship_scores.json",
                    help="the candidate's scores, saved cell by cell (a rerun scores only what is missing)")  # fmt: skip
    ap.add_argument("--write", action="store_true", help="ship them (only if higher in every cell)")
    ap.add_argument("--note", default="", help="with --write: how the run continued the shipped weights, added to "
                    "the metadata's training as 'Then NOTE' (e.g. 'run gpu28 (--init with gpu27's weights, 40000 steps "
                    "of 64 patches 96x96, Adam 1e-4, ..., 8.6 min on one NVIDIA H200)')")  # fmt: skip
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--shipped", type=Path, default=None, help="the shipped file (default: the package's)")
    args = ap.parse_args(argv)

    from safetensors import safe_open

    from vdsr_fast.weights import default_weights_path

    shipped_path = args.shipped or default_weights_path()
    if args.write and not args.note:
        ap.error("--write needs --note (what the metadata's training is to say of the run)")
    for need in [args.candidate, shipped_path, *(args.data / s for s in SETS)]:
        if not need.exists():
            ap.error(f"{need} does not exist")
    readme_text = args.readme.read_text()
    readme = readme_table(readme_text)
    with safe_open(shipped_path, "pt") as f:
        shipped_meta = dict(f.metadata())
    with safe_open(args.candidate, "pt") as f:
        cand_meta = dict(f.metadata() or {})
    if "steps" not in cand_meta or "recipe" not in cand_meta:
        ap.error(f"{args.candidate}: no steps or recipe in its metadata (not the weights of a vdsr-fast train run)")
    shipped = json.loads(shipped_meta["psnr"])
    digest = sha256(args.candidate)
    continued = continues_shipped(cand_meta, sha256(shipped_path)) if args.write else None  # before 25 minutes of work
    table = score(args.candidate, args.data, args.scores, digest)
    ok, worse = decide(table, shipped)
    print(report(table, shipped, readme))
    print(f"\n{quality_line(table, readme)}")
    print("ship: yes (higher PSNR in every cell)" if ok else f"ship: no (not higher in {', '.join(worse)})")
    if not (ok and args.write):
        return 0 if ok else 1

    import vdsr_fast
    from vdsr_fast.images import _atomic

    today = datetime.date.today().isoformat()
    model = vdsr_fast.load(args.candidate)
    if sha256(args.candidate) != digest:
        raise SystemExit(f"ship_weights: {args.candidate} changed while it was scored; score it again")
    model.metadata = {}
    with _atomic(args.readme) as tmp:  # README renamed into place only once the weights are (a full disk: neither)
        Path(tmp).write_text(new_readme(readme_text, table, today))
        vdsr_fast.save(model, shipped_path, new_metadata(shipped_meta, cand_meta, table, readme, args.note, today,
                                                         continued))  # fmt: skip
    print(f"shipped: {shipped_path} and {args.readme}'s table. Still to write by hand: README's Weights paragraph "
          "(runs, minutes, the gap), TRAINING.md's run section and top paragraph, benchmarks/results/README.md; then "
          "`pytest tests/test_default_weights.py` (the metadata against README's table, Set5 against the file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
