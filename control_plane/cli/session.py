"""What every ``flowyard`` command shares: the per-invocation session and ``KEY=VALUE`` options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from control_plane.cli.client import Client, resolve_token


def parse_assignments(values: tuple[str, ...], option: str) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON is taken as JSON (3, true, [1]), else text."""
    result: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
    return result


class Session:
    """Per-invocation state: the server address, credentials and a lazily made client."""

    def __init__(self, server: str, token: str | None = None, tls_ca: Path | None = None) -> None:
        self.server = server
        self.token = token
        self.tls_ca = tls_ca
        self._client: Client | None = None

    @property
    def stub(self) -> Any:
        """The ControlPlaneService stub."""
        if self._client is None:
            try:
                self._client = Client.connect(self.server, resolve_token(self.token), self.tls_ca)
            except ValueError as error:  # an unreadable --tls-ca: the user's to fix
                raise click.BadParameter(str(error), param_hint="--tls-ca") from error
        return self._client.stub
