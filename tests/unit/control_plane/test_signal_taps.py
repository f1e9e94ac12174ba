"""Taps: every notification of a key counted, with none lost between two looks, and the news
a change of this replica leaves with its own notification."""

from __future__ import annotations

from control_plane.orchestration.signals import Signals, run_key

KEY = run_key("a" * 32)


def test_a_tap_counts_every_notification_made_while_its_owner_looked_away() -> None:
    signals = Signals()
    with signals.tapping(KEY) as tap:
        assert not tap.event.is_set()
        signals.notify(KEY)
        signals.notify(KEY)
        assert tap.event.is_set()
        assert tap.taken() == (2, None)
        assert not tap.event.is_set()
        # A one-shot waiter is gone once notified; the tap keeps counting.
        signals.notify(KEY)
        assert tap.taken() == (1, None)
        signals.notify(run_key("b" * 32))
        assert tap.taken() == (0, None)


def test_news_told_goes_with_the_next_notification_only() -> None:
    signals = Signals()
    with signals.tapping(KEY) as tap:
        signals.tell(KEY, "version 2")
        assert not tap.event.is_set()  # told, not yet notified
        signals.notify(KEY)
        assert tap.taken() == (1, "version 2")
        signals.notify(KEY)  # another replica's change: no news
        assert tap.taken() == (1, None)
        signals.tell(KEY, "version 4")
        signals.notify(KEY)
        signals.notify(KEY)
        assert tap.taken() == (2, None)  # the latest notification brought none


def test_everyone_woken_at_once_gets_no_news() -> None:
    signals = Signals()
    with signals.tapping(KEY) as tap:
        signals.tell(KEY, "version 2")
        signals.notify_all()
        assert tap.taken() == (1, None)
        signals.notify(KEY)
        assert tap.taken() == (1, None)


def test_news_for_a_key_nobody_taps_is_not_kept() -> None:
    signals = Signals()
    signals.tell(KEY, "version 2")
    with signals.tapping(KEY) as tap:
        signals.notify(KEY)
        assert tap.taken() == (1, None)


def test_a_tap_is_registered_only_inside_its_block() -> None:
    signals = Signals()
    with signals.tapping(KEY), signals.tapping(KEY):
        assert len(signals) == 2
        with signals.waiting(KEY):
            assert len(signals) == 3
    assert len(signals) == 0
    signals.tell(KEY, "version 2")
    signals.notify(KEY)
    assert len(signals) == 0
