"""Progress listeners see every update of every bar, displayed or not, and only inside their block."""

from __future__ import annotations

from neuroattn.progress import ProgressEvent, listen, progress_bar


def test_listeners_see_iteration_and_manual_updates_even_when_hidden() -> None:
    events: list[ProgressEvent] = []
    with listen(events.append):
        assert list(progress_bar(range(3), desc="volumes", unit="vol", disable=True)) == [0, 1, 2]
        bar = progress_bar(total=10, initial=4, desc="steps", disable=True)
        bar.update(2)
        bar.close()
    list(progress_bar(range(2), disable=True))  # outside the block: nobody listens
    assert [(e.description, e.done, e.total) for e in events] == [
        ("volumes", 1, 3), ("volumes", 2, 3), ("volumes", 3, 3), ("steps", 6, 10)]
    assert events[-1].fraction == 0.6 and events[0].unit == "vol"


def test_nested_listeners_both_receive() -> None:
    outer: list[int] = []
    inner: list[int] = []
    with listen(lambda e: outer.append(e.done)):
        with listen(lambda e: inner.append(e.done)):
            progress_bar(total=2, disable=True).update(1)
        progress_bar(total=2, disable=True).update(2)
    assert outer == [1, 2] and inner == [1]
