"""Server configuration: one frozen dataclass, read from flags and ``FLOWYARD_*`` variables once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PORT = 7700
#: The mutual-TLS agent port, when a client CA is configured.
DEFAULT_AGENT_PORT = 7701
#: The HTTP port: web UI, JSON + Server-Sent-Events API, health and metrics.
DEFAULT_HTTP_PORT = 7780
#: gRPC's own default, and what a client receives unless it raises its limit: a request the
#: server accepts can be answered back to any client.
DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 4 * 1024 * 1024
#: About a second of CreateRun calls on SQLite on two cores (``bench/create_runs.py``), well
#: inside usual deadlines.
DEFAULT_MAX_CONCURRENT_CALLS = 1000


def default_data_dir() -> Path:
    """Where the server keeps its database when neither --data-dir nor --db-url is given."""
    env = os.environ.get("FLOWYARD_DATA_DIR")
    return Path(env) if env else Path.home() / ".flowyard"


#: The admin token the server creates on first start, in its data directory (mode 0600).
ADMIN_TOKEN_FILE = "admin.token"


def admin_token_path(data_dir: Path) -> Path:
    """Where the admin token of a data directory is kept."""
    return data_dir / ADMIN_TOKEN_FILE


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``flowyard server start`` can be told."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path | None = None
    db_url: str | None = None
    #: A file the server writes "host:port" into once it is serving (port 0 picks a free port),
    #: then, on lines of their own, the agent port's "host:port" if it has one and the HTTP
    #: listener's "http://host:port/".
    ready_file: Path | None = None
    #: The HTTP listener's port (0 picks a free port; None: no HTTP listener). ``flowyard
    #: server start`` serves it on DEFAULT_HTTP_PORT unless told otherwise; a control plane
    #: built in-process serves none unless given one.
    http_port: int | None = None
    #: Cadence the server asks agents to heartbeat at (told in Welcome).
    agent_heartbeat_seconds: float = 10.0
    #: How long an assignment may go unaccepted/unsubmitted before it is handed back (the run
    #: is queued again as its next attempt).
    lease_seconds: float = 30.0
    #: Cadence the server asks engines to heartbeat at (told in StartRun).
    engine_heartbeat_seconds: float = 10.0
    #: Seconds in-flight RPCs get to finish on SIGTERM/SIGINT before they are cancelled.
    shutdown_grace_seconds: float = 5.0
    #: A RUNNING run whose engine is silent this long is CRASHED.
    engine_grace_seconds: float = 60.0
    #: A submitted PENDING run whose agent is gone this long, its engine silent, is CRASHED.
    agent_grace_seconds: float = 300.0
    #: A SCHEDULED run not dispatched this long after it was due is marked Late.
    late_after_seconds: float = 15.0
    #: A run CANCELLING this long is forced to CANCELLED.
    cancelling_timeout_seconds: float = 300.0
    #: Requests worked on at once, counted as units of database work in flight (including
    #: the background loops' and those of callers that hung up); past it, user calls are
    #: refused with RESOURCE_EXHAUSTED and a retry hint (``control_plane.admission``).
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS
    #: Largest request message accepted; a larger one gets RESOURCE_EXHAUSTED from gRPC.
    max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_MESSAGE_BYTES
    #: TLS certificate and key of the server (PEM); both unset: plaintext.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA of agents' client certificates: opens the mutual-TLS agent port.
    tls_client_ca: Path | None = None
    #: The mutual-TLS agent port (0 picks a free one); used only with ``tls_client_ca``.
    agent_port: int = DEFAULT_AGENT_PORT
    #: Refuse AgentService.Connect calls without a verified client certificate.
    require_agent_cert: bool = False
    #: The first admin token, registered while the database holds none, instead of minting
    #: one into the data directory (``control_plane.auth.bootstrap``). Kept out of the repr.
    admin_token: str = field(default="", repr=False)

    def resolved_data_dir(self) -> Path:
        """The data directory in use."""
        return self.data_dir if self.data_dir is not None else default_data_dir()

    def resolved_db_url(self) -> str:
        """The SQLAlchemy URL of the database: --db-url, or SQLite in the data directory."""
        if self.db_url:
            return self.db_url
        return f"sqlite+aiosqlite:///{self.resolved_data_dir() / 'flowyard.db'}"
