"""Detection quality and speed of `edge run --fast` on a stream with coughs at known times.

    python bench/make_stream.py --minutes 60 --out /tmp/hour.flac
    python bench/edge_stream.py /tmp/hour.flac

Prints cough-event recall and precision (an event matches a true cough when its onset is within
--tolerance-s), onset-time error, the daemon's real-time factor on one core, and its peak RSS.
"""
from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def match(truth: list[float], found: list[float], tolerance: float) -> list[tuple[float, float]]:
    """Greedy one-to-one matching of onsets in time order."""
    pairs, used = [], set()
    for t in truth:
        best = min((j for j in range(len(found)) if j not in used), key=lambda j: abs(found[j] - t), default=None)
        if best is not None and abs(found[best] - t) <= tolerance:
            used.add(best)
            pairs.append((t, found[best]))
    return pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stream", type=Path)
    ap.add_argument("--tolerance-s", type=float, default=0.3)
    ap.add_argument("edge_args", nargs="*", help="extra arguments for `edge run` (after --)")
    args = ap.parse_args()
    truth = [float(r["onset_s"]) for r in csv.DictReader(open(args.stream.with_suffix(".truth.csv")))]
    duration = sf.info(str(args.stream)).duration
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "edge", "run", "--source", str(args.stream), "--fast",
           "--device-id", "bench", *args.edge_args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    found = [e["onset_sample"] / e["sample_rate"] for e in events]
    pairs = match(truth, found, args.tolerance_s)
    err_ms = np.array([abs(f - t) for t, f in pairs]) * 1000
    print(f"stream: {args.stream.name}, {duration / 60:.1f} min, {len(truth)} true coughs")
    print(f"events: {len(events)}; matched {len(pairs)} (tolerance {args.tolerance_s * 1000:.0f} ms)")
    print(f"recall    {len(pairs) / len(truth):.3f}")
    print(f"precision {len(pairs) / max(1, len(events)):.3f}")
    if len(pairs):
        print(f"onset error: median {np.median(err_ms):.1f} ms, p95 {np.percentile(err_ms, 95):.1f} ms, "
              f"max {err_ms.max():.1f} ms")
    print(f"real-time factor (one core, wall, model loading included): {wall / duration:.5f}")
    print(f"peak RSS: {rss_mb:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
