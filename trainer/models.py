"""Models and self-describing checkpoints. No training code lives here.

Every model is an ``nn.Module`` mapping raw audio ``[batch, samples]`` (16 kHz, [-1, 1]) to logits
``[batch, n_classes]``. A checkpoint is a folder holding ``coughwatch.json`` (kind, labels, window,
front end, architecture) next to the weights, so it can be loaded without the command that made it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .frontend import FrontendConfig, LogMel
from .settings import POOLINGS

SPEC_FILE = "coughwatch.json"


@dataclass(frozen=True)
class ModelSpec:
    kind: str
    """``cnn`` (log-mel CNN student), ``hf`` (a Hugging Face audio classifier: teacher, w2v-small), ``onnx-tagger``
    (a pretrained tagger's classes) or ``onnx-probe`` (a linear head on a pretrained tagger's embedding)."""
    labels: tuple[str, ...]
    positive_label: str
    sample_rate: int = 16000
    """Input sample rate in Hz."""
    window_samples: int = 16000
    """Window length in samples."""
    pre_roll_samples: int = 4000
    """Samples before the anchor (onset / energy peak) at the start of a window."""
    pad: str = "context"
    """What training and evaluation heard around a recording (``trainer.context``): ``context`` (a room of other
    recordings), ``zero`` (digital silence) or ``wrap`` (the recording looped)."""
    source: str = ""
    """Where the weights came from (hub id, path or ``preset:<name>``)."""
    normalize: bool = True
    """``hf`` only: zero-mean unit-variance normalise each example (wav2vec2 feature extractor)."""
    frontend: dict = field(default_factory=dict)
    widths: tuple[int, ...] = (16, 32, 48, 64)
    """``cnn`` only: channels of the conv blocks."""
    pooling: str = "mean"
    """``cnn`` only: ``mean`` over frequency and time, ``meanstd`` (time mean and standard deviation too) or
    ``position`` (frequency mean, then each channel's learned softmax weighting of the time steps)."""
    classes: str = ""
    """``onnx-tagger`` only: the tagger's class names that make up the positive label."""
    band_stats: bool = False
    """``cnn`` only: the head also sees each mel band's mean and standard deviation over time of the log-mel
    input (the classical reference's features), batch-normalised: a skip path past the conv blocks."""
    aux_classes: tuple[str, ...] = ()
    """``cnn`` only: classes of a pretrained tagger whose soft scores an auxiliary head learned in training
    (``--kd-aux-teacher``); the head is not part of the exported model."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        raw = json.loads(text)
        raw["labels"] = tuple(raw["labels"])
        raw["widths"] = tuple(raw.get("widths", cls.widths))
        raw["aux_classes"] = tuple(raw.get("aux_classes", ()))
        return cls(**raw)


class CnnStudent(nn.Module):
    """Log-mel front end + small CNN; well under 100k parameters with the default widths."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.frontend = LogMel(FrontendConfig(**spec.frontend) if spec.frontend else FrontendConfig())
        blocks, cin = [], 1
        for i, width in enumerate(spec.widths):
            blocks += [
                nn.Conv2d(cin, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if i < len(spec.widths) - 1:
                blocks.append(nn.MaxPool2d(2))
            cin = width
        self.body = nn.Sequential(*blocks)
        if spec.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {spec.pooling!r}")
        self.dropout = nn.Dropout(0.2)
        if spec.pooling == "position":
            # zeros: a uniform weighting, i.e. mean pooling, until training says where in the window to look
            self.time_logits = nn.Parameter(torch.zeros(cin, self._pooled_frames()))
        n_pooled = cin * (2 if spec.pooling == "meanstd" else 1)
        if spec.band_stats:
            self.band_norm = nn.BatchNorm1d(2 * self.frontend.cfg.n_mels)
            n_pooled += 2 * self.frontend.cfg.n_mels
        self.head = nn.Linear(n_pooled, len(spec.labels))
        self.aux_head = nn.Linear(n_pooled, len(spec.aux_classes)) if spec.aux_classes else None

    def forward(self, audio: torch.Tensor, return_features: bool = False, return_aux: bool = False):
        """Logits; with ``return_features`` also the CNN activations before pooling (for the feature penalty), with
        ``return_aux`` also the auxiliary head's logits (one per ``spec.aux_classes``), in that order."""
        logmel = self.frontend(audio)  # [batch, 1, mels, frames]
        features = self.body(logmel)  # [batch, channels, mels', frames']
        if self.spec.pooling == "meanstd":
            pooled = _mean_std_over_time(features.mean(dim=2))
        elif self.spec.pooling == "position":
            pooled = (features.mean(dim=2) * torch.softmax(self.time_logits, dim=1)).sum(dim=2)
        else:
            pooled = features.mean(dim=(2, 3))
        if self.spec.band_stats:
            pooled = torch.cat([pooled, self.band_norm(_mean_std_over_time(logmel.squeeze(1)))], dim=1)
        pooled = self.dropout(pooled)
        logits = self.head(pooled)
        if not (return_features or return_aux):
            return logits
        if return_aux and self.aux_head is None:
            raise ValueError("this student has no auxiliary head (spec.aux_classes is empty)")
        return (logits, *([features] if return_features else []), *([self.aux_head(pooled)] if return_aux else []))

    def _pooled_frames(self) -> int:
        """Time steps left after the conv blocks for one window (each max-pool halves them, rounding down)."""
        with torch.no_grad():
            frames = self.frontend(torch.zeros(1, self.spec.window_samples)).shape[-1]
        for _ in self.spec.widths[:-1]:
            frames //= 2
        if frames < 1:
            raise ValueError(f"a window of {self.spec.window_samples} samples is too short for position pooling "
                             f"through {len(self.spec.widths)} conv blocks")
        return frames


def _mean_std_over_time(x: torch.Tensor) -> torch.Tensor:
    """``[batch, rows, frames]`` -> ``[batch, 2 * rows]``: each row's mean, then its standard deviation."""
    mean = x.mean(dim=2)
    std = torch.sqrt(((x - mean.unsqueeze(2)) ** 2).mean(dim=2) + 1e-5)
    return torch.cat([mean, std], dim=1)


class HfAudioClassifier(nn.Module):
    """A Hugging Face ``*ForSequenceClassification`` audio model behind the raw-audio interface."""

    def __init__(self, spec: ModelSpec, model: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.model = model

    def forward(self, audio: torch.Tensor, return_features: bool = False):
        """Logits; with ``return_features`` also the conv feature encoder's output, captured in the same pass."""
        if self.spec.normalize:
            audio = (audio - audio.mean(-1, keepdim=True)) / torch.sqrt(audio.var(-1, keepdim=True) + 1e-7)
        if not return_features:
            return self.model(input_values=audio).logits
        captured = []
        hook = self.model.base_model.feature_extractor.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            logits = self.model(input_values=audio).logits
        finally:
            hook.remove()
        return logits, captured[0]


TEACHER_PRESETS = {
    # Small enough to fine-tune on two CPU cores in minutes; for tests and machines without the hub.
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
    "small": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, intermediate_size=192,
                  conv_dim=(48,) * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8),
    # The shape of facebook/wav2vec2-base (95M parameters), randomly initialised: for benchmarks.
    "base": dict(),
}


def build_teacher(source: str, labels: tuple[str, ...], positive_label: str, *, window_samples: int,
                  pre_roll_samples: int, pad: str = "context", sample_rate: int = 16000, classes: str = "Cough",
                  head: str = "classes"):
    """A teacher from ``preset:<tiny|small|base>``, a hub id, a local ``save_pretrained`` folder or ``onnx:PATH``
    (``head``: ``classes`` maps the tagger's classes onto our labels, ``probe`` reads its embedding, unfitted)."""
    from transformers import AutoConfig, AutoModelForAudioClassification, Wav2Vec2Config

    from .tagger import PREFIX, OnnxTagger, ProbeTeacher, is_tagger

    if is_tagger(source):
        tagger = OnnxTagger(source[len(PREFIX):], labels, positive_label, classes, sample_rate)
        model = ProbeTeacher(tagger) if head == "probe" else tagger
        model.spec = ModelSpec(kind="onnx-probe" if head == "probe" else "onnx-tagger", labels=labels,
                               positive_label=positive_label, sample_rate=sample_rate, window_samples=window_samples,
                               pre_roll_samples=pre_roll_samples, pad=pad, source=source, classes=classes)
        return model

    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    common = dict(num_labels=len(labels), id2label=id2label, label2id=label2id)
    if source.startswith("preset:"):
        name = source.split(":", 1)[1]
        if name not in TEACHER_PRESETS:
            raise ValueError(f"unknown teacher preset {name!r}; choose one of {sorted(TEACHER_PRESETS)}")
        config = Wav2Vec2Config(**TEACHER_PRESETS[name], mask_time_prob=0.0, layerdrop=0.0, **common)
        model = AutoModelForAudioClassification.from_config(config)
        normalize = True
    else:
        config = AutoConfig.from_pretrained(source, **common)
        _check_teacher_rate(source, sample_rate)
        model = AutoModelForAudioClassification.from_pretrained(source, config=config, ignore_mismatched_sizes=True)
        normalize = _wants_normalisation(source)
    spec = ModelSpec(kind="hf", labels=labels, positive_label=positive_label, sample_rate=sample_rate,
                     window_samples=window_samples, pre_roll_samples=pre_roll_samples, pad=pad, source=source,
                     normalize=normalize)
    return HfAudioClassifier(spec, model)


def _check_teacher_rate(source: str, sample_rate: int) -> None:
    """A pretrained teacher hears audio at the rate it was pretrained on; refuse another one clearly."""
    from transformers import AutoFeatureExtractor

    try:
        expected = getattr(AutoFeatureExtractor.from_pretrained(source), "sampling_rate", None)
    except OSError:  # no preprocessor_config.json: wav2vec2's 16 kHz
        expected = 16000
    if expected and int(expected) != sample_rate:
        raise ValueError(f"teacher {source} was pretrained on {expected} Hz audio but data.sample_rate is "
                         f"{sample_rate} Hz; use --data-sample-rate {expected} or a preset teacher")


def _wants_normalisation(source: str) -> bool:
    from transformers import AutoFeatureExtractor

    try:
        return bool(getattr(AutoFeatureExtractor.from_pretrained(source), "do_normalize", True))
    except OSError:  # no preprocessor_config.json: wav2vec2's default
        return True


def build_cnn_student(labels: tuple[str, ...], positive_label: str, *, window_samples: int,
                      pre_roll_samples: int, pad: str = "context", widths: tuple[int, ...] = ModelSpec.widths,
                      pooling: str = "mean", f_max_hz: float = FrontendConfig.f_max,
                      band_stats: bool = False, sample_rate: int = 16000,
                      aux_classes: tuple[str, ...] = ()) -> CnnStudent:
    if not 1000 <= f_max_hz <= sample_rate / 2:
        raise ValueError(f"student.f_max_hz = {f_max_hz} must be in [1000, {sample_rate / 2:g}] Hz "
                         f"(half the sample rate, {sample_rate} Hz)")
    n_fft = FrontendConfig.n_fft * sample_rate // 16000
    n_fft = 1 << max(6, (n_fft - 1).bit_length())  # a power of two near 32 ms (fast FFT in onnxruntime)
    frontend = FrontendConfig(sample_rate=sample_rate, n_fft=n_fft, hop=round(FrontendConfig.hop * sample_rate / 16000),
                              f_max=float(f_max_hz)).to_dict()
    spec = ModelSpec(kind="cnn", labels=labels, positive_label=positive_label, sample_rate=sample_rate,
                     window_samples=window_samples,
                     pre_roll_samples=pre_roll_samples, pad=pad, source="cnn", frontend=frontend,
                     widths=tuple(widths), pooling=pooling, band_stats=band_stats, aux_classes=tuple(aux_classes))
    return CnnStudent(spec)


def build_w2v_small(teacher: HfAudioClassifier, layers: int = 2) -> HfAudioClassifier:
    """The teacher's convolutional encoder with its first ``layers`` transformer layers, weights copied."""
    from transformers import AutoModelForAudioClassification

    config = teacher.model.config.__class__.from_dict(teacher.model.config.to_dict())
    if not 1 <= layers <= config.num_hidden_layers:
        raise ValueError(f"w2v-small layers must be in 1..{config.num_hidden_layers}, got {layers}")
    config.num_hidden_layers = layers
    model = AutoModelForAudioClassification.from_config(config)
    missing, _unexpected = model.load_state_dict(teacher.model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"w2v-small could not copy these teacher weights: {missing[:5]}")
    spec = ModelSpec(**{**asdict(teacher.spec), "source": f"w2v-small({layers} layers of {teacher.spec.source})"})
    return HfAudioClassifier(spec, model)


def count_parameters(model: nn.Module) -> int:
    """Trainable and frozen weights; an ONNX tagger counts its graph's initializers."""
    return getattr(model, "n_parameters", None) or sum(p.numel() for p in model.parameters())


def save_checkpoint(model: nn.Module, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(model.spec.to_json())
    if model.spec.kind == "onnx-tagger":
        return folder  # the spec names the tagger's file; there are no weights of ours to save
    if isinstance(model, HfAudioClassifier):
        model.model.save_pretrained(folder)
    else:
        torch.save(model.state_dict(), folder / "model.pt")
    return folder


def load_checkpoint(folder: str | Path) -> nn.Module:
    """Load any checkpoint written by :func:`save_checkpoint`, in eval mode on the CPU."""
    folder = Path(folder)
    spec_path = folder / SPEC_FILE
    if not spec_path.is_file():
        raise FileNotFoundError(f"{folder} is not a coughwatch checkpoint (no {SPEC_FILE})")
    spec = ModelSpec.from_json(spec_path.read_text())
    if spec.kind == "cnn":
        model: nn.Module = CnnStudent(spec)
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    elif spec.kind in ("onnx-tagger", "onnx-probe"):
        model = build_teacher(spec.source, spec.labels, spec.positive_label, window_samples=spec.window_samples,
                              pre_roll_samples=spec.pre_roll_samples, pad=spec.pad, sample_rate=spec.sample_rate,
                              classes=spec.classes, head="probe" if spec.kind == "onnx-probe" else "classes")
        if spec.kind == "onnx-probe":
            model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    elif spec.kind == "hf":
        from transformers import AutoModelForAudioClassification

        model = HfAudioClassifier(spec, AutoModelForAudioClassification.from_pretrained(folder))
    else:
        raise ValueError(f"{spec_path}: unknown model kind {spec.kind!r}")
    return model.eval()
