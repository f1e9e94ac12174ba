"""One attempt of a flow run, from the first Open to the acknowledged terminal state.

1. Open the Report stream (log seqs continue after ``Opened.stored_seq``) and call StartRun.
2. Fetch the code, load the entrypoint, bind the parameters; any failure is proposed as
   FAILED with a message that names what is missing, without RUNNING.
3. Propose RUNNING, call the flow in the main thread, propose COMPLETED or FAILED once every
   log line has been acknowledged.
4. On cancellation (CancelFlow or SIGTERM) propose CANCELLED.

:func:`execute` returns the process's exit code (:class:`ExitCode`).
"""

from __future__ import annotations

import enum
import logging
import os
import sys
from pathlib import Path

from engine.cancellation import Cancellation
from engine.capture import Capture, capture_output
from engine.children import EngineChildRuns
from engine.errors import FlowCancelled, FlowSetupError, ReportError, SettingsError
from engine.flow import (
    Outcome,
    call_flow,
    completed,
    failed,
    fetch_flow_code,
    prepare_flow,
    summarize_result,
)
from engine.logbuffer import LogBuffer
from engine.model import RunSpec, StateType
from engine.reporter import Reporter
from engine.settings import EngineSettings, load_settings
from engine.storage import scratch_directory
from flowyard_sdk.children import hosting
from flowyard_sdk.events import listening

__all__ = ["ExitCode", "execute"]

logger = logging.getLogger(__name__)


class ExitCode(enum.IntEnum):
    """The engine's exit codes."""

    COMPLETED = 0
    """The flow returned and COMPLETED was acknowledged."""
    FAILED = 1
    """The flow raised or could not be loaded, and FAILED was acknowledged."""
    COULD_NOT_RUN = 3
    """Nothing could be run or reported: stale attempt, finished run, auth error, unreachable."""
    CANCELLED = 143
    """The run was cancelled (128 + SIGTERM, as if the signal had killed the process)."""


_EXIT_CODES = {
    StateType.COMPLETED: ExitCode.COMPLETED,
    StateType.FAILED: ExitCode.FAILED,
    StateType.CANCELLED: ExitCode.CANCELLED,
}


def execute_run(run_id: str) -> int:
    """Execute ``run_id`` as this process's environment configures it; COULD_NOT_RUN, said on
    stderr, when that configuration is wrong."""
    try:
        settings = load_settings(os.environ, run_id)
    except SettingsError as exc:
        print(f"flowyard-engine: {exc}", file=sys.stderr, flush=True)
        return ExitCode.COULD_NOT_RUN
    return int(execute(settings))


def execute(settings: EngineSettings) -> ExitCode:
    """Run the attempt that ``settings`` names and return the exit code.

    Must be called from the main thread: it installs signal handlers and replaces
    ``sys.stdout`` and ``sys.stderr`` for the duration of the run.
    """
    cancellation = Cancellation()
    cancellation.install()
    buffer = LogBuffer()
    with capture_output(buffer, settings.log_level) as capture:
        reporter = Reporter(settings, buffer, on_cancel=cancellation.request)
        reporter.start()
        if reporter.thread_ident is not None:
            capture.handler.ignored_threads.add(reporter.thread_ident)
        try:
            return _Attempt(settings, reporter, capture, cancellation).run()
        finally:
            reporter.stop()


class _Attempt:
    """The steps of one attempt, each returning the exit code when the attempt ends there."""

    def __init__(
        self,
        settings: EngineSettings,
        reporter: Reporter,
        capture: Capture,
        cancellation: Cancellation,
    ) -> None:
        self._settings = settings
        self._reporter = reporter
        self._capture = capture
        self._cancellation = cancellation
        self._revision = ""
        """What was fetched, reported with RUNNING and every later state."""

    def run(self) -> ExitCode:
        """Run the attempt."""
        try:
            # Armed: an engine stopped while it waits for the control plane (an attempt handed
            # back during an outage, a pod deleted) stops now, not after the connect timeout.
            with self._cancellation.armed():
                self._reporter.wait_opened()
                spec = self._reporter.start_run()
        except FlowCancelled as exc:
            if self._reporter.opened:
                return self._cancel(exc.reason)
            _tell(f"cancelled before the control plane answered ({exc.reason}); nothing ran")
            return ExitCode.CANCELLED
        except ReportError as exc:
            return self._could_not_run(exc)
        self._reporter.set_heartbeat_interval(spec.heartbeat_interval)
        try:
            with scratch_directory(spec.source) as workdir:
                return self._run(spec, workdir)
        except FlowCancelled as exc:
            return self._cancel(exc.reason)
        except ReportError as exc:
            return self._could_not_run(exc)

    def _run(self, spec: RunSpec, workdir: Path) -> ExitCode:
        """The run once its spec is known; ``workdir`` is scratch space for sources that
        download code."""
        try:
            # Armed: loading user code may take long (heavy imports) and must be cancellable.
            with self._cancellation.armed():
                fetched = fetch_flow_code(spec, workdir, self._capture.system)
                self._revision = fetched.revision
                flow = prepare_flow(spec, fetched)
        except FlowSetupError as exc:
            self._capture.system(f"Could not start the flow: {exc}", logging.ERROR)
            return self._finish(Outcome(StateType.FAILED, message=str(exc)))
        except Exception as exc:
            # Not a problem the engine knows how to describe: report it with its traceback
            # rather than dying without a state.
            outcome = failed(exc)
            self._capture.system(f"Could not start the flow: {outcome.message}", logging.ERROR)
            return self._finish(outcome)

        result = self._reporter.propose(StateType.RUNNING, source_revision=self._revision)
        if not result.accepted:
            if result.state is StateType.CANCELLING:
                return self._cancel("the run is being cancelled")
            return self._could_not_run(
                f"RUNNING was refused (the run is {result.state.value}): {result.reason}"
            )

        self._capture.system(f"Running {flow.call.describe()}")
        try:
            # Task runs' changes become lines that carry them, for the control plane to store.
            # Subflows and run_deployment become child runs through the control plane.
            with (
                self._cancellation.armed(),
                listening(self._capture.task_change, wants_inputs=True),
                hosting(EngineChildRuns(self._settings, self._reporter, self._capture)),
            ):
                value = call_flow(flow)
        except FlowCancelled:
            raise
        except SystemExit as exc:
            if exc.code in (None, 0):
                self._capture.system(f"Flow exited with sys.exit({exc.code!r})")
                return self._finish(completed(None))
            return self._flow_raised(exc)
        except BaseException as exc:
            return self._flow_raised(exc)
        self._capture.system(f"Flow returned {summarize_result(value)}")
        return self._finish(completed(value))

    def _flow_raised(self, exc: BaseException) -> ExitCode:
        outcome = failed(exc)
        first_line, _, traceback_text = outcome.message.partition("\n\n")
        self._capture.system(f"Flow raised {first_line}\n{traceback_text}", logging.ERROR)
        return self._finish(outcome)

    def _finish(self, outcome: Outcome) -> ExitCode:
        """Flush the logs, propose the terminal state, wait for the answer."""
        self._flush_logs()
        result = self._reporter.propose(
            outcome.state,
            message=outcome.message,
            result_summary=outcome.result_summary,
            source_revision=self._revision,
        )
        if result.accepted or result.state is outcome.state:
            return _EXIT_CODES[outcome.state]
        if result.state is StateType.CANCELLING:
            # The cancel crossed the flow's end: the run's answer is CANCELLED.
            return self._cancel("the run is being cancelled")
        return self._could_not_run(
            f"{outcome.state.value} was refused (the run is {result.state.value}): {result.reason}"
        )

    def _cancel(self, reason: str) -> ExitCode:
        self._capture.system(f"Run cancelled ({reason})", logging.WARNING)
        try:
            self._flush_logs()
            result = self._reporter.propose(StateType.CANCELLED, message=reason)
        except ReportError as exc:
            _tell(f"the run was cancelled but CANCELLED could not be reported: {exc}")
        else:
            if not result.accepted and result.state is not StateType.CANCELLED:
                # The infrastructure's exit report decides what the run becomes.
                _tell(f"CANCELLED was refused (the run is {result.state.value}): {result.reason}")
        return ExitCode.CANCELLED

    def _flush_logs(self) -> None:
        self._capture.flush_partial()
        if not self._reporter.flush():
            _tell(
                f"not every log line was acknowledged within {self._settings.timeouts.flush:g} s; "
                "reporting the state anyway"
            )

    def _could_not_run(self, problem: ReportError | str) -> ExitCode:
        text = str(problem)
        _tell(f"cannot run {self._settings.run_id} attempt {self._settings.attempt}: {text}")
        return ExitCode.COULD_NOT_RUN


def _tell(text: str) -> None:
    """One line for whoever reads the process's stderr (the capture is bypassed)."""
    print(f"flowyard-engine: {text}", file=sys.__stderr__, flush=True)
