"""The spill journal: durable appends, bounded size, crash leftovers, segment lifecycle."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import pytest

from batchserve.events.errors import JournalError
from batchserve.events.journal import Journal
from batchserve.events.model import Event
from tests.events.event_helpers import make_event


def test_append_then_read_round_trips_every_field(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    events = [make_event(i) for i in range(10)]
    assert journal.append(events) == 10
    (segment,) = journal.sealed_segments()
    contents = journal.read(segment)
    assert contents.events == events  # timestamps keep their microseconds
    assert contents.skipped_lines == 0
    assert journal.size_bytes == segment.stat().st_size > 0


def test_sealing_starts_a_new_segment_and_remove_frees_space(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append([make_event(1)])
    first = journal.sealed_segments()
    journal.append([make_event(2)])
    both = journal.sealed_segments()
    assert len(first) == 1 and len(both) == 2 and both[0] == first[0]
    journal.remove(both[0])
    assert not both[0].exists()
    assert journal.segment_count == 1
    assert journal.size_bytes == both[1].stat().st_size


def test_segments_rotate_at_their_size(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    for i in range(20):
        journal.append([make_event(i)])
    segments = journal.sealed_segments()
    assert len(segments) > 3
    events = [e for s in segments for e in journal.read(s).events]
    assert [e.request_id for e in events] == [f"req-{i}" for i in range(20)]  # write order kept


def test_append_takes_only_what_fits(tmp_path: Path) -> None:
    one_line = len(Journal(tmp_path / "probe", 1 << 20)._encoder.encode(make_event(0))) + 1
    journal = Journal(tmp_path / "j", max_bytes=int(one_line * 3.5))
    assert journal.append([make_event(0) for _ in range(5)]) == 3
    assert journal.append([make_event(0)]) == 0
    assert journal.size_bytes <= journal.max_bytes


def test_a_new_process_never_appends_to_an_old_segment(tmp_path: Path) -> None:
    first = Journal(tmp_path, max_bytes=1 << 20)
    first.append([make_event(1)])
    # No close(): the process "dies", and with it its descriptors (and the directory lock).
    del first
    gc.collect()
    second = Journal(tmp_path, max_bytes=1 << 20)
    assert second.segment_count == 1 and second.size_bytes > 0
    second.append([make_event(2)])
    segments = second.sealed_segments()
    assert len(segments) == 2
    assert [len(second.read(s).events) for s in segments] == [1, 1]


def test_torn_last_line_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append([make_event(i) for i in range(3)])
    journal.close()
    (segment,) = journal.sealed_segments()
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - 40])  # a write cut short by a crash
    with caplog.at_level(logging.WARNING, logger="batchserve.events.journal"):
        contents = Journal(tmp_path, max_bytes=1 << 20).read(segment)
    assert [e.request_id for e in contents.events] == ["req-0", "req-1"]
    assert contents.skipped_lines == 1
    assert "torn" in caplog.text


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append([make_event(i) for i in range(2)])
    (segment,) = journal.sealed_segments()
    segment.write_bytes(segment.read_bytes().rstrip(b"\n"))
    assert len(journal.read(segment).events) == 2


def test_corrupt_line_is_skipped_and_the_rest_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append([make_event(0)])
    journal.close()
    (segment,) = journal.sealed_segments()
    with segment.open("ab") as f:
        f.write(b"\x00\x00garbage\n")
    journal2 = Journal(tmp_path, max_bytes=1 << 20)
    journal2.append([make_event(1)])
    events = [e for s in journal2.sealed_segments() for e in journal2.read(s).events]
    assert [e.request_id for e in events] == ["req-0", "req-1"]
    assert "not a valid event" in caplog.text


def test_event_with_wrongly_typed_field_is_not_lost(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    bad = make_event(0, width="640")  # msgspec does not validate at construction
    journal.append([bad])
    (segment,) = journal.sealed_segments()
    (back,) = journal.read(segment).events
    assert isinstance(back, Event)
    assert back.event_id == bad.event_id and back.width == "640" and back.ts == bad.ts


def test_unwritable_directory_raises_journal_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    journal = Journal(blocker / "journal", max_bytes=1 << 20)  # logged, not fatal: the store may still work
    assert "cannot use the event journal directory" in caplog.text
    with pytest.raises(JournalError, match="cannot write the event journal"):
        journal.append([make_event(0)])


def test_removing_the_active_segment_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    journal.append([make_event(0)])
    active = next(tmp_path.glob("segment-*"))
    with pytest.raises(JournalError, match="active segment"):
        journal.remove(active)


def test_a_second_owner_of_the_directory_is_refused(tmp_path: Path) -> None:
    first = Journal(tmp_path, max_bytes=1 << 20)
    with pytest.raises(JournalError, match="in use by another process"):
        Journal(tmp_path, max_bytes=1 << 20)
    first.close()
    Journal(tmp_path, max_bytes=1 << 20).close()  # free again once the owner closed it


def test_segments_ignore_the_lock_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=1 << 20)
    assert (tmp_path / ".lock").exists()
    assert journal.sealed_segments() == [] and journal.size_bytes == 0
