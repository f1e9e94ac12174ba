"""The process runtime: each attempt is ``<engine-command> execute <run-id>`` on this machine.

Every engine gets its own session (and so its own process group), a working directory
``<work-dir>/<run-id>-<attempt>/`` and an output file ``<work-dir>/<run-id>-<attempt>.log``,
whose last lines become the exit's log tail. Engines outlive the agent: closing the runtime
stops watching them but never kills them, because they report to the control plane themselves.

With ``warm_engines`` set, an attempt goes to an engine started ahead of it when one is ready
(``agent.runtimes.warm``); the result is the same process, directory, environment and output
file a cold start gives, minus the interpreter's start-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol

from agent.errors import ConfigurationError, SubmitError
from agent.models import Assignment, InfraExit, RunKey, RunningInfra
from agent.runtimes.base import EventCallback, Runtime
from agent.runtimes.forked import ForkServer
from agent.runtimes.output import read_tail
from agent.runtimes.pgroup import signal_group, wait_group_gone
from agent.runtimes.warm import WarmEngines, compatible
from agent.settings import ProcessSettings
from agent.tasks import TaskSet
from flowyard_common.templates import TemplateError, apply_values, resolve_variables

__all__ = ["AGENT_SECRETS", "ProcessRuntime", "engine_env", "read_tail", "rendered_env"]

logger = logging.getLogger(__name__)

# Run ids become file names: accept only what cannot escape the work directory.
_SAFE_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
# After SIGKILL the kernel ends the group promptly; this only bounds a pathological wait.
_KILL_WAIT_SECONDS = 5.0


class EngineProcess(Protocol):
    """What the runtime needs of an engine's process: a child of the agent, or one forked by
    the fork server (``agent.runtimes.forked``)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...


@dataclass(eq=False)
class _Engine:
    """One engine process and the tasks that watch and stop it."""

    key: RunKey
    process: EngineProcess
    infrastructure_id: str
    log_path: Path
    terminator: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


#: The agent's credentials in its environment, kept from the engines it starts.
AGENT_SECRETS = frozenset({"FLOWYARD_TOKEN", "FLOWYARD_TLS_CERT", "FLOWYARD_TLS_KEY"})


class ProcessRuntime(Runtime):
    """Runs each attempt as a local engine process in its own process group."""

    name: ClassVar[str] = "process"

    def __init__(
        self,
        settings: ProcessSettings,
        *,
        server: str,
        tls_ca: Path | None = None,
        hostname: str | None = None,
    ) -> None:
        self._settings = settings
        self._server = server
        self._tls_ca = tls_ca
        self._hostname = hostname or socket.gethostname()
        self._work_dir: Path | None = None
        self._on_event: EventCallback | None = None
        self._engines: dict[RunKey, _Engine] = {}
        # Spawns are short; serialising them makes "already running?" and "start" atomic.
        self._spawn_lock = asyncio.Lock()
        self._tasks = TaskSet("process-runtime")
        self._warm: WarmEngines | None = None
        self._forks: ForkServer | None = None

    @property
    def work_dir(self) -> Path:
        """Where per-run directories and log files go (known once started)."""
        if self._work_dir is None:
            raise RuntimeError("the process runtime has not been started")
        return self._work_dir

    async def start(self, on_event: EventCallback) -> None:
        """Create the work directory and remember where exits go."""
        try:
            if self._settings.work_dir is None:
                path = await asyncio.to_thread(tempfile.mkdtemp, prefix="flowyard-agent-")
                self._work_dir = Path(path)
            else:
                await asyncio.to_thread(self._settings.work_dir.mkdir, parents=True, exist_ok=True)
                self._work_dir = self._settings.work_dir.resolve()
        except OSError as error:
            raise ConfigurationError(f"cannot create the work directory: {error}") from error
        self._on_event = on_event
        logger.info("process runtime: work directory %s", self._work_dir)
        if self._settings.fork_engines:
            self._forks = ForkServer(
                self._settings.engine_command, self._work_dir, self._base_env(), self._tasks
            )
            self._tasks.spawn("forkserver-start", self._forks.warm_up())
            logger.info("process runtime: engines are forked from a warm interpreter")
        elif self._settings.warm_engines > 0:
            self._warm = WarmEngines(
                self._settings.engine_command,
                self._work_dir,
                self._settings.warm_engines,
                self._base_env(),
                self._tasks,
            )
            self._warm.start()
            logger.info("process runtime: keeping %d engine(s) warm", self._settings.warm_engines)

    async def submit(self, assignment: Assignment) -> str:
        """Start the engine for ``assignment`` unless it is already running."""
        key = assignment.key
        if not _SAFE_RUN_ID.fullmatch(key.run_id) or key.attempt < 0:
            raise SubmitError(f"invalid run id or attempt: {key.run_id!r} attempt {key.attempt}")
        async with self._spawn_lock:
            existing = self._engines.get(key)
            if existing is not None:
                logger.info("run %s is already running as %s", key, existing.infrastructure_id)
                return existing.infrastructure_id
            engine = await self._spawn(assignment)
            self._engines[key] = engine
            self._tasks.spawn(f"watch:{key}", self._watch(engine))
            return engine.infrastructure_id

    async def cancel(self, key: RunKey) -> bool:
        """Stop the engine's whole process group: SIGTERM, grace period, then SIGKILL."""
        engine = self._engines.get(key)
        if engine is None:
            return False
        if engine.terminator is None:
            engine.terminator = self._tasks.spawn(f"terminate:{key}", self._terminate(engine))
        await engine.ended.wait()
        return True

    def observe(self) -> list[RunningInfra]:
        """The engines still running, oldest first."""
        return [RunningInfra(e.key, e.infrastructure_id) for e in self._engines.values()]

    async def close(self) -> None:
        """Stop watching; the engine processes keep running and report on their own (warm
        engines that have no run yet are stopped)."""
        if self._warm is not None:
            await self._warm.close()
        if self._forks is not None:
            await self._forks.close()
        await self._tasks.stop(grace=0)
        if self._engines:
            logger.info(
                "leaving %d engine process(es) running: %s",
                len(self._engines),
                ", ".join(e.infrastructure_id for e in self._engines.values()),
            )

    async def _spawn(self, assignment: Assignment) -> _Engine:
        key = assignment.key
        command = self._settings.engine_command
        stem = f"{key.run_id}-{key.attempt}"
        cwd = self.work_dir / stem
        log_path = self.work_dir / f"{stem}.log"
        env = {
            **self._base_env(),
            **engine_env(
                _job_env(assignment), server=self._server, key=key, token=assignment.engine_token
            ),
        }
        warm = await self._fork(key, cwd, env, log_path) or await self._hand_to_warm(
            key, cwd, env, log_path
        )
        if warm is not None:
            return warm
        try:
            output = await asyncio.to_thread(_prepare, cwd, log_path)
        except OSError as error:
            raise SubmitError(f"cannot prepare the run directory {cwd}: {error}") from error
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                "execute",
                key.run_id,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError as error:
            raise SubmitError(
                f"engine command not found: {command[0]!r} (check --engine-command)"
            ) from error
        except PermissionError as error:
            raise SubmitError(f"engine command is not executable: {command[0]!r}") from error
        except OSError as error:
            raise SubmitError(f"cannot start the engine {command[0]!r}: {error}") from error
        finally:
            # The child has its own copy of the descriptor.
            output.close()
        return self._engine(key, process, log_path)

    def _engine(self, key: RunKey, process: EngineProcess, log_path: Path) -> _Engine:
        """The attempt's engine, named ``process/<host>/<pid>`` however it was started."""
        return _Engine(
            key=key,
            process=process,
            infrastructure_id=f"process/{self._hostname}/{process.pid}",
            log_path=log_path,
        )

    def _base_env(self) -> dict[str, str]:
        """What every engine's environment starts from: the agent's own, less its secrets."""
        # The agent's own credentials never reach flow code: the engine gets its attempt's.
        env = {k: v for k, v in os.environ.items() if k not in AGENT_SECRETS}
        if self._tls_ca is not None:
            env["FLOWYARD_TLS_CA"] = str(self._tls_ca)
        return env

    async def _fork(
        self, key: RunKey, cwd: Path, env: dict[str, str], log_path: Path
    ) -> _Engine | None:
        """The attempt running in an engine forked by the fork server, or None to start it
        another way (as for warm engines: see ``_hand_to_warm``)."""
        forks = self._forks
        if forks is None or not forks.available or not compatible(forks.env, env):
            return None
        await _make_run_dir(cwd)
        process = await forks.fork(key.run_id, cwd, env, log_path)
        return None if process is None else self._engine(key, process, log_path)

    async def _hand_to_warm(
        self, key: RunKey, cwd: Path, env: dict[str, str], log_path: Path
    ) -> _Engine | None:
        """The attempt running in a warm engine, or None to start it cold: no engine is
        ready, the run's environment needs a fresh interpreter, or an earlier run of the same
        attempt left output that a cold start appends to."""
        if self._warm is None or not compatible(self._warm.env, env):
            return None
        if await asyncio.to_thread(log_path.exists):
            return None
        await _make_run_dir(cwd)
        standby = self._warm.take()
        if standby is None or not await standby.hand_over(key.run_id, cwd, env, log_path):
            return None
        self._warm.handed_over()
        return self._engine(key, standby.process, log_path)

    async def _watch(self, engine: _Engine) -> None:
        returncode = await engine.process.wait()
        if engine.terminator is not None:
            # A cancel is in progress: report only once the whole group is gone.
            await asyncio.wait([engine.terminator])
        tail = await asyncio.to_thread(read_tail, engine.log_path, self._settings.log_tail_lines)
        signal_number = -returncode if returncode < 0 else None
        ended = InfraExit(
            key=engine.key,
            infrastructure_id=engine.infrastructure_id,
            exit_code=128 + signal_number if signal_number is not None else returncode,
            observe_time=datetime.now(UTC),
            log_tail=tail,
            signal_number=signal_number,
        )
        del self._engines[engine.key]
        engine.ended.set()
        if self._on_event is not None:
            self._on_event(ended.to_event())

    async def _terminate(self, engine: _Engine) -> None:
        pgid = engine.process.pid  # the leader of a new session: its pid is the group id
        grace = self._settings.cancel_grace
        logger.info("run %s: SIGTERM to process group %d", engine.key, pgid)
        signal_group(pgid, signal.SIGTERM)
        if await _stopped_within(grace, engine.process, pgid):
            return
        logger.warning(
            "run %s: process group %d still running after %.1f s, sending SIGKILL",
            engine.key,
            pgid,
            grace,
        )
        signal_group(pgid, signal.SIGKILL)
        if not await _stopped_within(_KILL_WAIT_SECONDS, engine.process, pgid):
            logger.error("run %s: process group %d survived SIGKILL", engine.key, pgid)


async def _stopped_within(seconds: float, process: EngineProcess, pgid: int) -> bool:
    """Whether the leader is reaped and the rest of its group gone within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await process.wait()
            await wait_group_gone(pgid)
    except TimeoutError:
        return False
    return True


async def _make_run_dir(cwd: Path) -> None:
    """Make the run's directory (an engine started another way opens its output itself)."""
    try:
        await asyncio.to_thread(cwd.mkdir, parents=True, exist_ok=True)
    except OSError as error:
        raise SubmitError(f"cannot prepare the run directory {cwd}: {error}") from error


def _prepare(cwd: Path, log_path: Path) -> BinaryIO:
    cwd.mkdir(parents=True, exist_ok=True)
    # Append: a re-run of the same attempt (after an agent restart) keeps the earlier output.
    return log_path.open("ab")


def _job_env(assignment: Assignment) -> dict[str, str]:
    """The ``env`` the pool's template renders for this attempt (the ``env`` job variable)."""
    try:
        template = json.loads(assignment.base_job_template_json or "{}")
        variables = json.loads(assignment.job_variables_json or "{}")
        return rendered_env(template, variables, environ=os.environ)
    except (ValueError, TemplateError) as error:
        raise SubmitError(f"cannot render the pool's job template: {error}") from error


def rendered_env(
    template: dict[str, Any], variables: dict[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The ``env`` a process pool's template renders to, in the order given.

    Raises:
        TemplateError: the template does not render, or renders ``env`` to a non-object.
    """
    configuration = apply_values(
        template.get("job_configuration", {}),
        resolve_variables(template, variables),
        environ=environ,
    )
    env = configuration.get("env") if isinstance(configuration, dict) else None
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise TemplateError(
            "the pool's job template renders 'env' to something other than an object"
        )
    return {str(name): str(value) for name, value in env.items()}


def engine_env(
    job_env: Mapping[str, str], *, server: str, key: RunKey, token: str
) -> dict[str, str]:
    """An engine's variables over the agent's own: the template's ``env``, then what the engine
    needs, which always wins (the dry run of a process pool shows the same)."""
    return {
        **job_env,
        "FLOWYARD_SERVER": server,
        "FLOWYARD_RUN_ID": key.run_id,
        "FLOWYARD_RUN_ATTEMPT": str(key.attempt),
        "FLOWYARD_RUN_TOKEN": token,
    }
