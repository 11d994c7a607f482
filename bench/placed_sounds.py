"""What the daemon does with each placed non-cough sound of some classes (the vocal sounds by default), and what a
pretrained tagger says each recording is: to check the classes the file names gave, and to see which ones fire.

The stream, the daemon (as `trainer stream` runs it: the shipped models, ``[model] verifier`` resolved as the
daemon resolves it) and the scoring are the benchmark's own. For each placed sound whose class is one of
``--classes`` the script prints its levels over the room, those where the daemon raised an event on it and its
highest cough score there, and the
tagger's ``--top`` classes on the clean recording (each class's highest score over the tagger's positions,
``OnnxTagger.class_scores``), with its ``Cough`` and ``Laughter`` scores; one row per recording, however many times it was
placed (``--stream-unseen-repeats``). Then, by class, how many placements and recordings raised an event, and by
level.

    python bench/placed_sounds.py --config bench/stream-vocal.toml [any `trainer stream` flag, e.g.
        --stream-split val --model-verifier '' --classes laugh]

A research aid, not part of the daemon.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import config  # noqa: E402
from trainer.data import decode  # noqa: E402
from trainer.negatives import VOCAL_HINTS  # noqa: E402
from trainer.stream import StreamCommand, match_events, replay_daemon  # noqa: E402
from trainer.tagger import OnnxTagger  # noqa: E402

NAMED = ("Cough", "Laughter")
"""Tagger classes whose scores are always shown."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="bench/stream-vocal.toml", help="as `trainer stream`")
    config.add_arguments(ap, StreamCommand)
    ap.add_argument("--classes", default=",".join(VOCAL_HINTS), help="placed sounds of these classes, comma-separated")
    ap.add_argument("--tagger", type=Path, default=Path("../shared/teachers/yamnet/yamnet.onnx"),
                    help="an ONNX audio tagger with a class_map.csv beside it")
    ap.add_argument("--top", type=int, default=3, help="tagger classes shown per sound")
    args = ap.parse_args()
    cmd = config.build(StreamCommand, file=args.config, args=args)
    classes = {c for c in args.classes.split(",") if c}
    run = replay_daemon(cmd)
    truth, events, rate = run.truth, run.events, run.sample_rate
    tagger = OnnxTagger(args.tagger, ("cough", "other"), "cough", "Cough", rate, "--tagger")
    named = [tagger.class_names.index(n) for n in NAMED]
    hits = match_events(truth, [e.onset for e in events], rate)
    placed = [(p, h) for p, h in zip(truth, hits) if p.kind == "sound" and p.cls in classes]
    print(f"{run.verifier}; {cmd.stream.split} stream, {len(events)} events, {len(placed)} placed sounds of "
          f"{', '.join(sorted(classes))}\n")
    print("| class | recording | length (s) | levels placed (dB) | levels with an event | highest cough score | "
          "tagger's top classes | " + " | ".join(NAMED) + " |\n|---|---|---|---|---|---|---|" + "---|" * len(NAMED))
    by_path: dict[str, list] = defaultdict(list)
    for p, h in placed:
        by_path[p.path].append((p, h))
    fired, heard = Counter(), Counter()
    for path, ph in sorted(by_path.items(), key=lambda kv: (kv[1][0][0].cls, kv[0])):
        p = ph[0][0]
        scores = tagger.class_scores(decode(Path(path), rate)[None])[0]
        top = np.argsort(scores)[::-1][: args.top]
        hit_levels = sorted(q.level_db for q, h in ph if h)
        best = max((events[i].cough_score for _, h in ph for i in h), default=None)
        fired[p.cls] += len(hit_levels)
        heard[p.cls] += bool(hit_levels)
        print(f"| {p.cls} | {_name(path)} | {(p.end - p.onset) / rate:.2f} | "
              + ", ".join(f"{q.level_db:g}" for q, _ in sorted(ph, key=lambda x: x[0].level_db)) + " | "
              + (", ".join(f"{x:g}" for x in hit_levels) or "none") + f" | {'' if best is None else f'{best:.2f}'} | "
              + ", ".join(f"{tagger.class_names[i]} {scores[i]:.2f}" for i in top) + " | "
              + " | ".join(f"{scores[i]:.2f}" for i in named) + " |")
    placements = Counter(p.cls for p, _ in placed)
    recordings = Counter(ph[0][0].cls for ph in by_path.values())
    print("\nplacements with an event, by class: "
          + ", ".join(f"{c} {fired[c]} of {n}" for c, n in sorted(placements.items()))
          + f"; all {sum(fired.values())} of {len(placed)}")
    print("recordings with an event at any level, by class: "
          + ", ".join(f"{c} {heard[c]} of {n}" for c, n in sorted(recordings.items()))
          + f"; all {sum(heard.values())} of {len(by_path)}")
    print("placements with an event, by level: " + ", ".join(
        f"{lvl:g} dB {sum(bool(h) for p, h in placed if p.level_db == lvl)} of "
        f"{sum(p.level_db == lvl for p, _ in placed)}" for lvl in sorted({p.level_db for p, _ in placed})))


def _name(path: str) -> str:
    """``<package>/<file>`` for a `trainer negatives` clip, the file's name otherwise."""
    parts = Path(path).parts
    package = parts[parts.index("audio") + 1] if "audio" in parts[:-1] else ""
    return f"{package}/{Path(path).name}" if package else Path(path).name


if __name__ == "__main__":
    main()
