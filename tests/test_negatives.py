"""`trainer negatives`: licences from copyright files, decoding and exclusions, the manifest, fetching (no network)."""
from __future__ import annotations

import csv
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trainer import negatives as N
from trainer.__main__ import main
from trainer.data import load_manifest

PKG = "fake-sounds"
GAME = "/usr/share/games/fake"
COPYRIGHT = f"""\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake
Source: https://example.org/fake

Files: *
Copyright: 2020 Someone
License: GPL-2

Files: share/fake/voices/*
Copyright: 2020 Voice actors
License: CC-BY-SA-3.0

Files:
 share/fake/effects/bang*.wav
 share/fake/effects/thud.wav
Copyright: 2021 Freesound user
License: CC0-1.0
Comment: a stanza listing two patterns on continuation lines

Files: fake/*
Copyright: 2020 Someone
License: MIT
Comment: the engine's source folder; its tail "fake/*" also matches the installed path, less specifically

Files: debian/*
Copyright: 2022 Debian maintainer
License: GPL-2+

License: GPL-2
 On Debian systems, the complete text is in /usr/share/common-licenses/GPL-2.
"""


def tone(seconds: float, freq: float = 440.0, rate: int = 44100, stereo: bool = True, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return np.stack([x, x], axis=1) if stereo else x


def write(root: Path, path: str, audio: np.ndarray, rate: int = 44100) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(target), audio, rate, subtype="PCM_16")


@pytest.fixture
def package(tmp_path) -> Path:
    """An extracted package: two speakers, effects (one corrupt, one silent, one too short, one a copy), music."""
    root = tmp_path / "work" / PKG
    doc = root / "usr/share/doc" / PKG
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    write(root, f"{GAME}/voices/alice/hello.wav", tone(1.0, 440, seed=1))
    write(root, f"{GAME}/voices/alice/Laugh.wav", tone(0.8, 660, seed=2))
    write(root, f"{GAME}/voices/bob/hello.wav", tone(1.2, 330, seed=3))
    write(root, f"{GAME}/voices/bob/cough1.wav", tone(0.5, 200, seed=4))
    write(root, f"{GAME}/effects/bang1.wav", tone(0.6, 1000, seed=5))
    write(root, f"{GAME}/effects/thud.wav", tone(0.4, 120, seed=6, stereo=False), rate=22050)
    write(root, f"{GAME}/effects/quiet.wav", np.zeros((44100, 2)))
    write(root, f"{GAME}/effects/click.wav", tone(0.1, 2000, seed=7))
    shutil.copy(root / f"{GAME.lstrip('/')}/voices/bob/hello.wav", root / f"{GAME.lstrip('/')}/effects/copy.wav")
    (root / f"{GAME.lstrip('/')}/effects/broken.ogg").write_bytes(b"OggS" + bytes(range(256)) * 4)
    write(root, f"{GAME}/music/theme.flac", tone(25.0, 523, seed=8))
    (root / f"{GAME.lstrip('/')}/effects/link.wav").symlink_to("bang1.wav")  # not a file of its own: not counted
    (root / f"{GAME.lstrip('/')}/voices/alice/readme.txt").write_text("not audio")
    return root


def test_build_writes_16k_mono_flac_a_loadable_manifest_and_sources(package, tmp_path):
    out = tmp_path / "out"
    results = N.build(out, package.parent, {PKG: "1.0-1"}, command="trainer negatives --out out", progress=False)
    rows = {(r["original_path"], r["start_s"]): r for r in results[0].rows}
    kept = {p for p, _ in rows}
    assert kept == {f"{GAME}/voices/alice/hello.wav", f"{GAME}/voices/alice/Laugh.wav", f"{GAME}/voices/bob/hello.wav",
                    f"{GAME}/effects/bang1.wav", f"{GAME}/effects/thud.wav", f"{GAME}/music/theme.flac"}
    excluded = results[0].excluded
    assert excluded == {N.COUGH_REASON: 1, "cannot decode": 1, "silent (peak < 0.0001)": 1,
                        "shorter than 0.2 s": 1, "identical to a file already kept": 1}
    assert results[0].cough_files == [f"{GAME}/voices/bob/cough1.wav"] and results[0].files == 11

    clips = load_manifest(out)  # the trainer's own reader: relative paths, columns kept in extra
    assert len(clips) == len(rows) == 8 and {c.label for c in clips} == {"other"}
    for clip in clips:
        info = sf.info(str(clip.path))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
        assert clip.path.is_relative_to(out / "audio" / PKG)
        assert abs(info.frames / 16000 - float(clip.extra["duration_s"])) < 1e-3
        assert clip.extra["source"] == PKG and clip.extra["package_version"] == "1.0-1"
        assert clip.extra["sample_rate"] == "16000"
    by_path = {c.extra["original_path"]: c for c in clips}
    assert by_path[f"{GAME}/voices/alice/hello.wav"].path.name == "hello.wav.flac"
    assert by_path[f"{GAME}/effects/thud.wav"].extra["original_sample_rate"] == "22050"
    assert by_path[f"{GAME}/voices/alice/Laugh.wav"].extra["original_sample_rate"] == "44100"


def test_audio_is_resampled_not_relabelled(package, tmp_path):
    N.build(tmp_path / "out", package.parent, {PKG: "1.0-1"}, progress=False)
    audio, rate = sf.read(str(tmp_path / f"out/audio/{PKG}{GAME}/voices/alice/hello.wav.flac"))
    assert rate == 16000 and audio.ndim == 1 and abs(audio.size - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * rate / audio.size - 440) < 2  # the 440 Hz tone is still at 440 Hz
    assert 0.25 < np.abs(audio).max() < 0.36  # the level is kept, not normalised


def test_licences_groups_hints_and_pieces_per_file(package, tmp_path):
    results = N.build(tmp_path / "out", package.parent, {PKG: "1.0-1"}, progress=False)
    rows = results[0].rows
    licence = {r["original_path"]: r["licence"] for r in rows}
    assert licence[f"{GAME}/voices/alice/hello.wav"] == "CC-BY-SA-3.0"  # source "share/fake/voices/*"
    assert licence[f"{GAME}/effects/bang1.wav"] == "CC0-1.0"  # the more specific stanza
    assert licence[f"{GAME}/effects/thud.wav"] == "CC0-1.0"  # second pattern of that stanza
    assert licence[f"{GAME}/music/theme.flac"] == "MIT"  # "fake/*" beats "*"; "debian/*" never matches
    group = {r["original_path"]: r["group"] for r in rows}
    alice = f"{PKG}{GAME}/voices/alice"
    assert group[f"{GAME}/voices/alice/hello.wav"] == group[f"{GAME}/voices/alice/Laugh.wav"] == alice
    assert group[f"{GAME}/voices/bob/hello.wav"] == f"{PKG}{GAME}/voices/bob"
    hint = {r["original_path"]: r["sound_hint"] for r in rows}
    assert hint[f"{GAME}/voices/alice/Laugh.wav"] == "laugh" and hint[f"{GAME}/voices/bob/hello.wav"] == "speech"
    assert hint[f"{GAME}/effects/bang1.wav"] == "bang" and hint[f"{GAME}/music/theme.flac"] == "music"
    pieces = sorted((r["start_s"], r["duration_s"], r["path"]) for r in rows if r["original_path"].endswith(".flac"))
    assert [(s, d) for s, d, _ in pieces] == [(0.0, 10.0), (10.0, 10.0), (20.0, 5.0)]
    assert [Path(p).name for _, _, p in pieces] == ["theme.part1.flac", "theme.part2.flac", "theme.part3.flac"]
    assert len({r["group"] for r in rows if r["original_path"].endswith(".flac")}) == 1  # one recording, one split


def test_sources_md_counts_licences_exclusions_and_says_how_to_rebuild(package, tmp_path):
    N.build(tmp_path / "out", package.parent, {PKG: "1:1.0-1"}, command="trainer negatives --out X", progress=False)
    text = (tmp_path / "out/SOURCES.md").read_text()
    assert "Rebuilt by: `trainer negatives --out X`" in text
    assert f"| {PKG} | 1:1.0-1 | CC-BY-SA-3.0 (3), MIT (3), CC0-1.0 (2) | 8 | " in text
    assert f"- excluded because the name suggests a cough (1): `{GAME}/voices/bob/cough1.wav`" in text
    assert "name suggests a cough: 1" in text and "cannot decode: 1" in text and "shorter than 0.2 s: 1" in text
    assert f"apt-get download {PKG}=1:1.0-1 && dpkg -x {PKG}_1.0-1_*.deb {PKG}/" in text
    with (tmp_path / "out/manifest.csv").open() as fh:
        assert tuple(csv.DictReader(fh).fieldnames) == N.COLUMNS


def test_max_clips_takes_one_group_at_a_time_and_counts_the_rest(package, tmp_path):
    (package / f"{GAME.lstrip('/')}/music/theme.flac").unlink()
    results = N.build(tmp_path / "out", package.parent, {PKG: "1.0-1"}, max_clips=2, progress=False)
    rows = results[0].rows
    assert len(rows) == 2 and len({r["group"] for r in rows}) == 2  # one file of each group in turn
    assert results[0].excluded[N.CAP_REASON] > 0
    again = N.build(tmp_path / "out2", package.parent, {PKG: "1.0-1"}, max_clips=2, progress=False)
    assert [r["original_path"] for r in again[0].rows] == [r["original_path"] for r in rows]  # seeded


def test_only_hints_keeps_the_sounds_asked_for_and_counts_the_rest(package, tmp_path):
    results = N.build(tmp_path / "out", package.parent, {PKG: "1.0-1"}, hints=("laugh", "bang"), progress=False)
    assert sorted(r["original_path"] for r in results[0].rows) == [f"{GAME}/effects/bang1.wav",
                                                                   f"{GAME}/voices/alice/Laugh.wav"]
    assert results[0].excluded[N.HINT_REASON] == 8  # the 11 files but the cough and the two kept, never decoded
    assert results[0].excluded[N.COUGH_REASON] == 1, "a cough is left out by name first, whatever the hints"
    with pytest.raises(ValueError, match=r"--only-hints: 'giggle' is not a sound hint \(one of: speech, drum"):
        N.build(tmp_path / "out2", package.parent, {PKG: "1.0-1"}, hints=("laugh", "giggle"), progress=False)
    assert set(N.VOCAL_HINTS) <= set(N.HINTS) and "cough" not in N.HINTS and len(set(N.HINTS)) == len(N.HINTS)


def test_max_clips_also_bounds_the_pieces_of_a_long_recording(tmp_path):
    root = tmp_path / "work" / PKG
    (root / "usr/share/doc" / PKG).mkdir(parents=True)
    (root / "usr/share/doc" / PKG / "copyright").write_text(COPYRIGHT)
    write(root, f"{GAME}/music/theme.flac", tone(45.0, 523, seed=8))  # 5 pieces of 10 s, 3 kept at most
    results = N.build(tmp_path / "out", root.parent, {PKG: "1.0-1"}, progress=False)
    assert [r["start_s"] for r in results[0].rows] == [0.0, 10.0, 20.0]
    assert (results[0].pieced_files, results[0].cut_files) == (1, 1)
    assert "- cut into pieces of 10 s: 1 recordings; of those, 1 longer than 30 s keep only their first 3 pieces" \
        in (tmp_path / "out/SOURCES.md").read_text()
    results = N.build(tmp_path / "out", root.parent, {PKG: "1.0-1"}, max_clips=2, progress=False)
    on_disk = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out/audio").rglob("*.flac"))
    assert on_disk == sorted(r["path"] for r in results[0].rows) and len(on_disk) == 2  # nothing over the cap


def test_draw_order_interleaves_groups():
    paths = [f"/a/{i}.wav" for i in range(5)] + ["/b/x.wav", "/c/y.wav"]
    order = N.draw_order(paths, "other-pkg", seed=3)
    assert sorted(order) == sorted(paths)
    assert {Path(p).parent.name for p in order[:3]} == {"a", "b", "c"}
    assert order == N.draw_order(list(reversed(paths)), "other-pkg", seed=3)


def test_a_copyright_file_that_is_not_dep5(package, tmp_path):
    copyright_file = package / "usr/share/doc" / PKG / "copyright"
    copyright_file.write_text("This package was debianized by someone.\n\nLicense:\n\n  This program is free "
                              "software; you can redistribute it and/or modify\n  it under the terms of the GNU "
                              "General Public License as published by\n  the Free Software Foundation; either "
                              "version 2 of the License, or\n  (at your option) any later version.\n")
    licences = N.licence_of(package, PKG)
    assert set(licences) == set(N.audio_files(package)) and set(licences.values()) == {"GPL-2+"}
    copyright_file.write_text("Copyright 2001 Someone. Ask me.\n")
    assert set(N.licence_of(package, PKG).values()) == {"unknown"}
    with pytest.raises(ValueError, match="no clip kept"):
        N.build(tmp_path / "out", package.parent, {PKG: "1.0-1"}, progress=False)
    results = N.build(tmp_path / "out", package.parent, {PKG: "1.0-1"}, allow_unknown_licence=True, progress=False)
    assert {r["licence"] for r in results[0].rows} == {"unknown"} and len(results[0].rows) == 8


def test_free_text_licence_names():
    assert N.free_text_licence("License: CC-BY-SA-4.0\n") == "CC-BY-SA-4.0"
    assert N.free_text_licence("released under the Creative Commons Attribution 3.0 licence") == "CC-BY-3.0"
    assert N.free_text_licence("GNU Lesser General Public License version 2.1 ... GNU General Public License "
                               "version 3") == "LGPL-2.1"
    assert N.free_text_licence("no words about it") == "unknown"


def test_installed_paths_match_source_stanzas_by_their_most_specific_tail():
    stanzas = N.parse_dep5(COPYRIGHT.replace("Files: fake/*", "Files: hedgewars/*"))
    assert [s[1] for s in stanzas] == ["GPL-2", "CC-BY-SA-3.0", "CC0-1.0", "MIT", "GPL-2+"]
    assert stanzas[2][0] == ["share/fake/effects/bang*.wav", "share/fake/effects/thud.wav"]
    assert N.licence_for(stanzas, "/usr/share/games/fake/voices/x/a.ogg") == "CC-BY-SA-3.0"
    assert N.licence_for(stanzas, "/usr/share/fake/effects/bang_big.wav") == "CC0-1.0"
    assert N.licence_for(stanzas, "/usr/share/games/hedgewars/Data/a.ogg") == "MIT"
    assert N.licence_for(stanzas, "/usr/share/elsewhere/a.ogg") == "GPL-2"  # only "*": "debian/*" is no catch-all
    assert N.licence_for([(["debian/*"], "GPL-2+")], "/usr/share/x/a.ogg") == "unknown"
    assert N.parse_dep5("Just some text\n\nLicense: GPL-2\n") is None


@pytest.mark.parametrize("path, hint", [
    ("/usr/share/games/hedgewars/Data/Sounds/voices/Default/PoisonCough.ogg", "cough"),
    ("/usr/share/games/hedgewars/Data/Sounds/voices/Classic/Laugh.ogg", "laugh"),
    ("/usr/share/games/hedgewars/Data/Sounds/voices/Classic/Ooff1.ogg", "speech"),
    ("/usr/share/games/hedgewars/Data/Sounds/bee.ogg", "animal"),
    ("/usr/share/games/hedgewars/Data/Sounds/beep.ogg", "effect"),
    ("/usr/share/games/hedgewars/Data/Music/Sheep.ogg", "music"),
    ("/usr/share/tuxpaint/stamps/animals/birds/crow_desc_fr.ogg", "speech"),
    ("/usr/share/tuxpaint/stamps/animals/birds/crow.ogg", "animal"),
    ("/usr/share/tuxpaint/stamps/household/dishes/glass.ogg", "dishes"),
    ("/usr/share/tuxpaint/stamps/hobbies/music/percussion/cymbal_crash.ogg", "drum"),
    ("/usr/share/sonic-pi/samples/perc_door.flac", "knock"),
    ("/usr/share/sonic-pi/samples/bd_haus.flac", "drum"),
    ("/usr/share/klettres/fr/alpha/a.ogg", "speech"),
    ("/usr/share/sounds/x/sneeze2.wav", "sneeze"),
    ("/usr/share/games/frozen-bubble/snd/snore.ogg", "snore"),
    ("/usr/share/games/wesnoth/1.16/data/core/sounds/human-female-die-1.ogg", "grunt"),
    ("/usr/share/games/wesnoth/1.16/data/core/sounds/orc-hit-1.ogg", "effect"),  # not a human voice
    ("/usr/share/scratch/Media/Sounds/Human/BabyCry.mp3", "cry"),
    ("/opt/x/thing.wav", ""),
])
def test_sound_hint(path, hint):
    assert N.sound_hint(path) == hint


@pytest.mark.parametrize("package, path, group", [
    ("hedgewars-data", "/usr/share/games/hedgewars/Data/Sounds/voices/Pirate/Laugh.ogg",
     "hedgewars-data/voices/Pirate"),
    ("hedgewars-data", "/usr/share/games/hedgewars/Data/Sounds/voices/Default_pl/Ow1.ogg",
     "hedgewars-data/voices/Default"),
    ("hedgewars-data", "/usr/share/games/hedgewars/Data/Sounds/bee.ogg",
     "hedgewars-data/usr/share/games/hedgewars/Data/Sounds/bee.ogg"),
    ("tuxpaint-stamps-default", "/usr/share/tuxpaint/stamps/animals/cat_desc_pt_BR.ogg",
     "tuxpaint-stamps-default/voice-pt_BR"),
    ("tuxpaint-stamps-default", "/usr/share/tuxpaint/stamps/animals/cat_desc.ogg",
     "tuxpaint-stamps-default/voice-default"),
    ("tuxpaint-stamps-default", "/usr/share/tuxpaint/stamps/symbols/math/7_en_GB.ogg",
     "tuxpaint-stamps-default/voice-en_GB"),
    ("klettres-data", "/usr/share/klettres/fr/syllab/ba.ogg", "klettres-data/fr"),
    ("klettres-data", "/usr/share/klettres/fr/alpha/a.ogg", "klettres-data/fr"),
    ("asterisk-core-sounds-en-wav", "/usr/share/asterisk/sounds/en_US_f_Allison/digits/1.wav",
     "asterisk-core-sounds-en-wav/en_US_f_Allison"),
    ("sonic-pi-samples", "/usr/share/sonic-pi/samples/tabla_ke2.flac", "sonic-pi-samples/tabla"),
    ("wesnoth-1.16-data", "/usr/share/games/wesnoth/1.16/data/core/sounds/human-hit-1.ogg",
     "wesnoth-1.16-data/usr/share/games/wesnoth/1.16/data/core/sounds/human-hit-1.ogg"),  # one character each
    ("scratch", "/usr/share/scratch/Media/Sounds/Human/Laugh-male1.wav",
     "scratch/usr/share/scratch/Media/Sounds/Human/Laugh-male1.wav"),
    ("bambam", "/usr/share/bambam/data/giggle.wav", "bambam/usr/share/bambam/data"),
])
def test_group_is_the_speaker_or_set(package, path, group):
    assert N.group_of(package, path) == group


def fake_apt_get(folder: Path, script: str) -> dict:
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "apt-get"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_fetch_names_the_package_that_apt_get_cannot_download(tmp_path, monkeypatch):
    env = fake_apt_get(tmp_path, 'echo "E: Unable to locate package $2" >&2\nexit 100\n')
    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(N.NegativesError, match=r"no-such-sounds: apt-get download failed .*apt-get update.*"
                                              r"Unable to locate package no-such-sounds"):
        N.fetch(["no-such-sounds"], tmp_path / "debs")
    code = main(["negatives", "--out", str(tmp_path / "out"), "--packages", "no-such-sounds"])
    assert code == 2


@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="needs dpkg-deb")
def test_fetch_downloads_extracts_and_reads_the_version(package, tmp_path, monkeypatch):
    (package / "DEBIAN").mkdir()
    (package / "DEBIAN/control").write_text(f"Package: {PKG}\nVersion: 2:1.5-3\nArchitecture: all\n"
                                            "Maintainer: T <t@example.org>\nDescription: test sounds\n")
    deb = tmp_path / "built.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(package), str(deb)], check=True,
                   capture_output=True)
    env = fake_apt_get(tmp_path, f'cp "{deb}" "{PKG}_1.5-3_all.deb"\n')
    monkeypatch.setenv("PATH", env["PATH"])
    work = tmp_path / "debs"
    assert N.fetch([PKG], work) == {PKG: "2:1.5-3"}
    assert (work / PKG / f"usr/share/doc/{PKG}/copyright").read_text() == COPYRIGHT
    assert len(N.audio_files(work / PKG)) == 11
    (tmp_path / "bin/apt-get").write_text("#!/bin/sh\nexit 1\n")  # a second fetch reuses the downloaded .deb
    assert N.fetch([PKG], work) == {PKG: "2:1.5-3"}
    assert main(["negatives", "--out", str(tmp_path / "out"), "--workdir", str(work), "--packages", PKG]) == 0
    assert len(load_manifest(tmp_path / "out")) == 8
    assert main(["negatives", "--out", str(tmp_path / "vocal"), "--workdir", str(work), "--packages", PKG,
                 "--only-hints", " laugh,sneeze ,"]) == 0
    assert [c.extra["sound_hint"] for c in load_manifest(tmp_path / "vocal")] == ["laugh"]
    assert "--only-hints ' laugh,sneeze ,'" in (tmp_path / "vocal/SOURCES.md").read_text()


def test_model_card_states_the_licences_a_manifest_gives_per_file(tmp_path):
    from trainer.report import data_attribution

    (tmp_path / "manifest.csv").write_text(
        "path,label,group,source,package_version,licence\n"
        "a.flac,other,g1,pkg-a,1.0,GPL-2\nb.flac,other,g2,pkg-a,1.0,GPL-2\nc.flac,other,g3,pkg-b,2,CC0\n")
    (tmp_path / "plain.csv").write_text("path,label\na.flac,other\n")
    lines = data_attribution(f"{tmp_path / 'manifest.csv'},{tmp_path / 'plain.csv'}")
    assert "pkg-a 1.0: GPL-2 (2); pkg-b 2: CC0 (1)" in lines[0]
    assert "license unknown to coughwatch" in lines[1]
