"""The SQLite outbox: durable across reopening, bounded with the oldest dropped first and counted."""
from __future__ import annotations

from edge.outbox import Outbox


def test_outbox_is_durable_bounded_and_counts_drops(tmp_path):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path, max_events=3)
    assert [box.add(f"id{i}", "t", f"p{i}") for i in range(5)] == [0, 0, 0, 1, 1]
    box.close()
    box = Outbox(path, max_events=3)  # as after a crash and restart
    assert [row[1] for row in box.pending()] == ["id2", "id3", "id4"]
    assert box.dropped() == 2 and box.depth() == 3
    box.add("id3", "t", "again")  # the same event id is stored once
    assert box.depth() == 3
    box.remove("id2")
    seq_of_id3 = box.pending()[0][0]
    assert [row[1] for row in box.pending(after_seq=seq_of_id3)] == ["id4"]
    box.close()
