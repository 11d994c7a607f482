"""What the room's own false alarms are: each background event farther than 1 s from every placed cough on a
`trainer stream` stream, with the room speaker and recording heard there and what a pretrained tagger hears in it.

The stream, the daemon (as `trainer stream` runs it: the shipped models, ``[model] verifier`` resolved as the
daemon resolves it) and the scoring are the benchmark's own; this script adds, for each such event, the room piece
under its onset (speaker, recording, second of the recording) and the tagger's ``--top`` classes on the second
from 0.25 s before the onset (YAMNet by default: its 0.975 s window). It prints a markdown table, the events by
speaker, and how often each class leads.

    python bench/room_events.py --config bench/stream-negatives.toml [any `trainer stream` flag, e.g.
        --stream-split val --stream-room-share 0.9 --model-verifier '']

A research aid, not part of the daemon.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import config  # noqa: E402
from trainer.stream import (StreamCommand, match_events, replay_daemon, room_false_alarms,  # noqa: E402
                            room_repetition)
from trainer.tagger import OnnxTagger  # noqa: E402

BEFORE_S = 0.25
"""The tagger hears from this long before the event's onset, in seconds."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="bench/stream-negatives.toml", help="as `trainer stream`")
    config.add_arguments(ap, StreamCommand)
    ap.add_argument("--tagger", type=Path, default=Path("../shared/teachers/yamnet/yamnet.onnx"),
                    help="an ONNX audio tagger with a class_map.csv beside it")
    ap.add_argument("--top", type=int, default=3, help="classes shown per event")
    args = ap.parse_args()
    cmd = config.build(StreamCommand, file=args.config, args=args)
    s = cmd.stream
    run = replay_daemon(cmd)
    stream, truth, room, events, rate = run.stream, run.truth, run.room, run.events, run.sample_rate
    background = _background_onsets(truth, events, rate)
    alarms = room_false_alarms(truth, background, room.pieces, stream.size, rate)
    tagger = OnnxTagger(args.tagger, ("cough", "other"), "cough", "Cough", rate, "--tagger")
    score_of = {e.onset: e.cough_score for e in events}
    print(f"{run.verifier}; {s.split} stream, {stream.size / rate / 60:.1f} min, {len(background)} background "
          f"events, {len(alarms)} farther than 1 s from every cough\n")
    print("| onset (s) | cough_score | speaker | recording | second of it | tagger's top classes |\n|---|---|---|---|---|---|")
    leaders: Counter = Counter()
    for onset, k in alarms:
        piece = room.pieces[k]
        lo = max(0, onset - round(BEFORE_S * rate))
        scores = tagger.class_scores(stream[lo: lo + tagger.window][None])[0]
        top = np.argsort(scores)[::-1][: args.top]
        leaders[tagger.class_names[top[0]]] += 1
        second = (piece.offset + onset - piece.start) / rate
        print(f"| {onset / rate:.2f} | {score_of[onset]:.2f} | {piece.group[:8]} | {piece.clip.label} "
              f"{Path(str(piece.clip.path)).name} | {second:.2f} | "
              + ", ".join(f"{tagger.class_names[i]} {scores[i]:.2f}" for i in top) + " |")
    print("\n" + _repetition(room, stream.size, rate, [(room.pieces[k], onset) for onset, k in alarms]))
    by_speaker = Counter(room.pieces[k].group[:8] for _, k in alarms)
    print("\nby speaker: " + ", ".join(f"{g} {n}" for g, n in by_speaker.most_common()))
    print("tagger's leading class: " + ", ".join(f"{c} {n}" for c, n in leaders.most_common()))


SAME_SPOT_S = 0.2
"""Two alarms in one recording this close, in seconds of the recording, are one spot of it heard twice."""


def _repetition(room, n_samples: int, rate: int, alarms: list) -> str:
    """How often the room repeats itself (``trainer.stream.room_repetition``), and how many distinct spots of its
    recordings the alarms come from."""
    rep = room_repetition(room.pieces, n_samples, rate)
    seconds: dict = {}
    for piece, onset in alarms:
        seconds.setdefault(str(piece.clip.path), []).append((piece.offset + onset - piece.start) / rate)
    spots = sum(1 + int(np.sum(np.diff(sorted(x)) > SAME_SPOT_S)) for x in seconds.values())
    return (f"room: {rep['recordings']} recordings, {rep['distinct_minutes']:.1f} min of distinct audio in "
            f"{n_samples / rate / 60:.1f} min of stream (each heard {rep['times_heard']:.1f} times on average); the "
            f"{len(alarms)} alarms come from {spots} distinct spots of {len(seconds)} recordings")


def _background_onsets(truth, events, rate: int) -> list[int]:
    """Onsets of the events in no placed sound's span."""
    hits = match_events(truth, [e.onset for e in events], rate)
    matched = {i for h in hits for i in h}
    return [e.onset for i, e in enumerate(events) if i not in matched]


if __name__ == "__main__":
    main()
