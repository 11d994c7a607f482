"""report.json, report.md with plots, and MODEL_CARD.md for a run folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

KNOWN_DATA = {
    "covid19-cough": "covid19-cough (github.com/covid19-cough/dataset), CC0 1.0 public domain; labels from PCR tests "
                     "or self-report; phone call-center (8 kHz) and Telegram recordings.",
    "coswara": "Coswara 2020-04-13 (github.com/iiscleap/Coswara-Data), CC BY 4.0. Attribution: \"Coswara — A Database "
               "of Breathing, Cough, and Voice Sounds for COVID-19 Diagnosis\", Sharma et al., Interspeech 2020.",
}
KNOWN_LICENCES = {"covid19-cough": "CC0-1.0", "coswara": "CC-BY-4.0"}
"""The licence of each corpus in ``KNOWN_DATA``, as a manifest's ``licence`` column names it."""
TAGGERS = {"yamnet": "YAMNet (tensorflow/models research/audioset/yamnet, AudioSet, 521 classes), Copyright The "
                     "TensorFlow Authors, Apache License 2.0; converted to ONNX (format conversion only)."}
SCENES = {"context": "in a room of other recordings of its own split (never its own group), its loudest 10 ms "
                     "frame {lo:g}-{hi:g} dB above the room's RMS",
          "zero": "in digital silence", "wrap": "looped"}
CAVEAT = ("**Not a diagnosis.** This model produces screening signals for research. It has not been "
          "clinically validated; do not use it to make medical decisions.")


def _fmt(m: dict | None, key: str) -> str:
    if not m or m.get(key) is None:
        return "n/a"
    return f"{m[key]:.3f}"


def _auc(m: dict) -> str:
    ci = m.get("roc_auc_ci95")
    return _fmt(m, "roc_auc") + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def metrics_table(results: dict) -> list[str]:
    rows = ["| model | ROC-AUC [95% CI] | accuracy | precision | recall | F1 | threshold | n |",
            "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        m = r["pooled"]
        rows.append(f"| {name} | {_auc(m)} | {_fmt(m, 'accuracy')} | {_fmt(m, 'precision')} | {_fmt(m, 'recall')} "
                    f"| {_fmt(m, 'f1')} | {m['threshold']:.3f} | {m['n']} |")
    groups = {g for r in results.values() for g in r.get("by_group", {})}
    if groups:
        rows += ["", "Per group (ROC-AUC [95% CI], n):", "", "| model | " + " | ".join(sorted(groups)) + " |",
                 "|---" * (len(groups) + 1) + "|"]
        for name, r in results.items():
            cells = [f"{_auc(r['by_group'][g])} (n={r['by_group'][g]['n']})" if g in r.get("by_group", {}) else "n/a"
                     for g in sorted(groups)]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def write_report(out: Path, report: dict, is_positive: np.ndarray, scores: dict[str, np.ndarray],
                 decisions: dict[str, np.ndarray]) -> None:
    """report.json, its three plots (ROC, confusion matrices, training curves) and report.md."""
    import matplotlib

    matplotlib.use("Agg")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_roc(out / "roc.png", is_positive, scores, dashed=set(report.get("baselines", {})))
    plot_confusion(out / "confusion.png", is_positive, decisions, report["positive_label"])
    plot_training(out / "training.png", report["history"])
    write_report_md(out, report)


def plot_roc(path: Path, is_positive: np.ndarray, scores: dict[str, np.ndarray], *, dashed: set[str]) -> None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for name, sc in scores.items():
        fpr, tpr, _ = roc_curve(is_positive, sc)
        ax.plot(fpr, tpr, "--" if name in dashed else "-", lw=1.0 if name in dashed else 1.6,
                label=f"{name} (AUC = {roc_auc_score(is_positive, sc):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("ROC on held-out test data")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(path: Path, is_positive: np.ndarray, decisions: dict[str, np.ndarray], positive: str) -> None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, len(decisions), figsize=(3.6 * len(decisions), 3.4))
    for ax, (name, pred) in zip(np.atleast_1d(axes), decisions.items()):
        ConfusionMatrixDisplay.from_predictions(is_positive, pred, display_labels=[f"not {positive}", positive], ax=ax,
                                                colorbar=False)
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(path: Path, history: dict[str, list[dict]]) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, hist in history.items():
        if not hist:
            continue
        epochs = [h["epoch"] for h in hist]
        for key in ("loss", "kl", "ce", "feature"):
            if key in hist[0]:
                axes[0].plot(epochs, [h[key] for h in hist], label=f"{name} {key}")
        axes[1].plot(epochs, [h["val_auc"] for h in hist], label=name)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="Loss terms")
    axes[1].set(xlabel="epoch", ylabel="ROC-AUC", title="Validation ROC-AUC")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report_md(out: Path, report: dict) -> None:
    """report.md from report.json's content (and stream.json's, which leads, when the run has been streamed)."""
    kd = report["results"]["student"].get("distillation_loss", {})
    md = [f"# Run report: {out.name}", "", CAVEAT, "", f"Command: `{report['command']}`", "",
          f"Labels: {report['labels']} (positive: `{report['positive_label']}`). Splits (clips per label): "
          f"`{json.dumps(report['splits'])}`. Parameters: teacher {report['parameters']['teacher']:,}, "
          f"student {report['parameters']['student']:,}.", "",
          *stream_section(out), *windows_note(report),
          "## Held-out test metrics (onset windows)", "",
          "Thresholds were chosen on the validation split (Youden's J); each ONNX file is scored at the threshold "
          "it carried when it was exported.", "", *rethresholded_note(out, report),
          *metrics_table(report["results"]), "",
          f"Distillation loss on test (alpha·T²·KL + (1-alpha)·CE): {kd.get('loss', float('nan')):.4f} "
          f"(KL {kd.get('kl', float('nan')):.4f}, CE {kd.get('ce', float('nan')):.4f}).", "",
          *baselines_section(report), f"ONNX parity with PyTorch on seeded input: max |diff| = {report['onnx_parity']['max_abs_diff']:.2e}.", "",
          "![ROC](roc.png)", "", "![Confusion matrices](confusion.png)", "", "![Training](training.png)", ""]
    (out / "report.md").write_text("\n".join(md))


def stream_section(out: Path) -> list[str]:
    """The run's stream benchmark (``stream.json``, written by `trainer stream --out <run>`)."""
    path = out / "stream.json"
    if not path.is_file():
        return ["## On a live stream", "", "Not measured yet: run `trainer stream ... --out "
                f"{out}` (README, \"Measured figures\").", ""]
    from .stream import markdown

    result = json.loads(path.read_text())
    return ["## On a live stream (the daemon's own pipeline)", "",
            "Held-out coughs and other sounds placed at known levels into a room of held-out recordings, run "
            "through `edge.pipeline.Pipeline` with the exported int8 files at the thresholds they carry "
            "(README, \"The stream benchmark\").", "", *markdown(result), "",
            f"Command: `{result.get('command', '')}`", "", "![Stream](stream.png)", ""]


def windows_note(report: dict) -> list[str]:
    w = report.get("windows")
    if not w:
        return []
    pad = report["settings"]["data"].get("pad", "context")
    return [f"Every window below is one the daemon would cut: at an onset its detector reports for the recording "
            f"heard in a `{pad}` scene (`trainer/context.py`). Windows per split: "
            + ", ".join(f"{k} {v['windows']} ({v['recordings_without_onset']} recordings without any onset)"
                        for k, v in w.items()) + ".", ""]


def rethresholded_note(out: Path, report: dict) -> list[str]:
    """Where `trainer stream --choose-detector-threshold` later wrote another threshold into an exported file: say
    which it carries now (the stream figures use it; the window table above does not)."""
    from edge.inference import Model

    lines = []
    for name, result in report["results"].items():
        path, then = out / name, result.get("pooled", {}).get("threshold")
        if not name.endswith(".onnx") or not path.is_file() or then is None:
            continue
        now = Model(path).info.threshold
        if abs(now - then) > 5e-4:
            lines.append(f"`{name}` now carries threshold {now:.3g}, chosen on the validation stream "
                         f"(`threshold-sweep.json`); the table scores it at {then:.3g}, the one it carried at "
                         "export, and the stream figures above at the one it carries now.")
    return lines + [""] if lines else []


def refresh_documents(out: Path) -> None:
    """Rewrite report.md and MODEL_CARD.md from report.json (e.g. after `trainer stream` measured the run)."""
    report = json.loads((out / "report.json").read_text())
    write_report_md(out, report)
    write_model_card(out, report)


def baselines_section(report: dict) -> list[str]:
    """The references scored on the same split (see trainer/baselines.py), as report/card lines."""
    if not report.get("baselines"):
        return []
    return ["## Baselines on the same split", "",
            "Fitted on train, tuned and thresholded on validation, scored on the same test windows as the models. "
            "`classical (recording)` is the data's published reference recipe (40 log-mel means and deviations at "
            "8 kHz, logistic regression) over whole recordings (each window gets its recording's score); "
            "`classical (window)` applies it to the student's window. The `... only` rows score a single column: a model near them may be learning the recording "
            "channel or length, not the cough.", "", *metrics_table(report["baselines"]), "",
            *comparisons_section(report)]


def comparisons_section(report: dict) -> list[str]:
    """Student ROC-AUC minus each reference's, on the same test clips, with paired bootstrap intervals."""
    rows = report.get("comparisons") or {}
    if not rows:
        return []

    def verdict(c: dict) -> str:
        lo, hi = c["ci95"] or (float("nan"), float("nan"))
        return "higher" if lo > 0 else "lower" if hi < 0 else "not distinguishable on this test set"

    lines = ["Student ROC-AUC minus each reference's on the same test clips (paired bootstrap, 95%):", "",
             "| reference | difference [95% CI] | student is |", "|---|---|---|"]
    for name, c in rows.items():
        ci = "[{:+.3f}, {:+.3f}]".format(*c["ci95"]) if c["ci95"] else "-"
        lines.append(f"| {name} | {c['diff']:+.3f} {ci} | {verdict(c)} |")
    return [*lines, ""]


def manifest_licences(path: Path) -> str:
    """Per-file licences a manifest states in a ``licence`` column (as `trainer negatives` writes), counted per
    ``source`` with its ``package_version``; empty when it has no such column."""
    import csv
    from collections import Counter

    csv_path = path / "manifest.csv" if path.is_dir() else path
    if not csv_path.is_file():
        return ""
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "licence" not in rows[0]:
        return ""
    per_source: dict[str, Counter] = {}
    for row in rows:
        key = " ".join(x for x in (row.get("source", ""), row.get("package_version", "")) if x) or "(no source)"
        per_source.setdefault(key, Counter())[row["licence"]] += 1
    parts = [f"{src}: " + ", ".join(f"{lic} ({n})" for lic, n in c.most_common()) for src, c in sorted(per_source.items())]
    return ("clips under the licences the manifest states per file, "
            + "; ".join(parts) + ". Check what these licences mean for a model trained on them before sharing it.")


def data_attribution(manifests: str) -> list[str]:
    """License and attribution lines for the corpora a run used (known ones by name, others flagged)."""
    lines = []
    for manifest in (m for m in manifests.split(",") if m):
        known = next((text for key, text in KNOWN_DATA.items() if key in manifest), None)
        known = known or manifest_licences(Path(manifest))
        lines.append(f"- `{manifest}`: " + (known or "license unknown to coughwatch: check the data's terms "
                                                     "before sharing this model."))
    return lines


PROBE_NOTE = ("a logistic regression on its embedding (the mean and the maximum over its positions in the window), "
              "fitted on the clean training windows with the strength that scored best on the validation windows, "
              "maps it onto our labels (`--teacher-head probe`). ")


def aux_note(kd: dict) -> str:
    """The model card's sentence on ``--kd-aux-teacher`` (empty without one)."""
    if not kd.get("aux_teacher"):
        return ""
    source = kd["aux_teacher"]
    return (f" An auxiliary head (used in training only, not part of the exported model) learned the soft scores of "
            f"the pretrained tagger `{source}` for `{kd.get('aux_classes', '')}` on every training window, weight "
            f"{kd.get('aux_weight', 0):g}. " + TAGGERS.get("yamnet" if "yamnet" in source else "",
                                                         "Check its licence before sharing this model."))


def synthetic_note(data: dict) -> list[str]:
    """The model card's line on ``--data-synthetic-per-kind`` (none without it)."""
    n = data.get("synthetic_per_kind", 0)
    return [f"- synthetic white-noise bursts, claps and square-wave tones (`trainer/synthetic.py`), {n} of each kind in "
            "every split, labelled not positive: generated by seed, no licence applies."] if n else []


def write_model_card(out: Path, report: dict) -> None:
    s = report["settings"]
    preset = s["teacher"]["source"].startswith("preset:")
    tagger = s["teacher"]["source"].startswith("onnx:")
    teacher_note = (f"The teacher was built from the `{s['teacher']['source']}` configuration with random weights and "
                    "trained on this data only (no pretrained wav2vec2 weights were available where it was trained)."
                    if preset else
                    f"The teacher is the pretrained audio tagger `{s['teacher']['source']}`, used frozen: "
                    + (PROBE_NOTE if s["teacher"].get("head") == "probe" else
                       f"the highest of its `{s['teacher'].get('classes', '')}` scores over the window is the probability "
                       f"of `{report['positive_label']}`. ") + TAGGERS.get("yamnet" if "yamnet" in s["teacher"]["source"] else "",
                                                              "Check its licence before sharing this model.")
                    if tagger else f"The teacher was fine-tuned from `{s['teacher']['source']}`.")
    teacher_note += aux_note(s.get("kd", {}))
    card = [f"# Model card: {out.name}", "", CAVEAT, "",
            "## What it is",
            f"A {s['student']['kind']} student ({report['parameters']['student']:,} parameters) distilled from a "
            f"{'pretrained tagger' if tagger else 'wav2vec2'} teacher ({report['parameters']['teacher']:,} parameters). {teacher_note} Input: "
            f"{s['data']['window_s']} s of {s['data'].get('sample_rate', 16000) // 1000} kHz mono audio starting {s['data']['pre_roll_s']} s before a sound's "
            "onset, with the log-mel front end inside the ONNX graph. "
            f"Output: probabilities for {report['labels']}. In training and evaluation each recording was heard "
            + SCENES.get(s["data"].get("pad", "zero"), "?").format(lo=s["data"].get("level_min_db", 0),
                                                                   hi=s["data"].get("level_max_db", 0))
            + ", and windows were placed at the onsets the "
            "daemon's own detector reports.", "",
            "## Files", "- `student.onnx`, `student.int8.onnx`: the contract-conforming models the edge daemon loads.",
            "- `student/`, `teacher/`: PyTorch checkpoints (self-describing: `coughwatch.json`).",
            "- `report.md`, `report.json`, plots: the full evaluation.", "",
            "## Data", *data_attribution(s["data"]["manifest"] + "," + s["data"].get("background", "")),
            *synthetic_note(s["data"]), "",
            f"Splits are deduplicated by content hash, group-disjoint and stable (a hash of the seed and the group decides "
            f"each group's split): `{json.dumps(report['splits'])}`.",
            "", *stream_section(out), *windows_note(report),
            "## Held-out test metrics (onset windows)", "", *rethresholded_note(out, report),
            *metrics_table(report["results"]), "",
            "Intervals are 95% bootstrap intervals over test clips. These figures are from one split of a small "
            "corpus; expect lower numbers on other microphones, rooms and populations.", "",
            *baselines_section(report),
            "## Reproduce", "", f"```\n{report['command']}\n```", ""]
    (out / "MODEL_CARD.md").write_text("\n".join(card))
