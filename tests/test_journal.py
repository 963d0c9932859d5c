"""The producer's disk journal: order, durability across a restart, torn writes, and what a restart resumes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer_service.journal import Journal
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
