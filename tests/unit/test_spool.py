"""The listener's spool: durable, ordered, bounded, and safe to stop at any point."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.spool import OFFSET, RECORDS, Spool, SpoolFull, SpoolInUse


def _drain(spool: Spool) -> list[bytes]:
    bodies = []
    while (message := spool.first()) is not None:
        bodies.append(message.body)
        spool.handled(message)
    return bodies


def test_messages_come_back_in_order_with_their_source_and_time(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20) as spool:
        for number in range(3):
            spool.append(f'{{"n": {number}}}'.encode(), f"http:10.0.0.{number}", 1000.0 + number)
        first = spool.first()
        assert first is not None
        assert (first.body, first.source, first.received) == (b'{"n": 0}', "http:10.0.0.0", 1000.0)
        assert spool.first() == first  # not handed over until handled
        assert _drain(spool) == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
        assert spool.size == 0 and (tmp_path / RECORDS).stat().st_size == 0  # emptied


def test_a_spool_opened_again_replays_what_was_not_handled(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    for body in (b"a", b"\x00\xff binary", b"c"):
        spool.append(body, "http:x", 1.0)
    message = spool.first()
    assert message is not None
    spool.handled(message)
    spool.close()  # a stop (or a kill: everything above was fsynced)
    with Spool(tmp_path, 1 << 20) as again:
        assert len(again) == 2
        assert _drain(again) == [b"\x00\xff binary", b"c"]


def test_a_torn_last_record_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append(b"whole", "http:x", 1.0)
    spool.close()
    with open(tmp_path / RECORDS, "ab") as records:
        records.write(b'{"at": 2.0, "source": "http:x", "bo')  # killed mid-append
    with Spool(tmp_path, 1 << 20) as again:
        assert _drain(again) == [b"whole"]


def test_an_offset_past_an_emptied_spool_is_reset(tmp_path: Path) -> None:
    """Emptied after the last message, stopped before the offset was written."""
    spool = Spool(tmp_path, 1 << 20)
    spool.append(b"a", "http:x", 1.0)
    spool.close()
    (tmp_path / RECORDS).write_bytes(b"")
    (tmp_path / OFFSET).write_text("999")
    with Spool(tmp_path, 1 << 20) as again:
        again.append(b"next", "http:x", 2.0)
        assert _drain(again) == [b"next"]


def test_the_spool_is_bounded(tmp_path: Path) -> None:
    with Spool(tmp_path, 1000) as spool:
        spool.append(b"x" * 500, "http:x", 1.0)
        with pytest.raises(SpoolFull, match="limit 1,000"):
            spool.append(b"x" * 500, "http:x", 1.0)
        _drain(spool)
        spool.append(b"x" * 500, "http:x", 1.0)  # room again once drained


def test_an_unreadable_record_is_put_aside_not_blocking(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.close()
    (tmp_path / RECORDS).write_bytes(b"not json\n")
    with Spool(tmp_path, 1 << 20) as again:
        again.append(b"after", "http:x", 1.0)
        assert _drain(again) == [b"after"]
    assert [path.read_bytes() for path in tmp_path.glob("unreadable-*")] == [b"not json\n"]


def test_one_listener_per_spool(tmp_path: Path) -> None:
    with Spool(tmp_path, 1 << 20), pytest.raises(SpoolInUse, match="--spool-dir"):
        Spool(tmp_path, 1 << 20)
    Spool(tmp_path, 1 << 20).close()  # free again once the first is closed
