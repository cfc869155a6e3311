"""What every command shares: the common options, the one way results are printed, and exit codes.

Exit codes: 0 success; 1 a failure (an agent failed, a file or replica is unusable, some agents of a batch
failed); 2 bad input (ids, targets, inputs, flags); 130 interrupted. No traceback reaches a user: errors
of ours print one line with a hint; anything unexpected prints one line naming its type.

With ``--json`` stdout holds exactly one JSON document: the command's result, or, when it failed,
``{"error": {"type", "message", "hint", "agent_id", "step", "exit_code"}}``. The one-line error still goes
to stderr, so a person watching a script's output sees it too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from .._base.errors import AgentShardsError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

DATA_DIR_ENV, REPLICA_ENV = "AGENTSHARDS_DATA_DIR", "AGENTSHARDS_REPLICA"
DEFAULT_DATA_DIR = "./agentshards-data"
OK, FAILED, BAD_INPUT, PENDING, INTERRUPTED = 0, 1, 2, 3, 130

log = logging.getLogger("agentshards")


class Ctx:
    """Per-invocation output settings, set by the group's -v/-q and each command's --json."""

    json = False
    quiet = False


CTX = Ctx()


def data_dir_option(**extra: Any) -> Callable[[F], F]:
    return click.option("--data-dir", envvar=DATA_DIR_ENV, default=DEFAULT_DATA_DIR, show_default=True,
                        show_envvar=True, help="The directory of agent shards.", **extra)


def replica_option(required: bool = False, **extra: Any) -> Callable[[F], F]:
    help_text = "s3://bucket/prefix or a directory" + ("" if required else " (optional)") + "."
    return click.option("--replica", envvar=REPLICA_ENV, default=None, show_envvar=True, help=help_text,
                        callback=_require if required else None, **extra)


def _require(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        raise click.UsageError(f"--replica is required here (or set {REPLICA_ENV})", ctx=ctx)
    return value


def allow_target_option(fn: F) -> F:
    """For commands that import a target stored in a replica or shard: by default only the app dir's own
    modules are imported (the bucket's writer would otherwise choose the code that runs)."""
    return click.option("--allow-target", "allow_targets", multiple=True, metavar="PATTERN",
                        help="Also import stored targets matching PATTERN (fnmatch on module:function or on the "
                             "module), beyond the modules under the app dir. Repeatable.")(fn)


def json_option(fn: F) -> F:
    def set_json(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        CTX.json = CTX.json or value
        return value

    return click.option("--json", "as_json", is_flag=True, expose_value=False, callback=set_json, is_eager=True,
                        help="Print one JSON document (the result, or the error) on stdout.")(fn)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths and exceptions as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseException):
        return error_json(value)
    return value


def error_json(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, AgentShardsError):
        return {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint, "agent_id": exc.agent_id,
                "step": exc.step, "exit_code": exit_code(exc)}
    return {"type": type(exc).__name__, "message": str(exc), "hint": None, "agent_id": None, "step": None,
            "exit_code": exit_code(exc)}


def exit_code(exc: BaseException) -> int:
    return BAD_INPUT if isinstance(exc, ValueError) else FAILED


def emit(payload: Any, text: Callable[[], None] | None = None) -> None:
    """The command's result: JSON under --json, else what ``text`` prints (nothing when quiet)."""
    if CTX.json:
        click.echo(json.dumps(to_jsonable(payload), indent=2, default=str))
    elif text is not None and not CTX.quiet:
        text()


def say(message: str) -> None:
    """A line for people (progress, notes): stderr under --json, suppressed by -q."""
    if not CTX.quiet:
        click.echo(message, err=CTX.json)


def warn(message: str) -> None:
    """A line about something that went wrong or stopped: always stderr, even under -q."""
    click.echo(message, err=True)


def fail(exc: BaseException, code: int | None = None) -> NoReturn:
    code = exit_code(exc) if code is None else code
    if CTX.json:
        payload = error_json(exc)
        payload["exit_code"] = code
        click.echo(json.dumps({"error": payload}, indent=2, default=str))
    click.echo(f"error: {one_line(exc)}", err=True)
    sys.exit(code)


def usage(message: str, hint: str | None = None) -> NoReturn:
    """Bad input noticed by the CLI itself (flag combinations): exit 2 with a one-line message."""
    fail(AgentShardsError(message, hint=hint), BAD_INPUT)


def one_line(exc: BaseException) -> str:
    if isinstance(exc, AgentShardsError):
        return " ".join(str(exc).split())
    return f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:500]} (hint: rerun with -v for details)"


def guarded(call: Callable[[], T]) -> T:
    """Run one library call; any error becomes a one-line message and an exit code, never a traceback."""
    try:
        return call()
    except AgentShardsError as exc:
        fail(exc)
    except (OSError, ValueError, RuntimeError) as exc:  # the environment (a path, a permission): one line
        log.debug("unexpected error", exc_info=True)
        fail(exc, FAILED)


def outcome_rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-agent outcomes of a batch: an exception is that agent's error, anything else its result."""
    return {agent_id: ({"ok": False, "error": error_json(value)} if isinstance(value, BaseException)
                       else {"ok": True, "result": to_jsonable(value)})
            for agent_id, value in results.items()}


def finish_batch(results: dict[str, Any], describe: Callable[[str, Any], str], what: str = "agents") -> NoReturn:
    """Print each agent's outcome (errors on stderr, one line each), a summary, and exit 1 if any failed."""
    failed = sorted(k for k, v in results.items() if isinstance(v, BaseException))
    rows = outcome_rows(results)

    def text() -> None:
        for agent_id in sorted(results, key=natural_key):
            value = results[agent_id]
            if isinstance(value, BaseException):
                click.echo(f"{agent_id}: FAILED {one_line(value)}", err=True)
            else:
                click.echo(describe(agent_id, value))
        click.echo(f"{len(results) - len(failed)} {what} ok, {len(failed)} failed")

    emit({"agents": rows, "ok": len(results) - len(failed), "failed": len(failed)}, text)
    sys.exit(FAILED if failed else OK)


def natural_key(text: str) -> tuple[Any, ...]:
    """``q-2`` before ``q-10``: digits compare as numbers."""
    import re

    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def existing_data_dir(data_dir: str) -> Path:
    """Read-only commands never create a data dir: a missing one is an error, not an empty table."""
    path = Path(data_dir)
    if not path.is_dir():
        from .._base.errors import ShardError

        fail(ShardError(f"no data dir at {path.resolve()}",
                        hint=f"pass --data-dir (or set {DATA_DIR_ENV}) to where the agents' shards are"))
    return path
