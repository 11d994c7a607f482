"""`trainer negatives`: a manifest of hard-negative sounds (speech, laughter, music, knocks, animals...) built
from recorded sound that Debian ships, with each clip's package, version and licence.

1. ``fetch``: ``apt-get download`` each package into the work folder and ``dpkg -x`` it to ``<workdir>/<pkg>/``.
2. ``licence_of``: each audio file's licence from the package's ``usr/share/doc/<pkg>/copyright`` (DEP-5
   ``Files:`` stanzas matched against the installed paths; see ``licence_for``). Files whose licence is
   unknown are excluded unless ``allow_unknown_licence``.
3. ``collect``: decode (``trainer.data.decode``: librosa, mono, soxr_hq to 16 kHz), drop what cannot be used
   (the reason is logged and counted), cut recordings longer than ``PIECE_S`` into consecutive ``PIECE_S``
   pieces (at most ``MAX_PIECES`` of them, so the first 30 s), and write 16-bit FLAC to
   ``<out>/audio/<pkg>/<path inside the package>.flac`` (``x.ogg.flac``; a FLAC source keeps its name;
   pieces: ``x.ogg.partN.flac``).
4. ``write_manifest`` and ``write_sources``: ``<out>/manifest.csv`` (label ``other``) and ``<out>/SOURCES.md``.

Files whose name suggests a cough (``sound_hint`` ``cough``) are never in the manifest: they would be
negatives that are coughs. At most ``max_clips`` clips per package are kept, drawn in a seeded order that
takes one file from each group (speaker, voice pack, sample family; a sound effect is a group of its own) in
turn, so that a package dominated by one kind (Tux Paint's spoken descriptions) keeps its sound effects and
all its speakers.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import random
import re
import shlex
import shutil
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from edge.audio import SILENT_PEAK

log = logging.getLogger(__name__)

DEFAULT_PACKAGES = ("hedgewars-data", "tuxpaint-stamps-default", "klettres-data", "sonic-pi-samples",
                    "asterisk-core-sounds-en-wav")
AUDIO_SUFFIXES = {".wav", ".ogg", ".oga", ".flac", ".mp3"}
SAMPLE_RATE = 16000
MIN_S = 0.2  # shorter recordings (and last pieces) are dropped
PIECE_S = 10.0  # longer recordings are cut into pieces of this length...
MAX_PIECES = 3  # ...at most this many (the rest of the recording is not used)
MAX_CLIPS = 1500
UNKNOWN = "unknown"
COLUMNS = ("path", "label", "group", "source", "package_version", "licence", "original_path", "sound_hint",
           "duration_s", "sample_rate", "original_sample_rate", "start_s")
COUGH_REASON = "name suggests a cough"
CAP_REASON = "not drawn (over --max-clips-per-package)"
HINT_REASON = "sound hint not among --only-hints"


class NegativesError(ValueError):
    """A package cannot be fetched or read; the message names it."""


@dataclass
class PackageResult:
    package: str
    version: str
    rows: list[dict] = field(default_factory=list)
    excluded: Counter = field(default_factory=Counter)  # reason -> files
    cough_files: list[str] = field(default_factory=list)
    files: int = 0  # audio files found in the package
    pieced_files: int = 0  # recordings longer than PIECE_S, cut into pieces
    cut_files: int = 0  # recordings longer than MAX_PIECES * PIECE_S, of which only the first pieces are kept
    dropped_pieces: int = 0  # pieces of long recordings that were silent or shorter than MIN_S


# ---------------------------------------------------------------------------------------------- fetching
def fetch(packages: list[str] | tuple[str, ...], workdir: Path) -> dict[str, str]:
    """Download (or reuse an already downloaded ``<pkg>_*.deb`` in ``workdir``) and extract each package to
    ``<workdir>/<pkg>/``; returns ``{package: version}``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    versions = {}
    for package in packages:
        deb = _download(package, workdir)
        versions[package] = _deb_field(deb, "Version")
        dest = workdir / package
        if dest.exists():
            shutil.rmtree(dest)
        _run(["dpkg", "-x", str(deb), str(dest)], package, "cannot extract")
        log.info("%s %s: %s (%.1f MB) extracted to %s", package, versions[package], deb.name,
                 deb.stat().st_size / 1e6, dest)
    return versions


def _download(package: str, workdir: Path) -> Path:
    found = sorted(workdir.glob(f"{package}_*.deb"))
    if not found:
        _run(["apt-get", "download", package], package, "apt-get download failed (not in the package lists? run "
             f"`apt-get update` first, and check the name with `apt-cache policy {package}`)", cwd=workdir)
        found = sorted(workdir.glob(f"{package}_*.deb"))
        if not found:
            raise NegativesError(f"{package}: apt-get download wrote no {package}_*.deb in {workdir}")
    else:
        log.info("%s: using the already downloaded %s", package, found[-1].name)
    return found[-1]


def _deb_field(deb: Path, name: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), name], deb.name, "cannot read the .deb's control file").strip()


def _run(cmd: list[str], package: str, what: str, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise NegativesError(f"{package}: {cmd[0]} is not installed (a Debian tool): {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [f"exit {done.returncode}"]
        raise NegativesError(f"{package}: {what}: `{shlex.join(cmd)}` said: {detail[0]}")
    return done.stdout


# ---------------------------------------------------------------------------------------------- licences
def licence_of(extracted_root: Path, package: str, paths: list[str] | None = None) -> dict[str, str]:
    """``{audio path inside the package: licence short name}`` from ``usr/share/doc/<package>/copyright``.

    A machine-readable (DEP-5) file: the ``License:`` short name of the ``Files:`` stanza that matches each
    path (``licence_for``). Otherwise the first licence the text names (``free_text_licence``). ``unknown``
    where neither says.
    """
    root = Path(extracted_root)
    paths = audio_files(root) if paths is None else paths
    copyright_file = root / "usr/share/doc" / package / "copyright"
    if not copyright_file.is_file():
        log.warning("%s: no %s: every licence unknown", package, copyright_file.relative_to(root))
        return {p: UNKNOWN for p in paths}
    text = copyright_file.read_text(encoding="utf-8", errors="replace")
    stanzas = parse_dep5(text)
    if stanzas is None:
        name = free_text_licence(text)
        log.info("%s: copyright file is not machine-readable; its licence text reads as %s", package, name)
        return {p: name for p in paths}
    return {p: licence_for(stanzas, p) for p in paths}


def parse_dep5(text: str) -> list[tuple[list[str], str]] | None:
    """``[(Files patterns, License short name), ...]`` in file order, or None if ``text`` is not DEP-5."""
    paragraphs = [_fields(block) for block in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if block.strip()]
    if not paragraphs or "copyright-format" not in paragraphs[0].get("format", "") and \
            "dep5" not in paragraphs[0].get("format", ""):
        return None
    stanzas = []
    for fields in paragraphs:
        if "files" in fields:
            synopsis = fields.get("license", "").split("\n", 1)[0].strip()
            stanzas.append((fields["files"].split(), synopsis or UNKNOWN))
    return stanzas


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in block.split("\n"):
        if line.startswith("#"):
            continue
        match = re.match(r"([A-Za-z][A-Za-z0-9-]*):(.*)$", line)
        if match:
            key = match.group(1).lower()
            fields[key] = match.group(2).strip()
        elif key and line[:1] in (" ", "\t"):
            fields[key] += "\n" + line.strip()
    return fields


def licence_for(stanzas: list[tuple[list[str], str]], path: str) -> str:
    """The licence of the stanza whose pattern best matches ``path``.

    DEP-5 patterns are paths in the *source* tree, and a package installs them elsewhere
    (``share/hedgewars/Data/Sounds/*`` is ``/usr/share/games/hedgewars/Data/Sounds/...``). So a pattern also
    matches when its tail, from any directory on and with at least one literal directory name in it, matches
    the end of the installed path; ``*`` alone matches everything. The match with the most literal
    characters wins (the most specific stanza), and among equals the later stanza, as DEP-5 says.
    """
    best = (-1, UNKNOWN)
    for patterns, name in stanzas:
        for pattern in patterns:
            score = _match_score(pattern, path.lstrip("/"))
            if score is not None and score >= best[0]:
                best = (score, name)
    return best[1]


def _match_score(pattern: str, path: str) -> int | None:
    parts = pattern.strip("/").split("/")
    best = None
    for k in range(len(parts)):
        tail = parts[k:]
        if k and not any(p and not re.search(r"[*?]", p) for p in tail[:-1]):
            continue  # a tail needs a literal directory name: "*.ogg" alone would match any package's files
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in "/".join(tail))
        if re.fullmatch(f"(?:.*/)?{regex}", path):
            score = len(re.sub(r"[*?]", "", "/".join(tail)))
            best = score if best is None else max(best, score)
    return best


LICENCE_PHRASES = (  # (regex over the text, short name), for copyright files that are not DEP-5
    (r"GNU (?:Lesser|Library) General Public License,? (?:as published by the Free Software Foundation; )?"
     r"(?:either )?version (\d(?:\.\d)?)", "LGPL-{}"),
    (r"GNU General Public License,? (?:as published by the Free Software Foundation; )?(?:either )?"
     r"version (\d)", "GPL-{}"),
    (r"Creative Commons Attribution[- ]Share[- ]?Alike (\d\.\d)", "CC-BY-SA-{}"),
    (r"Creative Commons Attribution (\d\.\d)", "CC-BY-{}"),
    (r"\bCC0\b|Public Domain Dedication", "CC0-1.0"),
    (r"Permission is hereby granted, free of charge", "Expat"),
    (r"\bin the public domain\b", "public-domain"),
)


def free_text_licence(text: str) -> str:
    """The licence a free-form copyright file names first: a ``License:`` line, else a known phrase."""
    line = re.search(r"^Licen[cs]e:[ \t]*(\S[^\n]*)$", text, re.MULTILINE | re.IGNORECASE)
    if line:
        return line.group(1).strip()
    flat = re.sub(r"\s+", " ", text)
    found = []
    for regex, name in LICENCE_PHRASES:
        match = re.search(regex, flat, re.IGNORECASE)
        if match:
            later = re.search(r"or \(at your option\) any later version", flat[match.end():match.end() + 80])
            found.append((match.start(), name.format(*match.groups()) + ("+" if later else "")))
    return min(found)[1] if found else UNKNOWN


# ---------------------------------------------------------------------------------------------- hints and groups
HINT_SETS = (("drum", "percussion"), ("music", "music"))  # folders that say more than the file name
HINT_FOLDERS = (("speech", "voices"), ("animal", "animals"), ("effect", "sounds"), ("effect", "samples"),
                ("effect", "stamps"))
HINT_WORDS = (  # (hint, regex over the file name's words), first match wins; after "cough" and spoken descriptions
    ("sneeze", r"sneez|achoo|atchoo"),
    ("laugh", r"laugh|giggl|chuckl|cackl|\bhaha"),
    ("throat", r"throat|\bahem\b"),
    ("cry", r"\bcry|crying|\bsob\b|sobbing|\bweep|\bwail"),
    ("scream", r"scream|shriek|\byell"),
    ("breath", r"breath|\bsigh|\bgasp|\bpant\b"),
    ("burp", r"\bburp|\bhiccup"),
    ("snore", r"\bsnor"),
    ("grunt", r"\bgrunt|\bgroan|\bugg\b|\b(?:human|dwarf|elf)\b.*\b(?:hit|die)\b"),  # Wesnoth's voices
    ("singing", r"\bsings?\b|singing|choir|\bvox\b|chant"),
    ("clap", r"\bclap|applau|\bsnap"),
    ("knock", r"knock|\bdoor"),
    ("drum", r"drum|snare|cymbal|tabla|\bbd\b|\bsn\b|\bkick|\bhat\b|\btom\b|tomtom|\bperc\b"),
    ("music", r"music|\bsong|melod|\btheme|piano|violin|cello|guitar|\bguit\b|bassoon|flute|\bchord|\bloop\b|"
              r"\bbass\b|\bambi\b|valkyries"),
    ("dishes", r"\bdish|\bglass|bottle|\bplate|\bcup\b|kettle|cutlery"),
    ("bang", r"bang|explos|\bgun|gun\b|\bshot|impact|hammer|\bbump|crash|boom|firework|whipcrack"),
    ("animal", r"\b(?:bee|bird|birdy|crow|dog|cat|cow|sheep|duck|frog|horse|pig|owl|lion|tiger|hen|rooster|goat|"
               r"donkey|wolf|bat|growl|bark|meow|moo)\b"),
)
GROUP_RULES = {  # package -> [(regex over the path inside the package, group name from its groups)]
    "hedgewars-data": [(r"/voices/([^/_]+)", "voices/{}")],  # "Default_pl" is one group with "Default"
    "klettres-data": [(r"/klettres/([^/]+)/", "{}")],
    "asterisk-core-sounds-en-wav": [(r"/sounds/([^/]+)/", "{}")],
    "sonic-pi-samples": [(r"/samples/([a-z]+)_", "{}")],
    "tuxpaint-stamps-default": [(r"_desc(?:_([A-Za-z@]+(?:_[A-Za-z]+)?))?\.\w+$", "voice-{}"),
                                (r"/symbols/(?:math|alphabets)/.*?(?:_([a-z]{2,3}(?:_[A-Za-z]{2})?))?\.\w+$",
                                 "voice-{}")],
}
PER_FILE_PACKAGES = {  # where an unmatched file is its own group: sound effects, and voices of many characters
    "hedgewars-data", "tuxpaint-stamps-default", "scratch", "wesnoth-1.16-data", "btanks-data", "trackballs-data",
    "monsterz-data", "scorched3d-data"}
HINTS = tuple(dict.fromkeys(("speech", *(hint for hint, _ in HINT_SETS + HINT_WORDS + HINT_FOLDERS))))
"""Every ``sound_hint`` but ``cough`` (never kept) and ``""`` (none), in the order they are tried."""
VOCAL_HINTS = ("laugh", "sneeze", "throat", "cry", "scream", "breath", "burp", "snore", "grunt")
"""The vocal sounds that are not coughs and not speech, which issue 12 asks a detector to reject."""


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()))


def sound_hint(original_path: str) -> str:
    """A coarse class from the path: ``cough`` if any part of the path says so; ``speech`` for spoken
    descriptions, letters and prompts; a music or percussion folder (``HINT_SETS``); else the file name's
    words (``HINT_WORDS``); else its folders (``HINT_FOLDERS``); else ``""``."""
    path = original_path.replace("\\", "/")
    if "cough" in path.lower():
        return "cough"
    stem = Path(path).stem
    folders = [part.lower() for part in Path(path).parent.parts]
    if re.search(r"_desc(?:_|$)", stem) or {"klettres", "asterisk"} & set(folders) or \
            "symbols" in folders and {"math", "alphabets"} & set(folders):
        return "speech"
    for hint, folder in HINT_SETS:
        if folder in folders:
            return hint
    words = _words(stem)
    for hint, regex in HINT_WORDS:
        if re.search(regex, words):
            return hint
    for hint, folder in HINT_FOLDERS:
        if folder in folders:
            return hint
    return ""


def group_of(package: str, original_path: str) -> str:
    """``<package>/<speaker, voice pack or sample family>``, so that a speaker is never in two data splits;
    a sound effect of a package in ``PER_FILE_PACKAGES`` is its own group, any other file's group is its folder."""
    for regex, name in GROUP_RULES.get(package, []):
        match = re.search(regex, original_path)
        if match:
            return f"{package}/" + name.format(*[g or "default" for g in match.groups()])
    if package in PER_FILE_PACKAGES:
        return f"{package}{original_path}"
    return f"{package}{Path(original_path).parent.as_posix()}"


def audio_files(extracted_root: Path) -> list[str]:
    """Audio files of an extracted package as sorted paths inside it (``/usr/share/...``); symbolic links are
    left out (their target may lie outside the package, or be another file of it)."""
    root = Path(extracted_root)
    return sorted("/" + p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file() and not p.is_symlink())


def draw_order(paths: list[str], package: str, seed: int) -> list[str]:
    """Every path, in a seeded order that takes one file of each group in turn (groups in a seeded order),
    so that the first N hold as many groups, and as evenly, as N allows."""
    rng = random.Random(f"{seed}:{package}")
    by_group: dict[str, list[str]] = defaultdict(list)
    for path in sorted(paths):
        by_group[group_of(package, path)].append(path)
    groups = sorted(by_group)
    rng.shuffle(groups)
    for name in groups:
        rng.shuffle(by_group[name])
    longest = max((len(v) for v in by_group.values()), default=0)
    return [by_group[g][i] for i in range(longest) for g in groups if i < len(by_group[g])]


# ---------------------------------------------------------------------------------------------- audio
def collect(extracted_root: Path, package: str, version: str, out: Path, *, licences: dict[str, str] | None = None,
            allow_unknown_licence: bool = False, max_clips: int = MAX_CLIPS, seed: int = 0,
            seen: dict[str, str] | None = None, hints: frozenset[str] = frozenset(),
            progress: bool = True) -> PackageResult:
    """Decode, check and write one extracted package's audio as 16 kHz mono FLAC under ``<out>/audio/<package>/``;
    returns its manifest rows and what was excluded, by reason (each exclusion is also logged).

    ``seen`` (sha256 of a source file -> its path) drops byte-identical files, across packages when shared.
    ``hints``: keep only files whose ``sound_hint`` is one of them (empty: every file).
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    root, out = Path(extracted_root), Path(out)
    result = PackageResult(package, version)
    paths = audio_files(root)
    result.files = len(paths)
    licences = licence_of(root, package, paths) if licences is None else licences
    seen = {} if seen is None else seen
    unknown = sum(licences.get(p, UNKNOWN) == UNKNOWN for p in paths)
    if unknown and not allow_unknown_licence:
        log.warning("%s: licence unknown for %d of %d audio files: %s (--allow-unknown-licence keeps them)", package,
                    unknown, len(paths), "the whole package is excluded" if unknown == len(paths) else "excluded")
    candidates = [p for p in paths if _admissible(p, licences.get(p, UNKNOWN), allow_unknown_licence, result)]
    if hints:
        kept = [p for p in candidates if sound_hint(p) in hints]
        if len(kept) < len(candidates):
            result.excluded[HINT_REASON] += len(candidates) - len(kept)
            log.info("%s: %d files left out: their sound hint is not one of --only-hints", package,
                     len(candidates) - len(kept))
        candidates = kept
    order = draw_order(candidates, package, seed)
    shutil.rmtree(out / "audio" / package, ignore_errors=True)
    with logging_redirect_tqdm():
        for i, path in enumerate(tqdm(order, desc=package, unit="file", disable=not progress)):
            if len(result.rows) >= max_clips:
                result.excluded[CAP_REASON] += len(order) - i
                log.info("%s: %d files not drawn: --max-clips-per-package %d reached", package, len(order) - i,
                         max_clips)
                break
            for row in _convert(root, path, out, result, seen, budget=max_clips - len(result.rows)):
                row.update(group=group_of(package, path), source=package, package_version=version,
                           licence=licences.get(path, UNKNOWN), original_path=path, sound_hint=sound_hint(path))
                result.rows.append(row)
    log.info("%s %s: %d clips (%.1f min) from %d audio files; excluded %s", package, version, len(result.rows),
             sum(r["duration_s"] for r in result.rows) / 60, result.files, dict(result.excluded) or "none")
    return result


def _admissible(path: str, licence: str, allow_unknown: bool, result: PackageResult) -> bool:
    if sound_hint(path) == "cough":
        log.info("excluded %s:%s: %s", result.package, path, COUGH_REASON)
        result.excluded[COUGH_REASON] += 1
        result.cough_files.append(path)
        return False
    if licence == UNKNOWN and not allow_unknown:
        log.debug("excluded %s:%s: licence unknown", result.package, path)
        result.excluded["licence unknown"] += 1
        return False
    return True


def _convert(root: Path, path: str, out: Path, result: PackageResult, seen: dict[str, str], budget: int) -> list[dict]:
    """The manifest rows (without package columns) of one file, its FLAC written (at most ``budget`` pieces);
    [] if it is excluded."""
    import librosa

    from .data import decode

    source = root / path.lstrip("/")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest in seen:
        return _exclude(result, path, "identical to a file already kept", seen[digest])
    try:
        original_rate = librosa.get_samplerate(str(source))  # soundfile, else audioread, as decode
        audio = decode(source, SAMPLE_RATE)
    except Exception as exc:  # noqa: BLE001 - any decoder failure: report the file and go on
        return _exclude(result, path, "cannot decode", f"{type(exc).__name__}: {exc}", level=logging.WARNING)
    problem = _unusable(audio)
    if problem:
        return _exclude(result, path, problem)
    pieces, dropped = _pieces(audio)
    if not pieces:
        return _exclude(result, path, f"every {PIECE_S:g} s piece silent or too short")
    result.dropped_pieces += dropped
    result.pieced_files += audio.size > PIECE_S * SAMPLE_RATE
    result.cut_files += audio.size > MAX_PIECES * PIECE_S * SAMPLE_RATE
    seen[digest] = path
    rows, step = [], int(PIECE_S * SAMPLE_RATE)
    for start, piece in pieces[:budget]:
        name = re.sub(r"\.flac$", "", path.lstrip("/"), flags=re.IGNORECASE)
        name += (f".part{start // step + 1}" if audio.size > step else "") + ".flac"
        dest = out / "audio" / result.package / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(dest), np.clip(piece, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        rows.append({"path": dest.relative_to(out).as_posix(), "label": "other",
                     "duration_s": round(piece.size / SAMPLE_RATE, 3), "sample_rate": SAMPLE_RATE,
                     "original_sample_rate": original_rate, "start_s": round(start / SAMPLE_RATE, 3)})
    return rows


def _exclude(result: PackageResult, path: str, reason: str, detail: str = "", level: int = logging.INFO) -> list:
    log.log(level, "excluded %s:%s: %s%s", result.package, path, reason, f" ({detail})" if detail else "")
    result.excluded[reason] += 1
    return []


def _unusable(audio: np.ndarray) -> str:
    if not np.isfinite(audio).all():
        return "not finite"
    if audio.size < MIN_S * SAMPLE_RATE:
        return f"shorter than {MIN_S} s"
    if np.abs(audio).max() < SILENT_PEAK:
        return f"silent (peak < {SILENT_PEAK:g})"
    return ""


def _pieces(audio: np.ndarray) -> tuple[list[tuple[int, np.ndarray]], int]:
    """``[(start sample, samples)]`` and how many pieces were dropped: the whole recording up to ``PIECE_S``,
    else consecutive ``PIECE_S`` pieces (at most ``MAX_PIECES``), each kept only if it is not silent and at
    least ``MIN_S`` long."""
    step = int(PIECE_S * SAMPLE_RATE)
    if audio.size <= step:
        return [(0, audio)], 0
    pieces = [(s, audio[s:s + step]) for s in range(0, min(audio.size, MAX_PIECES * step), step)]
    kept = [(s, piece) for s, piece in pieces if not _unusable(piece)]
    return kept, len(pieces) - len(kept)


# ---------------------------------------------------------------------------------------------- outputs
def write_manifest(out: Path, results: list[PackageResult]) -> Path:
    """``<out>/manifest.csv``: every kept clip, sorted by path; paths relative to ``out``."""
    rows = sorted((row for r in results for row in r.rows), key=lambda row: row["path"])
    target = Path(out) / "manifest.csv"
    with target.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return target


def write_sources(out: Path, results: list[PackageResult], command: str) -> Path:
    """``<out>/SOURCES.md``: per package its version, licences, clips, minutes, exclusions and how to rebuild it."""
    lines = ["# Sources of manifest.csv", "", f"Rebuilt by: `{command}`", "",
             "Every clip is labelled `other`. The licence is the one the package's "
             "`/usr/share/doc/<package>/copyright` gives the file; check what it means for models trained on these "
             "clips before you ship one.", "",
             "| package | version | licence(s) of the clips | clips | minutes | audio files | excluded |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.package} | {r.version} | {_licence_counts(r)} | {len(r.rows)} | {_minutes(r):.1f} | "
                     f"{r.files} | {sum(r.excluded.values())} |")
    for r in results:
        lines += _package_section(r)
    target = Path(out) / "SOURCES.md"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def _package_section(r: PackageResult) -> list[str]:
    deb = f"{r.package}_{r.version.split(':')[-1]}_*.deb"
    hints = Counter(row["sound_hint"] or "(none)" for row in r.rows)
    lines = ["", f"## {r.package} {r.version}", "",
             f"- licence(s) of the clips: {_licence_counts(r)}",
             f"- clips: {len(r.rows)} ({_minutes(r):.1f} min) from {r.files} audio files; "
             f"groups: {len({row['group'] for row in r.rows})}",
             "- sound hints: " + (", ".join(f"{k} {v}" for k, v in _ranked(hints)) or "none"),
             "- excluded files: " + (", ".join(f"{k}: {v}" for k, v in _ranked(r.excluded)) or "none")]
    if r.pieced_files:
        lines.append(f"- cut into pieces of {PIECE_S:g} s: {r.pieced_files} recordings; of those, {r.cut_files} "
                     f"longer than {MAX_PIECES * PIECE_S:g} s keep only their first {MAX_PIECES} pieces; silent or "
                     f"too short pieces dropped: {r.dropped_pieces}")
    if r.cough_files:
        lines.append(f"- excluded because the name suggests a cough ({len(r.cough_files)}): "
                     + ", ".join(f"`{p}`" for p in r.cough_files[:20]) + (" ..." if len(r.cough_files) > 20 else ""))
    lines.append(f"- fetch: `apt-get download {r.package}={r.version} && dpkg -x {deb} {r.package}/` "
                 "(older versions: snapshot.debian.org)")
    return lines


def _licence_counts(r: PackageResult) -> str:
    counts = Counter(row["licence"] for row in r.rows)
    return ", ".join(f"{name} ({n})" for name, n in _ranked(counts)) or "-"


def _ranked(counts: Counter) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _minutes(r: PackageResult) -> float:
    return sum(row["duration_s"] for row in r.rows) / 60


# ---------------------------------------------------------------------------------------------- the command
def build(out: Path, workdir: Path, versions: dict[str, str], *, allow_unknown_licence: bool = False,
          max_clips: int = MAX_CLIPS, seed: int = 0, hints: tuple[str, ...] = (), command: str = "",
          progress: bool = True) -> list[PackageResult]:
    """The manifest of already extracted packages (``<workdir>/<package>/``, as ``fetch`` leaves them); ``hints``:
    keep only files with one of these sound hints (``HINTS``; empty: every file)."""
    if max_clips < 1:
        raise ValueError(f"--max-clips-per-package must be at least 1, got {max_clips}")
    unknown_hints = [h for h in hints if h not in HINTS]
    if unknown_hints:
        raise ValueError(f"--only-hints: {', '.join(map(repr, unknown_hints))} is not a sound hint (one of: "
                         f"{', '.join(HINTS)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, seen = [], {}
    for package, version in versions.items():
        root = Path(workdir) / package
        if not root.is_dir():
            raise FileNotFoundError(f"{package}: not extracted at {root}")
        result = collect(root, package, version, out, allow_unknown_licence=allow_unknown_licence,
                         max_clips=max_clips, seed=seed, seen=seen, hints=frozenset(hints), progress=progress)
        if not result.rows:
            log.warning("%s: no clip kept (excluded: %s)", package, dict(result.excluded))
        results.append(result)
    if not any(r.rows for r in results):
        raise ValueError("no clip kept from any package: see the log for the reasons")
    write_manifest(out, results)
    write_sources(out, results, command)
    log.info("wrote %s (%d clips) and %s", out / "manifest.csv", sum(len(r.rows) for r in results),
             out / "SOURCES.md")
    return results


def run(out: Path, packages: list[str], workdir: Path | None = None, **kwargs) -> list[PackageResult]:
    """``fetch`` then ``build``; ``workdir`` defaults to ``<out>-debs`` next to ``out``."""
    if not packages:
        raise ValueError("no packages given")
    workdir = Path(workdir) if workdir else Path(out).parent / f"{Path(out).name}-debs"
    return build(out, workdir, fetch(packages, workdir), **kwargs)
