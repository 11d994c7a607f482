"""`trainer`: distill, evaluate, export, benchmark. The composition root: parse, validate, wire, run."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from edge import config, logs

from . import negatives

from .settings import SHORTCUTS, Settings, add_arguments, from_args
from .stream import StreamCommand


def run_stream_command(args: argparse.Namespace, argv: list[str]) -> None:
    """`trainer stream`: the benchmark, or on the same stream a threshold sweep or a comparison of two detectors;
    with ``--out DIR``, each writes its files into that folder (``stream.*``, ``threshold-sweep.*``, ``compare.json``)."""
    from . import stream

    cmd = config.build(StreamCommand, file=args.config, args=args)
    m, command, out = cmd.model, "trainer " + shlex.join(argv), args.out
    if out is not None and ((out.exists() and not out.is_dir()) or out.suffix in (".json", ".md", ".png")):
        raise ValueError(f"--out {out} names a file; trainer stream --out names a folder (as every --out does)")
    if args.choose_detector_threshold:
        chosen = stream.choose_detector_threshold(cmd.stream, Path(m.detector), Path(m.classifier), cmd.onset,
                                                  m.verifier)
        _report({**chosen, "command": command}, chosen["chosen"], out and out / "threshold-sweep.json")
        if out:
            stream.plot_sweep(chosen, out / "threshold-sweep.png")
    elif args.compare_detector or args.compare_views:
        result = stream.compare_detectors(cmd.stream, Path(m.detector), args.compare_detector or Path(m.detector),
                                          Path(m.classifier), cmd.onset, views_b=args.compare_views)
        _report({**result, "command": command}, {k: v for k, v in result.items() if k.startswith("sensitivity")
                                                  or k == "difference"}, out and out / "compare.json")
    else:
        result = stream.run_stream(cmd.stream, Path(m.detector), Path(m.classifier), audio_out=args.audio,
                                   detector_threshold=None if m.detector_threshold == -1.0 else m.detector_threshold,
                                   onset=cmd.onset, verifier=m.verifier)
        result["command"] = command
        print("\n".join(stream.markdown(result)))
        if out:
            stream.write_result(out, result)


def _report(result: dict, shown: dict, path: Path | None) -> None:
    print(json.dumps(shown, indent=2))
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


EVALUATE_KEYS = [*(f"data.{k}" for k in ("manifest", "label_map", "positive_label", "group_by", "pad", "background",
                                         "background_labels", "level_min_db", "level_max_db", "room_windows",
                                         "context_before_s", "val_fraction", "test_fraction", "split_seed",
                                         "synthetic_per_kind")),
                 "onset", "run.seed", "run.bootstrap"]
"""The settings of `trainer distill` that `trainer evaluate` reads (a run's settings.json gives them all)."""
EXPORT_KEYS = ["data.manifest", "data.label_map", "teacher.source", "run.seed", "run.quantize"]
"""... and those `trainer export` reads (its calibration audio, the teacher it names)."""


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint folder or ONNX file on the data settings of a run",
                       description="Score a model on every onset window of the recordings of --split, heard as "
                                   "`trainer distill` hears them; --config RUN/settings.json re-scores it on the "
                                   "manifests, label map, split and rooms of the run that trained it.")
    p.add_argument("model", type=Path)
    p.add_argument("--config", type=Path, help="TOML file with [data] and [run], or a run folder's settings.json")
    config.add_arguments(p, Settings, SHORTCUTS, only=EVALUATE_KEYS)
    p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                   help="which recordings, split by the run's stable rule (default all)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the ONNX file's, "
                                                                  "else 0.5)")
    p.add_argument("--out", type=Path, default=None, help="folder to write evaluate.json into")


def add_export(sub) -> None:
    p = sub.add_parser("export", help="re-export a run's checkpoint to contract-conforming ONNX files")
    p.add_argument("checkpoint", type=Path, help="a run's student/ (or teacher/) folder")
    p.add_argument("--config", type=Path, default=None,
                   help="TOML file or a run's settings.json (default: the checkpoint's run's settings.json)")
    config.add_arguments(p, Settings, SHORTCUTS, only=EXPORT_KEYS)
    p.add_argument("--threshold", type=float, default=None, help="default: from the run's report.json")
    p.add_argument("--out", type=Path, required=True, help="folder to write student.onnx (and student.int8.onnx) into")


def add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="size, MACs and single-thread latency: student vs teacher vs wav2vec2-base")
    p.add_argument("--run", type=Path, required=True, help="run folder (student/, teacher/, student*.onnx)")
    p.add_argument("--repeats", type=int, default=50, help="timed runs per model (median reported)")
    p.add_argument("--skip-base", action="store_true", help="skip the wav2vec2-base-sized references")


def add_stream(sub) -> None:
    p = sub.add_parser("stream", help="the daemon's pipeline on a held-out stream with sounds at known levels",
                       description="Build a stream from one split of the manifests (coughs and other sounds at known "
                                   "times and levels in a room of held-out recordings), run edge's Pipeline on it "
                                   "in-process with the given models, and score the events it publishes.")
    p.add_argument("--config", type=Path, help="TOML file with [stream] and [model]")
    config.add_arguments(p, StreamCommand)
    p.add_argument("--out", type=Path, default=None,
                   help="folder to write into: stream.json, .md and .png (a run folder's report.md and MODEL_CARD.md "
                        "then lead with them), threshold-sweep.json and .png, or compare.json")
    p.add_argument("--audio", type=Path, default=None, help="also write the stream as FLAC, truth as <audio>.truth.csv")
    p.add_argument("--compare-detector", type=Path, default=None, metavar="ONNX",
                   help="compare --model-detector (a) with this detector (b) on the stream: ROC-AUC of coughs against "
                        "background sounds and sensitivity at --stream-max-false-per-hour, a - b, paired bootstrap")
    p.add_argument("--compare-views", type=int, default=None, metavar="N",
                   help="the same comparison with (b) scoring each sound with N views (--onset-views; b is "
                        "--model-detector itself unless --compare-detector names another)")
    p.add_argument("--choose-detector-threshold", action="store_true",
                   help="on a validation stream (--stream-split val): sweep the detector's threshold, write the most "
                        "sensitive one within --stream-max-false-per-hour into the detector file")


def add_export_verifier(sub) -> None:
    p = sub.add_parser("export-verifier", help="a probe teacher as the daemon's verifier (--model-verifier)",
                       description="Write an edge verifier folder from a probe teacher (trainer distill --teacher "
                                   "onnx:PATH --teacher-head probe): the tagger's ONNX file, verifier.json (its probe "
                                   "head, the mix and the threshold of the mixed score), TAGGER.md. Choose the "
                                   "threshold afterwards on a validation stream: trainer stream --stream-split val "
                                   "--choose-detector-threshold --model-verifier DIR.")
    p.add_argument("checkpoint", type=Path, help="a run's teacher/ folder holding a probe teacher")
    p.add_argument("--out", type=Path, required=True, help="the verifier folder to write")
    p.add_argument("--mix", type=float, default=0.3,
                   help="weight of the probe's probability against the detector's score, in (0, 1] (default 0.3)")
    p.add_argument("--threshold", type=float, default=0.5, help="threshold of the mixed score (default 0.5)")


def add_negatives(sub) -> None:
    p = sub.add_parser("negatives", help="build a manifest of non-cough sounds from Debian packages",
                       description="Download Debian packages that ship recorded sound (apt-get download, dpkg -x), "
                                   "take each audio file's licence from the package's copyright file, and write "
                                   "16 kHz mono FLAC, manifest.csv (label 'other') and SOURCES.md to --out. Files "
                                   "whose name suggests a cough are left out.")
    p.add_argument("--out", type=Path, required=True, help="folder for audio/, manifest.csv and SOURCES.md")
    p.add_argument("--packages", default=",".join(negatives.DEFAULT_PACKAGES), help="comma-separated Debian packages")
    p.add_argument("--workdir", type=Path, default=None, help="where the .deb files are downloaded and extracted "
                                                               "(default: <out>-debs; a .deb already there is reused)")
    p.add_argument("--allow-unknown-licence", action="store_true",
                   help="keep files whose licence the copyright file does not tell (default: excluded)")
    p.add_argument("--max-clips-per-package", type=int, default=negatives.MAX_CLIPS,
                   help="at most this many clips per package, drawn by --seed one group (speaker, set) at a time")
    p.add_argument("--seed", type=int, default=0, help="seed of that draw")
    p.add_argument("--only-hints", default="",
                   help="keep only files with these sound hints, comma-separated (e.g. "
                        f"{','.join(negatives.VOCAL_HINTS)}: the vocal sounds that are not coughs); default: all")


def add_mine(sub) -> None:
    from .mine import MineCommand

    p = sub.add_parser("mine", help="the daemon's false alarms on a training-split stream, as hard negatives",
                       description="Build the benchmark's stream from the TRAINING split of the --stream-* manifests "
                                   "(whatever --stream-split says), run edge's Pipeline on it with the --model-* "
                                   "files, and write each event farther than 1 s from every placed cough (the room's "
                                   "own false alarms, and those on placed non-cough sounds; each spot once, those a "
                                   "tagger calls a cough left out) as a recording: OUT/audio/, OUT/manifest.csv "
                                   "(label --mine-label), mined.json and MINED.md. Append the manifest to trainer "
                                   "distill --data.")
    p.add_argument("--config", type=Path, help="TOML file with [stream], [model], [onset] and [mine]")
    config.add_arguments(p, MineCommand)
    p.add_argument("--out", type=Path, required=True, help="folder to write audio/, manifest.csv, mined.json and "
                                                           "MINED.md into")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description="Distil a wav2vec2 teacher into a tiny ONNX student.")
    logs.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("distill", help="fine-tune a teacher, distil a student, evaluate, export, report")
    add_arguments(p)
    for add in (add_evaluate, add_export, add_export_verifier, add_benchmark, add_stream, add_negatives, add_mine):
        add(sub)
    return parser


def run_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_file

    s = config.build(Settings, file=args.config, args=args).validate()
    text = json.dumps(evaluate_file(args.model, s, split=args.split, threshold=args.threshold), indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "evaluate.json").write_text(text)


def run_export(args: argparse.Namespace) -> None:
    from .export import reexport

    run_settings = args.checkpoint.parent / "settings.json"
    file = args.config or (run_settings if run_settings.is_file() else None)
    for path in reexport(args.checkpoint, args.out, config.build(Settings, file=file, args=args),
                         threshold=args.threshold):
        print(path)


def run_command(args: argparse.Namespace, argv: list[str]) -> None:
    if args.command == "distill":
        from .distill import run_distill

        run_distill(from_args(args), argv[1:])
    elif args.command == "evaluate":
        run_evaluate(args)
    elif args.command == "export":
        run_export(args)
    elif args.command == "export-verifier":
        from .export import export_verifier

        print(export_verifier(args.checkpoint, args.out, mix=args.mix, threshold=args.threshold))
    elif args.command == "stream":
        run_stream_command(args, argv)
    elif args.command == "benchmark":
        from .benchmark import run_benchmark

        run_benchmark(args.run, repeats=args.repeats, include_base=not args.skip_base)
    elif args.command == "mine":
        from .mine import MineCommand, run_mine

        cmd = config.build(MineCommand, file=args.config, args=args)
        summary = run_mine(cmd, args.out, command="trainer " + shlex.join(argv))
        print((args.out / "MINED.md").read_text())
        print({k: summary[k] for k in ("false_alarms", "distinct_spots", "suspect_coughs", "kept")})
    elif args.command == "negatives":
        negatives.run(args.out, [p.strip() for p in args.packages.split(",") if p.strip()], args.workdir,
                      allow_unknown_licence=args.allow_unknown_licence, max_clips=args.max_clips_per_package,
                      seed=args.seed, hints=tuple(h.strip() for h in args.only_hints.split(",") if h.strip()),
                      command="trainer " + shlex.join(argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        run_command(args, argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"trainer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
