"""Settings: one typed, validated object, built once in `main()` and passed down.

Rule 1: every setting is defined once, here; its flag, its `WORKER_*` variable and its TOML key
        all derive from the field's name.
Rule 2: precedence is flag > environment > TOML file > default.
Rule 3: an unknown key, a bad value or a bad file is a `UsageError` (exit 2) naming the setting.

Standard library only: `run` pays for every import at start-up, and a validation library cost
it more than everything else the worker imports together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from service.core.names import shown
from service.environment import ENV_PREFIX, worker_environment
from service.errors import UsageError
from service.storage.atomic import (
    LONGEST_WRITTEN_NAME,
    MAX_CONFIG_BYTES,
    NAME_MAX,
    PATH_MAX,
    read_regular_file,
)
from service.storage.lock import lock_path_for

__all__ = [
    "ENV_PREFIX",
    "GLOB_CHARACTERS",
    "MAX_LINE_BYTES",
    "Listed",
    "Settings",
    "load_settings",
    "setting_fields",
    "split_address",
    "whole_number",
    "written_file",
]

MAX_LINE_BYTES = 1 << 30  # the largest max_line_bytes: one line held in memory at most
GLOB_CHARACTERS = frozenset("*?[")  # a path holding one of these is a glob
# Levels of a glob from its first wildcard on: the standard glob walks each by a recursive call.
MAX_GLOB_LEVELS = 128


OnBadRecord = Literal["skip", "fail"]
OnInputChange = Literal["fail", "restart"]
LogFormat = Literal["json", "console", "auto"]
LogLevel = Literal["debug", "info", "warning", "error"]
SourceKind = Literal["file", "kafka"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

Convert = Callable[
    [Any], Any
]  # a raw value (flag, variable or TOML) to the setting's, or ValueError


_DECIMAL = re.compile(
    r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*|\s*[+-]?(inf|nan)\s*", re.I
)
MAX_SECONDS = 1e9  # about 31 years: a longer wait is "never", and past it clocks overflow
MIN_SECONDS = 0.001  # a shorter interval or timeout is "no wait at all", and none is needed
MIN_SHUTDOWN_SECONDS = 0.1  # a final save (write, fsync, rename, fsync) needs a few ms at least
MAX_RATE = 1e12  # numbers per second: far past any machine, and well inside a float's range


class _TomlFloat:
    """A float of the TOML file as written (`_read_config`): `1e-400` is not 0, and `1e20` is
    a whole number. Only the number settings take one, as they take a float."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _number(
    *, gt: float | None = None, ge: float | None = None, le: float | None = None
) -> Convert:
    def convert(value: Any) -> float:
        if isinstance(value, _TomlFloat):
            value = value.text
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("expected a number")
        if isinstance(value, str) and not _DECIMAL.fullmatch(value):
            raise ValueError("expected a number")  # float() also takes 1_0 and other digits
        try:
            number = float(value)
        except ValueError:
            raise ValueError("expected a number") from None
        except OverflowError:  # a whole number past a float's range
            raise ValueError("expected a finite number") from None
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        mantissa = value.lower().partition("e")[0] if isinstance(value, str) else ""
        if number == 0 and re.search("[1-9]", mantissa):  # `1e-400`: no float holds it
            raise ValueError("too close to 0 to tell from it: give 0 or a larger number")
        if gt is not None and not number > gt:
            raise ValueError(f"must be greater than {gt:g}")
        if ge is not None and not number >= ge:
            raise ValueError(f"must be at least {ge:g}")
        if le is not None and not number <= le:
            raise ValueError(f"must be at most {le:g}")
        return number

    return convert


def _seconds(*, zero: bool = False) -> Convert:
    """A duration: more than 0 (or 0 itself where it means "forever"), from a millisecond to
    about 31 years."""
    bounded = _number(gt=0, ge=MIN_SECONDS, le=MAX_SECONDS)

    def convert(value: Any) -> float:
        number = _number(ge=0 if zero else None)(value)
        return 0.0 if zero and number == 0 else float(bounded(number))

    return convert


def _whole(text: str) -> int:
    """`1e100` or `4096.0` as exactly the whole number its digits are; ValueError otherwise."""
    from decimal import Decimal  # only for a whole number written with a point or exponent

    exact = Decimal(text)
    if not exact.is_finite() or exact != exact.to_integral_value():
        raise ValueError("expected a whole number")
    if exact.adjusted() >= 4096:  # the int would take a while to build, and mean nothing
        raise ValueError("expected a whole number of at most 4096 digits")
    return int(exact)


def whole_number(*, ge: int, le: int | None = None) -> Convert:
    """A whole number from ge to le, written `1000`, `1e3` or `1000.0`; ValueError otherwise."""

    def convert(value: Any) -> int:
        if isinstance(value, _TomlFloat):
            value = value.text
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
            value = int(value)
        elif isinstance(value, str) and _DECIMAL.fullmatch(value):
            value = _whole(value.strip())  # `1e3` or `4096.0`
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
            value = int(value)  # exactly the whole number written
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected a whole number")
        if value < ge:
            raise ValueError(f"must be at least {ge}")
        if le is not None and value > le:
            raise ValueError(f"must be at most {le}")
        return value

    return convert


_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value in (0, 1) and isinstance(value, int):
        return bool(value)
    raise ValueError("expected true or false")


def _choice(literal: Any) -> Convert:
    choices = get_args(literal)

    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}")
        return str(value)

    return convert


def _text(*, non_empty: bool = False, pattern: str | None = None, hint: str = "") -> Convert:
    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        _refuse_nul(value)
        if non_empty and not value:
            raise ValueError("must not be empty")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise ValueError(f"expected {hint}")
        return value

    return convert


def _refuse_nul(value: str) -> None:
    """No file name, host or password the system takes holds a NUL (only TOML can give one)."""
    if "\0" in value:
        raise ValueError("must not hold a NUL character")


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValueError("expected a path")
    _refuse_nul(value)
    _refuse_too_long(value)
    return Path(value)


def _refuse_too_long(path: str) -> None:
    """No system call takes a longer path, and walking one costs time in its square."""
    if len(os.fsencode(path)) >= PATH_MAX:
        raise ValueError(f"a path of at most {PATH_MAX - 1} bytes")


def _refuse_too_deep(pattern: str) -> None:
    """A thousand `*/` levels would exhaust the interpreter's stack in the standard glob."""
    parts = pattern.split(os.sep)
    first = next((at for at, part in enumerate(parts) if GLOB_CHARACTERS & set(part)), len(parts))
    if len(parts) - first > MAX_GLOB_LEVELS:
        raise ValueError(f"a glob of at most {MAX_GLOB_LEVELS} levels from its first wildcard on")


def written_file(value: Any) -> Path:
    """The path of a file the worker writes (the checkpoint, the result, generate's output): a
    file's, not a directory's, with a name short enough for its temporary files."""
    path = _path(value)
    if str(value).rsplit("/", 1)[-1] in ("", ".", ".."):
        raise ValueError("expected a file's path, not a directory's")
    if len(os.fsencode(path.name)) > LONGEST_WRITTEN_NAME:
        raise ValueError(f"expected a file name of at most {LONGEST_WRITTEN_NAME} bytes")
    return path


class Listed(tuple[str, ...]):
    """Paths and globs given as a list (TOML, a JSON list), even a list of one: a list's files
    are followed by identity, like a glob's, never as one plain path."""

    __slots__ = ()


_JSON_LIST = re.compile(r"\s*\[\s*[\"\[\]]")


def _patterns(*, at_least_one: bool) -> Convert:
    """One path or glob, a list of them, or text that looks like a JSON list (the only way a
    variable can give a list): `[` then `"`, `]` or `[`. `[0-9]*.log` is a glob."""

    def convert(value: Any) -> tuple[str, ...]:
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str) and _JSON_LIST.match(value):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ValueError(f"not a JSON list of paths ({error.msg})") from None
            except RecursionError:
                raise ValueError("not a JSON list of paths (nested too deeply)") from None
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
            raise ValueError("expected a path or glob, or a list of them")
        if any(not pattern for pattern in value):
            raise ValueError("an empty path or glob")
        for pattern in value:
            _refuse_nul(pattern)
            _refuse_too_long(pattern)
            _refuse_too_deep(pattern)
        if at_least_one and not value:
            raise ValueError("no path or glob")
        # A list (TOML, JSON) of one stays a list; one path, or a tuple made already, is not.
        listed = isinstance(value, (list, Listed)) and len(value) == 1
        return Listed(value) if listed else tuple(value)

    return convert


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as (host, port); ValueError if it is not one.

    Port 0 means any free port.
    """
    host, colon, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    # An IPv6 host only in brackets, and only an IPv6 address in them; the port in ASCII digits.
    well_formed = (
        colon
        and host
        and not any(c.isspace() for c in host)
        and port.isascii()
        and port.isdigit()
        and int(port) <= 65535
        and (_is_ipv6(host) if bracketed else not any(c in host for c in ":[]"))
    )
    if not well_formed:
        raise ValueError("expected HOST:PORT, such as 127.0.0.1:9108 (port 0: any free port)")
    return host, int(port)


def _is_ipv6(host: str) -> bool:
    import socket  # only when an address is given in brackets

    try:
        socket.inet_pton(socket.AF_INET6, host)
    except (OSError, ValueError):
        return False
    return True


def _address(value: Any) -> str:
    address: str = _text()(value)
    if address:
        split_address(address)
    return address


def _servers(value: Any) -> str:
    """host:port,... of brokers, each port 1..65535 (a broker has a port of its own)."""
    servers: str = _text(non_empty=True)(value)
    for server in servers.split(","):
        if not _is_broker_address(server):
            raise ValueError(
                f"expected host:port,... with ports 1..65535, such as localhost:9092 "
                f"(not {server!r})"
            )
    return servers


def _is_broker_address(server: str) -> bool:
    try:
        return split_address(server)[1] > 0  # split_address bounds it by 65535
    except ValueError:
        return False


def _setting(default: Any, convert: Convert, description: str, *, secret: bool = False) -> Any:
    """A setting; a `secret` one is never shown (repr, errors), and has a `<name>_file` twin."""
    return dataclasses.field(
        default=default,
        repr=not secret,
        metadata={"convert": convert, "description": description, "secret": secret},
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every setting of the worker, with its default. Values given are validated on creation."""

    # A path, a glob (`**` allowed) or a list of them; `WORKER_INPUT` takes a JSON list too.
    input: tuple[str, ...] = _setting(
        ("numbers.txt",),
        _patterns(at_least_one=True),
        "the numbers file: a path, a glob, or a list of them",
    )
    checkpoint: Path = _setting(Path("checkpoint.json"), written_file, "the checkpoint file")
    result: Path = _setting(Path("result.json"), written_file, "the result file")
    checkpoint_interval: float = _setting(1.0, _seconds(), "seconds between checkpoints")
    follow: bool = _setting(False, _switch, "keep reading as the input grows")
    poll_interval: float = _setting(0.5, _seconds(), "seconds between looks at a followed input")
    max_rate: float = _setting(0.0, _number(ge=0, le=MAX_RATE), "numbers per second, 0 = unlimited")
    on_bad_record: OnBadRecord = _setting(
        "skip", _choice(OnBadRecord), "skip or fail on a bad line"
    )
    max_line_bytes: int = _setting(
        4096, whole_number(ge=1, le=MAX_LINE_BYTES), "longest line accepted, in bytes"
    )
    on_input_change: OnInputChange = _setting(
        "fail", _choice(OnInputChange), "when the input no longer matches the checkpoint"
    )
    shutdown_timeout: float = _setting(
        5.0,
        _number(ge=MIN_SHUTDOWN_SECONDS, le=MAX_SECONDS),
        f"graceful shutdown limit, seconds (at least {MIN_SHUTDOWN_SECONDS:g})",
    )
    log_format: LogFormat = _setting("auto", _choice(LogFormat), "log format")
    log_level: LogLevel = _setting("info", _choice(LogLevel), "log level")
    source: SourceKind = _setting("file", _choice(SourceKind), "read the input file or Kafka")
    kafka_bootstrap_servers: str = _setting(
        "localhost:9092",
        _servers,
        "host:port,... of Kafka",
    )
    kafka_topic: str = _setting("numbers", _text(non_empty=True), "the Kafka topic of numbers")
    kafka_group: str = _setting("checkpoint-worker", _text(non_empty=True), "the consumer group")
    kafka_security_protocol: SecurityProtocol = _setting(
        "PLAINTEXT",
        _choice(SecurityProtocol),
        "how to reach the brokers",
    )
    kafka_sasl_mechanism: SaslMechanism = _setting(
        "PLAIN",
        _choice(SaslMechanism),
        "SASL mechanism (with SASL_*)",
    )
    kafka_sasl_username: str = _setting("", _text(), "SASL user (with SASL_*)")
    kafka_sasl_password: str = _setting("", _text(), "SASL password (with SASL_*)", secret=True)
    kafka_sasl_password_file: str = _setting(
        "", _text(), "a file holding the SASL password (not visible in `ps`, unlike the flag)"
    )
    kafka_session_timeout: float = _setting(
        10.0, _number(ge=1, le=MAX_SECONDS), "seconds a silent group member keeps its partitions"
    )
    kafka_ssl_cafile: str = _setting("", _text(), "CA bundle file (with SSL, SASL_SSL)")
    kafka_unavailable_timeout: float = _setting(
        120.0, _seconds(zero=True), "seconds a worker keeps trying to reach Kafka, 0 = forever"
    )
    exclude: tuple[str, ...] = _setting(
        (),
        _patterns(at_least_one=False),
        "globs never read (the worker's own files are always excluded)",
    )
    close_inactive: float = _setting(
        5.0, _seconds(), "seconds a file renamed out of every pattern is still read"
    )
    max_open_files: int = _setting(256, whole_number(ge=1), "files open at once; others wait")
    forget_closed_after: float = _setting(
        86400.0, _seconds(zero=True), "seconds a closed file's position is kept, 0 = forever"
    )
    metrics_address: str = _setting(
        "", _address, "HOST:PORT serving /metrics, /healthz and /readyz; empty = off"
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            try:
                converted = field.metadata["convert"](value)
            except ValueError as error:
                raise _InvalidSetting(field.name, value, str(error)) from None
            object.__setattr__(self, field.name, converted)
        if self.source == "kafka":
            self._fit_heartbeat_name()

    def _fit_heartbeat_name(self) -> None:
        """A Kafka worker's heartbeat is a file named after the checkpoint, this host and its
        pid: that name must fit a directory entry too, whatever the pid."""
        from service.health import heartbeat_path
        from service.storage.lock import PID_MAX

        longest = os.fsencode(heartbeat_path(self.checkpoint, PID_MAX).name)
        if len(longest) > NAME_MAX:
            room = NAME_MAX - (len(longest) - len(os.fsencode(self.checkpoint.name)))
            reason = f"expected a file name of at most {room} bytes with the kafka source here"
            raise _InvalidSetting("checkpoint", str(self.checkpoint), reason)


def setting_fields() -> tuple[dataclasses.Field[Any], ...]:
    """Each setting's field: its name, default and `metadata["description"]`."""
    return dataclasses.fields(Settings)


class _InvalidSetting(ValueError):
    def __init__(self, name: str, value: Any, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name, self.value, self.reason = name, value, reason


_TOML_LINE = re.compile(r"\(at (?:line (\d+), column \d+|end of document)\)")
_TOML_KEY = re.compile(r"[A-Za-z0-9_.\"' -]+")


def _key_at(error: Exception, text: str) -> str:
    """`; the key: NAME` when the line the TOML error points at assigns one (a key given twice
    is reported by its line alone)."""
    at = _TOML_LINE.search(str(error))
    lines = text.rstrip("\n").split("\n")  # as TOML counts lines: only '\n' ends one
    number = len(lines) if at is None or at.group(1) is None else int(at.group(1))
    if at is None or not 1 <= number <= len(lines):
        return ""
    key, equals, _ = lines[number - 1].partition("=")
    key = key.strip()
    return f"; the key: {key}" if equals and key and _TOML_KEY.fullmatch(key) else ""


def _read_config(config_file: Path) -> dict[str, Any]:
    import tomllib  # only when a file is given: it is not free at start-up

    name = shown(str(config_file))

    try:
        text = read_regular_file(config_file, MAX_CONFIG_BYTES).decode()
        return tomllib.loads(text, parse_float=_TomlFloat)
    except OSError as error:
        raise UsageError(
            f"cannot read config file {name} (--config, WORKER_CONFIG): {error.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise UsageError(f"config file {name} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        detail = f"{error}{_key_at(error, text)}"
        raise UsageError(f"config file {name} is not valid TOML: {detail}") from None
    except RecursionError:
        raise UsageError(f"config file {name} is not valid TOML: nested too deeply") from None


def _secrets_from_files(settings: Settings) -> Settings:
    """Each secret given as `<name>_file`: read from that file (one trailing newline dropped)."""
    found: dict[str, Any] = {}
    for field in setting_fields():
        path = getattr(settings, field.name + "_file") if field.metadata["secret"] else ""
        if not path:
            continue
        if getattr(settings, field.name):
            raise UsageError(f"give {field.name} or {field.name}_file, not both")
        if not os.path.lexists(path):  # then it may be the secret itself, given to the twin
            raise UsageError(f"{field.name}_file names no file (its value is not shown)")
        named = shown(path)
        try:
            text = read_regular_file(Path(path), MAX_CONFIG_BYTES).decode()
        except OSError as error:
            raise UsageError(f"cannot read {field.name}_file {named}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"{field.name}_file {named} is not UTF-8 text") from None
        found[field.name] = text.removesuffix("\n").removesuffix("\r")
    return dataclasses.replace(settings, **found) if found else settings


def load_settings(flags: Mapping[str, Any], config_file: Path | None) -> Settings:
    """Settings from flags, environment, the TOML file and defaults; UsageError if invalid."""
    names = {field.name for field in setting_fields()}
    from_file = _read_config(config_file) if config_file is not None else {}
    for key in from_file:
        if key not in names:
            raise UsageError(f"unknown setting {key!r} in {shown(str(config_file))}")
    from_environment = worker_environment(names)
    values = {**from_file, **from_environment, **flags}  # later sources win
    try:
        settings = _secrets_from_files(Settings(**values))
    except _InvalidSetting as error:
        # A secret read from its `<name>_file` twin came from wherever that twin was given.
        given_as = next((n for n in (error.name, error.name + "_file") if n in values), error.name)
        if given_as in flags:
            source = f"--{given_as.replace('_', '-')}"
        elif given_as in from_environment:
            source = f"{ENV_PREFIX}{given_as.upper()}"
        else:
            source = shown(str(config_file))
        secret = next(f for f in setting_fields() if f.name == error.name).metadata["secret"]
        given = repr(error.value)
        given = given if len(given) <= 80 else given[:76] + " ..."  # a line, not a screenful
        echoed = "" if secret else f", got {given}"  # a secret is never echoed
        raise UsageError(
            f"invalid setting {error.name!r} ({source}): {error.reason}{echoed}"
        ) from None
    if config_file is not None:
        _refuse_writing_over(config_file, settings)
    return settings


def _refuse_writing_over(config_file: Path, settings: Settings) -> None:
    """The checkpoint, its lock and the result are written: none may be the config file."""
    try:
        config = os.stat(config_file)
    except OSError:  # gone since it was read: nothing to write over
        return
    written = (
        ("checkpoint", settings.checkpoint),
        ("result", settings.result),
        ("the checkpoint's lock", lock_path_for(settings.checkpoint)),
    )
    for what, path in written:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (config.st_dev, config.st_ino):
            raise UsageError(
                f"{what} and the config file are the same file ({shown(str(config_file))}): "
                "give each its own path"
            )
