"""`trainer distill`: data -> teacher -> cached teacher outputs -> student -> evaluation -> ONNX -> report."""
from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .baselines import run_baselines
from .evaluate import choose_threshold, distillation_loss, evaluate, paired_auc_difference
from .export import contract_metadata, export_onnx, quantize_int8, run_onnx
from .models import build_cnn_student, build_teacher, build_w2v_small, count_parameters, save_checkpoint
from .report import write_model_card, write_report
from .settings import Settings
from .train import (CropDataset, balanced_loader, ce_step, eval_windows, fit, make_crops, make_kd_step,
                    predict_logits, softmax, teacher_cache)

log = logging.getLogger(__name__)


def run_distill(s: Settings, argv: list[str] | None = None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(s.run.out)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    set_seed(s.run.seed)
    command = "trainer distill " + shlex.join(argv if argv is not None else sys.argv[1:])
    if accelerator.is_main_process:
        (out / "settings.json").write_text(json.dumps({"command": command, **s.to_dict()}, indent=2))

    # Data
    sr = s.data.sample_rate
    window, pre_roll = round(s.data.window_s * sr), round(s.data.pre_roll_s * sr)
    clips = D.load_manifests(s.data.manifest, s.data.label_map)
    all_labels = sorted({c.label for c in clips})
    positive = s.data.positive_label or ("positive" if "positive" in all_labels else "")
    if not positive:
        raise ValueError(f"data.positive_label is required: the manifest's labels are {all_labels}")
    labels = D.relabel(clips, positive)
    clips = D.load_audio(clips, sr, min_samples=sr // 10, progress=accelerator.is_local_main_process)
    parts = D.split(clips, val=s.data.val_fraction, test=s.data.test_fraction, seed=s.run.seed)
    log.info("splits: %s", D.describe(parts))
    if accelerator.is_main_process:
        with (out / "splits.csv").open("w") as fh:
            fh.write("split,path,label,group,sha256\n")
            for name, part in parts.items():
                fh.writelines(f"{name},{c.path},{c.label},{c.group},{c.sha256}\n" for c in part)
    pos = labels.index(positive)
    targets = {k: np.array([labels.index(c.label) for c in v]) for k, v in parts.items()}
    pad = s.data.pad
    windows = {k: eval_windows(parts[k], window, pre_roll, pad) for k in ("val", "test")}
    rng = np.random.default_rng(s.run.seed)
    crops = make_crops(parts["train"], s.data.crops_per_clip, rng)
    per_epoch = len(parts["train"])
    common = dict(weight_decay=s.run.weight_decay, warmup_epochs=s.run.warmup_epochs, val_windows=windows["val"],
                  val_targets=targets["val"], positive=pos, accelerator=accelerator)

    # Teacher
    teacher = build_teacher(s.teacher.source, labels, positive, window_samples=window, pre_roll_samples=pre_roll,
                            pad=pad)
    preset = s.teacher.source.startswith("preset:")
    freeze = s.teacher.freeze_feature_encoder == "yes" or (s.teacher.freeze_feature_encoder == "auto" and not preset)
    if freeze:
        teacher.model.freeze_feature_encoder()
    history = {"teacher": [], "student": []}
    aug = s.augment if s.augment.apply else None
    if s.teacher.epochs:
        ds = CropDataset(parts["train"], crops, labels, window, pre_roll, pad, aug, s.run.seed)
        teacher, history["teacher"] = fit(
            teacher, balanced_loader(ds, s.teacher.batch_size, s.run.seed, per_epoch), ce_step,
            epochs=s.teacher.epochs, lr=s.teacher.lr or (1e-3 if preset else 2.5e-5), desc="teacher", **common)
    teacher.eval()
    if accelerator.is_main_process:  # under `accelerate launch` only one process writes files
        save_checkpoint(teacher.cpu(), out / "teacher")
    accelerator.wait_for_everyone()
    teacher.to(accelerator.device)

    # Student, distilled against cached teacher outputs on clean crops
    clean_ds = CropDataset(parts["train"], crops, labels, window, pre_roll, pad, None, s.run.seed)
    cached = teacher_cache(teacher, clean_ds, out / "teacher_cache.pt", accelerator)
    if s.student.kind == "cnn":
        student = build_cnn_student(labels, positive, window_samples=window, pre_roll_samples=pre_roll, pad=pad,
                                    widths=tuple(int(w) for w in s.student.widths.split(",")),
                                    pooling=s.student.pooling, f_max_hz=s.student.f_max_hz,
                                    band_stats=s.student.band_stats)
        lr = s.student.lr or 3e-3
    else:
        student = build_w2v_small(teacher.cpu(), s.student.layers)
        teacher.to(accelerator.device)
        lr = s.student.lr or 2.5e-5
    aug_ds = CropDataset(parts["train"], crops, labels, window, pre_roll, pad, aug, s.run.seed + 1)
    step = make_kd_step(cached, alpha=s.kd.alpha, temperature=s.kd.temperature, feature_weight=s.kd.feature_weight)
    student, history["student"] = fit(student, balanced_loader(aug_ds, s.student.batch_size, s.run.seed + 1, per_epoch),
                                      step, epochs=s.student.epochs, lr=lr, desc="student", **common)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}
    save_checkpoint(student.cpu(), out / "student")

    # Evaluation: thresholds on validation, metrics on test
    teacher.cpu()
    logits = {name: {k: predict_logits(m, w) for k, w in windows.items()} for name, m in
              (("teacher", teacher), ("student", student))}
    group_values = [c.column(s.data.group_by) for c in parts["test"]] if s.data.group_by else None
    kd_cfg = dict(alpha=s.kd.alpha, temperature=s.kd.temperature)
    results, thresholds, test_probs = {}, {}, {}
    for name, lg in logits.items():
        thresholds[name] = choose_threshold(targets["val"] == pos, softmax(lg["val"])[:, pos])
        test_probs[name] = softmax(lg["test"])
        results[name] = evaluate(test_probs[name], targets["test"], pos, thresholds[name], groups=group_values,
                                 bootstrap=s.run.bootstrap, seed=s.run.seed)
    results["student"]["distillation_loss"] = distillation_loss(logits["student"]["test"], logits["teacher"]["test"],
                                                                targets["test"], **kd_cfg)

    # The same split scored by simple references: what the student has to beat
    windows["train"] = eval_windows(parts["train"], window, pre_roll, pad)
    baselines = run_baselines(parts, windows, positive, sample_rate=sr, group_by=s.data.group_by,
                              bootstrap=s.run.bootstrap, seed=s.run.seed)
    baseline_scores = {name: b.pop("test_scores") for name, b in baselines.items()}

    # Export, then score the exported files exactly as the edge will run them
    sets = "+".join(Path(m).parent.name for m in s.data.manifest.split(",") if m)
    train_data = f"{sets} ({len(parts['train'])} train clips, seed {s.run.seed})"
    summary = {"roc_auc": results["student"]["pooled"]["roc_auc"],
               "roc_auc_ci95": results["student"]["pooled"]["roc_auc_ci95"], "split": "test"}
    meta = contract_metadata(student.spec, threshold=thresholds["student"], train_data=train_data,
                             teacher=s.teacher.source, metrics=summary)
    parity = export_onnx(student, out / "student.onnx", meta, name=out.name, seed=s.run.seed)
    onnx_files = {"student.onnx": out / "student.onnx"}
    if s.run.quantize:
        calib = np.stack([clean_ds.clean(i) for i in rng.choice(len(clean_ds), min(128, len(clean_ds)),
                                                                     replace=False)])
        onnx_files["student.int8.onnx"] = quantize_int8(out / "student.onnx", out / "student.int8.onnx", calib,
                                                        kind=student.spec.kind)
    for fname, path in onnx_files.items():
        val_p = run_onnx(path, windows["val"])
        thr = choose_threshold(targets["val"] == pos, val_p[:, pos])
        test_probs[fname] = run_onnx(path, windows["test"])
        results[fname] = evaluate(test_probs[fname], targets["test"], pos, thr, groups=group_values,
                                  bootstrap=s.run.bootstrap, seed=s.run.seed)
        results[fname]["size_bytes"] = path.stat().st_size
    # The student against each reference on the same clips, as differences with paired intervals
    test_pos, student_scores = targets["test"] == pos, test_probs["student"][:, pos]
    references = {"teacher": test_probs["teacher"][:, pos], **baseline_scores}
    comparisons = {name: paired_auc_difference(test_pos, student_scores, ref, s.run.bootstrap, s.run.seed)
                   for name, ref in references.items()}
    report = {
        "command": command, "labels": list(labels), "positive_label": positive, "splits": D.describe(parts),
        "group_by": s.data.group_by or None, "parameters": {"teacher": count_parameters(teacher),
                                                             "student": count_parameters(student)},
        "thresholds": thresholds, "results": results, "baselines": baselines,
        "comparisons": comparisons, "history": history,
        "onnx_parity": parity,
        "settings": s.to_dict(),
    }
    write_report(out, report, targets["test"] == pos,
                 {**{k: v[:, pos] for k, v in test_probs.items()}, **baseline_scores},
                 {k: (v[:, pos] >= results[k]["pooled"]["threshold"]) for k, v in test_probs.items()})
    write_model_card(out, report)
    log.info("run written to %s", out)
    return report
