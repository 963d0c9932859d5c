"""The producer's disk journal: order, durability across a restart, torn writes and corrupt lines, the fsync
policy, and what a restart resumes from (without reading the bodies)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import producer_service.journal as journal_module
from producer_service.journal import QUARANTINE, Journal, wait_until_empty
from producer_service.sink import SqsUnavailable, TickSink
from tickstream.codec import decode_message, pack_ticks
from tickstream.ticks import Tick

T0 = 1_700_000_000_000_000


def bodies(script_id: int, ids: range) -> list[str]:
    ticks = [Tick(script_id, i, "1.5", "2", False, T0 + i, T0 + i, T0 + i) for i in ids]
    return list(pack_ticks(ticks, max_bytes=2048))


def replay_all(journal: Journal) -> list[str]:
    sent: list[str] = []
    while journal.replay(sent.extend):
        pass
    return sent


def test_replays_in_order_after_a_restart(tmp_path: Path) -> None:
    first, second = bodies(1, range(0, 100)), bodies(1, range(100, 200))
    journal = Journal(tmp_path, 10**9)
    journal.append(first)
    journal.append(second)
    journal.close()
    reopened = Journal(tmp_path, 10**9)  # a new process finds what the old one journaled
    assert reopened.pending()
    assert replay_all(reopened) == first + second
    assert not reopened.pending() and not list(tmp_path.glob("*.journal"))


def test_a_failed_send_keeps_the_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 10**9)
    journal.append(bodies(1, range(0, 50)))

    def unavailable(_: list[str]) -> None:
        raise ConnectionError("SQS down")

    with pytest.raises(ConnectionError):
        journal.replay(unavailable)
    assert journal.pending()
    assert sum(len(decode_message(body)) for body in replay_all(journal)) == 50


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 10**9)
    good = bodies(1, range(0, 20))
    journal.append(good)
    journal.close()
    segment = next(tmp_path.glob("*.journal"))
    with segment.open("ab") as handle:  # a kill -9 in the middle of a write
        handle.write(b'{"v":1,"ticks":[[1,20,"1.5","2",0,')
    reopened = Journal(tmp_path, 10**9)
    assert reopened.last_trade_ids() == {1: 19}
    assert replay_all(reopened) == good


def test_last_trade_ids_per_script(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 10**9)
    journal.append(bodies(1, range(0, 30)) + bodies(2, range(500, 510)))
    assert journal.last_trade_ids() == {1: 29, 2: 509}


def test_a_full_journal_blocks_the_writer_until_sqs_takes_the_backlog(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Over the disk budget nothing is dropped: appending waits (and says so) until a replay frees space."""
    import threading

    first, second = bodies(1, range(0, 40)), bodies(1, range(40, 80))
    journal = Journal(tmp_path, max_bytes=sum(len(body) + 1 for body in first) + 10)
    journal.append(first)
    done = threading.Event()
    writer = threading.Thread(target=lambda: (journal.append(second), done.set()), daemon=True)
    writer.start()
    assert not done.wait(0.5), "the second append must wait: it would exceed the budget"
    assert any("journal full" in record.getMessage() for record in caplog.records)
    sent: list[str] = []
    journal.replay(sent.extend)  # SQS is back: the oldest segment goes out, space frees up
    assert done.wait(15)
    assert replay_all(journal) == second
    assert sent == first


def write_segment(directory: Path, lines: list[bytes], number: int = 1) -> Path:
    """A segment as a crashed or older producer may leave it: raw lines, no index."""
    segment = directory / f"{number:012d}.journal"
    segment.write_bytes(b"".join(line + b"\n" for line in lines))
    return segment


NUL_LINE = b"\x00" * 300  # a power loss: the file's length survived, its last blocks did not
NOT_UTF8 = b"tickstream/2 eJw\xff\xfe\x80garbage"


def test_corrupt_lines_are_quarantined_and_never_block_start_or_replay(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Complete lines that are not bodies (NUL bytes, invalid UTF-8, junk) are moved aside, counted and logged;
    what a restart resumes from and what the replay sends are the valid lines, in order."""
    before, after = bodies(1, range(0, 30)), bodies(1, range(30, 60)) + bodies(2, range(7, 9))
    lines = [b.encode() for b in before] + [NUL_LINE, NOT_UTF8, b"{not json"] + [b.encode() for b in after]
    write_segment(tmp_path, lines)
    journal = Journal(tmp_path, 10**9)
    # Not blocked by the bad lines, and nothing after the first one is vouched for: a power loss may have taken
    # lines between good ones, so the restart fetches every id after the last good line before it from REST.
    assert journal.last_trade_ids() == {1: 29}
    assert replay_all(journal) == before + after, "nor is the replay"
    assert journal.quarantined == 3 and not journal.pending()
    assert (tmp_path / QUARANTINE / "000000000001.journal").read_bytes() == NUL_LINE + b"\n" + NOT_UTF8 + b"\n" \
        + b"{not json\n"
    assert any(record.levelname == "ERROR" and "not message bodies" in record.getMessage()
               for record in caplog.records)
    journal.append(before)
    assert next(tmp_path.glob("*.journal")).name == "000000000002.journal", "a quarantined segment's number is taken"


class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.requests = 0

    def send(self, batch: list[str]) -> None:
        self.sent.extend(batch)


def test_the_replay_thread_outlives_bad_lines(tmp_path: Path) -> None:
    """The sink's replay thread sends everything valid after a bad line; nothing stays journaled for good."""
    first, second = bodies(1, range(0, 20)), bodies(1, range(20, 40))
    write_segment(tmp_path, [b.encode() for b in first] + [NOT_UTF8], number=1)
    write_segment(tmp_path, [NUL_LINE] + [b.encode() for b in second], number=2)
    sender = RecordingSender()
    sink = TickSink(sender, Journal(tmp_path, 10**9), 64 * 1024, 0.05, 1000)  # type: ignore[arg-type]
    sink.start()
    try:
        assert wait_until_empty(sink.journal, time.monotonic() + 10)
        assert sender.sent == first + second
    finally:
        sink.close(replay_seconds=0)


def test_a_restart_reads_the_indexes_not_the_bodies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a restart resumes from comes from the segments' small indexes: no body is decoded, however many
    segments the journal holds (a full journal is 2 GiB by default)."""
    monkeypatch.setattr(journal_module, "SEGMENT_BYTES", 2 * 1024)
    journal = Journal(tmp_path, 10**9)
    for start in range(0, 3000, 100):
        journal.append(bodies(1, range(start, start + 100)) + bodies(3, range(start, start + 50)))
    journal.close()
    assert len(list(tmp_path.glob("*.journal"))) > 10
    decoded: list[Any] = []
    real_decode = journal_module.decode_message
    monkeypatch.setattr(journal_module, "decode_message", lambda body: decoded.append(body) or real_decode(body))
    assert Journal(tmp_path, 10**9).last_trade_ids() == {1: 2999, 3: 2949}
    assert decoded == []


def test_after_a_kill_the_bodies_no_fsync_covered_yet_are_read(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed process leaves its last bodies in the OS, after the last index line: a restart decodes only
    those (and vouches for them: they are on disk, the replay sends them)."""
    journal = Journal(tmp_path, 10**9, fsync_seconds=3600)  # the flusher never runs within this test
    journal.append(bodies(1, range(0, 50)))
    journal._sync()  # one batched fsync: these are indexed
    tail = bodies(1, range(50, 60)) + bodies(2, range(0, 5))
    journal.append(tail)  # then a kill -9: no close, no further fsync
    decoded: list[Any] = []
    real_decode = journal_module.decode_message
    monkeypatch.setattr(journal_module, "decode_message", lambda body: decoded.append(body) or real_decode(body))
    assert Journal(tmp_path, 10**9).last_trade_ids() == {1: 59, 2: 4}
    assert decoded == tail


@pytest.mark.parametrize("fsync_seconds", [0.0, 0.05])
def test_the_fsync_policy_bounds_what_is_not_yet_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          fsync_seconds: float) -> None:
    """0: every append is on disk (fsynced, then indexed) before it returns; 0.05: within about 50 ms, batched
    (one fsync for many appends)."""
    fsyncs: list[int] = []
    real_fsync = journal_module.os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    journal = Journal(tmp_path, 10**9, fsync_seconds=fsync_seconds)
    appends = 20
    for start in range(0, appends * 10, 10):
        journal.append(bodies(1, range(start, start + 10)))
    segment = next(tmp_path.glob("*.journal"))
    index = segment.with_suffix(".ids")

    def covered() -> int:
        return journal_module._read_index(index)[0]

    if fsync_seconds == 0:
        assert covered() == segment.stat().st_size
        assert len(fsyncs) >= appends
    else:
        deadline = time.monotonic() + 10  # generous: a loaded machine may delay the flusher thread
        while covered() < segment.stat().st_size and time.monotonic() < deadline:
            time.sleep(0.01)
        assert covered() == segment.stat().st_size
        assert len(fsyncs) - 1 < appends, "batched: fewer fsyncs than appends"  # - 1: the new segment's directory
    assert journal_module._read_index(index)[1] == {1: appends * 10 - 1}
    flusher = journal._flusher
    assert (flusher is None) == (fsync_seconds == 0), "a flusher thread only for the batched policy"
    journal.close()
    assert flusher is None or not flusher.is_alive(), "close() stops it"


class UnavailableSender:
    requests = 0

    def send(self, batch: list[str]) -> None:
        raise SqsUnavailable("SQS down")


def test_what_the_sink_journals_is_indexed_without_reading_it_back(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """During an outage the sink hands the journal the ids it packed: nothing is decoded to index the bodies,
    and a restart resumes after the last journaled id of each script."""
    decoded: list[Any] = []
    real_decode = journal_module.decode_message
    monkeypatch.setattr(journal_module, "decode_message", lambda body: decoded.append(body) or real_decode(body))
    sink = TickSink(UnavailableSender(), Journal(tmp_path, 10**9), 4096, 0.01, 10_000)  # type: ignore[arg-type]
    sink.start()
    for trade_id in range(2_000):
        sink.put(Tick(1 + trade_id % 2, trade_id, "1.5", "2", False, T0 + trade_id, T0 + trade_id, T0 + trade_id))
    sink.close(replay_seconds=0)
    assert sink.journal.pending() and len(list(tmp_path.glob("*.journal"))) == 1
    assert Journal(tmp_path, 10**9).last_trade_ids() == {1: 1_998, 2: 1_999}
    assert decoded == []


def test_a_damaged_index_line_costs_nothing_the_segment_holds(tmp_path: Path) -> None:
    """The index is written without its own fsync (until its segment closes): a power loss may damage its last
    line. Then the restart reads the bodies after the last intact line instead."""
    journal = Journal(tmp_path, 10**9, fsync_seconds=0)
    journal.append(bodies(1, range(0, 10)))
    journal.append(bodies(1, range(10, 20)))
    index = next(tmp_path.glob("*.ids"))
    first, second, _ = index.read_bytes().split(b"\n")
    index.write_bytes(first + b"\n" + b"\x00" * len(second) + b"\n")
    assert Journal(tmp_path, 10**9).last_trade_ids() == {1: 19}


class FailingAfter:
    """SQS that takes the first `works` requests, then is unreachable."""

    requests = 0

    def __init__(self, works: int) -> None:
        self.works = works
        self.sent: list[str] = []

    def send(self, batch: list[str]) -> None:
        if self.works <= 0:
            raise SqsUnavailable("SQS down")
        self.works -= 1
        self.sent.extend(batch)


def test_the_index_agrees_with_the_journaled_bodies(tmp_path: Path) -> None:
    """SQS fails mid-stream: what the restart resumes from is exactly the highest id the journal's bodies hold per
    script (live ticks only rise), never one that went to SQS only or stayed in memory."""
    sender = FailingAfter(works=3)
    sink = TickSink(sender, Journal(tmp_path, 10**9), 4096, 0.01, 100_000)  # type: ignore[arg-type]
    sink.start()
    for trade_id in range(30_000):
        sink.put(Tick(1 + trade_id % 3, trade_id, "1.5", "2", False, T0 + trade_id, T0 + trade_id, T0 + trade_id))
        if trade_id % 1000 == 0:
            time.sleep(0.01)  # several lingers: flushes of every size
    sink.close(replay_seconds=0)
    journaled: dict[int, int] = {}
    for segment in sorted(tmp_path.glob("*.journal")):
        for line in segment.read_text().splitlines():
            for tick in decode_message(line).ticks():
                journaled[tick.script_id] = max(journaled.get(tick.script_id, -1), tick.trade_id)
    assert sender.sent and journaled
    assert Journal(tmp_path, 10**9).last_trade_ids() == journaled
