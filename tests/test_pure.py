"""Pure logic: contract metadata, onset detection, KD loss, schedule, settings, manifests, splits."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import DEMO
from edge.config import ConfigError, build
from edge.contract import ContractError, parse_metadata
from edge.onset import OnsetDetector, OnsetSettings
from edge.settings import EdgeSettings

GOOD = {"labels": '["cough", "not_cough"]', "positive_label": "cough", "sample_rate": "16000",
        "window_samples": "16000", "threshold": "0.5", "teacher": "t", "train_data": "d", "metrics": "{}",
        "created": "2026-01-01", "version": "1"}


def test_contract_accepts_complete_metadata():
    info = parse_metadata(GOOD, name="m")
    assert info.labels == ("cough", "not_cough") and info.positive_index == 0 and info.pre_roll_samples == 4000


@pytest.mark.parametrize("change, message", [
    ({"labels": None}, "lacks labels"),
    ({"labels": "cough"}, "not JSON"),
    ({"labels": '["a"]'}, "list of >= 2"),
    ({"positive_label": "sneeze"}, "'sneeze' is not one of labels"),
    ({"sample_rate": "fast"}, "'sample_rate' is not an integer"),
    ({"threshold": "1.5"}, "outside [0, 1]"),
    ({"version": "9"}, "contract version '9'"),
    ({"pre_roll_samples": "20000"}, "must be smaller than window_samples"),
])
def test_contract_errors_say_what_is_wrong(change, message):
    meta = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(ContractError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_metadata(meta, name="m")


def _demo() -> np.ndarray:
    audio, rate = sf.read(str(DEMO), dtype="float32")
    assert rate == 16000
    return audio


def _run(det: OnsetDetector, audio: np.ndarray, chunk: int):
    det.reset()
    out = []
    for s in range(0, audio.size, chunk):
        out += det(audio[s: s + chunk])
    return out


def test_onset_decisions_do_not_depend_on_chunk_size():
    audio = _demo()
    det = OnsetDetector(16000)
    reference = _run(det, audio, 16000)
    assert len(reference) >= 5
    for chunk in (1, 7, 160, 256, 1000, 4096, audio.size):
        assert _run(det, audio, chunk) == reference, chunk


def test_onsets_match_the_known_cough_times():
    import csv

    truth = [float(r["onset_s"]) for r in csv.DictReader(open(DEMO.with_suffix(".truth.csv")))]
    found = [s.onset / 16000 for s in _run(OnsetDetector(16000), _demo(), 4000)]
    for t in truth:
        assert min(abs(t - f) for f in found) < 0.1, (t, found)


def test_onset_detector_ignores_silence_and_steady_noise():
    det = OnsetDetector(16000)
    assert det(np.zeros(16000 * 5, dtype=np.float32)) == []
    det.reset()  # steady noise from the start: its floor adapts, nothing stands out
    noise = np.random.default_rng(0).standard_normal(16000 * 5).astype(np.float32) * 0.05
    assert det(noise) == []


def test_onset_frame_size_error_names_the_expected_size():
    det = OnsetDetector(16000)
    with pytest.raises(ValueError, match=f"expected a frame of {det.frame_samples} samples"):
        det.process_frame(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="mono"):
        det(np.zeros((10, 2), dtype=np.float32))


def test_onset_reset_restarts_sample_positions():
    audio = _demo()
    det = OnsetDetector(16000)
    first = _run(det, audio, 512)
    det(audio)  # more audio moves the position on
    assert _run(det, audio, 512) == first


def test_onset_settings_reject_bad_values():
    with pytest.raises(ValueError, match="off_db"):
        OnsetSettings(on_db=5, off_db=10)
    for views in (0, 4, 17):
        with pytest.raises(ValueError, match=f"views = {views} must be an odd whole number in 1..15"):
            OnsetSettings(views=views)
    with pytest.raises(ValueError, match=r"view_step_ms = 0.0 must be in \(0, 250\] ms"):
        OnsetSettings(view_step_ms=0.0)


def test_config_refuses_a_fractional_number_of_views(tmp_path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text("[onset]\nviews = 2.5\n")
    with pytest.raises(ConfigError, match="onset.views = 2.5"):
        build(EdgeSettings, file=cfg)


def test_view_offsets_are_centred_on_the_onset():
    from edge.windows import cut_views, cut_window, view_offsets

    assert view_offsets(1, 800) == (0,)
    assert view_offsets(5, 800) == (-1600, -800, 0, 800, 1600)
    with pytest.raises(ValueError, match="views = 2 must be odd"):
        view_offsets(2, 800)
    stream = np.arange(100, dtype=np.float32)
    views = cut_views(stream[10:], 10, 50, 20, 5, (-40, 0, 45))
    assert views.shape == (3, 20)
    for row, shift in zip(views, (-40, 0, 45)):  # each is the one window rule at the shifted onset
        np.testing.assert_array_equal(row, cut_window(stream[10:], 10, 50 + shift, 20, 5))
    np.testing.assert_array_equal(views[1], stream[45:65])
    assert views[0, :5].tolist() == [0.0] * 5 and views[0, 5] == 10  # before what is held: zeros
    assert views[2, 9] == 99 and views[2, 10:].tolist() == [0.0] * 10  # past the end: zeros


def test_config_errors_name_the_key_and_value(tmp_path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text("[mqtt]\nport = 70000\n")
    with pytest.raises(ConfigError, match="port = 70000"):
        build(EdgeSettings, file=cfg)
    cfg.write_text("[mqtt]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['prot'\]"):
        build(EdgeSettings, file=cfg)
    cfg.write_text("[model]\nthreads = 'many'\n")
    with pytest.raises(ConfigError, match="model.threads = 'many'"):
        build(EdgeSettings, file=cfg)


def test_config_precedence_file_env_flag(tmp_path):
    import argparse

    cfg = tmp_path / "edge.toml"
    cfg.write_text('[mqtt]\nhost = "file"\nport = 1884\n[device]\nid = "from-file"\n')
    env = {"COUGHWATCH_MQTT_PASSWORD": "secret", "COUGHWATCH_MQTT_PORT": "1885"}
    args = argparse.Namespace(mqtt_port="1886")
    s = build(EdgeSettings, file=cfg, args=args, env_prefix="COUGHWATCH", environ=env)
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.password, s.device.id) == ("file", 1886, "secret", "from-file")


# trainer pure logic ----------------------------------------------------------------------------

torch = pytest.importorskip("torch")


def test_kd_loss_matches_a_hand_computed_value():
    from trainer.losses import kd_loss

    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    T, alpha = 2.0, 0.25
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    pt = ps[::-1]
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    ce = -math.log(math.e / (math.e + 1))
    terms = kd_loss(s, t, y, alpha=alpha, temperature=T)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(alpha * T * T * kl + (1 - alpha) * ce, rel=1e-5)
    with pytest.raises(AssertionError, match="alpha"):
        kd_loss(s, t, y, alpha=1.5, temperature=T)


def test_warmup_then_linear_decay():
    from trainer.losses import warmup_linear

    values = [warmup_linear(i, warmup_steps=2, total_steps=6) for i in range(7)]
    assert values == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])


def test_manifest_errors_name_the_problem(tmp_path):
    from trainer.data import ManifestError, load_manifest

    (tmp_path / "m.csv").write_text("file,label\na.wav,x\n")
    with pytest.raises(ManifestError, match="missing column 'path'"):
        load_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path,label\na.wav,\n")
    with pytest.raises(ManifestError, match=r"m.csv:2: empty"):
        load_manifest(tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(tmp_path / "nope.csv")


def _write(path, audio, sr=16000):
    sf.write(str(path), audio, sr)


def test_load_audio_dedups_skips_bad_files_and_splits_by_group(tmp_path, caplog):
    from trainer.data import load_audio, load_manifest, split

    rng = np.random.default_rng(0)
    rows = ["path,label,participant,source"]
    for p in range(20):
        for k, label in enumerate(("pos", "neg")):
            _write(tmp_path / f"{p}_{k}.wav", rng.standard_normal(8000).astype(np.float32) * 0.1)
            rows.append(f"{p}_{k}.wav,{label},p{p},s{p % 2}")
    (tmp_path / "dup.wav").write_bytes((tmp_path / "0_0.wav").read_bytes())
    rows.append("dup.wav,pos,p0,s0")  # identical content, same label: kept once
    (tmp_path / "broken.wav").write_bytes(b"RIFF not audio")
    rows.append("broken.wav,pos,p99,s0")
    _write(tmp_path / "silent.wav", np.zeros(8000, dtype=np.float32))
    rows.append("silent.wav,neg,p98,s0")
    _write(tmp_path / "short.wav", np.ones(100, dtype=np.float32) * 0.1)
    rows.append("short.wav,neg,p97,s0")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    clips = load_manifest(tmp_path)
    assert clips[0].extra["source"] == "s0"
    kept = load_audio(clips, 16000, min_samples=1600, progress=False)
    assert len(kept) == 40
    text = caplog.text
    assert "broken.wav: cannot decode" in text and "silent.wav: silent" in text and "short.wav: 100 samples" in text
    parts = split(kept, val=0.2, test=0.2, seed=0)
    groups = [{c.group for c in part} for part in parts.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(len(p) for p in parts.values()) == 40
    for part in parts.values():
        assert {c.label for c in part} == {"pos", "neg"}


def test_baselines_expose_a_label_carried_by_the_source_or_the_length():
    from trainer.baselines import run_baselines
    from trainer.data import Clip

    rng = np.random.default_rng(0)
    sr = 16000
    parts = {}
    for name, n in (("train", 60), ("val", 30), ("test", 30)):
        clips = []
        for i in range(n):
            positive = i % 2 == 0
            # the label is carried by the source and by the length only; the audio itself is the same noise
            seconds = rng.uniform(0.5, 1.0) if positive else rng.uniform(1.5, 2.0)
            clip = Clip(path=Path(f"{name}{i}.wav"), label="positive" if positive else "negative", group="",
                        extra={"source": "phone" if positive else "app"})
            clip.audio = (0.1 * rng.standard_normal(round(seconds * sr))).astype(np.float32)
            clips.append(clip)
        parts[name] = clips
    from trainer.train import WindowSet

    # two windows per recording, as when the onset detector finds two sounds in it
    sets = {k: WindowSet(np.stack([c.audio[o:o + sr // 4] for c in v for o in (0, sr // 4)]),
                         np.repeat(np.arange(len(v)), 2), np.repeat([c.label == "negative" for c in v], 2).astype(int),
                         np.zeros(2 * len(v), dtype=bool))
            for k, v in parts.items()}
    out = run_baselines(parts, sets, "positive", labels=("positive", "negative"), sample_rate=sr, group_by="source",
                        bootstrap=0)
    assert set(out) == {"classical (recording)", "classical (window)", "source only", "duration only"}
    assert out["source only"]["pooled"]["roc_auc"] == 1.0
    assert out["duration only"]["pooled"]["roc_auc"] == 1.0
    assert out["duration only"]["fit"]["direction"] == "shorter is positive"
    assert 0.3 < out["classical (window)"]["pooled"]["roc_auc"] < 0.8  # same noise: near chance
    assert set(out["classical (recording)"]["by_group"]) == {"phone", "app"}
    assert len(out["source only"]["test_scores"]) == 60, "every window is scored, each with its recording's score"


def test_paired_auc_difference_separates_a_better_model_from_a_copy():
    from trainer.metrics import paired_auc_difference

    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.5
    good = y + rng.normal(0, 0.5, 200)
    weak = y + rng.normal(0, 2.0, 200)
    same = paired_auc_difference(y, good, good, 200, 0)
    assert same["diff"] == 0 and same["ci95"] == [0.0, 0.0]
    better = paired_auc_difference(y, good, weak, 200, 0)
    assert better["diff"] > 0 and 0 < better["ci95"][0] < better["diff"] < better["ci95"][1]
    assert paired_auc_difference(y, weak, good, 200, 0)["ci95"][1] < 0


def test_trainer_settings_reject_bad_values():
    from trainer.settings import KdSettings, Settings, DataSettings

    with pytest.raises(ValueError, match="kd.alpha = 2.0"):
        Settings(data=DataSettings(manifest="x"), kd=KdSettings(alpha=2.0)).validate()
    with pytest.raises(ValueError, match=r"data.shifted_phases = True needs data.shifted_windows > 0"):
        Settings(data=DataSettings(manifest="x", shifted_phases=True)).validate()
    with pytest.raises(ValueError, match=r"data.shifted_clear_s = 0.01 must be in \[0.05, 0.5\] s"):
        Settings(data=DataSettings(manifest="x", shifted_windows=2, shifted_clear_s=0.01)).validate()


def test_augmentation_is_configured_from_flags_and_can_be_switched_off():
    import argparse

    from trainer.augment import augment
    from trainer.settings import add_arguments, from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = from_args(parser.parse_args(["--data", "x", "--no-augment-apply", "--augment-mix-p", "0"]))
    assert settings.augment.apply is False and settings.augment.mix_p == 0.0
    with pytest.raises(ConfigError, match=r"augment.noise_p = 1.5 must be a probability in \[0, 1\]"):
        from_args(parser.parse_args(["--data", "x", "--augment-noise-p", "1.5"]))
    with pytest.raises(ConfigError, match="augment.mix_snr_min_db = 40.0 must not exceed augment.mix_snr_max_db"):
        from_args(parser.parse_args(["--data", "x", "--augment-mix-snr-min-db", "40"]))
    # every transform off: the window comes back as it went in; noise always on: it does not
    x = np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.3
    off = replace(settings.augment, gain_db=0.0, noise_p=0.0, shift_p=0.0, telephone_p=0.0, mix_p=0.0)
    assert np.array_equal(augment(x, np.random.default_rng(0), off, background=x[::-1].copy()), x)
    noisy = replace(off, noise_p=1.0, noise_snr_min_db=10.0, noise_snr_max_db=10.0)
    residual = augment(x, np.random.default_rng(0), noisy) - x
    assert 10 * np.log10(np.mean(x**2) / np.mean(residual**2)) == pytest.approx(10.0, abs=0.5)


def test_telephone_balance_leaves_the_channel_no_clue_to_the_class():
    from trainer.augment import AugmentSettings, telephone_rates
    from trainer.settings import add_arguments, from_args

    # class 0: 6 of 10 windows from telephones; class 1: none (wideband rooms and packages)
    targets = np.array([0] * 10 + [1] * 20)
    phone = np.array([True] * 6 + [False] * 4 + [False] * 20)
    rates = telephone_rates(phone, targets, 0.25)
    assert np.all(rates[:6] == 0.0)  # already band-limited
    after = {c: float(np.mean(phone[targets == c] + (1 - phone[targets == c]) * rates[targets == c])) for c in (0, 1)}
    assert after[0] == pytest.approx(0.6 + 0.4 * 0.25) and after[1] == pytest.approx(after[0])
    # no telephone anywhere: every class at the base rate; everything a telephone: nothing more to do
    assert np.allclose(telephone_rates(np.zeros(30, bool), targets, 0.25), 0.25)
    assert np.all(telephone_rates(np.ones(30, bool), targets, 0.25) == 0.0)
    with pytest.raises(ValueError, match="same shape"):
        telephone_rates(phone[:5], targets, 0.25)
    import argparse
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert AugmentSettings().telephone_balance is False
    assert from_args(parser.parse_args(["--data", "x", "--augment-telephone-balance"])).augment.telephone_balance


def test_teacher_loads_from_a_local_save_pretrained_folder(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    from trainer.models import TEACHER_PRESETS, build_teacher

    cfg = Wav2Vec2Config(**TEACHER_PRESETS["tiny"], num_labels=2)
    Wav2Vec2ForSequenceClassification(cfg).save_pretrained(tmp_path / "w2v")
    teacher = build_teacher(str(tmp_path / "w2v"), ("positive", "negative"), "positive", window_samples=16000,
                            pre_roll_samples=4000)
    assert teacher.model.config.id2label == {0: "positive", 1: "negative"}
    logits = teacher(torch.zeros(2, 16000) + 0.01 * torch.randn(2, 16000))
    assert logits.shape == (2, 2)


def test_w2v_small_copies_the_teachers_first_layers():
    from trainer.models import build_teacher, build_w2v_small

    teacher = build_teacher("preset:tiny", ("a", "b"), "a", window_samples=16000, pre_roll_samples=4000)
    small = build_w2v_small(teacher, layers=1)
    assert small.model.config.num_hidden_layers == 1
    t_sd, s_sd = teacher.model.state_dict(), small.model.state_dict()
    for key in s_sd:
        assert torch.equal(s_sd[key], t_sd[key]), key


def test_kd_step_adds_the_feature_penalty_for_both_kinds_of_student():
    from trainer.losses import feature_penalty, kd_loss
    from trainer.models import build_cnn_student, build_teacher, build_w2v_small
    from trainer.train import make_kd_step

    torch.manual_seed(0)
    teacher = build_teacher("preset:tiny", ("a", "b"), "a", window_samples=16000, pre_roll_samples=4000)
    cnn = build_cnn_student(("a", "b"), "a", window_samples=16000, pre_roll_samples=4000, widths=(4, 8))
    x, y, idx = torch.randn(3, 16000) * 0.1, torch.tensor([0, 1, 0]), torch.tensor([2, 0, 1])
    cached = torch.randn(3, 2)
    for student in (cnn.eval(), build_w2v_small(teacher, 1).eval()):
        terms = make_kd_step(cached, alpha=0.5, temperature=2.0, feature_weight=0.1)(student, x, y, idx)
        logits, feats = student(x, return_features=True)
        expected = kd_loss(logits, cached[idx], y, alpha=0.5, temperature=2.0)["loss"] + 0.1 * feature_penalty(feats)
        assert terms["feature"].item() == pytest.approx(feature_penalty(feats).item(), rel=1e-5)
        assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
        terms["loss"].backward()


def test_teacher_cache_is_reused_only_for_the_same_crops_and_the_same_teacher(tmp_path):
    from accelerate import Accelerator

    from trainer.data import Clip
    from trainer.models import build_teacher
    from trainer.train import CropDataset, WindowSet, teacher_cache

    rng = np.random.default_rng(0)
    windows = (0.1 * rng.standard_normal((3, 16000))).astype(np.float32)
    ds = CropDataset(WindowSet(windows, np.arange(3), np.array([0, 1, 0]), np.zeros(3, dtype=bool)), None, 0)
    torch.manual_seed(0)
    teacher = build_teacher("preset:tiny", ("a", "b"), "a", window_samples=16000, pre_roll_samples=4000)
    path, acc = tmp_path / "teacher_cache.pt", Accelerator(cpu=True)
    first = teacher_cache(teacher, ds, path, acc)
    saved = torch.load(path, weights_only=True)
    saved["logits"] = saved["logits"] + 100.0  # a marker: a reuse returns it, a recomputation does not
    torch.save(saved, path)
    assert torch.equal(teacher_cache(teacher, ds, path, acc), saved["logits"])
    with torch.no_grad():
        next(teacher.parameters()).add_(0.5)  # "retrained" teacher, same folder
    changed = teacher_cache(teacher, ds, path, acc)
    assert changed.abs().max() < 100 and not torch.equal(changed, first)
    other = CropDataset(WindowSet(windows[::-1].copy(), np.arange(3), np.array([0, 1, 0]), np.zeros(3, dtype=bool)), None, 0)
    assert torch.load(path, weights_only=True)["keys"] != other.ws.keys  # other windows (e.g. other scenes)
    recomputed = teacher_cache(teacher, other, path, acc)
    assert torch.allclose(recomputed, changed.flip(0), atol=1e-5)


def test_student_front_end_band_limit_is_validated_and_reaches_the_model():
    from trainer.models import build_cnn_student
    from trainer.settings import DataSettings, Settings, StudentSettings

    with pytest.raises(ValueError, match=r"student.f_max_hz = 9000.0 must be in \[1000, 8000\] Hz"):
        Settings(data=DataSettings(manifest="x"), student=StudentSettings(f_max_hz=9000.0)).validate()
    student = build_cnn_student(("a", "b"), "a", window_samples=16000, pre_roll_samples=4000, f_max_hz=4000)
    assert student.spec.frontend["f_max"] == 4000.0
    # no mel band reaches above 4 kHz: a tone at 6 kHz leaves the features as they are for silence
    t = np.arange(16000) / 16000
    tone = torch.from_numpy((0.5 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32))[None]
    low = torch.from_numpy((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))[None]
    assert student.frontend(tone + low).sub(student.frontend(low)).abs().max() < 1e-3


def test_band_stats_skip_path_reaches_the_head_and_survives_a_checkpoint(tmp_path):
    from trainer.models import build_cnn_student, load_checkpoint, save_checkpoint

    t = np.arange(16000) / 16000
    rng = np.random.default_rng(0)
    low = torch.from_numpy((0.3 * np.sin(2 * np.pi * 300 * t) + 0.01 * rng.standard_normal(16000)).astype(np.float32))
    high = torch.from_numpy((0.3 * np.sin(2 * np.pi * 5000 * t) + 0.01 * rng.standard_normal(16000)).astype(np.float32))
    audio = torch.stack([low, high])
    outputs = {}
    for band_stats in (False, True):
        torch.manual_seed(0)
        student = build_cnn_student(("a", "b"), "a", window_samples=16000, pre_roll_samples=4000, widths=(4, 8),
                                    band_stats=band_stats).eval()
        with torch.no_grad():
            for m in student.body.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.zero_()  # the conv path now says the same for every input
            outputs[band_stats] = student(audio)
    assert torch.allclose(outputs[False][0], outputs[False][1])  # without the skip: blind
    assert not torch.allclose(outputs[True][0], outputs[True][1])  # the band statistics tell them apart
    loaded = load_checkpoint(save_checkpoint(student, tmp_path / "s"))
    assert loaded.spec.band_stats and torch.equal(loaded(audio), outputs[True])


def test_position_pooling_starts_as_the_mean_and_can_tell_where_in_the_window_a_sound_is(tmp_path):
    from trainer.models import build_cnn_student, load_checkpoint, save_checkpoint
    from trainer.settings import DataSettings, Settings, StudentSettings

    with pytest.raises(ValueError, match="student.pooling = 'max' must be one of mean, meanstd, position"):
        Settings(data=DataSettings(manifest="x"), student=StudentSettings(pooling="max")).validate()
    rng = np.random.default_rng(0)
    burst = (0.3 * rng.standard_normal(3200)).astype(np.float32)
    early, late = np.full((2, 16000), 1e-3, dtype=np.float32)
    early[3000:6200] += burst  # the same burst near the window's anchor (pre-roll 4000)...
    late[12000:15200] += burst  # ...and late in the window
    audio = torch.from_numpy(np.stack([early, late]))
    students = {}
    for pooling in ("mean", "position"):
        torch.manual_seed(0)
        students[pooling] = build_cnn_student(("a", "b"), "a", window_samples=16000, pre_roll_samples=4000,
                                              widths=(4, 8), pooling=pooling).eval()
    position = students["position"]
    steps = position.time_logits.shape[1]
    assert position.time_logits.shape[0] == 8 and 20 <= steps <= 25  # about 50 frames of 20 ms, halved once
    with torch.no_grad():
        assert torch.allclose(position(audio), students["mean"](audio), atol=1e-6)  # uniform weights at the start
        position.time_logits.copy_(torch.where(torch.arange(steps) < steps // 3, 8.0, -8.0).expand(8, steps))  # early
        focused = position(audio)
    assert not torch.allclose(focused[0], focused[1], atol=1e-3)
    loaded = load_checkpoint(save_checkpoint(position, tmp_path / "s"))
    assert loaded.spec.pooling == "position" and torch.equal(loaded(audio), focused)


class _RecordingModel:
    """Stands in for edge.inference.Model: records the windows it is given, answers fixed probabilities."""

    def __init__(self, name: str, window: int, pre_roll: int, probs: list[float]) -> None:
        from edge.contract import ModelInfo

        self.info = ModelInfo(name=name, labels=("yes", "no"), positive_label="yes", sample_rate=16000,
                              window_samples=window, pre_roll_samples=pre_roll, threshold=0.5, teacher="-",
                              train_data="-", metrics={}, created="-", version="1")
        self.sha256 = "0" * 64
        self.probs = np.array([probs], dtype=np.float32)
        self.windows: list[np.ndarray] = []

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.windows.extend(windows)
        return np.repeat(self.probs, len(windows), axis=0)


def _replay(pipe, audio: np.ndarray, chunk: int) -> list:
    """``audio`` fed through ``pipe`` in chunks of ``chunk`` samples, then flushed: every event it published."""
    events = [e for start in range(0, audio.size, chunk) for e in pipe.feed(audio[start:start + chunk])]
    return events + pipe.flush()


@pytest.mark.parametrize("chunk", [160, 1000, 4800])
def test_pipeline_cuts_each_models_own_window_around_the_onset(chunk):
    from edge.pipeline import Pipeline

    rng = np.random.default_rng(1)
    audio = (0.002 * rng.standard_normal(16000 * 8)).astype(np.float32)
    audio[40000:44800] += (0.5 * rng.standard_normal(4800)).astype(np.float32)  # one loud burst at 2.5 s
    detector = _RecordingModel("det", 16000, 4000, [0.9, 0.1])
    classifier = _RecordingModel("cls", 48000, 4000, [0.7, 0.3])  # a 3 s window, 2.75 s after the onset
    events = []
    pipe = Pipeline(detector, classifier, "dev", synced=True, onset=OnsetDetector(16000, OnsetSettings(views=5)))
    for start in range(0, audio.size, chunk):
        events += pipe.feed(audio[start:start + chunk])
    assert len(events) == 1, "the event is emitted once the longer window is complete, before the stream ends"
    onset = events[0].onset_sample
    assert abs(onset - 40000) <= 320
    # the detector's five views, 50 ms apart and centred on the onset; the classifier's one window
    for model, shifts in ((detector, (-1600, -800, 0, 800, 1600)), (classifier, (0,))):
        assert len(model.windows) == len(shifts)
        for window, shift in zip(model.windows, shifts):
            start = onset + shift - model.info.pre_roll_samples
            np.testing.assert_array_equal(window, audio[start:start + model.info.window_samples])
    assert events[0].label == "yes" and events[0].probabilities == {"yes": 0.7, "no": 0.3}


def test_pipeline_memory_stays_bounded_when_sounds_never_stop():
    """With a 3 s window and a burst every second some sound is always pending; the buffer must still be cut."""
    from edge.pipeline import Pipeline

    rng = np.random.default_rng(2)
    seconds = 40
    audio = (0.002 * rng.standard_normal(16000 * seconds)).astype(np.float32)
    bursts = range(16000, 16000 * (seconds - 1), 16000)
    for b in bursts:
        audio[b:b + 3200] += (0.5 * rng.standard_normal(3200)).astype(np.float32)
    detector = _RecordingModel("det", 16000, 4000, [0.9, 0.1])
    classifier = _RecordingModel("cls", 48000, 4000, [0.7, 0.3])
    events = []
    pipe = Pipeline(detector, classifier, "dev", synced=True)
    held = []
    for start in range(0, audio.size, 1600):
        events += pipe.feed(audio[start:start + 1600])
        held.append(pipe.health()["buffered_s"] * 16000)
    events += pipe.flush()
    assert len(events) == len(bursts)
    assert max(held) < 6 * 16000, "the buffer holds the longest window and sound, not the stream"
    for event, window in zip(events, classifier.windows):
        start = event.onset_sample - 4000
        expected = audio[start:start + 48000]
        np.testing.assert_array_equal(window[:expected.size], expected)
        assert not window[expected.size:].any(), "past the end of the stream the window is zero-padded"


def _two_phase_cough_then_a_bout_cough() -> tuple[np.ndarray, list[int]]:
    """Noise floor; at 2 s a cough in two phases 60 ms apart; 350 ms after its end the bout's next cough."""
    rng = np.random.default_rng(5)
    audio = (0.002 * rng.standard_normal(16000 * 6)).astype(np.float32)
    starts = [32000, 32000 + 2400 + 960, 32000 + 2 * 2400 + 960 + 5600]
    for start in starts:
        audio[start:start + 2400] += (0.4 * rng.standard_normal(2400)).astype(np.float32)
    return audio, starts


@pytest.mark.parametrize("chunk", [160, 1600, 7000])
def test_a_coughs_later_phases_are_one_event_and_the_next_cough_of_a_bout_is_another(chunk):
    from edge.onset import OnsetDetector, OnsetSettings
    from edge.pipeline import Pipeline

    audio, (first, phase, second) = _two_phase_cough_then_a_bout_cough()
    counts = {}
    for gap_ms in (0.0, 100.0):
        detector = _RecordingModel("det", 16000, 1600, [0.9, 0.1])
        pipe = Pipeline(detector, _RecordingModel("cls", 16000, 1600, [0.7, 0.3]), "dev",
                        onset=OnsetDetector(16000, OnsetSettings(merge_gap_ms=gap_ms)), synced=True)
        events = _replay(pipe, audio, chunk)
        counts[gap_ms] = ([e.onset_sample for e in events], pipe.counters.merged,
                          len(detector.windows) // OnsetSettings().views)
    onsets, merged, scored = counts[0.0]
    assert len(onsets) == 3 and merged == 0, "without merging each phase is an event"
    for got, want in zip(onsets, (first, phase, second)):
        assert abs(got - want) <= 320
    onsets, merged, scored = counts[100.0]
    assert merged == 1 and scored == 3, "the second phase joins the first cough (scored: it scores no higher)"
    assert [abs(o - w) <= 320 for o, w in zip(onsets, (first, second))] == [True, True]


class _ViewDetector(_RecordingModel):
    """Gives each window of a call its own cough probability (0.2, 0.4, ...): a sound's score shows which views were
    scored together and how they were combined."""

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.windows.extend(windows)
        score = 0.2 * np.arange(1, len(windows) + 1, dtype=np.float32).clip(max=5)
        return np.stack([score, 1 - score], axis=1)


@pytest.mark.parametrize("chunk", [160, 1600, 16000 * 6])
def test_a_sounds_cough_score_is_the_mean_over_its_views(chunk):
    """One burst: five views (0.2..1.0) average to 0.6 and pass the 0.5 threshold; one view (0.2) does not."""
    from edge.onset import OnsetDetector, OnsetSettings
    from edge.pipeline import Pipeline

    audio, _ = _two_phase_cough_then_a_bout_cough()
    audio = audio[:41600]  # the first cough's two phases only (the bout's next cough starts at 43360)
    found = {}
    for views in (5, 1):
        detector = _ViewDetector("det", 16000, 4000, [0, 0])
        pipe = Pipeline(detector, _RecordingModel("cls", 16000, 4000, [0.7, 0.3]), "dev", synced=True,
                        onset=OnsetDetector(16000, OnsetSettings(views=views)))
        found[views] = (_replay(pipe, audio, chunk), pipe.counters)
    (event,), counters = found[5]
    assert event.cough_score == pytest.approx(0.6) and counters.merged == 1
    events, counters = found[1]
    assert events == [] and counters.rejected == 2, "one view scores 0.2 at each phase: both rejected"


class _LoudnessDetector(_RecordingModel):
    """A detector whose cough score grows with the loudness of the 100 ms after the onset (a cough is loud where its
    window puts it; a room sound's window holds a louder sound only later)."""

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        self.windows.extend(windows)
        pre = self.info.pre_roll_samples
        peak = np.sqrt(np.mean(windows[:, pre:pre + 1600] ** 2, axis=1))
        score = np.clip(0.5 + peak, 0.0, 0.99)
        return np.stack([score, 1 - score], axis=1).astype(np.float32)


def _sounds_at(spec: list[tuple[float, ...]]) -> np.ndarray:
    """Noise floor with noise bursts: (start in s, RMS[, length in s, 0.1 if not given]) each."""
    rng = np.random.default_rng(7)
    audio = (0.002 * rng.standard_normal(16000 * 5)).astype(np.float32)
    for start, rms, *length in spec:
        at, n = round(start * 16000), round((length[0] if length else 0.1) * 16000)
        audio[at:at + n] += (rms * rng.standard_normal(n)).astype(np.float32)
    return audio


@pytest.mark.parametrize("chunk", [160, 1600, 7000])
@pytest.mark.parametrize("spec, supersede_ms, want, superseded", [
    ([(2.0, 0.05), (2.4, 0.4)], 600.0, [2.4], 1),              # a room sound 0.4 s before a cough yields to it
    ([(2.0, 0.05), (2.4, 0.4)], 0.0, [2.0, 2.4], 0),           # ... unless the rule is off
    ([(2.0, 0.4), (2.5, 0.38)], 600.0, [2.0, 2.5], 0),         # the coughs of a bout score alike: both stay
    ([(2.0, 0.05), (2.7, 0.4)], 600.0, [2.0, 2.7], 0),         # a better sound 0.7 s later is another event
    ([(4.3, 0.05), (4.7, 0.4)], 600.0, [4.7], 1),              # at the end of the stream flush() decides
    ([(2.0, 0.05), (2.16, 0.4)], 600.0, [2.2], 1),             # a cough right after a room sound is not its phase
    ([(2.0, 0.05), (2.16, 0.4)], 0.0, [2.0], 0),               # ... without the rule it merges into it
])
def test_an_accepted_sound_yields_to_a_clearly_better_one_that_follows_within_supersede_ms(
        chunk, spec, supersede_ms, want, superseded):
    from edge.onset import OnsetDetector, OnsetSettings
    from edge.pipeline import Pipeline

    audio = _sounds_at(spec)
    pipe = Pipeline(_LoudnessDetector("det", 16000, 4000, [0, 0]), _RecordingModel("cls", 16000, 4000, [0.7, 0.3]),
                    "dev", onset=OnsetDetector(16000, OnsetSettings(supersede_ms=supersede_ms, burst_db=0.0)), synced=True)
    published = _replay(pipe, audio, chunk)
    assert [round(e.onset_sample / 16000, 1) for e in published] == want
    assert pipe.health()["superseded"] == superseded and pipe.health()["events"] == len(want)
    c = pipe.counters
    assert c.superseded == superseded and c.events == len(want)
    assert c.sounds == len(spec) == c.events + c.superseded + c.merged and c.rejected == 0


@pytest.mark.parametrize("chunk", [160, 1600, 7000])
@pytest.mark.parametrize("spec, louder_db, want", [
    ([(2.0, 0.02), (2.4, 0.4)], 10.0, [2.4]),      # a quiet room sound before a cough, both scored alike: it yields
    ([(2.0, 0.02), (2.4, 0.4)], 0.0, [2.0, 2.4]),  # ... unless loudness is not asked
    ([(2.0, 0.3), (2.5, 0.4)], 10.0, [2.0, 2.5]),  # the coughs of a bout, 2.5 dB apart: both stay
    ([(2.0, 0.02), (2.7, 0.4)], 10.0, [2.0, 2.7]), # a louder sound 0.7 s later is another event
])
def test_an_accepted_sound_yields_to_a_much_louder_one_however_they_score(chunk, spec, louder_db, want):
    from edge.onset import OnsetDetector, OnsetSettings
    from edge.pipeline import Pipeline

    audio = _sounds_at(spec)
    settings = OnsetSettings(supersede_louder_db=louder_db, burst_db=0.0)
    pipe = Pipeline(_RecordingModel("det", 16000, 4000, [0.95, 0.05]), _RecordingModel("cls", 16000, 4000, [0.7, 0.3]),
                    "dev", onset=OnsetDetector(16000, settings), synced=True)
    published = _replay(pipe, audio, chunk)
    assert [round(e.onset_sample / 16000, 1) for e in published] == want
    assert pipe.counters.superseded == len(spec) - len(want)


@pytest.mark.parametrize("chunk", [160, 1600, 7000])
@pytest.mark.parametrize("spec, burst_db, want, merged", [
    ([(2.0, 0.02, 0.4), (2.4, 0.4)], 3.0, [2.4], 1),       # a room sound running into a cough its window holds
    ([(2.0, 0.02, 0.4), (2.4, 0.4)], 0.0, [2.0], 1),       # ... off: stamped at the room sound, 0.4 s early
    ([(2.0, 0.02), (2.4, 0.4)], 3.0, [2.0, 2.4], 0),       # a quiet sound that fell silent first stands for itself
    ([(2.0, 0.4), (2.3, 0.02)], 3.0, [2.0], 1),            # a quiet room sound after a cough, in whose pre-roll it lies
    ([(2.0, 0.4), (2.5, 0.38)], 3.0, [2.0, 2.5], 0),       # the coughs of a bout, alike: each stands for itself
    ([(2.0, 0.02, 0.4), (3.2, 0.4)], 3.0, [2.0, 3.2], 0),  # a cough past the room sound's window is another event
])
def test_an_event_stands_for_the_loudest_burst_its_window_heard(chunk, spec, burst_db, want, merged):
    """A sound whose window heard a burst ``burst_db`` louder than its own start stands for that burst, unless it
    fell silent (``merge_pause_db`` under its own peak) before a later one: then it is a cough of its own, the
    burst the next of its bout."""
    from edge.onset import OnsetDetector, OnsetSettings
    from edge.pipeline import Pipeline

    audio = _sounds_at(spec)
    settings = OnsetSettings(supersede_ms=0.0, burst_db=burst_db)  # the supersede rules off: the burst rule alone
    pipe = Pipeline(_RecordingModel("det", 16000, 4000, [0.95, 0.05]), _RecordingModel("cls", 16000, 4000, [0.7, 0.3]),
                    "dev", onset=OnsetDetector(16000, settings), synced=True)
    published = _replay(pipe, audio, chunk)
    assert [round(e.onset_sample / 16000, 1) for e in published] == want
    c = pipe.counters
    assert c.merged == merged and c.sounds == len(spec) == c.events + c.merged and c.superseded == 0
    frame = pipe.onset.frame_samples
    assert all(abs(e.onset_sample - t * 16000) < frame for e, t in zip(published, want)), "stamped at its burst"
    if merged and burst_db:  # the event stands for the cough's burst, and lasts as long as it (100 ms)
        assert any(abs(e.duration_s - 0.1) <= 0.02 for e in published)


@pytest.mark.parametrize("chunk", [160, 1600, 7000])
@pytest.mark.parametrize("rescore, want", [(False, []), (True, [2.3])])
def test_burst_rescore_scores_the_window_cut_at_the_burst(chunk, rescore, want):
    """A room sound rising into a cough without the jump that re-triggers the onset detector: its own window scores
    low (the loudness detector hears its quiet start), the window cut at the cough's burst scores high."""
    from edge.onset import OnsetDetector, OnsetSettings
    from edge.pipeline import Pipeline

    audio = _sounds_at([(2.0, 0.08, 0.3), (2.3, 0.25)])  # 10 dB up, under retrigger_db (12)
    settings = OnsetSettings(burst_rescore=rescore)
    pipe = Pipeline(_LoudnessDetector("det", 16000, 4000, [0, 0]), _RecordingModel("cls", 16000, 4000, [0.7, 0.3]),
                    "dev", onset=OnsetDetector(16000, settings), synced=True, detector_threshold=0.65)
    published = _replay(pipe, audio, chunk)
    assert pipe.counters.sounds == 1, "one sound: the cough did not re-trigger the onset detector"
    assert [round(e.onset_sample / 16000, 1) for e in published] == want
    assert all(e.cough_score > 0.7 for e in published)


def test_the_burst_is_the_loudest_run_of_frames_back_to_where_it_rose():
    from edge.onset import BURST_WITHIN_DB, OnsetDetector

    audio = _sounds_at([(1.0, 0.02), (1.5, 0.4)])
    detector = OnsetDetector(16000)
    detector.remember(audio.size)
    detector(audio)
    burst = detector.burst(round(0.9 * 16000), round(1.9 * 16000))
    frame = detector.frame_samples
    assert abs(burst.start - 1.5 * 16000) < frame and abs(burst.end - 1.6 * 16000) < frame
    assert burst.peak_dbfs > detector.burst(16000, round(1.1 * 16000)).peak_dbfs + BURST_WITHIN_DB
    assert detector.burst(round(1.2 * 16000), round(1.2 * 16000) + frame // 2) is None, "no whole frame there"


def test_burst_settings_are_bounded():
    from edge.onset import OnsetSettings

    with pytest.raises(ValueError, match="burst_db = -1.0 must be in \\[0, 40\\] dB"):
        OnsetSettings(burst_db=-1.0)
    with pytest.raises(ValueError, match="burst_same_ms = 0.0 must be in \\(0, 500\\] ms"):
        OnsetSettings(burst_same_ms=0.0)


def test_supersede_settings_are_bounded():
    from edge.onset import OnsetSettings

    with pytest.raises(ValueError, match="supersede_ms = 2500.0 must be in \\[0, 2000\\] ms"):
        OnsetSettings(supersede_ms=2500.0)
    with pytest.raises(ValueError, match="supersede_margin = 1.0 must be in \\[0, 1\\)"):
        OnsetSettings(supersede_margin=1.0)
    with pytest.raises(ValueError, match="supersede_louder_db = -1.0 must be in \\[0, 60\\] dB"):
        OnsetSettings(supersede_louder_db=-1.0)


def test_merge_gap_is_bounded():
    from edge.onset import OnsetSettings

    with pytest.raises(ValueError, match="merge_gap_ms = -1.0 must be in"):
        OnsetSettings(merge_gap_ms=-1.0)
    with pytest.raises(ValueError, match="merge_gap_ms = nan must be a finite number"):
        OnsetSettings(merge_gap_ms=float("nan"))
    with pytest.raises(ValueError, match="merge_max_ms = 2000.0 must be in \\(0, max_duration_ms = 1500.0\\]"):
        OnsetSettings(merge_max_ms=2000.0)


@pytest.mark.parametrize("rise_after_ms, events", [(256, 1), (512, 1), (704, 2)])  # on 16 ms frame edges
def test_a_sudden_rise_without_a_pause_is_a_new_cough_only_past_merge_max_ms(rise_after_ms, events):
    """The onset detector re-triggers on a sudden rise inside a sound (no pause): up to 600 ms after the cough's
    onset that is its later phase, 704 ms after it the bout's next cough (the rise is 18 dB: loudness alone does not
    decide here, ``supersede_louder_db`` and ``burst_db`` off; with either the quiet first sound would yield to the loud
    one)."""
    from edge.onset import OnsetDetector, OnsetSettings
    from edge.pipeline import Pipeline

    rng = np.random.default_rng(6)
    audio = (0.002 * rng.standard_normal(16000 * 5)).astype(np.float32)
    rise = 32000 + rise_after_ms * 16
    audio[32000:rise] += (0.05 * rng.standard_normal(rise - 32000)).astype(np.float32)
    audio[rise:rise + 4800] += (0.4 * rng.standard_normal(4800)).astype(np.float32)
    pipe = Pipeline(_RecordingModel("det", 16000, 1600, [0.9, 0.1]), _RecordingModel("cls", 16000, 1600, [0.7, 0.3]),
                    "dev", onset=OnsetDetector(16000, OnsetSettings(supersede_louder_db=0.0, burst_db=0.0)), synced=True)
    got = _replay(pipe, audio, 1600)
    assert pipe.counters.sounds == 2, "the rise re-triggers the onset detector"
    assert len(got) == events and pipe.counters.merged == 2 - events


@pytest.mark.parametrize("chunk", [160, 1000, 16000 * 12])  # the last: the whole recording in one chunk
@pytest.mark.parametrize("pause_db, events", [(20.0, 2), (0.0, 1)])
def test_a_pause_below_the_coughs_peak_keeps_the_next_cough_of_a_bout_apart(pause_db, events, chunk):
    """A loud cough, then 160 ms of its quiet tail 26 dB under its peak (still far above the room, so the onset
    detector's sound goes on), then a new burst 320 ms after the first: within merge_gap_ms and merge_max_ms, so only
    the pause tells the bout's next cough from a phase of the first (``merge_pause_db`` 0 turns the rule off),
    whatever the chunk size."""
    from edge.onset import OnsetDetector, OnsetSettings
    from edge.pipeline import Pipeline

    rng = np.random.default_rng(7)
    audio = (0.002 * rng.standard_normal(16000 * 12)).astype(np.float32)
    for start, n, amp in ((32000, 2560, 0.4), (34560, 2560, 0.02), (37120, 4800, 0.4)):
        audio[start:start + n] += (amp * rng.standard_normal(n)).astype(np.float32)
    pipe = Pipeline(_RecordingModel("det", 16000, 1600, [0.9, 0.1]), _RecordingModel("cls", 16000, 1600, [0.7, 0.3]),
                    "dev", onset=OnsetDetector(16000, OnsetSettings(merge_pause_db=pause_db)), synced=True)
    got = _replay(pipe, audio, chunk)
    assert pipe.counters.sounds == 2, "the second burst re-triggers the onset detector inside the first sound"
    assert [round(e.onset_sample / 16000, 2) for e in got] == [2.0, 2.32][:events]
    assert pipe.counters.merged == 2 - events


def test_quiet_run_counts_remembered_frames_only():
    from edge.onset import OnsetDetector

    det = OnsetDetector(16000)
    det.remember(16000)  # one second of frames (63 of 256 samples)
    noise = np.random.default_rng(8).standard_normal(8000).astype(np.float32) * 0.1
    det(np.concatenate([noise, np.zeros(8000, np.float32)]))
    assert det.quiet_run(0, 16000, -60.0) == 30 * 256, "the silent half's 30 whole frames (frame 31 straddles)"
    assert det.quiet_run(0, 8000, -60.0) == 0
    det(np.zeros(16000, np.float32))  # the loud half is now older than what is remembered
    assert det.quiet_run(0, 16000, -60.0) == 0, "frames no longer remembered never count as quiet"
    assert det.quiet_run(16000, 32000, -60.0) == 62 * 256
    with pytest.raises(ValueError, match="merge_pause_ms = 0.0 must be in"):
        from edge.onset import OnsetSettings

        OnsetSettings(merge_pause_ms=0.0)
