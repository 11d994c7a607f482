"""Training loops: teacher fine-tuning and student distillation, on Hugging Face Accelerate.

The same code runs on a CPU, one GPU (bf16 autocast) and several GPUs under ``accelerate launch``.
"""
from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .augment import AugmentSettings, augment, telephone_rates
from .context import SceneMaker, is_telephone, seeded_rng
from .data import Clip, ManifestError
from .losses import feature_penalty, kd_loss, soft_target_bce, warmup_linear

log = logging.getLogger(__name__)


@dataclass
class WindowSet:
    """Windows cut by the daemon's rule from recordings in their scenes (``trainer.context``)."""

    windows: np.ndarray
    """``[n, window_samples]`` float32."""
    clip: np.ndarray
    """Index, in its split's clip list, of the recording each window belongs to."""
    targets: np.ndarray
    """Class index of each window (its recording's label)."""
    phone: np.ndarray
    """Whether each window came through a telephone channel (its recording did; so did the room of its scene)."""
    unheard: int = 0
    """Recordings in which the onset detector found no sound at all (the daemon would never classify them)."""

    @property
    def keys(self) -> list[str]:
        """Content hash of each window: identifies a cached teacher output exactly."""
        return [hashlib.sha1(w.tobytes()).hexdigest() for w in self.windows]


def _collect(pieces: list[tuple[int, np.ndarray, np.ndarray]], clips: list[Clip], window: int,
             unheard: int) -> WindowSet:
    """``pieces``: (recording index, windows, class index of each window)."""
    if not pieces:
        raise ManifestError("the onset detector found no sound in any recording of this split")
    clip = np.concatenate([np.full(len(w), i) for i, w, _ in pieces])
    return WindowSet(np.concatenate([w for _, w, _ in pieces]).reshape(-1, window), clip,
                     np.concatenate([t for _, _, t in pieces]),
                     np.array([is_telephone(clips[i]) for i in clip.tolist()], dtype=bool), unheard)


def _piece(i: int, clip: Clip, maker: SceneMaker, scene, own: list[int], room: list[int], labels: tuple[str, ...],
           room_label: str, window: int, pre_roll: int) -> tuple[int, np.ndarray, np.ndarray]:
    room = room if room_label else []
    targets = np.array([labels.index(clip.label)] * len(own) + [labels.index(room_label or clip.label)] * len(room))
    return i, maker.windows(scene, own + room, window, pre_roll), targets


def _later_phases(event: tuple[int, int], scene, own: list[int], maker: SceneMaker, clear_s: float) -> list[int]:
    """The ``own`` onsets inside ``event`` (the recording's loudest event, the stream benchmark's truth of one cough:
    :func:`trainer.stream.single_event`, in samples of the recording) at least ``clear_s`` after the event's onset
    (the heard onset nearest its start, within ``ONSET_TOLERANCE_S``): that cough's later phases, which the
    benchmark counts as the same cough."""
    start, end = scene.start + event[0], scene.start + event[1]
    near = [o for o in own if abs(o - start) <= maker.tolerance]
    if not near:
        return []
    first = min(near, key=lambda o: abs(o - start))
    return [o for o in own if first + round(clear_s * maker.s.sample_rate) <= o < end]


def _one(onsets: list[int], rng: np.random.Generator) -> list[int]:
    """One onset drawn from ``onsets`` (none from none)."""
    return [onsets[int(rng.integers(len(onsets)))]] if onsets else []


def training_windows(clips: list[Clip], maker: SceneMaker, labels: tuple[str, ...], *, per_clip: int, window: int,
                     pre_roll: int, seed: int, room_label: str = "", near: int = 0, shifted: int = 0,
                     shifted_clear_s: float = 0.25, shifted_phases: bool = False, progress: bool = True) -> WindowSet:
    """``per_clip`` scenes per recording (each its own room and level), one onset's window drawn from each, and
    with ``room_label`` one window at an onset of the room too (labelled so: the daemon cuts those as well), and
    for a recording not labelled ``room_label``, ``near`` windows that hold it off its place
    (:meth:`SceneMaker.near_anchors`) and ``shifted`` windows beside the drawn onset
    (:meth:`SceneMaker.shifted_anchors`), labelled ``room_label``; with ``shifted_phases`` the onsets heard inside
    the recording's loudest cough after its first (:func:`_later_phases`) come first among the shifted windows and
    are never drawn as the cough's own window."""
    from tqdm import tqdm

    from .stream import single_event

    pieces, unheard = [], 0
    for i, clip in enumerate(tqdm(clips, desc="training windows", unit="clip", disable=not progress)):
        heard = False
        event = single_event(clip.audio, maker.s.sample_rate) \
            if shifted_phases and room_label and clip.label != room_label else None
        for k in range(per_clip):
            rng = seeded_rng(seed, "train", clip.sha256, k)
            scene = maker.scene(clip, rng)
            own, room = maker.split_anchors(scene)
            heard = heard or bool(own)
            if own or (room and room_label):
                beside = room_label and own and clip.label != room_label
                off = maker.near_anchors(scene, room, near, window, pre_roll, rng) if beside else []
                phases = _later_phases(event, scene, own, maker, shifted_clear_s) if beside and event else []
                coughs = [o for o in own if o not in phases]
                onset = _one(coughs, rng)
                if beside:
                    taken = phases[:shifted]
                    off += taken + maker.shifted_anchors(coughs, onset[0], shifted - len(taken), window, pre_roll, rng,
                                                         shifted_clear_s)
                pieces.append(_piece(i, clip, maker, scene, onset, _one(room, rng) + off, labels, room_label,
                                     window, pre_roll))
        unheard += not heard
    return _collect(pieces, clips, window, unheard)


def evaluation_windows(clips: list[Clip], maker: SceneMaker, labels: tuple[str, ...], *, window: int, pre_roll: int,
                       seed: int, split: str, room_label: str = "", progress: bool = True) -> WindowSet:
    """One seeded scene per recording; the window of every onset the daemon's detector reports in it (the room's
    onsets too, labelled ``room_label``, when given)."""
    from tqdm import tqdm

    pieces, unheard = [], 0
    for i, clip in enumerate(tqdm(clips, desc=f"{split} windows", unit="clip", disable=not progress)):
        scene = maker.scene(clip, seeded_rng(seed, split, clip.sha256))
        own, room = maker.split_anchors(scene)
        unheard += not own
        if own or (room and room_label):
            pieces.append(_piece(i, clip, maker, scene, own, room, labels, room_label, window, pre_roll))
    return _collect(pieces, clips, window, unheard)


class CropDataset(Dataset):
    """Training windows; augmentation applies to the student's input only (the teacher saw them clean)."""

    def __init__(self, ws: WindowSet, aug: AugmentSettings | None, seed: int, sample_rate: int = 16000) -> None:
        self.ws, self.aug, self.sample_rate = ws, aug, sample_rate
        self.targets = ws.targets
        self.rng = np.random.default_rng(seed)
        self.telephone_p = telephone_rates(ws.phone, ws.targets, aug.telephone_p) \
            if aug is not None and aug.telephone_balance else None

    def __len__(self) -> int:
        return len(self.ws.windows)

    def clean(self, i: int) -> np.ndarray:
        return self.ws.windows[i]

    def __getitem__(self, i: int):
        x = self.clean(i)
        if self.aug is not None:
            background = self.clean(int(self.rng.integers(len(self))))
            x = augment(x, self.rng, self.aug, self.sample_rate, background=background,
                        telephone_p=None if self.telephone_p is None else float(self.telephone_p[i]))
        return torch.from_numpy(np.ascontiguousarray(x)), int(self.targets[i]), i


def balanced_loader(ds: CropDataset, batch_size: int, seed: int, per_epoch: int) -> DataLoader:
    """Sample crops with weights inversely proportional to their class frequency."""
    counts = np.bincount(ds.targets)
    weights = torch.as_tensor(1.0 / counts[ds.targets], dtype=torch.double)
    sampler = torch.utils.data.WeightedRandomSampler(weights, per_epoch, replacement=True,
                                                     generator=torch.Generator().manual_seed(seed))
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=False)


@torch.no_grad()
def predict_logits(model: nn.Module, windows: np.ndarray, batch_size: int = 64, accelerator=None,
                   desc: str = "") -> np.ndarray:
    from tqdm import tqdm

    model.eval()
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    outs = []
    starts = range(0, len(windows), batch_size)
    for s in tqdm(starts, desc=desc or "predicting", unit="batch", leave=False, disable=not desc):
        x = torch.from_numpy(windows[s: s + batch_size]).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outs.append(model(x).float().cpu())
    return torch.cat(outs).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Schedule:
    """How one model trains: AdamW, a linear warm-up, then linear decay to zero."""

    epochs: int
    """Passes over the loader."""
    lr: float
    """Peak learning rate, reached at the end of the warm-up."""
    weight_decay: float
    """AdamW's decoupled weight decay."""
    warmup_epochs: int
    """Epochs of linear warm-up (at most all steps but one)."""


@dataclass(frozen=True)
class Selection:
    """The validation windows on which the best epoch is chosen, by ROC-AUC of the positive class."""

    windows: np.ndarray
    """``[n, window_samples]`` float32, cut by the daemon's rule (:func:`evaluation_windows`)."""
    targets: np.ndarray
    """Class index of each window."""
    positive: int
    """Index of the positive class."""

    def roc_auc(self, model: nn.Module, accelerator) -> float:
        from sklearn.metrics import roc_auc_score

        probs = softmax(predict_logits(model, self.windows, accelerator=accelerator))
        return float(roc_auc_score(self.targets == self.positive, probs[:, self.positive]))


def fit(model: nn.Module, loader: DataLoader, step_fn: StepFn, schedule: Schedule, selection: Selection,
        accelerator, desc: str) -> tuple[nn.Module, list[dict]]:
    """Train by ``schedule``; keep the epoch ``selection`` scores best.

    Returns the best model (unwrapped, on the accelerator's device) and the per-epoch history, where
    every loss term returned by ``step_fn`` is averaged and logged.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    total = schedule.epochs * len(loader)
    warmup = min(schedule.warmup_epochs * len(loader), total - 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_linear(step, warmup_steps=warmup, total_steps=total))
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
    history, best_auc, best_state = [], -1.0, None
    for epoch in range(schedule.epochs):
        terms = _train_epoch(model, loader, step_fn, opt, sched, params, accelerator,
                             f"{desc} {epoch + 1}/{schedule.epochs}")
        unwrapped = accelerator.unwrap_model(model)
        val_auc = selection.roc_auc(unwrapped, accelerator)
        row = {"epoch": epoch + 1, **terms, "val_auc": val_auc, "lr": float(sched.get_last_lr()[0])}
        history.append(row)
        log.info("%s epoch %d: %s", desc, epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
        if val_auc > best_auc:
            best_auc, best_state = val_auc, copy.deepcopy(unwrapped.state_dict())
    best = accelerator.unwrap_model(model)
    best.load_state_dict(best_state)
    return best.eval(), history


def _train_epoch(model, loader, step_fn: StepFn, opt, sched, params, accelerator, desc: str) -> dict[str, float]:
    """One pass over ``loader``; each loss term ``step_fn`` returns, averaged over the batches."""
    from tqdm import tqdm

    model.train()
    sums: dict[str, float] = {}
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, disable=not accelerator.is_local_main_process)
    for x, y, idx in bar:
        with accelerator.autocast():
            terms = step_fn(model, x, y, idx)
        accelerator.backward(terms["loss"])
        accelerator.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}")
    return {k: v / len(loader) for k, v in sums.items()}


def ce_step(model, x, y, idx):
    return {"loss": nn.functional.cross_entropy(model(x), y)}


def make_kd_step(teacher_logits: torch.Tensor, *, alpha: float, temperature: float, feature_weight: float,
                 aux_targets: torch.Tensor | None = None, aux_weight: float = 0.0) -> StepFn:
    """Distillation step against cached teacher logits (indexed by crop); with ``aux_targets`` (a tagger's cached
    soft scores per crop) the student's auxiliary head learns them too, weighted ``aux_weight``."""
    assert aux_weight >= 0.0, f"aux_weight must be >= 0, got {aux_weight}"
    use_aux = aux_targets is not None and aux_weight > 0

    def step(model, x, y, idx):
        # Always through the (possibly DDP-wrapped) model's forward, so gradients synchronise.
        flags = {}  # only the flags a model must know: Hugging Face students take return_features, not return_aux
        if feature_weight > 0:
            flags["return_features"] = True
        if use_aux:
            flags["return_aux"] = True
        outputs = model(x, **flags) if flags else (model(x),)
        logits = outputs[0]
        terms = kd_loss(logits.float(), teacher_logits[idx.cpu()].to(logits.device), y,
                        alpha=alpha, temperature=temperature)
        if feature_weight > 0:
            terms["feature"] = feature_penalty(outputs[1])
            terms["loss"] = terms["loss"] + feature_weight * terms["feature"]
        if use_aux:
            terms["aux"] = soft_target_bce(outputs[-1].float(), aux_targets[idx.cpu()].to(logits.device))
            terms["loss"] = terms["loss"] + aux_weight * terms["aux"]
        return terms

    return step


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over a model's parameter and buffer names and values: which weights produced a cached output."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def teacher_cache(teacher: nn.Module, ds: CropDataset, path: Path, accelerator) -> torch.Tensor:
    """Teacher logits for every training crop (clean audio), computed once and kept in the run folder.

    Reused only when both the windows (by content hash) and the teacher's weights match, so a re-run into the
    same folder with other data, scenes or another or retrained teacher recomputes.
    """
    return cached_outputs(path, ds.ws.keys, weights_digest(teacher), accelerator, "logits", lambda clean: torch.from_numpy(
        predict_logits(teacher, clean, accelerator=accelerator, desc="teacher outputs")), ds)


def tagger_cache(tagger, columns: list[int], ds: CropDataset, path: Path, accelerator) -> torch.Tensor:
    """A frozen tagger's scores of ``columns`` for every training crop (clean audio), cached like the teacher's:
    keyed by the windows, the tagger file's digest and the columns."""
    from tqdm import tqdm

    def compute(clean: np.ndarray) -> torch.Tensor:
        rows = [tagger.class_scores(clean[i:i + 1])[0, columns]
                for i in tqdm(range(len(clean)), desc="tagger outputs", unit="window", leave=False)]
        return torch.from_numpy(np.stack(rows).astype(np.float32))

    digest = weights_digest(tagger) + ":" + ",".join(map(str, columns))
    return cached_outputs(path, ds.ws.keys, digest, accelerator, "scores", compute, ds)


def cached_outputs(path: Path, keys: str, digest: str, accelerator, name: str,
                   compute: Callable[[np.ndarray], torch.Tensor], ds: CropDataset) -> torch.Tensor:
    """``compute(clean windows)``, or what ``path`` holds when it was made for the same windows and model."""
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached.get("keys") == keys and cached.get("teacher") == digest:
            log.info("%s: reusing %s", name, path)
            return cached[name]
        log.info("%s: %s was made for other crops or another model; recomputing", name, path)
    outputs = compute(np.stack([ds.clean(i) for i in range(len(ds))]))
    if accelerator.is_main_process:
        torch.save({"keys": keys, "teacher": digest, name: outputs}, path)
    accelerator.wait_for_everyone()
    return outputs
