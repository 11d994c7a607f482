"""The shipped thresholds are the ones their sweeps chose, on a room broad enough to trust, and every benchmark config
is one `trainer stream` accepts (metadata checks: no audio, no devices)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DETECTOR, ROOT
from edge import config
from edge.inference import Model
from edge.verifier import read_spec
from trainer.stream import FEW_ROOM_SPEAKERS, StreamCommand

VERIFIER = ROOT / "models" / "cough-verifier"


def sweep(folder: Path) -> dict:
    return json.loads((folder / "threshold-sweep.json").read_text())


@pytest.mark.parametrize("folder, carried", [
    (DETECTOR.parent, lambda: Model(DETECTOR).info.threshold),
    (VERIFIER, lambda: read_spec(VERIFIER).threshold),
], ids=["detector alone", "verifier"])
def test_each_shipped_threshold_is_its_sweeps_choice_on_a_broad_validation_room(folder, carried):
    result = sweep(folder)
    chosen, rule = result["chosen"], result["settings"]
    assert carried() == pytest.approx(chosen["threshold"], abs=1e-6)
    counted = {"all": "background_events_per_hour",
               "wideband": "background_wideband_per_hour"}[rule.get("max_false_where", "all")]
    assert rule["split"] == "val" and chosen[counted] <= rule["max_false_per_hour"]
    within = [r for r in result["sweep"] if r[counted] is not None and r[counted] <= rule["max_false_per_hour"]]
    assert chosen["sensitivity"] == max(r["sensitivity"] for r in within)
    assert result["room"]["speakers"] >= FEW_ROOM_SPEAKERS, result["room"]
    assert "--config bench/stream-broad.toml" in result["command"]


def test_the_verifier_was_tuned_with_the_shipped_detector():
    assert read_spec(VERIFIER).tuned_for == Model(DETECTOR).info.created


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*.toml")), ids=lambda p: p.name)
def test_every_benchmark_config_is_a_valid_stream_command(path):
    command = config.build(StreamCommand, file=path)
    command.stream.validate()
    assert command.stream.split in ("val", "test")
