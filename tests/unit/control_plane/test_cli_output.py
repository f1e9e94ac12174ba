"""How the CLI fits a table to a terminal: whole columns keep their width, the others share."""

from __future__ import annotations

import pytest

from control_plane.cli.output import Column, _fit

COLUMNS = [Column("RUN", whole=True), Column("DEPLOYMENT"), Column("STATE"), Column("AGENT")]
NATURAL = [32, 40, 16, 5]  # widest cell (or header) of each column


def test_a_table_that_fits_keeps_its_natural_widths() -> None:
    assert _fit(COLUMNS, NATURAL, 200) == NATURAL


@pytest.mark.parametrize("terminal", [90, 80, 60])
def test_on_a_narrower_terminal_the_widest_columns_wrap_and_ids_stay_whole(terminal: int) -> None:
    widths = _fit(COLUMNS, NATURAL, terminal)
    assert widths[0] == 32
    assert sum(widths) + 2 * (len(widths) - 1) == terminal
    assert widths[3] == 5  # short columns stay whole; the widest gives way first
    assert widths[1] >= widths[2] >= len("STATE")


def test_a_terminal_too_narrow_for_the_ids_gets_a_wider_table_not_a_cut_id() -> None:
    widths = _fit(COLUMNS, NATURAL, 30)
    assert widths[0] == 32
    assert widths[1:] == [8, 8, 5]
