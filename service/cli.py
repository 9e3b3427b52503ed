"""The command line: `checkpoint-worker <command> [flags]`, also `python -m service`.

Exit codes: 0 done (or stopped by a signal after the final checkpoint), 1 a runtime failure,
2 a usage or configuration error. Expected failures are one line, never a traceback.
Heavy imports (anyio, structlog) happen after the command is known, so `healthcheck`
stays as light as the standard library.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from service import __version__

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["console", "main"]

PROG = "checkpoint-worker"
DEFAULT_COUNT = 1_000_000  # numbers `generate` writes unless told otherwise
MAX_COUNT = 10_000_000_000  # about 70 GB: more is a typo, which would fill the disk first


class _Parser(argparse.ArgumentParser):
    # False when built for one command alone (`_build_parser`): then an error needs the others.
    complete = True

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """One line and exit 2, instead of argparse's usage block; no secret in it."""
        argv: list[str] = getattr(self, "argv", [])
        command = next((word for word in argv if word in _COMMANDS), None)
        top_level = self._subparsers is not None  # a command's parser sees only its own words
        safe, unsafe = _flags_by_echo(self if self.complete else _build_parser())
        if top_level and argv[:1] and argv[0].startswith("-") and command is not None:
            # `checkpoint-worker --max-rate 5 status`: say where flags go, echoing no value.
            flag = _glued_flag(argv[0], unsafe)
            attached = _FLAG_WITH_ATTACHED_VALUE.match(argv[0])
            flag = flag or (attached["flag"] if attached else argv[0])
            message = f"the command comes first, then its flags: `{PROG} {command} {flag} ...`"
        else:
            message = _without_values(message, argv, safe, unsafe)
        self.exit(2, f"{PROG}: error: {message} (see `{PROG} --help`)\n")


def _flags_by_echo(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """The flags of `parser` and its commands that take no value or a typed one (a count, a
    path): none of them is a secret; and the others, whose value may be one."""
    safe: set[str] = set()
    unsafe: set[str] = set()
    for action in parser._actions:
        if action.nargs == 0 or action.type is not None:
            safe.update(action.option_strings)
        else:
            unsafe.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                more_safe, more_unsafe = _flags_by_echo(command)
                safe |= more_safe
                unsafe |= more_unsafe
    return safe, unsafe


_FLAG_WITH_ATTACHED_VALUE = re.compile(
    r"(?P<flag>--?[A-Za-z][A-Za-z0-9_-]*)(?P<separator>[^A-Za-z0-9_-]).*", re.S
)


def _shared_length(one: str, other: str) -> int:
    """How many characters `one` and `other` begin with alike."""
    for index, (a, b) in enumerate(zip(one, other, strict=False)):
        if a != b:
            return index
    return min(len(one), len(other))


_SHORTEST_FLAG_PREFIX = 4  # letters a flag and a word must share to be taken as that flag


def _glued_flag(token: str, unsafe: set[str]) -> str | None:
    """What `token` holds of a flag whose value may be secret, when it goes on past it (a value
    glued to the flag, to an abbreviation of it, in another case, after other dashes:
    `--kafka-sasl-passwordHunter2`, `--kafka-sasl-passHunter2`, `---Kafka-sasl-password_X`);
    None for a word that is no such thing."""
    name = token.lstrip("-")
    if not token.startswith("-") or not name:
        return None
    shared = max((_shared_length(name.lower(), flag.lstrip("-")) for flag in unsafe), default=0)
    if shared < _SHORTEST_FLAG_PREFIX or shared == len(name):
        return None
    return token[: len(token) - len(name) + shared]


def _without_values(message: str, argv: list[str], safe: set[str], unsafe: set[str]) -> str:
    """argparse repeats what it could not take (`--kafka-sasl-pass=...`, a misspelt flag and the
    word after it, a secret given before the command, one glued to its flag): any value of a
    flag that may be a secret is shown as `***`."""
    hidden: dict[str, str] = {}
    for previous, token in zip(["", *argv], argv, strict=False):
        # A flag's name ends at its first character that no flag has: `=`, or `:` mistyped.
        attached = _FLAG_WITH_ATTACHED_VALUE.match(token)
        known = token in safe or (attached is not None and attached["flag"] in safe)
        glued = None if known else _glued_flag(token, unsafe)
        if previous.startswith("-") and "=" not in previous and previous not in safe:
            hidden[token] = "***"  # the value of a flag that may be secret, even if it is `-x`
        elif glued:
            hidden[token] = f"{glued}***"
        elif attached and attached["flag"] not in safe:
            hidden[token] = f"{attached['flag']}{attached['separator']}***"
    for token, shown in hidden.items():
        # Whole words only, quoted or not: `run` in the message is not a `run` given as a value.
        message = re.sub(rf"(?<![^\s'\"]){re.escape(token)}(?![^\s'\",])", shown, message)
    return message


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    from service.settings import setting_fields

    group = parser.add_argument_group("settings (flag > WORKER_* environment > --config file)")
    group.add_argument("--config", metavar="FILE", help="TOML file of settings (or WORKER_CONFIG)")
    for field in setting_fields():
        name = field.name
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.metadata['description']} (default: {field.default})"
        if name in ("input", "exclude"):  # the flag repeats: a list of paths or globs
            group.add_argument(
                flag,
                dest=name,
                metavar=name.upper(),
                action="append",
                default=argparse.SUPPRESS,
                help=help_text + "; repeat for more",
            )
        elif isinstance(field.default, bool):
            group.add_argument(
                flag,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                flag, dest=name, metavar=name.upper(), default=argparse.SUPPRESS, help=help_text
            )


_COMMANDS = {
    "run": "process the input from the checkpoint on (--follow: keep going as it grows)",
    "generate": "write a file of random integers, one per line, atomically",
    "status": "show the checkpoint: offset, records, sum, percent done",
    "reset": "remove the checkpoint and result, so the next run starts over",
    "publish": "write the input file's lines to the Kafka topic, exactly once",
    "healthcheck": "exit 0 if a worker is alive and its event loop responsive",
}


def _build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or given `only`, a command's name, of that command alone:
    adding every command's setting flags takes longer than anything else in the parser."""
    parser = _Parser(prog=PROG, description="A resumable, checkpointed stream summation worker.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.complete = only is None
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in _COMMANDS.items():
        if only in (None, name):
            command = commands.add_parser(name, help=help_text, description=help_text)
            _add_setting_flags(command)
            _add_own_flags(name, command)
    return parser


def _add_own_flags(name: str, command: argparse.ArgumentParser) -> None:
    """The flags of the command `name` besides the settings."""
    if name == "generate":
        command.add_argument("--count", type=_count, default=DEFAULT_COUNT, help="how many numbers")
        command.add_argument("--seed", type=_seed, default=None, help="same seed, same file")
        command.add_argument(
            "--output", type=_output_path, default=None, help="default: the input setting"
        )
        command.add_argument("--if-missing", action="store_true", help="do nothing if it exists")
        command.add_argument("--force", action="store_true", help="overwrite an existing file")
    elif name == "status":
        command.add_argument("--json", action="store_true", help="as one JSON object")
    elif name == "publish":
        command.add_argument(
            "--lines-per-message",
            type=int,
            default=1000,
            help="lines in one message (default 1000)",
        )


def _output_path(text: str) -> Path:
    """`generate --output`: a file's path, written as the checkpoint is (`written_file`)."""
    from service.settings import written_file

    try:
        return written_file(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _count(text: str) -> int:
    """`generate --count`: from 0 to MAX_COUNT, written as a whole-number setting is."""
    from service.settings import whole_number

    try:
        count: int = whole_number(ge=0, le=MAX_COUNT)(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error}, got {text!r}") from None
    return count


def _seed(text: str) -> int:
    """`generate --seed`: a whole number from 0 (Python's generator takes -5 as 5: two seeds
    that gave one file)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0, got {text!r}")
    return seed


def _healthcheck(argv: list[str]) -> int:
    """Standard library only: Docker runs this every few seconds. Its flags, variables and
    config file are checked as for every command (exit 2 when one is bad)."""
    from service.errors import UsageError
    from service.health import check_health, check_kafka_health

    parser = _Parser(prog=f"{PROG} healthcheck")
    _add_setting_flags(parser)
    try:
        settings = _settings_of(parser.parse_args(argv))
    except UsageError as error:
        print(f"{PROG}: error: {error.message}", file=sys.stderr)
        return error.exit_code
    check = check_kafka_health if settings.source == "kafka" else check_health
    healthy, message = check(settings.checkpoint)
    print(message)
    return 0 if healthy else 1


def _settings_of(args: argparse.Namespace) -> Settings:
    """The settings: the command's flags over WORKER_* variables over the config file."""
    from service.environment import worker_environment
    from service.errors import UsageError
    from service.settings import load_settings, setting_fields

    names = {field.name for field in setting_fields()}
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    if len(flags.get("input", ())) == 1:
        flags["input"] = flags["input"][0]  # one --input is one path or glob, not a list
    if args.config == "":  # `--config "$CFG"` with CFG unset: not a run on the defaults
        raise UsageError("--config: expected a TOML file's path, got ''")
    config = args.config or worker_environment({"config"}).get("config")
    return load_settings(flags, Path(config) if config else None)


def _remember_stop_signals(received: list[int]) -> None:
    """Until the worker listens, note a stop signal instead of dying: it stops gracefully then;
    and ignore the signals it ignores. A closed pipe is an error to handle (EPIPE), never a
    signal that kills `run`."""
    import signal

    from service.signals import IGNORED_SIGNALS, STOP_SIGNALS, release_held_stop_signals

    def remember(signum: int, _frame: object) -> None:
        received.append(signum)
        # A start-up log line may be waiting for a reader that does not read: not for long now.
        # The module may be half imported: then `configure_logging` below sees `received`.
        stop_waiting = getattr(
            sys.modules.get("service.telemetry.logs"), "stop_waiting_for_reader", None
        )
        if stop_waiting is not None:
            stop_waiting()

    for signum in STOP_SIGNALS:
        signal.signal(signum, remember)
    for signum in (*IGNORED_SIGNALS, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    release_held_stop_signals()


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    sys.set_int_max_str_digits(0)  # sums, numbers and settings are exact at any length
    if argv[:1] == ["healthcheck"]:
        return _healthcheck(argv[1:])
    early_signals: list[int] = []
    if argv[:1] == ["run"]:
        _remember_stop_signals(early_signals)
    # The first word, when it is a command's name, is the command: only its parser is needed.
    command = argv[0] if argv and argv[0] in _COMMANDS else None
    args = _build_parser(only=command).parse_args(argv)

    from service.errors import UsageError, WorkerError

    try:
        settings = _settings_of(args)
        output = _output_of_generate(args, settings) if args.command == "generate" else None
    except UsageError as error:
        print(f"{PROG}: error: {error.message}", file=sys.stderr)
        return error.exit_code

    from service.telemetry.logs import configure_logging, stop_waiting_for_reader

    log = configure_logging(settings.log_format, settings.log_level)
    if early_signals:  # a stop asked for while logging was being set up
        stop_waiting_for_reader()
    if args.command != "run":  # the collector was off for start-up (`console`)
        gc.freeze()
        gc.enable()
    try:
        if args.command == "publish" or (
            settings.source == "kafka" and args.command in ("status", "reset")
        ):
            from service.sources.kafka.cli import run_kafka_command

            return run_kafka_command(args, settings, log)
        if args.command == "run":
            import anyio

            from service.lifecycle.worker import run_worker

            return anyio.run(run_worker, settings, log, early_signals, backend="asyncio")
        if args.command == "generate":
            from service.commands import generate

            assert output is not None
            return generate(
                output, args.count, args.seed, force=args.force, if_missing=args.if_missing, log=log
            )
        if args.command == "status":
            from service.commands import status

            return status(settings, as_json=args.json)
        from service.commands import reset

        return reset(settings, log)
    except WorkerError as error:
        log.error("fatal_error", message=error.message)
        return error.exit_code


def _output_of_generate(args: argparse.Namespace, settings: Settings) -> Path:
    """The file `generate` writes: `--output`, or the input when it is one plain path; never
    one of the worker's own files (the output is an input)."""
    from service.errors import UsageError
    from service.sources.files.source import input_patterns, refuse_shared_files

    output: Path | None = args.output or input_patterns(settings).plain_path
    if output is None:
        raise UsageError(
            "generate needs --output when the input is a glob or a list "
            f"({', '.join(settings.input)})"
        )
    refuse_shared_files(settings, output, "--output" if args.output else "input")
    return output


class _Stopped(BaseException):
    """A stop signal outside `run`: unwinds the command, as KeyboardInterrupt does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _point_closed_std_streams_at_null() -> None:
    """A standard descriptor closed at start (`run >&-`) is opened on /dev/null, as a daemon's
    are: otherwise the next file opened (a checkpoint) would take its number and get log lines."""
    import os

    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: `fd` itself
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115  # lives as long as we do


def console() -> NoReturn:
    """The `checkpoint-worker` console script."""
    import contextlib
    import errno
    import os
    import signal

    # Start-up builds tens of thousands of objects (modules, classes, functions) that live as
    # long as the process: the collector's passes over them are wasted, about 5% of `run`'s
    # start. It is back on once the command is under way (`run`: when its worker has started).
    gc.disable()

    _point_closed_std_streams_at_null()
    for stream in (sys.stdout, sys.stderr):  # a name `PYTHONIOENCODING=ascii` cannot encode
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]

    # `status | head` ends us quietly, like any CLI (`run` ignores SIGPIPE again: it must save).
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    def stop(signum: int, _frame: object) -> NoReturn:
        raise _Stopped(signum)

    # Stop signals unwind like Ctrl+C, so `generate` removes its unfinished temporary file. Not
    # for `run`: it takes these signals over to stop gracefully, and once they are caught at all
    # a stop must be graceful (before that, their default ends it).
    unwinds_on_stop = sys.argv[1:2] != ["run"]
    if unwinds_on_stop:
        from service.signals import STOP_SIGNALS

        for signum in STOP_SIGNALS:
            if signum != signal.SIGINT:
                signal.signal(signum, stop)
    try:
        if unwinds_on_stop:
            from service.signals import release_held_stop_signals

            release_held_stop_signals()  # one held arrives now: unwound below like any
        code = main()
    except KeyboardInterrupt:  # Ctrl+C before the worker took over SIGINT: nothing to save yet
        code = 130
    except _Stopped as stopped:
        code = 128 + stopped.signum
    except OSError as error:
        # Output that cannot be written (`status > /dev/full`), no descriptor left even for a
        # module's file (`ulimit -n` of a few): one line, no traceback.
        message = error.strerror or type(error).__name__
        if error.errno in (errno.EMFILE, errno.ENFILE):
            message += "; raise the open-files limit"
        elif isinstance(error.filename, (str, bytes)):
            from service.core.names import shown

            message = f"{shown(os.fsdecode(error.filename))}: {message}"
        with contextlib.suppress(OSError, ValueError):
            print(f"{PROG}: error: {message}", file=sys.stderr)
        # An event loop made without its descriptors complains as it is collected with the
        # error's frames: the one line above says all there is to say.
        sys.unraisablehook = lambda unraisable: None
        code = 1
    # Every file is written and closed by now. Skipping the interpreter's teardown of anyio,
    # structlog and the rest saves time on every exit, a stop on SIGTERM included.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # its reader went away: nothing to tell
            stream.flush()
    os._exit(code)
