"""Settings: one typed, validated object, built once in `main()` and passed down.

Rule 1: every setting is defined once, here; its flag, its `WORKER_*` variable and its TOML key
        all derive from the field's name.
Rule 2: precedence is flag > environment > TOML file > default.
Rule 3: an unknown key, a bad value or a bad file is a `UsageError` (exit 2) naming the setting.
"""

from __future__ import annotations

import json
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import UsageError

__all__ = ["ENV_PREFIX", "Settings", "load_settings", "split_address"]

ENV_PREFIX = "WORKER_"
_config_file: ContextVar[Path | None] = ContextVar("config_file", default=None)


class Settings(BaseSettings):
    """Every setting of the worker, with its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, allow_inf_nan=False
    )

    # A path, a glob (`**` allowed) or a list of them; `WORKER_INPUT` takes a JSON list too.
    input: Annotated[tuple[str, ...], NoDecode] = Field(
        ("numbers.txt",), description="the numbers file: a path, a glob, or a list of them"
    )
    checkpoint: Path = Field(Path("checkpoint.json"), description="the checkpoint file")
    result: Path = Field(Path("result.json"), description="the result file")
    checkpoint_interval: float = Field(1.0, gt=0, description="seconds between checkpoints")
    follow: bool = Field(False, description="keep reading as the input grows")
    poll_interval: float = Field(0.5, gt=0, description="seconds between looks at a followed input")
    max_rate: float = Field(0, ge=0, description="numbers per second, 0 = unlimited")
    on_bad_record: Literal["skip", "fail"] = Field("skip", description="skip or fail on a bad line")
    max_line_bytes: int = Field(4096, ge=1, description="longest line accepted, in bytes")
    on_input_change: Literal["fail", "restart"] = Field(
        "fail", description="when the input no longer matches the checkpoint"
    )
    shutdown_timeout: float = Field(5.0, gt=0, description="graceful shutdown limit, seconds")
    log_format: Literal["json", "console", "auto"] = Field("auto", description="log format")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    source: Literal["file", "kafka"] = Field("file", description="read the input file or Kafka")
    kafka_bootstrap_servers: str = Field(
        "localhost:9092", pattern=r"^\S+:\d+(,\S+:\d+)*$", description="host:port,... of Kafka"
    )
    kafka_topic: str = Field("numbers", min_length=1, description="the Kafka topic of numbers")
    kafka_group: str = Field("checkpoint-worker", min_length=1, description="the consumer group")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how to reach the brokers"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism (with SASL_*)"
    )
    kafka_sasl_username: str = Field("", description="SASL user (with SASL_*)")
    kafka_sasl_password: str = Field("", repr=False, description="SASL password (with SASL_*)")
    kafka_session_timeout: float = Field(
        10.0, ge=1, description="seconds a silent group member keeps its partitions"
    )
    kafka_ssl_cafile: str = Field("", description="CA bundle file (with SSL, SASL_SSL)")
    exclude: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="globs never read (the worker's own files are always excluded)"
    )
    close_inactive: float = Field(
        5.0, gt=0, description="seconds a file renamed out of every pattern is still read"
    )
    max_open_files: int = Field(256, ge=1, description="files open at once; others wait")
    metrics_address: str = Field(
        "", description="HOST:PORT serving /metrics, /healthz and /readyz; empty = off"
    )

    @field_validator("input", "exclude", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """One path or glob, a list of them, or (from the environment) a JSON list."""
        if isinstance(value, Path):
            return (str(value),)
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                try:
                    return json.loads(value)
                except json.JSONDecodeError as error:
                    raise ValueError(f"not a JSON list of paths ({error.msg})") from None
            return (value,)
        return value

    @field_validator("input", "exclude")
    @classmethod
    def _no_empty_pattern(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not pattern for pattern in value):
            raise ValueError("an empty path or glob")
        return value

    @field_validator("input")
    @classmethod
    def _some_input(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("no path or glob")
        return value

    @field_validator("metrics_address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        if value:
            split_address(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        config_file = _config_file.get()
        if config_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=config_file),)
        return sources


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as (host, port); ValueError if it is not one.

    Port 0 means any free port.
    """
    host, colon, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected HOST:PORT, such as 127.0.0.1:9108 (port 0: any free port)")
    return host, int(port)


def _describe(error: ErrorDetails, config_file: Path | None) -> str:
    name = ".".join(str(part) for part in error["loc"]) or "settings"
    if error["type"] == "extra_forbidden":
        return f"unknown setting {name!r} in {config_file}"
    sources = f"--{name.replace('_', '-')}, {ENV_PREFIX}{name.upper()}"
    if config_file is not None:
        sources += f" or {config_file}"
    return f"invalid setting {name!r} ({sources}): {error['msg']}, got {error.get('input')!r}"


def load_settings(flags: dict[str, Any], config_file: Path | None) -> Settings:
    """Settings from flags, environment, the TOML file and defaults; UsageError if invalid."""
    if config_file is not None:
        try:
            with config_file.open("rb") as handle:
                tomllib.load(handle)
        except OSError as error:
            raise UsageError(
                f"cannot read config file {config_file} (--config, WORKER_CONFIG): {error.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as error:
            raise UsageError(f"config file {config_file} is not valid TOML: {error}") from None
    token = _config_file.set(config_file)
    try:
        return Settings(**flags)
    except ValidationError as error:
        raise UsageError(_describe(error.errors()[0], config_file)) from None
    finally:
        _config_file.reset(token)
