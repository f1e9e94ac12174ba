"""The CLI's per-invocation session turns a CA file it cannot read into a usage error."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from control_plane.cli.session import Session


def test_an_unreadable_tls_ca_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    # A path that exists but cannot be read as a file (as an unreadable file would fail).
    session = Session("127.0.0.1:1", token="t", tls_ca=tmp_path)
    with pytest.raises(click.BadParameter) as raised:
        session.stub  # noqa: B018 - the property opens the channel
    assert "--tls-ca" in raised.value.format_message()
    assert str(tmp_path) in raised.value.format_message()
