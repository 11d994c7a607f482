"""What a cough counted twice is: each placed cough with two or more events on a `trainer stream` stream, with where
its events lie, how loud each one's start is and how far the band energy fell between them.

The stream, the daemon (as `trainer stream` runs it: the shipped models, ``[model] verifier`` resolved as the
daemon resolves it) and the scoring are the benchmark's own. For each such cough the script prints the events'
onsets from the placed cough's onset and their cough scores; the band peak (the onset detector's 16 ms frames) of
each event's first ``OWN_S``, in dB from the first event's; the lowest ``PAUSE_S`` running mean of the band energy
between the first two events, in dB from the first event's peak; the placed event's length and its explosive
bursts (``trainer.stream.explosive_bursts``, where they start). A second event about as loud as the first after a
deep pause is another cough; one well below it with no pause is a cough's later phase.

    python bench/double_events.py --config bench/stream-broad.toml [any `trainer stream` flag, e.g.
        --stream-split val --stream-channel wideband]

A research aid, not part of the daemon.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import config  # noqa: E402
from edge.onset import OnsetDetector  # noqa: E402
from trainer.stream import StreamCommand, match_events, replay_daemon  # noqa: E402

OWN_S = 0.16
"""An event's own start: its band peak is taken over this many seconds from its onset."""
PAUSE_S = 0.1
"""The pause between two events is the lowest running mean of the band energy over this many seconds."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="bench/stream-broad.toml", help="as `trainer stream`")
    config.add_arguments(ap, StreamCommand)
    args = ap.parse_args()
    cmd = config.build(StreamCommand, file=args.config, args=args)
    run = replay_daemon(cmd)
    stream, truth, events, rate = run.stream, run.truth, run.events, run.sample_rate
    levels, frame = _band_levels(stream, rate, cmd.onset)
    hits = match_events(truth, [e.onset for e in events], rate)
    detected = [h for p, h in zip(truth, hits) if p.kind == "cough" and h]
    doubles = [(p, h) for p, h in zip(truth, hits) if p.kind == "cough" and len(h) > 1]
    print(f"{run.verifier}; {cmd.stream.split} stream, {len(events)} events, {len(detected)} coughs detected, "
          f"{sum(map(len, detected))} events on them, {len(doubles)} with two or more\n")
    print("| recording | level (dB) | length (s) | bursts at (s) | events at (s), cough score | own band peak (dB) "
          "| pause between the first two (dB) |\n|---|---|---|---|---|---|---|")
    for p, h in doubles:
        at = [events[i].onset for i in h]
        own = [levels[a // frame: a // frame + max(1, round(OWN_S * rate / frame))].max() for a in at]
        print(f"| {Path(p.path).name[:24]} | {p.level_db:g} | {(p.end - p.onset) / rate:.2f} | "
              + ", ".join(f"{b / rate:.2f}" for b in p.bursts) + " | "
              + ", ".join(f"{(a - p.onset) / rate:+.2f} ({events[i].cough_score:.2f})" for a, i in zip(at, h)) + " | "
              + ", ".join(f"{x - own[0]:+.1f}" for x in own) + f" | {_pause(levels, at, frame, rate) - own[0]:+.1f} |")


def _band_levels(stream: np.ndarray, rate: int, onset) -> tuple[np.ndarray, int]:
    """The onset detector's band level of every frame of ``stream``, in dBFS, and its frame length in samples."""
    detector = OnsetDetector(rate, onset)
    detector.remember(stream.size + rate)
    detector(stream)
    return np.asarray(detector._levels), detector.frame_samples


def _pause(levels: np.ndarray, at: list[int], frame: int, rate: int) -> float:
    """The lowest ``PAUSE_S`` running mean of the band level between the first two onsets of ``at``, in dBFS."""
    span = levels[at[0] // frame: at[1] // frame + 1]
    k = max(1, round(PAUSE_S * rate / frame))
    return float(np.convolve(span, np.ones(k) / k, "valid").min()) if span.size >= k else float(span.min())


if __name__ == "__main__":
    main()
