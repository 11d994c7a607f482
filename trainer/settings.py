"""Settings for `trainer distill`: frozen dataclasses, one CLI flag per field (``--<section>-<field>``).

Precedence: built-in defaults < ``--config file.toml`` (sections ``[data]``, ``[teacher]``, ...) < flags.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from edge import config
from edge.onset import OnsetSettings

from .augment import AugmentSettings

POOLINGS = ("mean", "meanstd", "position")
"""How a cnn student pools its conv features over time (``student.pooling``)."""


@dataclass(frozen=True)
class DataSettings:
    manifest: str = ""
    """CSV manifest or folder (required); several, comma-separated, are concatenated."""
    label_map: str = ""
    """Rename labels on loading: comma-separated ``from=to`` pairs (e.g. ``positive=cough,negative=cough``)."""
    positive_label: str = ""
    """Label scored as positive; other labels are merged into ``not_<positive>`` (default: 'positive' if present)."""
    group_by: str = ""
    """Manifest column to report metrics per value of (e.g. ``source``)."""
    window_s: float = 1.0
    """Model input window in seconds."""
    pre_roll_s: float = 0.25
    """Audio kept before the anchor (onset) at the start of a window, in seconds."""
    pad: str = "context"
    """What a recording is heard in (``trainer.context``): ``context`` (a room of other recordings of the same
    split, the default), ``zero`` (digital silence) or ``wrap`` (the recording looped): the last two for comparison."""
    background: str = ""
    """Manifest(s) of room audio for ``context``, comma-separated, split by the same stable rule (empty = this
    run's own recordings whose label is not the positive one)."""
    background_labels: str = ""
    """Labels of ``background`` rows used as room audio, comma-separated (empty = all of them)."""
    level_min_db: float = 10.0
    """Lowest level of a recording's loudest 10 ms frame over the room's RMS, in dB (drawn uniformly)."""
    level_max_db: float = 35.0
    """Highest such level, in dB."""
    room_windows: bool = True
    """In ``context`` scenes whose room is the run's own recordings that are not positive (no ``background``),
    also train, select and test on windows at the room's own onsets, labelled with the run's other label: the
    daemon cuts those windows too (two labels only)."""
    near_windows: int = 0
    """With room windows, per training scene of a positive recording, this many more windows at onsets whose window
    holds the recording off its place: room onsets from ``window_s - pre_roll_s`` before the recording to
    ``ONSET_TOLERANCE_S`` before it, or within ``pre_roll_s`` after its end (a drawn point before it where the room
    has no such onset). Labelled not positive, so the detector answers yes only where a cough starts: the daemon
    cuts such windows at a room sound just before a cough, and may report that sound as a second event. Off (0)
    by default: 1 did not help on the validation stream (see README)."""
    shifted_windows: int = 0
    """With room windows, per training scene of a positive recording, this many more windows whose anchor is
    shifted off the recording's onset: from where the window holds the onset 0.1 s before its end to 0.6 s after
    it (``trainer.context.SHIFT_MARGIN_S``, ``SHIFT_AFTER_S``), at least ``shifted_clear_s`` from every onset the detector heard in the
    recording. Labelled not positive: the windows a detector scanning the stream (``--onset-scan-ms``) scores beside
    a cough, so that its score peaks where a cough starts and dips between the coughs of a bout. Off (0) by default."""
    shifted_clear_s: float = 0.25
    """Least distance, in seconds, from a shifted window's anchor to every onset heard in the recording."""
    shifted_phases: bool = False
    """With shifted windows: the onsets heard inside the recording's loudest event (the stream benchmark's truth of
    one cough, ``trainer.stream.single_event``) at least ``shifted_clear_s`` after the first one heard there are that
    cough's later phases: they are shifted windows (first, up to ``shifted_windows``), never the cough's window."""
    context_before_s: float = 3.0
    """Room before each recording, in seconds (the onset detector's noise floor settles on it)."""
    val_fraction: float = 0.15
    """Share of groups held out for validation (model and threshold selection)."""
    test_fraction: float = 0.15
    """Share of groups held out for the final test."""
    split_seed: int = 0
    """Seed of the stable split rule (which groups are training, validation and test); `trainer stream`'s
    ``--stream-seed`` must match it for its streams to hold held-out recordings only. Apart from ``run.seed``, so
    that a second training run can change its own randomness and keep its splits."""
    crops_per_clip: int = 4
    """Training scenes per recording, one onset window from each (the teacher's outputs are cached per window)."""
    synthetic_per_kind: int = 0
    """Add this many synthetic non-cough sounds of each kind (white-noise bursts, claps, square-wave tones;
    ``trainer.synthetic``) to each split, labelled with the label that is not positive (two labels only); they
    are never room audio."""
    sample_rate: int = 16000
    """Sample rate in Hz of the data, the model's front end, its exported metadata and so of the daemon."""
    label_check: str = ""
    """``onnx:PATH`` of a pretrained audio tagger (e.g. YAMNet) that listens to every recording not labelled
    positive: one it scores ``label_check_min`` or more on ``label_check_classes`` anywhere holds what the manifest
    says it does not (a cough in a Coswara breathing recording) and is left out of the run, room audio included
    (listed in the run's ``label-check.csv``; ``background`` manifests are not checked). Empty = every label is
    taken as given."""
    label_check_classes: str = "Cough"
    """The tagger's class names that make a recording suspect, comma-separated."""
    label_check_min: float = 0.5
    """Tagger score (0-1) from which a recording is left out."""


@dataclass(frozen=True)
class TeacherSettings:
    source: str = "facebook/wav2vec2-base"
    """Hub id, local save_pretrained folder, ``preset:tiny|small|base`` (random init), or ``onnx:PATH``: a
    pretrained ONNX audio tagger used frozen (e.g. ``onnx:../shared/teachers/yamnet/yamnet.onnx``)."""
    classes: str = "Cough"
    """``onnx:`` teachers with ``head = classes`` only: the tagger's class names whose highest score is the positive
    label's probability."""
    head: str = "classes"
    """``onnx:`` teachers only: ``classes`` (the tagger's scores for ``classes``) or ``probe`` (a logistic regression on
    the tagger's embedding, fitted on the clean training windows, its strength chosen by validation ROC-AUC)."""
    probe_views: int = 0
    """``head = probe`` only: augmented copies (``[augment]``: mixed-in background, shifts, telephone band, noise,
    gain) of every training window the probe is fitted on besides the clean ones (0 = clean windows only)."""
    epochs: int = 10
    """Fine-tuning epochs (0 = use the teacher as loaded)."""
    lr: float = 0.0
    """Peak learning rate (0 = 2.5e-5 for pretrained weights, 1e-3 for a preset trained from scratch)."""
    freeze_feature_encoder: str = "auto"
    """``yes``, ``no`` or ``auto`` (frozen for pretrained weights, trained for presets)."""
    batch_size: int = 16
    """Windows per optimisation step."""


@dataclass(frozen=True)
class StudentSettings:
    kind: str = "cnn"
    """``cnn`` (log-mel CNN) or ``w2v-small`` (teacher's encoder with fewer transformer layers)."""
    epochs: int = 30
    """Distillation epochs."""
    lr: float = 0.0
    """Peak learning rate (0 = 3e-3 for cnn, 2.5e-5 for w2v-small)."""
    layers: int = 2
    """w2v-small: transformer layers kept from the teacher."""
    widths: str = "16,32,48,64"
    """cnn: channels of the conv blocks, comma-separated."""
    pooling: str = "mean"
    """cnn: ``mean`` (global average), ``meanstd`` (also each channel's standard deviation over time) or
    ``position`` (each channel weights the window's time steps by learned weights, so the head knows where in
    the window a sound is: what a detector that scans the stream needs, with ``data.shifted_windows``)."""
    band_stats: bool = False
    """cnn: also feed the head each mel band's time mean and standard deviation of the log-mel input (the
    classical reference's features) past the conv blocks."""
    f_max_hz: float = 8000.0
    """cnn: highest mel band edge in Hz; 4000 keeps only the telephone band, so a model cannot tell an 8 kHz
    telephone recording from a wideband one by its empty top octave."""
    batch_size: int = 32
    """Windows per optimisation step."""


@dataclass(frozen=True)
class KdSettings:
    alpha: float = 0.5
    """Weight of the KL term (1 - alpha on cross-entropy), in [0, 1]."""
    temperature: float = 2.0
    """Softmax temperature for the KL term (> 0)."""
    feature_weight: float = 0.0
    """Weight of the penalty on the student's CNN activations (>= 0)."""
    aux_teacher: str = ""
    """``onnx:PATH`` of a pretrained audio tagger (e.g. YAMNet) whose class scores an auxiliary head of the cnn
    student learns as soft targets, on every training window whatever its label (empty = none)."""
    aux_classes: str = ("Cough,Throat clearing,Sneeze,Sniff,Laughter,Speech,Singing,Breathing,Gasp,Wheeze,Snoring,"
                        "Crying, sobbing,Shout,Music,Clapping,Knock,Slam,Dishes, pots, and pans,Animal")
    """The tagger's class names the auxiliary head learns, comma-separated (a name that holds commas, such as
    ``Crying, sobbing``, is recognised as a whole)."""
    aux_weight: float = 0.5
    """Weight of the auxiliary soft-target (binary cross-entropy) term (>= 0)."""


@dataclass(frozen=True)
class RunSettings:
    out: str = "runs/latest"
    """Run folder."""
    seed: int = 0
    """Seed for scenes, crops, augmentation, initialisation and batches (the splits follow ``data.split_seed``)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_epochs: int = 2
    """Linear warm-up epochs before linear decay."""
    bootstrap: int = 1000
    """Bootstrap resamples for confidence intervals."""
    quantize: bool = True
    """Also write student.int8.onnx."""


@dataclass(frozen=True)
class Settings:
    data: DataSettings = field(default_factory=DataSettings)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    student: StudentSettings = field(default_factory=StudentSettings)
    kd: KdSettings = field(default_factory=KdSettings)
    run: RunSettings = field(default_factory=RunSettings)
    onset: OnsetSettings = field(default_factory=OnsetSettings)
    """The daemon's onset detector (the same ``--onset-*`` settings as `edge run`): it places every window."""

    def validate(self) -> "Settings":
        d, t, s, k = self.data, self.teacher, self.student, self.kd
        checks = [
            (bool(d.manifest), "data.manifest", d.manifest, "is required (--data)"),
            (not Path(self.run.out).is_file(), "run.out", self.run.out, "is a file; give a folder for the run"),
            (0 < d.window_s <= 10, "data.window_s", d.window_s, "must be in (0, 10] seconds"),
            (0 <= d.pre_roll_s < d.window_s, "data.pre_roll_s", d.pre_roll_s, "must be in [0, window_s)"),
            (d.pad in ("context", "wrap", "zero"), "data.pad", d.pad, "must be context, wrap or zero"),
            (8000 <= d.sample_rate <= 48000, "data.sample_rate", d.sample_rate, "must be in [8000, 48000] Hz"),
            (0 <= d.level_min_db <= d.level_max_db <= 80, "data.level_min_db", (d.level_min_db, d.level_max_db),
             "and data.level_max_db must satisfy 0 <= min <= max <= 80 dB"),
            (0.5 <= d.context_before_s <= 30, "data.context_before_s", d.context_before_s, "must be in [0.5, 30] s"),
            (round(d.window_s * d.sample_rate) >= 2 * 512 * d.sample_rate // 16000, "data.window_s", d.window_s,
             "is too short for the front end (at least 64 ms)"),
            (d.crops_per_clip >= 1, "data.crops_per_clip", d.crops_per_clip, "must be >= 1"),
            (0 <= d.near_windows <= 8, "data.near_windows", d.near_windows, "must be in 0..8"),
            (0 <= d.shifted_windows <= 8, "data.shifted_windows", d.shifted_windows, "must be in 0..8"),
            (0.05 <= d.shifted_clear_s <= 0.5, "data.shifted_clear_s", d.shifted_clear_s, "must be in [0.05, 0.5] s"),
            (not d.shifted_phases or d.shifted_windows > 0, "data.shifted_phases", d.shifted_phases,
             "needs data.shifted_windows > 0 (the phases become shifted windows)"),
            (0 <= d.synthetic_per_kind <= 10_000, "data.synthetic_per_kind", d.synthetic_per_kind, "must be in 0..10000"),
            (t.freeze_feature_encoder in ("yes", "no", "auto"), "teacher.freeze_feature_encoder",
             t.freeze_feature_encoder, "must be yes, no or auto"),
            (t.epochs >= 0 and s.epochs >= 1, "student.epochs", s.epochs, "must be >= 1 (teacher.epochs >= 0)"),
            (not t.source.startswith("onnx:") or t.epochs == 0, "teacher.epochs", t.epochs,
             "must be 0 for an onnx: teacher (a tagger is used frozen)"),
            (t.head in ("classes", "probe"), "teacher.head", t.head, "must be classes or probe"),
            (0 <= t.probe_views <= 8 and (t.probe_views == 0 or t.head == "probe"), "teacher.probe_views",
             t.probe_views, "must be in 0..8, and 0 unless teacher.head = probe"),
            (t.probe_views == 0 or self.augment.apply, "teacher.probe_views", t.probe_views,
             "must be 0 with --no-augment-apply (the copies are augmented)"),
            (t.head == "classes" or t.source.startswith("onnx:"), "teacher.head", t.head,
             "must be classes unless teacher.source is onnx:PATH (a probe reads a tagger's embedding)"),
            (not t.source.startswith("onnx:") or s.kind == "cnn", "student.kind", s.kind,
             "must be cnn for an onnx: teacher (w2v-small copies a wav2vec2 teacher's layers)"),
            (s.kind in ("cnn", "w2v-small"), "student.kind", s.kind, "must be cnn or w2v-small"),
            (s.pooling in POOLINGS, "student.pooling", s.pooling, f"must be one of {', '.join(POOLINGS)}"),
            (1000 <= s.f_max_hz <= d.sample_rate / 2, "student.f_max_hz", s.f_max_hz,
             f"must be in [1000, {d.sample_rate / 2:g}] Hz (half the sample rate)"),
            (0 <= k.alpha <= 1, "kd.alpha", k.alpha, "must be in [0, 1]"),
            (k.temperature > 0, "kd.temperature", k.temperature, "must be > 0"),
            (k.feature_weight >= 0, "kd.feature_weight", k.feature_weight, "must be >= 0"),
            (k.aux_weight >= 0, "kd.aux_weight", k.aux_weight, "must be >= 0"),
            (not k.aux_teacher or k.aux_teacher.startswith("onnx:"), "kd.aux_teacher", k.aux_teacher,
             "must be onnx:PATH of a pretrained tagger"),
            (not k.aux_teacher or s.kind == "cnn", "student.kind", s.kind, "must be cnn for an auxiliary head"),
            (t.lr >= 0 and s.lr >= 0, "lr", (t.lr, s.lr), "must be >= 0"),
            (not d.label_check or d.label_check.startswith("onnx:"), "data.label_check", d.label_check,
             "must be onnx:PATH of a pretrained tagger"),
            (0 < d.label_check_min <= 1, "data.label_check_min", d.label_check_min, "must be in (0, 1]"),
        ]
        for ok, key, value, why in checks:
            if not ok:
                raise ValueError(f"{key} = {value!r} {why}")
        pairs = [p for p in d.label_map.split(",") if p]
        if any(p.count("=") != 1 or not all(p.split("=")) for p in pairs):
            raise ValueError(f"data.label_map = {d.label_map!r} must be comma-separated from=to pairs")
        try:
            widths = [int(w) for w in s.widths.split(",")]
        except ValueError:
            widths = []
        if not widths or min(widths) < 1:
            raise ValueError(f"student.widths = {s.widths!r} must be comma-separated positive integers")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SHORTCUTS = {"--data": "data_manifest", "--teacher": "teacher_source", "--student": "student_kind",
             "--out": "run_out", "--seed": "run_seed"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--<section>-<field>`` for every settings field, plus the short forms in ``SHORTCUTS``."""
    parser.add_argument("--config", type=Path, help="TOML file with [data], [augment], [teacher], [student], [kd], [run]")
    config.add_arguments(parser, Settings, SHORTCUTS)


def from_args(args: argparse.Namespace) -> Settings:
    return config.build(Settings, file=args.config, args=args).validate()
