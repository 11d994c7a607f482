"""Build a test stream from real recordings: covid19-cough coughs (CC0) placed at known times into
Coswara speech and breathing (CC BY 4.0, Sharma et al., Interspeech 2020). Writes FLAC + truth CSV.

    python bench/make_stream.py --minutes 10 --out /tmp/stream.flac
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SR = 16000
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def load(path: Path) -> np.ndarray | None:
    """Mono float32 at 16 kHz, or None for an unreadable or silent file."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except sf.LibsndfileError:
        return None
    audio = audio.mean(axis=1)
    audio = soxr.resample(audio, rate, SR) if rate != SR else audio
    return audio if audio.size > SR // 2 and np.abs(audio).max() > 1e-3 else None


def held_out(splits_csv: Path) -> tuple[set[str], set[str]]:
    """Groups (participants) and file paths in a run's test split: audio its model never trained on."""
    rows = [r for r in csv.DictReader(open(splits_csv)) if r["split"] == "test"]
    return {r["group"] for r in rows}, {str(Path(r["path"]).resolve()) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--gap-s", type=float, default=6.0, help="mean seconds between coughs")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", type=Path, default=Path(__file__).resolve().parent.parent / "models" /
                    "cough-detector" / "splits.csv", help="take coughs and background only from this run's test split")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    cough_rows = [r for r in csv.DictReader(open(args.data / "covid19-cough/manifest.csv"))
                  if 0.4 <= float(r["duration_s"]) <= 3.0]
    bg_rows = [r for r in csv.DictReader(open(args.data / "coswara-20200413/manifest.csv"))
               if r["label"] in ("breathing", "counting", "vowel")]
    if args.splits.is_file():
        groups, paths = held_out(args.splits)
        bg_rows = [r for r in bg_rows if r["participant"] in groups]
        cough_rows = [r for r in cough_rows if str((args.data / "covid19-cough" / r["path"]).resolve()) in paths]
    if not cough_rows or not bg_rows:
        raise SystemExit(f"no held-out coughs or background in {args.splits}")
    n = int(args.minutes * 60 * SR)
    stream = np.zeros(n, dtype=np.float32)
    pos = 0  # background: Coswara recordings back to back, scaled to a quiet room level
    while pos < n:
        bg = load(args.data / "coswara-20200413" / rng.choice(bg_rows)["path"])
        if bg is None:
            continue
        bg = bg / (np.sqrt(np.mean(bg**2)) + 1e-9) * 0.01
        take = min(bg.size, n - pos)
        stream[pos: pos + take] += bg[:take]
        pos += take
    stream += rng.standard_normal(n).astype(np.float32) * 0.0005
    truth = []
    t = args.gap_s / 2
    while True:
        row = cough_rows[int(rng.integers(len(cough_rows)))]
        cough = load(args.data / "covid19-cough" / row["path"])
        if cough is None:
            continue
        energy = np.convolve(cough**2, np.ones(160) / 160, mode="same")
        loud = np.flatnonzero(energy > energy.max() * 10 ** (-20 / 10))
        cough = cough[max(0, loud[0] - 160): loud[-1] + 1600]
        start = int(t * SR)
        if start + cough.size >= n:
            break
        cough = cough / (np.abs(cough).max() + 1e-9) * rng.uniform(0.3, 0.8)
        stream[start: start + cough.size] += cough
        onset = start + 160 if loud[0] >= 160 else start + loud[0]
        truth.append({"onset_s": onset / SR, "duration_s": cough.size / SR, "source_file": row["path"],
                      "label": row["label"]})
        t += cough.size / SR + rng.uniform(0.6, 1.4) * args.gap_s
    sf.write(str(args.out), np.clip(stream, -1, 1), SR, subtype="PCM_16")
    with open(args.out.with_suffix(".truth.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(truth[0]))
        w.writeheader()
        w.writerows(truth)
    print(f"{args.out}: {args.minutes} min, {len(truth)} coughs")


if __name__ == "__main__":
    main()
