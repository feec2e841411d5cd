"""The worker process's own logging: repeated warnings are held back, not lost."""

from __future__ import annotations

import logging

from streams.app import Repeats


def record(msg: str, *args: object, level: int = logging.ERROR,
           name: str = "aiokafka.conn") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_repeated_error_passes_once_per_interval_and_says_how_many_were_held() -> None:
    now = [0.0]
    repeats = Repeats(every=10, clock=lambda: now[0])
    template = "Unable connect to node with id %s: %s"
    passed = []
    for second in range(25):  # 3 a second, for 25 s
        now[0] = float(second)
        for _ in range(3):
            one = record(template, 111, "refused")
            if repeats.filter(one):
                passed.append((second, one.getMessage()))
    assert passed == [
        (0, "Unable connect to node with id 111: refused"),
        (10, "Unable connect to node with id 111: refused "
             "[29 more like this in the last 10 s]"),
        (20, "Unable connect to node with id 111: refused "
             "[29 more like this in the last 10 s]"),
    ]


def test_other_kinds_and_info_records_are_not_held_back() -> None:
    repeats = Repeats(every=10, clock=lambda: 0.0)
    assert repeats.filter(record("a %s", 1))
    assert repeats.filter(record("b %s", 1))  # another template
    assert repeats.filter(record("a %s", 1, name="leadscore"))  # another logger
    assert not repeats.filter(record("a %s", 2))
    assert all(repeats.filter(record("joined %s", n, level=logging.INFO)) for n in range(5))
