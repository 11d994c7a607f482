"""Detection quality and speed of `edge run --fast` on a stream with coughs at known times.

    python bench/make_stream.py --minutes 60 --out /tmp/hour.flac
    python bench/edge_stream.py /tmp/hour.flac

A placed cough recording often holds several coughs that are not annotated one by one, so:
recall = share of placed recordings with an event whose onset lies in [onset - tolerance, end];
precision = share of events whose onset lies inside some placed recording's span;
onset error = |first such event - the recording's onset|. Also the daemon's real-time factor on one
core (wall time, model loading included) and its peak RSS.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stream", type=Path)
    ap.add_argument("--tolerance-s", type=float, default=0.3)
    ap.add_argument("edge_args", nargs="*", help="extra arguments for `edge run` (after --)")
    args = ap.parse_args()
    truth = [(float(r["onset_s"]), float(r["duration_s"])) for r in csv.DictReader(open(args.stream.with_suffix(".truth.csv")))]
    duration = sf.info(str(args.stream)).duration
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "edge", "run", "--source", str(args.stream), "--fast",
           "--device-id", "bench", *args.edge_args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    found = sorted(e["onset_sample"] / e["sample_rate"] for e in events)
    tol = args.tolerance_s
    spans = [(onset - tol, onset + dur) for onset, dur in truth]
    hits = [[f for f in found if lo <= f <= hi] for lo, hi in spans]
    detected = [(onset, h[0]) for (onset, _), h in zip(truth, hits) if h]
    inside = sum(any(lo <= f <= hi for lo, hi in spans) for f in found)
    err_ms = np.array([abs(f - t) for t, f in detected]) * 1000
    print(f"stream: {args.stream.name}, {duration / 60:.1f} min, {len(truth)} placed cough recordings")
    print(f"events: {len(events)}, of which {inside} inside a cough recording")
    print(f"recall    {len(detected) / len(truth):.3f}")
    print(f"precision {inside / max(1, len(events)):.3f}")
    if detected:
        print(f"onset error: median {np.median(err_ms):.1f} ms, p95 {np.percentile(err_ms, 95):.1f} ms, "
              f"max {err_ms.max():.1f} ms")
    print(f"real-time factor (one core, wall, model loading included): {wall / duration:.5f}")
    print(f"peak RSS: {rss_mb:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
