"""`trainer benchmark`: student (float, int8) vs teacher vs wav2vec2-base-sized models, side by side.

Parameters from the PyTorch model; MACs per second of audio from ``torch.utils.flop_counter`` (FLOPs / 2,
matrix products and convolutions; the student's STFT is not counted); file size and single-thread
latency per window (the run's window length) from onnxruntime, all measured in one run.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .export import contract_metadata, export_onnx, seeded_input
from .models import build_teacher, build_w2v_small, count_parameters, load_checkpoint


@dataclass
class Row:
    name: str
    params: int
    size_bytes: int
    macs_per_s: float
    latency_ms: float


def macs_per_second(model: torch.nn.Module, window: int, sample_rate: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, window) + 0.01)
    return counter.get_total_flops() / 2 * sample_rate / window


def latency_ms(path: Path, x: np.ndarray, repeats: int) -> float:
    from edge.inference import make_session

    sess = make_session(path, threads=1)
    for _ in range(3):
        sess.run(None, {"audio": x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {"audio": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def run_benchmark(run: Path, *, repeats: int = 50, include_base: bool = True) -> list[Row]:
    from tqdm import tqdm

    student = load_checkpoint(run / "student")
    teacher = load_checkpoint(run / "teacher")
    spec = student.spec
    x = seeded_input(spec, batch=1)
    entries: list[tuple[str, torch.nn.Module, Path | None]] = [
        ("student (float)", student, run / "student.onnx"),
        ("student (int8)", student, run / "student.int8.onnx"),
        ("teacher", teacher, None),
    ]
    if include_base:
        base = build_teacher("preset:base", spec.labels, spec.positive_label, window_samples=spec.window_samples,
                             pre_roll_samples=spec.pre_roll_samples)
        entries += [("wav2vec2-base-sized", base, None),
                    ("w2v-small (base encoder, 2 layers)", build_w2v_small(base, 2), None)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, path in tqdm(entries, desc="benchmark", unit="model"):
            if path is None:
                path = Path(tmp) / f"{len(rows)}.onnx"
                meta = contract_metadata(model.spec, threshold=0.5, train_data="-", teacher="-", metrics={})
                export_onnx(model.eval(), path, meta, name=name, atol=1e-3)
            rows.append(Row(name, count_parameters(model), path.stat().st_size,
                            macs_per_second(model, spec.window_samples, spec.sample_rate),
                            latency_ms(path, x, repeats)))
    print_table(rows, spec.window_samples / spec.sample_rate)
    return rows


def print_table(rows: list[Row], window_s: float) -> None:
    ref = next(r for r in rows if r.name == "teacher")
    base = next((r for r in rows if r.name == "wav2vec2-base-sized"), None)
    head = f"{'model':36} {'params':>12} {'file':>10} {'MMACs/s':>10} {'latency ms':>11} {'x faster than teacher':>22}"
    if base:
        head += f" {'x faster than base':>19}"
    print(head)
    for r in rows:
        line = (f"{r.name:36} {r.params:12,d} {r.size_bytes / 1024:9.0f}K {r.macs_per_s / 1e6:10.1f} "
                f"{r.latency_ms:11.3f} {ref.latency_ms / r.latency_ms:22.1f}")
        if base:
            line += f" {base.latency_ms / r.latency_ms:19.1f}"
        print(line)
    print(f"latency: median single-thread onnxruntime time for one {window_s:g} s window (the run's model window), "
          "every model measured side by side in this run")
