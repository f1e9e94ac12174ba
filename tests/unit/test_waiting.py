"""The deadline waits of the tests ask again when a check raises, and fail with its error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests import waiting
from tests.fakekube.testing import wait_for as fakekube_wait_for


def appearing_after(tries: int) -> Callable[[], list[int]]:
    """A list that is empty for the first ``tries`` looks, like pods not yet listed."""
    looks: list[int] = []

    def look() -> list[int]:
        looks.append(1)
        return [7] if len(looks) > tries else []

    return look


@pytest.mark.parametrize("wait_for", [waiting.wait_for, fakekube_wait_for])
def test_a_check_that_raises_is_asked_again(wait_for: Callable[..., Any]) -> None:
    pods = appearing_after(3)
    assert wait_for(lambda: pods()[0] == 7, 5.0, "the pod") is True


@pytest.mark.parametrize("wait_for", [waiting.wait_for, fakekube_wait_for])
def test_at_the_deadline_the_last_error_is_raised(wait_for: Callable[..., Any]) -> None:
    with pytest.raises(IndexError) as error:
        wait_for(lambda: [][0], 0.1, "the pod")
    assert "waiting for the pod" in "".join(error.value.__notes__)


def test_a_check_that_stays_falsy_times_out_naming_what() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0.1 s waiting for the pod"):
        waiting.wait_for(lambda: [], 0.1, "the pod")


async def test_the_async_wait_asks_coroutines_and_plain_checks_again() -> None:
    pods = appearing_after(2)

    async def first_pod() -> int:
        return pods()[0]

    assert await waiting.eventually(first_pod, 5.0, "the pod") == 7
    more = appearing_after(2)
    assert await waiting.eventually(lambda: more()[0], 5.0, "the pod") == 7
    with pytest.raises(KeyError):
        await waiting.eventually(lambda: {}["x"], 0.1, "the key")
