"""How clean are a probe run's window labels? Every onset window of a cough recording is labelled a cough; this asks
the pretrained tagger which of the validation split's cough windows it hears as a cough, and where the run's probe
errs.

    python bench/window_labels.py runs/probe-c [--tagger ../shared/teachers/yamnet/yamnet.onnx]

The run is a `trainer distill --teacher onnx:PATH --teacher-head probe` folder (its `settings.json`, its cached
`probe_embeddings_*.pt` and its `teacher/`). The windows are rebuilt from the run's settings, as `trainer evaluate`
does. Prints, for the wideband and the telephone windows apart, the probe's ROC-AUC on the validation windows and,
among the cough windows, how many the tagger's own ``Cough`` score hears as a cough and how the probe scores them.
With ``--refit-out DIR`` it also refits the probe without the wideband training cough windows whose ``Cough``
score is below ``--min-cough`` (the telephone ones are kept: the tagger hears little there), on the run's cached
embeddings, and saves that teacher in DIR for `trainer export-verifier DIR --out VERIFIER`.

A research aid, not part of the daemon.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import config  # noqa: E402
from trainer.distill import prepare_data  # noqa: E402
from trainer.settings import Settings  # noqa: E402
from trainer.tagger import OnnxTagger  # noqa: E402

BANDS = ((0.0, 0.05), (0.05, 0.3), (0.3, 1.01))
"""Ranges of the tagger's ``Cough`` score the cough windows are counted in."""


def probe_scores(run: Path, windows: np.ndarray, column: int) -> np.ndarray:
    """The run's probe teacher's probability of the label in ``column`` on each window."""
    import torch

    from trainer.models import load_checkpoint

    teacher = load_checkpoint(run / "teacher")
    with torch.no_grad():
        probs = torch.softmax(teacher(torch.from_numpy(windows)), -1).numpy()
    return probs[:, column]


def report(name: str, positive: np.ndarray, probe: np.ndarray, heard: np.ndarray) -> None:
    from sklearn.metrics import roc_auc_score

    print(f"\n{name}: {positive.size} windows, {positive.sum()} of them cough windows; the probe's ROC-AUC "
          f"{roc_auc_score(positive, probe):.3f}")
    print("| tagger's Cough score | cough windows | the probe's mean | the probe below 0.5 |\n|---|---|---|---|")
    for lo, hi in BANDS:
        sel = positive & (heard >= lo) & (heard < hi)
        if sel.any():
            print(f"| {lo:g} to {min(hi, 1):g} | {sel.sum()} | {probe[sel].mean():.3f} | {(probe[sel] < 0.5).mean():.2f} |")
    print(f"Non-cough windows the tagger hears as a cough (0.3 or more): {(~positive & (heard >= 0.3)).sum()}")


def refit_without(run: Path, rd, tagger: OnnxTagger, min_cough: float, out: Path) -> None:
    """The run's probe refitted without the wideband training cough windows the tagger scores below ``min_cough``."""
    import torch

    from trainer.models import load_checkpoint, save_checkpoint

    teacher = load_checkpoint(run / "teacher")
    for split in ("train", "val"):
        cached = torch.load(run / f"probe_embeddings_{split}.pt", weights_only=False)
        teacher.remember(cached["keys"], cached["embeddings"].numpy())
    train, val, column = rd.train, rd.sets["val"], list(rd.labels).index(rd.positive)
    asked = np.where((train.targets == column) & ~train.phone)[0]
    drop = asked[tagger.positive_scores(train.windows[asked]) < min_cough]
    keep = np.ones(train.targets.size, dtype=bool)
    keep[drop] = False
    scores = teacher.fit(train.windows[keep], train.targets[keep], val.windows, val.targets)
    save_checkpoint(teacher, out)
    print(f"\nrefitted without {drop.size} of the {asked.size} wideband training cough windows (Cough below "
          f"{min_cough:g}); validation ROC-AUC by C: " + ", ".join(f"{c:g} {v:.4f}" for c, v in scores.items())
          + f"; saved in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a probe run's folder")
    ap.add_argument("--tagger", type=Path, default=Path("../shared/teachers/yamnet/yamnet.onnx"),
                    help="an ONNX tagger with a class_map.csv beside it")
    ap.add_argument("--refit-out", type=Path, default=None, help="refit the probe without the windows below "
                    "--min-cough and save that teacher here")
    ap.add_argument("--min-cough", type=float, default=0.05, help="the tagger's Cough score below which a wideband "
                    "training cough window is left out of the refit")
    args = ap.parse_args()
    s = config.build(Settings, file=args.run / "settings.json")
    rd = prepare_data(s, args.run, progress=False, write=False)
    val = rd.sets["val"]
    column = list(rd.labels).index(rd.positive)
    positive = val.targets == column
    tagger = OnnxTagger(args.tagger, ("cough", "other"), "cough", "Cough", s.data.sample_rate, "--tagger")
    probe, heard = probe_scores(args.run, val.windows, column), tagger.positive_scores(val.windows)
    for name, m in (("wideband validation windows", ~val.phone), ("telephone validation windows", val.phone)):
        report(name, positive[m], probe[m], heard[m])
    if args.refit_out:
        refit_without(args.run, rd, tagger, args.min_cough, args.refit_out)


if __name__ == "__main__":
    main()
