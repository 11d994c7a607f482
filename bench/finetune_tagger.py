"""Fine-tune the verifier's tagger: its last layers trained with the probe's head, instead of the probe alone.

    python bench/finetune_tagger.py runs/probe-c --verifier models/cough-verifier --out runs/ft-verifier

The run is a `trainer distill --teacher onnx:PATH --teacher-head probe` folder; its windows are rebuilt from its
settings (as `trainer evaluate` does). The tagger's activations before ``--from-layer`` are cached once per tagger
position (the frozen part); the layers from there on, and the probe's linear head (started from ``--verifier``'s),
are trained on the run's training windows with class-balanced cross-entropy and chosen by ROC-AUC on its validation
windows. The result is written as a verifier folder: the tagger's ONNX file with those layers' weights replaced, and
``verifier.json`` with the new head (mix, threshold and ``tuned_for`` copied from ``--verifier``; choose the
threshold again with `trainer stream --choose-detector-threshold`).

A research aid, not part of the daemon.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge import config  # noqa: E402
from edge.verifier import Verifier, read_spec, tagger_starts, write_spec  # noqa: E402
from trainer.distill import prepare_data  # noqa: E402
from trainer.settings import Settings  # noqa: E402


def layer_convs(model, layer: int) -> list:
    """The Conv nodes of YAMNet's ``layer`` (depthwise, then pointwise), by their TF names."""
    return [n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith(f"yamnet_frames/layer{layer}/")]


def cut_point(model, layer: int) -> str:
    """The activation entering ``layer``'s depthwise conv."""
    return layer_convs(model, layer)[0].input[0]


def tensors(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Values of the tagger's named tensors (weights after dequantisation), by running it once on silence."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    asked = [n for n in names if n not in inits]
    for n in asked:
        model.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(asked, sess.run(asked, {sess.get_inputs()[0].name: np.zeros((1, 15600), np.float32)})))
    return {n: inits[n] if n in inits else got[n] for n in names}


class Tail:
    """The tagger's layers from ``first`` to 14 in torch, then the mean and maximum over positions and the probe."""

    def __init__(self, path: Path, first: int, spec) -> None:
        import onnx
        import torch
        from torch import nn

        model = onnx.load(str(path))
        self.convs = [c for layer in range(first, 15) for c in layer_convs(model, layer)]
        values = tensors(path, [n for c in self.convs for n in c.input[1:3]])
        mods = []
        for c in self.convs:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in c.attribute}
            w, b = values[c.input[1]], values[c.input[2]]
            conv = nn.Conv2d(w.shape[1] * attrs["group"], w.shape[0], w.shape[2:], stride=attrs["strides"],
                             groups=attrs["group"], padding=0)
            conv.weight.data = torch.from_numpy(w.copy())
            conv.bias.data = torch.from_numpy(b.copy())
            top, left, bottom, right = attrs["pads"]
            mods += [nn.ZeroPad2d((left, right, top, bottom)), conv, nn.ReLU()]
        self.body = nn.Sequential(*mods)
        self.mean = torch.tensor(spec.mean, dtype=torch.float32)
        self.scale = torch.tensor(spec.scale, dtype=torch.float32)
        self.head = nn.Linear(spec.weight.shape[1], spec.weight.shape[0])
        self.head.weight.data = torch.tensor(spec.weight, dtype=torch.float32)
        self.head.bias.data = torch.tensor(spec.bias, dtype=torch.float32)

    def parameters(self):
        return list(self.body.parameters()) + list(self.head.parameters())

    def embeddings(self, acts):
        """``acts`` ``[n, positions, C, H, W]`` -> ``[n, positions, width]``."""
        n, p = acts.shape[:2]
        out = self.body(acts.reshape(n * p, *acts.shape[2:])).mean(dim=(2, 3))
        return out.reshape(n, p, -1)

    def logits(self, acts):
        import torch

        e = self.embeddings(acts)
        x = torch.cat([e.mean(1), e.amax(1)], dim=1)
        return self.head((x - self.mean) / self.scale)


def activations(path: Path, cut: str, windows: np.ndarray, desc: str) -> np.ndarray:
    """``[n, positions, C, H, W]`` float16: the tagger's activation at ``cut`` for each position of each window."""
    import onnx
    import onnxruntime as ort
    from tqdm import tqdm

    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(cut, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name, width = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[-1]
    starts = tagger_starts(windows.shape[1], width)
    out = None
    for i, row in enumerate(tqdm(windows, desc=desc, unit="window", mininterval=10)):
        per = np.stack([sess.run([cut], {name: row[None, s:s + width]})[0][0] for s in starts])
        if out is None:
            out = np.empty((len(windows), *per.shape), np.float16)
        out[i] = per
    return out


def auc(tail, acts: np.ndarray, positive: np.ndarray, column: int) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, probabilities(tail, acts, column)))


def probabilities(tail, acts: np.ndarray, column: int, batch: int = 256) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(acts), batch):
            out.append(torch.softmax(tail.logits(torch.from_numpy(acts[i:i + batch].astype(np.float32))), -1)[:, column])
    return torch.cat(out).numpy()


def train(tail, acts, targets, val_acts, val_positive, column, *, epochs: int, lr: float, weight_decay: float,
          batch: int, seed: int) -> tuple[dict, list]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    counts = np.bincount(targets, minlength=2)
    weights = torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)
    opt = torch.optim.AdamW(tail.parameters(), lr=lr, weight_decay=weight_decay)
    best = (auc(tail, val_acts, val_positive, column), -1, [p.detach().clone() for p in tail.parameters()])
    history = [best[0]]
    print(f"epoch 0 (as given): validation ROC-AUC {best[0]:.4f}", flush=True)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(acts))
        total = 0.0
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = torch.from_numpy(acts[idx].astype(np.float32))
            y = torch.from_numpy(targets[idx].astype(np.int64))
            loss = torch.nn.functional.cross_entropy(tail.logits(x), y, weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        score = auc(tail, val_acts, val_positive, column)
        history.append(score)
        print(f"epoch {epoch}: train loss {total / len(order):.4f}, validation ROC-AUC {score:.4f}", flush=True)
        if score > best[0]:
            best = (score, epoch, [p.detach().clone() for p in tail.parameters()])
    for p, kept in zip(tail.parameters(), best[2]):
        p.data = kept
    return {"best_epoch": best[1], "best_auc": best[0]}, history


def write_tagger(path: Path, tail, out: Path) -> None:
    """The tagger's ONNX file with the tail's conv weights and biases in place of its own."""
    import onnx

    model = onnx.load(str(path))
    convs = {c.name for c in tail.convs}
    trained = [m for m in tail.body if hasattr(m, "weight")]
    inits = []
    for node in model.graph.node:
        if node.name in convs:
            conv = trained[[c.name for c in tail.convs].index(node.name)]
            tag = hashlib.sha1(node.name.encode()).hexdigest()[:10]
            node.input[1], node.input[2] = f"finetuned_{tag}_w", f"finetuned_{tag}_b"
            inits += [onnx.numpy_helper.from_array(conv.weight.detach().numpy(), node.input[1]),
                      onnx.numpy_helper.from_array(conv.bias.detach().numpy(), node.input[2])]
    model.graph.initializer.extend(inits)
    _prune(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _prune(model) -> None:
    """Drop nodes and initializers nothing reads any more."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    read = {i for n in model.graph.node for i in n.input}
    for init in [i for i in model.graph.initializer if i.name not in read]:
        model.graph.initializer.remove(init)


def main() -> None:
    import onnx

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--verifier", type=Path, default=Path("models/cough-verifier"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--from-layer", type=int, default=13, help="the first of YAMNet's layers (1-14) to train")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="folder for the cached activations")
    args = ap.parse_args()
    spec = read_spec(args.verifier)
    tagger = args.verifier / spec.tagger
    s = config.build(Settings, file=args.run / "settings.json")
    rd = prepare_data(s, args.run, progress=False, write=False)
    column = list(rd.labels).index(rd.positive)
    cut = cut_point(onnx.load(str(tagger)), args.from_layer)
    cache = args.cache or args.run
    acts = {}
    for split, ws in (("train", rd.train), ("val", rd.sets["val"])):
        f = cache / f"tagger_layer{args.from_layer}_{split}.npy"
        if not f.exists():
            np.save(f, activations(tagger, cut, ws.windows, f"{split} activations"))
        acts[split] = np.load(f)
    tail = Tail(tagger, args.from_layer, spec)
    val = rd.sets["val"]
    positive = val.targets == column
    result, history = train(tail, acts["train"], rd.train.targets, acts["val"], positive, column, epochs=args.epochs,
                            lr=args.lr, weight_decay=args.weight_decay, batch=args.batch, seed=args.seed)
    print(f"kept epoch {result['best_epoch']}: validation ROC-AUC {result['best_auc']:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    name = "yamnet-finetuned.onnx"
    write_tagger(tagger, tail, args.out / name)
    if (args.verifier / "TAGGER.md").is_file():  # the tagger's provenance and licence
        shutil.copyfile(args.verifier / "TAGGER.md", args.out / "TAGGER.md")
    digest = hashlib.sha256((args.out / name).read_bytes()).hexdigest()
    write_spec(args.out, replace(spec, tagger=name, tagger_sha256=digest,
                                 weight=tail.head.weight.detach().double().numpy(),
                                 bias=tail.head.bias.detach().double().numpy()))
    want = probabilities(tail, acts["val"][:64], column)
    got = Verifier(args.out)(val.windows[:64])
    print(f"verifier written to {args.out}; it differs from the torch tail by {np.abs(got - want).max():.2e} "
          "on 64 validation windows")


if __name__ == "__main__":
    main()
