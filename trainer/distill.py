"""`trainer distill`: data -> scenes and windows -> teacher -> cached teacher outputs -> student -> evaluation
-> ONNX (scored at the threshold each file carries) -> report.

Every window, for training, selection and test, is cut by the daemon's rule (``edge.windows``) at an onset
the daemon's detector reports for the recording heard in its scene (``trainer.context``).
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .augment import AugmentSettings
from .baselines import run_baselines
from .context import ContextSettings, SceneMaker
from .metrics import choose_threshold, distillation_loss, evaluate, paired_auc_difference
from .export import contract_metadata, export_onnx, quantize_int8, run_onnx, set_threshold
from .models import build_cnn_student, build_teacher, build_w2v_small, count_parameters, save_checkpoint
from .report import write_model_card, write_report
from .settings import Settings
from .tagger import check_labels as tagger_check
from .tagger import EMBEDDING, label_checker
from .train import (CropDataset, Schedule, Selection, WindowSet, balanced_loader, cached_outputs, ce_step,
                    evaluation_windows, fit, make_kd_step, predict_logits, softmax, tagger_cache, teacher_cache,
                    training_windows, weights_digest)

log = logging.getLogger(__name__)


@dataclass
class RunData:
    labels: tuple[str, ...]
    positive: str
    parts: dict[str, list[D.Clip]]
    """Recordings per split."""
    sets: dict[str, WindowSet]
    """Evaluation windows per split (one scene per recording)."""
    train: WindowSet
    """Training windows (``crops_per_clip`` scenes per recording)."""
    window: int
    pre_roll: int

    @property
    def pos(self) -> int:
        return self.labels.index(self.positive)

    def groups(self, split: str, column: str) -> list[str] | None:
        """The ``column`` value of each window's recording (for per-group metrics)."""
        if not column:
            return None
        clips = self.parts[split]
        return [clips[i].column(column) for i in self.sets[split].clip]


def context_settings(s: Settings) -> ContextSettings:
    d = s.data
    return ContextSettings(mode=d.pad, sample_rate=d.sample_rate, level_min_db=d.level_min_db,
                           level_max_db=d.level_max_db, before_s=d.context_before_s, onset=s.onset)


def background_pools(s: Settings, parts: dict[str, list[D.Clip]], positive: str, progress: bool) -> dict:
    """Room audio per split: the background manifests split by the same stable rule, or this run's negatives."""
    if not s.data.background:
        return {k: [c for c in v if c.label != positive] for k, v in parts.items()}
    wanted = {x for x in s.data.background_labels.split(",") if x}
    clips = [c for c in D.load_manifests(s.data.background) if not wanted or c.label in wanted]
    if not clips:
        raise D.ManifestError(f"data.background = {s.data.background!r} has no rows with labels {sorted(wanted)}")
    clips = D.load_audio(clips, s.data.sample_rate, min_samples=s.data.sample_rate // 2, progress=progress)
    pools: dict[str, list[D.Clip]] = {"train": [], "val": [], "test": []}
    for c in clips:
        pools[D.split_of(c.group or c.sha256, val=s.data.val_fraction, test=s.data.test_fraction,
                         seed=s.data.split_seed)].append(c)
    return pools


def prepare_data(s: Settings, out: Path, progress: bool, write: bool) -> RunData:
    sr = s.data.sample_rate
    window, pre_roll = round(s.data.window_s * sr), round(s.data.pre_roll_s * sr)
    clips = D.load_manifests(s.data.manifest, s.data.label_map)
    all_labels = sorted({c.label for c in clips})
    positive = s.data.positive_label or ("positive" if "positive" in all_labels else "")
    if not positive:
        raise ValueError(f"data.positive_label is required: the manifest's labels are {all_labels}")
    labels = D.relabel(clips, positive)
    checker = label_checker(s.data.label_check, s.data.label_check_classes, positive, sr) \
        if s.data.label_check else None
    clips = D.load_audio(clips, sr, min_samples=sr // 10, progress=progress)
    if checker is not None:
        clips = check_labels(s, checker, clips, positive, out, progress, write)
    parts = D.split(clips, val=s.data.val_fraction, test=s.data.test_fraction, seed=s.data.split_seed)
    log.info("splits: %s", D.describe(parts))
    if write:
        with (out / "splits.csv").open("w") as fh:
            fh.write("split,path,label,group,sha256\n")
            for name, part in parts.items():
                fh.writelines(f"{name},{_portable(c.path)},{c.label},{c.group},{c.sha256}\n" for c in part)
    pools = background_pools(s, parts, positive, progress)
    add_synthetic(s, parts, labels, positive)
    makers = {k: SceneMaker(context_settings(s), pools[k], window) for k in parts}
    common = dict(window=window, pre_roll=pre_roll, seed=s.run.seed, progress=progress,
                  room_label=room_label(s, labels, positive))
    sets = {k: evaluation_windows(parts[k], makers[k], labels, split=k, **common) for k in parts}
    train = training_windows(parts["train"], makers["train"], labels, per_clip=s.data.crops_per_clip,
                             near=s.data.near_windows, shifted=s.data.shifted_windows,
                             shifted_clear_s=s.data.shifted_clear_s, shifted_phases=s.data.shifted_phases, **common)
    for k, ws in sets.items():
        log.info("%s: %d windows from %d recordings; %d recordings without any onset", k, len(ws.windows),
                 len(parts[k]), ws.unheard)
    log.info("training windows through a telephone channel by their source: %s", ", ".join(
        f"{label} {train.phone[train.targets == i].mean():.1%}" for i, label in enumerate(labels)
        if (train.targets == i).any()))
    return RunData(labels, positive, parts, sets, train, window, pre_roll)


def check_labels(s: Settings, checker, clips: list[D.Clip], positive: str, out: Path, progress: bool,
                 write: bool) -> list[D.Clip]:
    """``--data-label-check``: leave out the recordings a pretrained tagger finds the positive class in although
    they are labelled otherwise; ``label-check.csv`` in the run folder lists every recording it heard."""
    import csv

    d = s.data
    kept, rows = tagger_check(checker, d.label_check_min, clips, positive, out / "label_check_cache.json", progress)
    left_out = [r for r in rows if r["left_out"]]
    log.info("label check: %d of %d recordings not labelled %s left out (%s >= %g): %s", len(left_out), len(rows),
             positive, d.label_check_classes, d.label_check_min,
             ", ".join(f"{lab} {sum(r['label'] == lab for r in left_out)}" for lab in sorted({r["label"] for r in left_out})))
    if write:
        with (out / "label-check.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "label", "score", "left_out"])
            writer.writeheader()
            writer.writerows({**r, "path": _portable(Path(r["path"]))} for r in rows)
    return kept


def add_synthetic(s: Settings, parts: dict[str, list[D.Clip]], labels: tuple[str, ...], positive: str) -> None:
    """``--data-synthetic-per-kind``: synthetic non-cough sounds in every split, after the room pools were made."""
    if not s.data.synthetic_per_kind:
        return
    if len(labels) != 2:
        raise ValueError(f"data.synthetic_per_kind needs two labels (a detector), not {list(labels)}")
    from .synthetic import synthetic_clips

    other = next(label for label in labels if label != positive)
    for name, part in parts.items():
        for clip in synthetic_clips(s.data.synthetic_per_kind, s.data.sample_rate, s.run.seed, name):
            clip.extra["original_label"], clip.label = clip.label, other
            part.append(clip)


def room_label(s: Settings, labels: tuple[str, ...], positive: str) -> str:
    """The label of windows at the room's own onsets, or "" when they get none (see ``data.room_windows``)."""
    if not (s.data.room_windows and s.data.pad == "context" and not s.data.background and len(labels) == 2):
        return ""
    return next(label for label in labels if label != positive)


def _portable(path: Path) -> str:
    """The path relative to the working directory (splits.csv must not hold one machine's absolute paths)."""
    return os.path.relpath(path, Path.cwd())


def train_teacher(s: Settings, rd: RunData, out: Path, accelerator, selection: Selection):
    teacher = build_teacher(s.teacher.source, rd.labels, rd.positive, window_samples=rd.window,
                            pre_roll_samples=rd.pre_roll, pad=s.data.pad, sample_rate=s.data.sample_rate,
                            classes=s.teacher.classes, head=s.teacher.head)
    if s.teacher.head == "probe":
        fit_probe(s, teacher, rd, out, accelerator)
    preset = s.teacher.source.startswith("preset:")
    freeze = s.teacher.freeze_feature_encoder == "yes" or (s.teacher.freeze_feature_encoder == "auto" and not preset)
    if freeze and hasattr(teacher, "model"):
        teacher.model.freeze_feature_encoder()
    history = []
    if s.teacher.epochs:
        ds = CropDataset(rd.train, s.augment if s.augment.apply else None, s.run.seed, s.data.sample_rate)
        schedule = Schedule(s.teacher.epochs, s.teacher.lr or (1e-3 if preset else 2.5e-5), s.run.weight_decay,
                            s.run.warmup_epochs)
        teacher, history = fit(teacher, balanced_loader(ds, s.teacher.batch_size, s.run.seed, len(rd.parts["train"])),
                               ce_step, schedule, selection, accelerator, "teacher")
    teacher.eval()
    if accelerator.is_main_process:  # under `accelerate launch` only one process writes files
        save_checkpoint(teacher.cpu(), out / "teacher")
    accelerator.wait_for_everyone()
    return teacher.to(accelerator.device), history


def fit_probe(s: Settings, teacher, rd: RunData, out: Path, accelerator) -> None:
    """``--teacher-head probe``: the head on the tagger's embedding, fitted on the clean training windows (the
    student's crops; with ``--teacher-probe-views``, that many augmented copies of each as well) and chosen on the
    clean validation windows, as every other choice is. The clean windows' embeddings are cached in ``probe_embeddings_<split>.pt``,
    keyed by the windows and the tagger file, like the teacher's outputs."""
    from .tagger import PROBE_C

    digest = weights_digest(teacher.tagger) + ":" + EMBEDDING
    for split, ws in (("train", rd.train), ("val", rd.sets["val"])):
        keys = ws.keys
        rows = cached_outputs(out / f"probe_embeddings_{split}.pt", keys, digest, accelerator, "embeddings",
                              lambda clean, split=split: torch.from_numpy(
                                  teacher.features(clean, f"probe: {split} embeddings")),
                              CropDataset(ws, None, 0))
        teacher.remember(keys, rows.numpy())
    val = rd.sets["val"]
    windows, targets = probe_training_windows(rd.train, s.augment, s.teacher.probe_views, s.run.seed)
    scores = teacher.fit(windows, targets, val.windows, val.targets)
    best = max(scores, key=scores.get)
    log.info("teacher probe: validation ROC-AUC by C: %s; kept C=%g",
             ", ".join(f"{c:g}: {v:.4f}" for c, v in scores.items()), best)
    if best in (min(PROBE_C), max(PROBE_C)):
        log.warning("teacher probe: the best C (%g) is at the edge of the grid %s; a wider grid might do better",
                    best, PROBE_C)


def probe_training_windows(ws, augment: AugmentSettings, views: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The clean training windows, then ``views`` augmented copies of each (their labels repeated), drawn as the
    student's crops are (:class:`CropDataset`, another clean window as the mixed-in background)."""
    if views == 0:
        return ws.windows, ws.targets
    crops = CropDataset(ws, augment, seed)
    copies = [np.stack([crops[i][0].numpy() for i in range(len(crops))]) for _ in range(views)]
    return np.concatenate([ws.windows, *copies]), np.tile(ws.targets, views + 1)


def distil_student(s: Settings, rd: RunData, teacher, out: Path, accelerator, selection: Selection):
    """The student against cached teacher outputs on the clean training windows (and, with ``--kd-aux-teacher``,
    a pretrained tagger's cached class scores for its auxiliary head)."""
    cached = teacher_cache(teacher, CropDataset(rd.train, None, s.run.seed), out / "teacher_cache.pt", accelerator)
    aux_classes, aux_targets = aux_soft_targets(s, rd, out, accelerator)
    if s.student.kind == "cnn":
        student = build_cnn_student(rd.labels, rd.positive, window_samples=rd.window, pre_roll_samples=rd.pre_roll,
                                    pad=s.data.pad, widths=tuple(int(w) for w in s.student.widths.split(",")),
                                    pooling=s.student.pooling, f_max_hz=s.student.f_max_hz,
                                    band_stats=s.student.band_stats, sample_rate=s.data.sample_rate,
                                    aux_classes=aux_classes)
        lr = s.student.lr or 3e-3
    else:
        student = build_w2v_small(teacher.cpu(), s.student.layers)
        teacher.to(accelerator.device)
        lr = s.student.lr or 2.5e-5
    aug_ds = CropDataset(rd.train, s.augment if s.augment.apply else None, s.run.seed + 1, s.data.sample_rate)
    step = make_kd_step(cached, alpha=s.kd.alpha, temperature=s.kd.temperature, feature_weight=s.kd.feature_weight,
                        aux_targets=aux_targets, aux_weight=s.kd.aux_weight)
    loader = balanced_loader(aug_ds, s.student.batch_size, s.run.seed + 1, len(rd.parts["train"]))
    schedule = Schedule(s.student.epochs, lr, s.run.weight_decay, s.run.warmup_epochs)
    return fit(student, loader, step, schedule, selection, accelerator, "student")


def aux_soft_targets(s: Settings, rd: RunData, out: Path, accelerator) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """``--kd-aux-teacher``'s class names and its cached scores of them on every clean training window."""
    if not s.kd.aux_teacher:
        return (), None
    from .tagger import PREFIX, OnnxTagger, parse_class_names, read_class_names

    path = s.kd.aux_teacher[len(PREFIX):]
    names = parse_class_names(s.kd.aux_classes, read_class_names(Path(path)), "kd.aux_classes")
    tagger = OnnxTagger(path, rd.labels, rd.positive, names[0], s.data.sample_rate)
    columns = [tagger.class_names.index(n) for n in names]
    scores = tagger_cache(tagger, columns, CropDataset(rd.train, None, s.run.seed), out / "aux_cache.pt", accelerator)
    log.info("auxiliary soft targets: %d classes of %s, mean score %s", len(names), path,
             ", ".join(f"{n}={v:.3f}" for n, v in zip(names, scores.mean(0).tolist())))
    return tuple(names), scores


def export_and_score(s: Settings, rd: RunData, student, out: Path, summary: dict, threshold: float) -> tuple:
    """Export, quantise; each file gets the threshold chosen on its own validation scores and is scored at it."""
    from edge.inference import Model

    sets = "+".join(Path(m).parent.name for m in s.data.manifest.split(",") if m)
    train_data = f"{sets} ({len(rd.parts['train'])} train clips, seed {s.run.seed}, {s.data.pad} scenes)"
    teacher = s.teacher.source + (" (embedding probe)" if s.teacher.head == "probe" else "") + \
        (f" + soft targets of {s.kd.aux_teacher}" if s.kd.aux_teacher else "")
    meta = contract_metadata(student.spec, threshold=threshold, train_data=train_data, teacher=teacher, metrics=summary)
    parity = export_onnx(student, out / "student.onnx", meta, name=out.name, seed=s.run.seed)
    files = {"student.onnx": out / "student.onnx"}
    if s.run.quantize:
        rng = np.random.default_rng(s.run.seed)
        calib = rd.train.windows[rng.choice(len(rd.train.windows), min(128, len(rd.train.windows)), replace=False)]
        files["student.int8.onnx"] = quantize_int8(out / "student.onnx", out / "student.int8.onnx", calib,
                                                   kind=student.spec.kind)
    val_pos, results, probs = rd.sets["val"].targets == rd.pos, {}, {}
    for name, path in files.items():
        set_threshold(path, choose_threshold(val_pos, run_onnx(path, rd.sets["val"].windows)[:, rd.pos]))
        carried = Model(path).info.threshold
        probs[name] = run_onnx(path, rd.sets["test"].windows)
        results[name] = evaluate(probs[name], rd.sets["test"].targets, rd.pos, carried,
                                 groups=rd.groups("test", s.data.group_by), bootstrap=s.run.bootstrap, seed=s.run.seed)
        results[name]["size_bytes"] = path.stat().st_size
    return parity, results, probs


def run_distill(s: Settings, argv: list[str] | None = None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(s.run.out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    set_seed(s.run.seed)
    command = "trainer distill " + shlex.join(argv if argv is not None else sys.argv[1:])
    main_process = accelerator.is_main_process
    if main_process:
        (out / "settings.json").write_text(json.dumps({"command": command, **s.to_dict()}, indent=2))
    rd = prepare_data(s, out, accelerator.is_local_main_process, main_process)
    selection = Selection(rd.sets["val"].windows, rd.sets["val"].targets, rd.pos)
    teacher, teacher_history = train_teacher(s, rd, out, accelerator, selection)
    student, student_history = distil_student(s, rd, teacher, out, accelerator, selection)
    accelerator.wait_for_everyone()
    if not main_process:
        return {}
    save_checkpoint(student.cpu(), out / "student")
    report, scores = evaluate_run(s, rd, teacher.cpu(), student, out, command)
    report["history"] = {"teacher": teacher_history, "student": student_history}
    finish_report(out, report, scores, rd)
    log.info("run written to %s", out)
    return report


def evaluate_run(s: Settings, rd: RunData, teacher, student, out: Path, command: str) -> tuple[dict, dict]:
    """Thresholds on validation windows, metrics on test windows, baselines, export: the report's content, and
    each model's and baseline's positive-class scores on the test windows (for the plots)."""
    pos, val, test = rd.pos, rd.sets["val"], rd.sets["test"]
    logits = {name: {k: predict_logits(m, rd.sets[k].windows) for k in ("val", "test")}
              for name, m in (("teacher", teacher), ("student", student))}
    groups = rd.groups("test", s.data.group_by)
    results, thresholds, probs = {}, {}, {}
    for name, lg in logits.items():
        thresholds[name] = choose_threshold(val.targets == pos, softmax(lg["val"])[:, pos])
        probs[name] = softmax(lg["test"])
        results[name] = evaluate(probs[name], test.targets, pos, thresholds[name], groups=groups,
                                 bootstrap=s.run.bootstrap, seed=s.run.seed)
    results["student"]["distillation_loss"] = distillation_loss(
        logits["student"]["test"], logits["teacher"]["test"], test.targets, alpha=s.kd.alpha,
        temperature=s.kd.temperature)
    baselines = run_baselines(rd.parts, rd.sets, rd.positive, labels=rd.labels, sample_rate=s.data.sample_rate,
                              group_by=s.data.group_by, bootstrap=s.run.bootstrap, seed=s.run.seed)
    baseline_scores = {name: b.pop("test_scores") for name, b in baselines.items()}
    summary = {"roc_auc": results["student"]["pooled"]["roc_auc"],
               "roc_auc_ci95": results["student"]["pooled"]["roc_auc_ci95"], "split": "test",
               "unit": "onset windows in context"}
    parity, onnx_results, onnx_probs = export_and_score(s, rd, student, out, summary, thresholds["student"])
    results.update(onnx_results)
    probs.update(onnx_probs)
    is_pos, student_scores = test.targets == pos, probs["student"][:, pos]
    references = {"teacher": probs["teacher"][:, pos], **baseline_scores}
    comparisons = {name: paired_auc_difference(is_pos, student_scores, ref, s.run.bootstrap, s.run.seed)
                   for name, ref in references.items()}
    report = {
        "command": command, "labels": list(rd.labels), "positive_label": rd.positive, "splits": D.describe(rd.parts),
        "windows": {k: {"windows": int(len(w.windows)), "recordings_without_onset": int(w.unheard)}
                    for k, w in rd.sets.items()},
        "group_by": s.data.group_by or None, "parameters": {"teacher": count_parameters(teacher),
                                                             "student": count_parameters(student)},
        "thresholds": thresholds, "results": results, "baselines": baselines, "comparisons": comparisons,
        "onnx_parity": parity, "settings": s.to_dict(),
    }
    return report, {**{k: v[:, pos] for k, v in probs.items()}, **baseline_scores}


def finish_report(out: Path, report: dict, scores: dict, rd: RunData) -> None:
    is_pos = rd.sets["test"].targets == rd.pos
    decisions = {k: scores[k] >= report["results"][k]["pooled"]["threshold"] for k in report["results"]}
    write_report(out, report, is_pos, scores, decisions)
    write_model_card(out, report)
