"""A pretrained ONNX audio tagger as a frozen teacher (``--teacher onnx:PATH``), on a tiny real ONNX tagger."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """A real ONNX file shaped like YAMNet: ``waveform [1, 1600]`` -> ``scores [1, 3]`` (Speech, Cough, Sneeze)."""

    class Tiny(torch.nn.Module):
        def forward(self, waveform):
            peak = waveform.abs().amax(dim=1, keepdim=True)
            return torch.sigmoid(torch.cat([10 * peak - 1, 20 * peak - 2, -peak], dim=1))

    folder = tmp_path_factory.mktemp("tagger")
    torch.onnx.export(Tiny(), (torch.zeros(1, 1600),), str(folder / "tiny.onnx"), input_names=["waveform"],
                      output_names=["scores"], opset_version=17, dynamo=False)
    (folder / "class_map.csv").write_text("index,mid,display_name\n0,/m/a,Speech\n1,/m/b,Cough\n2,/m/c,Sneeze\n")
    return folder / "tiny.onnx"


def test_tagger_slides_over_the_window_and_maps_its_classes_onto_our_labels(tagger):
    from trainer.models import build_teacher

    teacher = build_teacher(f"onnx:{tagger}", ("cough", "not_cough"), "cough", window_samples=4000,
                            pre_roll_samples=1000, classes="Cough")
    x = np.zeros((2, 4000), dtype=np.float32)
    x[0, 3500] = 0.2  # only the last position (2400..4000) holds it
    scores = teacher.class_scores(x)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    # each class's highest score over the positions: Sneeze (falls with the peak) is highest where it is silent
    np.testing.assert_allclose(scores[0], sig(np.array([10 * 0.2 - 1, 20 * 0.2 - 2, 0.0])), rtol=1e-5)
    np.testing.assert_allclose(scores[1], sig(np.array([-1.0, -2.0, 0.0])), rtol=1e-5)
    probs = torch.softmax(teacher(torch.from_numpy(x)), -1).numpy()
    np.testing.assert_allclose(probs[:, 0], scores[:, 1], rtol=1e-5)  # P(cough) = the tagger's Cough score
    with pytest.raises(ValueError, match="'Laughing' is not one of the tagger's classes"):
        build_teacher(f"onnx:{tagger}", ("cough", "not_cough"), "cough", window_samples=4000, pre_roll_samples=1000,
                      classes="Laughing")
    with pytest.raises(ValueError, match="hears 16000 Hz audio but data.sample_rate is 8000 Hz"):
        build_teacher(f"onnx:{tagger}", ("cough", "not_cough"), "cough", window_samples=4000, pre_roll_samples=1000,
                      sample_rate=8000)


def test_class_names_with_commas_are_read_whole():
    from trainer.tagger import parse_class_names

    known = ["Cough", "Crying, sobbing", "Dishes, pots, and pans", "Speech"]
    assert parse_class_names("Cough,Crying, sobbing,Dishes, pots, and pans, Speech", known, "x") == [
        "Cough", "Crying, sobbing", "Dishes, pots, and pans", "Speech"]
    with pytest.raises(ValueError, match="kd.aux_classes = 'Cough,Crying': 'Crying' is not one"):
        parse_class_names("Cough,Crying", known, "kd.aux_classes")
    with pytest.raises(ValueError, match="give at least one"):
        parse_class_names(" , ", known, "kd.aux_classes")


def test_auxiliary_soft_target_term_is_weighted_and_logged():
    from trainer.losses import kd_loss, soft_target_bce
    from trainer.models import build_cnn_student
    from trainer.train import make_kd_step

    torch.manual_seed(0)
    student = build_cnn_student(("cough", "not_cough"), "cough", window_samples=4000, pre_roll_samples=1000,
                                widths=(4, 8), aux_classes=("Speech", "Sneeze")).eval()
    x, y, idx = torch.randn(3, 4000) * 0.1, torch.tensor([0, 1, 0]), torch.tensor([2, 0, 1])
    teacher, aux = torch.randn(3, 2), torch.rand(3, 2)
    terms = make_kd_step(teacher, alpha=0.5, temperature=2.0, feature_weight=0.0, aux_targets=aux,
                         aux_weight=0.25)(student, x, y, idx)
    logits, aux_logits = student(x, return_aux=True)
    expected_aux = soft_target_bce(aux_logits, aux[idx])
    assert torch.allclose(terms["aux"], expected_aux)
    kd = kd_loss(logits, teacher[idx], y, alpha=0.5, temperature=2.0)["loss"]
    assert torch.allclose(terms["loss"], kd + 0.25 * expected_aux)
    assert student(x).shape == (3, 2), "the exported forward is the main head only"
    with pytest.raises(AssertionError, match="aux_weight must be >= 0"):
        make_kd_step(teacher, alpha=0.5, temperature=2.0, feature_weight=0.0, aux_targets=aux, aux_weight=-1)


def test_tagger_settings_are_checked():
    from trainer.settings import DataSettings, Settings, StudentSettings, TeacherSettings

    with pytest.raises(ValueError, match="teacher.epochs = 3 must be 0 for an onnx: teacher"):
        Settings(data=DataSettings(manifest="x"), teacher=TeacherSettings(source="onnx:y.onnx", epochs=3)).validate()
    with pytest.raises(ValueError, match="student.kind = 'w2v-small' must be cnn for an onnx: teacher"):
        Settings(data=DataSettings(manifest="x"), teacher=TeacherSettings(source="onnx:y.onnx", epochs=0),
                 student=StudentSettings(kind="w2v-small")).validate()


def test_label_check_leaves_out_the_recordings_the_tagger_hears_a_cough_in(tagger, tmp_path):
    """A loud 'breathing' recording (the tiny tagger's Cough score rises with the peak) is left out; a quiet one and
    every cough stay; the scores are cached by recording and tagger."""
    from pathlib import Path

    from trainer.data import Clip
    from trainer.tagger import check_labels, label_checker

    def clip(name, label, peak):
        audio = np.zeros(4000, dtype=np.float32)
        audio[2000] = peak
        return Clip(Path(f"/data/{name}.flac"), label, name, {"original_label": label}, sha256=name, audio=audio)

    clips = [clip("loud", "breathing", 0.5), clip("quiet", "breathing", 0.01), clip("cough", "cough", 0.5)]
    cache = tmp_path / "cache.json"
    cough = label_checker(f"onnx:{tagger}", "Cough", "cough", 16000)
    kept, rows = check_labels(cough, 0.5, clips, "cough", cache, progress=False)
    assert [c.sha256 for c in kept] == ["quiet", "cough"]
    assert [(r["label"], r["left_out"]) for r in rows] == [("breathing", True), ("breathing", False)]
    assert rows[0]["score"] == pytest.approx(1 / (1 + np.exp(-8)), abs=1e-4)
    assert rows[1]["score"] == pytest.approx(1 / (1 + np.exp(1.8)), abs=1e-4)
    clips[0].audio = np.zeros(4000, dtype=np.float32)  # the same recording (by its digest): its score is remembered
    kept, _ = check_labels(cough, 0.5, clips, "cough", cache, progress=False)
    assert [c.sha256 for c in kept] == ["quiet", "cough"]
    speech = label_checker(f"onnx:{tagger}", "Speech", "cough", 16000)
    kept, rows = check_labels(speech, 0.5, clips, "cough", cache, progress=False)
    assert [r["score"] for r in rows] == pytest.approx([1 / (1 + np.exp(1)), 1 / (1 + np.exp(0.9))], abs=1e-4)
    assert len(kept) == 3, "other classes: the cache is not reused and nothing is heard"


def test_label_check_settings_are_checked(tagger, tmp_path):
    from trainer.settings import DataSettings, Settings
    from trainer.tagger import label_checker

    with pytest.raises(FileNotFoundError, match="data.label_check = onnx:.*missing.onnx: no such ONNX file"):
        label_checker(f"onnx:{tmp_path / 'missing.onnx'}", "Cough", "cough", 16000)
    with pytest.raises(ValueError, match="data.label_check_classes = 'Coughing': 'Coughing' is not one"):
        label_checker(f"onnx:{tagger}", "Coughing", "cough", 16000)

    with pytest.raises(ValueError, match="data.label_check = 'y.onnx' must be onnx:PATH"):
        Settings(data=DataSettings(manifest="x", label_check="y.onnx")).validate()
    with pytest.raises(ValueError, match="data.label_check_min = 0.0 must be in \\(0, 1\\]"):
        Settings(data=DataSettings(manifest="x", label_check_min=0.0)).validate()


@pytest.mark.slow
def test_distill_from_a_frozen_tagger(tagger, tmp_path):
    from trainer.__main__ import main
    from trainer.models import count_parameters, load_checkpoint

    out = tmp_path / "run"
    assert main(["distill", "--data", str(DATA / "covid-sample"), "--teacher", f"onnx:{tagger}", "--teacher-epochs",
                 "0", "--student-epochs", "1", "--student-widths", "4,8", "--data-val-fraction", "0.25",
                 "--data-test-fraction", "0.25", "--run-bootstrap", "10", "--data-background",
                 str(DATA / "room-sample"), "--kd-aux-teacher", f"onnx:{tagger}", "--kd-aux-classes", "Speech,Sneeze",
                 "--data-synthetic-per-kind", "1", "--data-label-check", f"onnx:{tagger}",
                 "--data-label-check-classes", "Sneeze", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["teacher"]["source"] == f"onnx:{tagger}"
    assert report["history"]["teacher"] == [] and {"kl", "ce", "aux"} <= set(report["history"]["student"][0])
    assert torch.load(out / "aux_cache.pt", weights_only=True)["scores"].shape[1] == 2
    student = load_checkpoint(out / "student")
    assert student.spec.aux_classes == ("Speech", "Sneeze")
    from edge.inference import Model

    assert "soft targets of onnx:" in Model(out / "student.int8.onnx").info.teacher
    teacher = load_checkpoint(out / "teacher")
    assert teacher.spec.kind == "onnx-tagger" and teacher.spec.classes == "Cough"
    assert count_parameters(teacher) == report["parameters"]["teacher"]
    checked = (out / "label-check.csv").read_text().splitlines()
    assert checked[0] == "path,label,score,left_out" and len(checked) > 1
    assert all(row.endswith(",False") and ",negative," in row for row in checked[1:])  # Sneeze never reaches 0.5
    card = (out / "MODEL_CARD.md").read_text()
    assert "used frozen" in card and "auxiliary head" in card and "Speech,Sneeze" in card


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """A real ONNX tagger with an ``embedding`` output: ``[peak, mean |x|]`` of its 1600-sample window."""

    class Tiny(torch.nn.Module):
        def forward(self, waveform):
            peak = waveform.abs().amax(dim=1, keepdim=True)
            level = waveform.abs().mean(dim=1, keepdim=True)
            return torch.sigmoid(torch.cat([peak, -peak], dim=1)), torch.cat([peak, level], dim=1)

    folder = tmp_path_factory.mktemp("embedder")
    torch.onnx.export(Tiny(), (torch.zeros(1, 1600),), str(folder / "tiny.onnx"), input_names=["waveform"],
                      output_names=["scores", "embedding"], opset_version=17, dynamo=False)
    (folder / "class_map.csv").write_text("index,mid,display_name\n0,/m/a,Cough\n1,/m/b,Speech\n")
    return folder / "tiny.onnx"


def _probe(path):
    from trainer.models import build_teacher

    return build_teacher(f"onnx:{path}", ("cough", "not_cough"), "cough", window_samples=4000, pre_roll_samples=1000,
                         head="probe")


def test_probe_reads_the_mean_and_maximum_of_the_embedding_over_the_positions(embedder):
    teacher = _probe(embedder)
    x = np.zeros((1, 4000), dtype=np.float32)
    x[0, 3500] = 0.5  # positions start at 0, 800, 1600, 2400: only the last holds it
    np.testing.assert_allclose(teacher.features(x)[0], [0.5 / 4, 0.5 / 1600 / 4, 0.5, 0.5 / 1600], rtol=1e-5)


def test_probe_is_fitted_on_our_labels_chosen_on_validation_and_survives_a_checkpoint(embedder, tmp_path):
    from trainer.models import count_parameters, load_checkpoint, save_checkpoint
    from trainer.tagger import PROBE_C

    rng = np.random.default_rng(0)

    def windows(n):  # coughs here are the louder windows: the tagger's own classes know nothing of it
        loud = rng.random(n) < 0.5
        x = (rng.standard_normal((n, 4000)) * np.where(loud, 0.3, 0.05)[:, None]).astype(np.float32)
        return x, np.where(loud, 0, 1)

    (train, y_train), (val, y_val), (test, y_test) = windows(60), windows(30), windows(30)
    teacher = _probe(embedder)
    scores = teacher.fit(train, y_train, val, y_val)
    assert set(scores) == set(PROBE_C) and max(scores.values()) == 1.0
    probs = torch.softmax(teacher(torch.from_numpy(test)), -1).detach().numpy()
    assert (probs[y_test == 0, 0] > 0.5).all() and (probs[y_test == 1, 0] < 0.5).all()
    assert count_parameters(teacher) == 2 * 4 + 2 + teacher.tagger.n_parameters
    save_checkpoint(teacher, tmp_path / "teacher")
    again = load_checkpoint(tmp_path / "teacher")
    assert again.spec.kind == "onnx-probe"
    torch.testing.assert_close(again(torch.from_numpy(test)), teacher(torch.from_numpy(test)))
    with pytest.raises(ValueError, match=r"no training window of \['not_cough'\]"):
        _probe(embedder).fit(train, np.zeros(60, int), val, y_val)


def test_probe_needs_an_embedding_output_and_an_onnx_teacher(tagger):
    from trainer.settings import DataSettings, Settings, TeacherSettings

    with pytest.raises(ValueError, match=r"has no output named 'embedding' \(its outputs: \['scores'\]\)"):
        _probe(tagger)
    with pytest.raises(ValueError, match="teacher.head = 'probe' must be classes unless teacher.source is onnx:PATH"):
        Settings(data=DataSettings(manifest="x"), teacher=TeacherSettings(source="preset:tiny", head="probe")).validate()
    with pytest.raises(ValueError, match="teacher.head = 'linear' must be classes or probe"):
        Settings(data=DataSettings(manifest="x"),
                 teacher=TeacherSettings(source="onnx:y.onnx", epochs=0, head="linear")).validate()


def test_distill_from_a_probe_on_a_tagger(embedder, tmp_path, monkeypatch):
    from trainer.__main__ import main
    from trainer.models import load_checkpoint
    from trainer.tagger import OnnxTagger

    heard = []
    embeddings = OnnxTagger.embeddings
    monkeypatch.setattr(OnnxTagger, "embeddings", lambda self, audio: heard.append(len(audio)) or embeddings(self, audio))
    out = tmp_path / "run"
    argv = ["distill", "--data", str(DATA / "covid-sample"), "--teacher", f"onnx:{embedder}", "--teacher-head",
            "probe", "--teacher-epochs", "0", "--student-epochs", "1", "--student-widths", "4,8",
            "--data-val-fraction", "0.25", "--data-test-fraction", "0.25", "--run-bootstrap", "10",
            "--data-background", str(DATA / "room-sample"), "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    n = {k: v["windows"] for k, v in report["windows"].items()}
    cached = torch.load(out / "probe_embeddings_val.pt", weights_only=True)["embeddings"]
    assert cached.shape == (n["val"], 4)
    first, heard[:] = sum(heard), []
    assert main(argv) == 0  # again into the same folder: the training and validation embeddings come from the cache
    assert sum(heard) == n["test"] < first
    teacher = load_checkpoint(out / "teacher")
    assert teacher.spec.kind == "onnx-probe" and float(teacher.head.weight.abs().sum()) > 0
    from edge.inference import Model

    assert Model(out / "student.int8.onnx").info.teacher == f"onnx:{embedder} (embedding probe)"
    assert "logistic regression on its embedding" in (out / "MODEL_CARD.md").read_text()


@pytest.fixture(scope="module")
def verifier_folder(embedder, tmp_path_factory):
    """A probe on the tiny embedder (loud windows are coughs), exported as an edge verifier folder."""
    from trainer.export import export_verifier
    from trainer.models import save_checkpoint

    rng = np.random.default_rng(0)

    def windows(n):  # a 100 ms burst in quiet: a loud one is a cough, a soft one is not
        loud = rng.random(n) < 0.5
        x = 0.001 * rng.standard_normal((n, 4000))
        for row, level in zip(x, np.where(loud, 0.3, 0.05)):
            start = int(rng.integers(800, 1400))
            row[start:start + 1600] += level * rng.standard_normal(1600)
        return x.astype(np.float32), np.where(loud, 0, 1)

    teacher = _probe(embedder)
    teacher.fit(*windows(60), *windows(30))
    root = tmp_path_factory.mktemp("verifier")
    save_checkpoint(teacher, root / "teacher")
    return export_verifier(root / "teacher", root / "verifier", mix=0.3, threshold=0.5)


def test_verifier_is_the_probe_teacher_in_numpy_and_mixes_into_the_detectors_score(verifier_folder, tmp_path):
    from edge.verifier import Verifier, read_spec
    from trainer.models import load_checkpoint

    v = Verifier(verifier_folder)
    teacher = load_checkpoint(verifier_folder.parent / "teacher")
    x = (np.random.default_rng(1).standard_normal((3, 4000)) * np.array([[0.3], [0.02], [0.1]])).astype(np.float32)
    want = torch.softmax(teacher(torch.from_numpy(x)), -1)[:, 0].detach().numpy()
    np.testing.assert_allclose(v(x), want, atol=1e-5)
    assert v(x)[0] > 0.5 > v(x)[1]
    assert v.mixed(0.5, 0.5) == pytest.approx(0.5) and v.may_reach(0.29, 0.5) and not v.may_reach(0.28, 0.5)
    spec = read_spec(verifier_folder)
    assert (spec.mix, spec.threshold, spec.tagger, spec.labels) == (0.3, 0.5, "tiny.onnx", ("cough", "not_cough"))
    assert spec.tuned_for == "", "no detector yet: the sweep records the one its threshold is chosen with"
    card = (verifier_folder / "MODEL_CARD.md").read_text()
    assert "not a diagnosis" in card and "`(1 - 0.3) * detector + 0.3 * probe`" in card and "verifier = auto" in card


def test_a_bad_verifier_folder_is_refused_with_what_is_wrong(verifier_folder, tagger, tmp_path):
    import json
    import shutil

    from edge.contract import ContractError
    from edge.verifier import SPEC_FILE, Verifier
    from trainer.export import export_verifier

    with pytest.raises(ContractError, match="no verifier.json"):
        Verifier(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(verifier_folder, bad)
    body = json.loads((bad / SPEC_FILE).read_text())
    for change, message in (({"mix": 1.5}, r"mix = 1.5 must be in \(0, 1\]"), ({"threshold": float("nan")}, "threshold"),
                            ({"bias": [0.0]}, "bias must have 2 values"), ({"format": 9}, "format 9"),
                            ({"positive_label": "sneeze"}, "positive_label 'sneeze' is not among labels")):
        (bad / SPEC_FILE).write_text(json.dumps({**body, **change}))
        with pytest.raises(ContractError, match=message):
            Verifier(bad)
    (bad / SPEC_FILE).write_text(json.dumps(body))
    shutil.copyfile(tagger, bad / "tiny.onnx")  # another file under the same name
    with pytest.raises(ContractError, match="not the file its probe was fitted on"):
        Verifier(bad)
    (bad / "tiny.onnx").unlink()
    with pytest.raises(ContractError, match="its tagger tiny.onnx is missing"):
        Verifier(bad)
    from trainer.models import build_teacher, save_checkpoint

    plain = build_teacher(f"onnx:{tagger}", ("cough", "not_cough"), "cough", window_samples=4000, pre_roll_samples=1000)
    save_checkpoint(plain, tmp_path / "plain")
    with pytest.raises(ValueError, match="a verifier is made from a probe teacher"):
        export_verifier(tmp_path / "plain", tmp_path / "out", mix=0.3, threshold=0.5)


class _FixedDetector:
    """Stands in for the cough detector: the same cough probability for every window."""

    def __init__(self, p: float) -> None:
        from edge.contract import ModelInfo

        self.info = ModelInfo(name="det", labels=("cough", "not_cough"), positive_label="cough", sample_rate=16000,
                              window_samples=4000, pre_roll_samples=1000, threshold=0.5, teacher="-", train_data="-",
                              metrics={}, created="-", version="1")
        self.sha256, self.p = "0" * 64, p

    def __call__(self, windows):
        return np.repeat(np.array([[self.p, 1 - self.p]], dtype=np.float32), len(windows), axis=0)


def _bursts(levels):
    """Quiet room with a 100 ms noise burst every 2 s at each of ``levels`` (RMS)."""
    rng = np.random.default_rng(2)
    audio = (0.001 * rng.standard_normal(16000 * (2 * len(levels) + 1))).astype(np.float32)
    for i, level in enumerate(levels):
        start = 16000 * (2 * i + 1)
        audio[start:start + 1600] += (level * rng.standard_normal(1600)).astype(np.float32)
    return audio


def test_pipeline_holds_the_mixed_score_to_the_verifiers_threshold(verifier_folder):
    from edge.onset import OnsetDetector, OnsetSettings
    from edge.pipeline import Pipeline
    from edge.verifier import Verifier

    v = Verifier(verifier_folder)  # mix 0.3, threshold 0.5: the detector's 0.5 passes only where the probe says cough
    audio = _bursts([0.3, 0.05, 0.3])
    pipe = Pipeline(_FixedDetector(0.5), _FixedDetector(0.5), "dev", synced=True, verifier=v)
    assert pipe.detector_threshold == 0.5
    events = [e for s in range(0, audio.size, 1600) for e in pipe.feed(audio[s:s + 1600])] + pipe.flush()
    assert [round(e.onset_sample / 16000) for e in events] == [1, 5]
    assert all(e.cough_score >= 0.5 for e in events) and pipe.counters.verified == 3
    low = Pipeline(_FixedDetector(0.2), _FixedDetector(0.5), "dev", synced=True, verifier=v)
    assert not [e for s in range(0, audio.size, 1600) for e in low.feed(audio[s:s + 1600])] + low.flush()
    assert low.counters.verified == 0, "0.7 * 0.2 + 0.3 can never reach 0.5: the tagger need not run"
    from edge.contract import ContractError

    with pytest.raises(ContractError, match="hears 16000 Hz audio, the models 8000 Hz"):
        v.check_rate(8000)
    with pytest.raises(ValueError, match="a verifier judges the energy gate's sounds"):
        Pipeline(_FixedDetector(0.5), _FixedDetector(0.5), "dev", verifier=v,
                 onset=OnsetDetector(16000, OnsetSettings(scan_ms=100)))


def test_probe_views_add_augmented_copies_of_every_training_window_after_the_clean_ones():
    from trainer.augment import AugmentSettings
    from trainer.distill import probe_training_windows
    from trainer.train import WindowSet

    rng = np.random.default_rng(1)
    ws = WindowSet(windows=(rng.standard_normal((5, 1600)) * 0.1).astype(np.float32), clip=np.arange(5),
                   targets=np.array([0, 1, 1, 0, 1]), phone=np.zeros(5, dtype=bool))
    same, labels = probe_training_windows(ws, AugmentSettings(), 0, seed=0)
    assert same is ws.windows and labels is ws.targets
    windows, labels = probe_training_windows(ws, AugmentSettings(), 2, seed=0)
    assert windows.shape == (15, 1600) and windows.dtype == np.float32
    np.testing.assert_array_equal(windows[:5], ws.windows)
    np.testing.assert_array_equal(labels, np.tile(ws.targets, 3))
    assert not np.allclose(windows[5:10], ws.windows) and not np.allclose(windows[5:10], windows[10:])
    again, _ = probe_training_windows(ws, AugmentSettings(), 2, seed=0)
    np.testing.assert_array_equal(again, windows)
