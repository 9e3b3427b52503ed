"""Settings: defaults, precedence, the documented TOML file, and one-line usage errors."""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from service.errors import UsageError
from service.health import heartbeat_path
from service.settings import Settings, load_settings, setting_fields, split_address
from service.sources.files.source import input_patterns
from service.storage.atomic import LONGEST_WRITTEN_NAME, NAME_MAX
from service.storage.lock import PID_MAX
from tests.processes import cli, events_of, worker_env

pytestmark = pytest.mark.usefixtures("no_worker_env")

DOCUMENTED_CONFIG = Path(__file__).parent.parent / "config" / "worker.toml"

DOCUMENTED_DEFAULTS: dict[str, Any] = {
    "input": ("numbers.txt",),
    "checkpoint": Path("checkpoint.json"),
    "result": Path("result.json"),
    "checkpoint_interval": 1.0,
    "follow": False,
    "poll_interval": 0.5,
    "max_rate": 0,
    "on_bad_record": "skip",
    "max_line_bytes": 4096,
    "on_input_change": "fail",
    "shutdown_timeout": 5,
    "log_format": "auto",
    "log_level": "info",
    "source": "file",
    "kafka_bootstrap_servers": "localhost:9092",
    "kafka_topic": "numbers",
    "kafka_group": "checkpoint-worker",
    "kafka_security_protocol": "PLAINTEXT",
    "kafka_sasl_mechanism": "PLAIN",
    "kafka_sasl_username": "",
    "kafka_sasl_password": "",
    "kafka_sasl_password_file": "",
    "kafka_session_timeout": 10.0,
    "kafka_ssl_cafile": "",
    "kafka_unavailable_timeout": 120.0,
    "exclude": (),
    "close_inactive": 5.0,
    "max_open_files": 256,
    "forget_closed_after": 86400.0,
    "metrics_address": "",
}


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_documented_ones() -> None:
    """With no flag, variable or file, every setting has the default docs/settings.md gives."""
    assert dataclasses.asdict(load_settings({}, None)) == DOCUMENTED_DEFAULTS


def test_documented_config_shows_every_setting_with_its_default() -> None:
    """config/worker.toml lists every setting, each with its default value."""
    with DOCUMENTED_CONFIG.open("rb") as handle:
        documented = tomllib.load(handle)
    defaults = {field.name: field.default for field in setting_fields()}
    assert sorted(documented) == sorted(defaults)
    assert load_settings({}, DOCUMENTED_CONFIG) == load_settings({}, None)
    for name, value in documented.items():
        default = defaults[name]
        if isinstance(default, tuple) and not isinstance(value, list):
            value = (value,)  # one path stands for a list of one
        elif isinstance(value, list):
            value = tuple(value)
        assert value == (str(default) if isinstance(default, Path) else default), name


@pytest.mark.parametrize(
    ("source", "value", "expected"),
    [
        pytest.param("toml", '["a.txt", "logs/*.txt*"]', ("a.txt", "logs/*.txt*"), id="toml-list"),
        pytest.param("toml", '"data/**/*.txt"', ("data/**/*.txt",), id="toml-glob"),
        pytest.param("env", '["a.txt", "b/*.txt"]', ("a.txt", "b/*.txt"), id="env-json-list"),
        pytest.param("env", "data/*.txt", ("data/*.txt",), id="env-one-glob"),
        pytest.param("flag", ["a.txt", "b.txt"], ("a.txt", "b.txt"), id="flag-repeated"),
    ],
)
def test_input_is_a_path_a_glob_or_a_list(
    source: str,
    value: Any,
    expected: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`input` takes a list in TOML, a JSON list or one glob in WORKER_INPUT, repeated flags."""
    config = write_config(tmp_path, f"input = {value}\n") if source == "toml" else None
    if source == "env":
        monkeypatch.setenv("WORKER_INPUT", value)
    flags = {"input": value} if source == "flag" else {}
    assert load_settings(flags, config).input == expected


@pytest.mark.parametrize(
    ("source", "value", "plain"),
    [
        pytest.param("toml", '"a.txt"', True, id="toml-path"),
        pytest.param("toml", '["a.txt"]', False, id="toml-list-of-one"),
        pytest.param("env", "a.txt", True, id="env-path"),
        pytest.param("env", '["a.txt"]', False, id="env-json-list-of-one"),
        pytest.param("flag", "a.txt", True, id="one-flag"),
    ],
)
def test_a_list_of_one_path_is_a_list_not_a_plain_path(
    source: str, value: str, plain: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`["a.txt"]` is followed by identity like a glob; `a.txt` alone is the one plain path."""
    config = write_config(tmp_path, f"input = {value}\n") if source == "toml" else None
    if source == "env":
        monkeypatch.setenv("WORKER_INPUT", value)
    flags = {"input": value} if source == "flag" else {}
    settings = load_settings(flags, config)
    assert settings.input == ("a.txt",)
    assert (input_patterns(settings).plain_path is not None) is plain
    assert (input_patterns(dataclasses.replace(settings)).plain_path is not None) is plain


def test_one_input_flag_is_a_plain_path_on_the_command_line(tmp_path: Path) -> None:
    """`run --input missing.txt` names the missing file; `--input '["missing.txt"]'` is a list
    that matches nothing."""
    plain = cli(["run", "--input", "missing.txt"], tmp_path)
    listed = cli(["run", "--input", '["missing.txt"]'], tmp_path)
    assert (plain.returncode, listed.returncode) == (1, 1)
    assert "input missing.txt not found" in plain.stdout
    assert "no file matches the input missing.txt" in listed.stdout


@pytest.mark.parametrize(
    ("name", "bound"),
    [("checkpoint_interval", "greater than 0"), ("kafka_unavailable_timeout", "at least 0")],
)
def test_a_negative_duration_is_told_the_bound_that_holds(name: str, bound: str) -> None:
    """-1 is told what 0 would be told: a duration that must be over 0 never says `at least 0`."""
    with pytest.raises(UsageError) as caught:
        load_settings({name: "-1"}, None)
    assert f"must be {bound}, got '-1'" in caught.value.message


@pytest.mark.parametrize("source", ["flag", "environment", "file"])
def test_a_glob_that_starts_with_a_character_class_is_a_glob(tmp_path: Path, source: str) -> None:
    """`[0-9].log` is a glob, wherever it is given: only `[` followed by `"`, `[` or `]` is
    taken for a JSON list."""
    (tmp_path / "1.log").write_bytes(b"1\n")
    (tmp_path / "2.log").write_bytes(b"2\n")
    (tmp_path / "c.toml").write_text('input = "[0-9].log"\n')
    args, env = ["run"], worker_env()
    if source == "flag":
        args += ["--input", "[0-9].log"]
    elif source == "environment":
        env["WORKER_INPUT"] = "[0-9].log"
    else:
        args += ["--config", "c.toml"]
    done = cli(args, tmp_path, env)
    assert done.returncode == 0, done.stdout
    assert json.loads((tmp_path / "result.json").read_text())["sum"] == 3


@pytest.mark.parametrize(
    "value", ['["a.txt", ', "[]", '[""]'], ids=["bad-json", "empty-list", "empty-path"]
)
def test_a_bad_input_list_is_one_line_naming_the_setting(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WORKER_INPUT that is no usable list is a usage error naming `input`."""
    monkeypatch.setenv("WORKER_INPUT", value)
    with pytest.raises(UsageError) as caught:
        load_settings({}, None)
    assert "'input'" in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("flag", "env", "toml", "expected"),
    [
        pytest.param(None, None, None, 1.0, id="default"),
        pytest.param(None, None, "3.0", 3.0, id="file-over-default"),
        pytest.param(None, "2.0", "3.0", 2.0, id="env-over-file"),
        pytest.param(None, "2.0", None, 2.0, id="env-over-default"),
        pytest.param("1.5", "2.0", "3.0", 1.5, id="flag-over-env-and-file"),
        pytest.param("1.5", None, "3.0", 1.5, id="flag-over-file"),
    ],
)
def test_precedence(
    flag: str | None,
    env: str | None,
    toml: str | None,
    expected: float,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flag beats WORKER_*, which beats the TOML file, which beats the default."""
    if env is not None:
        monkeypatch.setenv("WORKER_CHECKPOINT_INTERVAL", env)
    config = write_config(tmp_path, f"checkpoint_interval = {toml}\n") if toml else None
    flags = {"checkpoint_interval": flag} if flag else {}
    assert load_settings(flags, config).checkpoint_interval == expected


def test_each_source_sets_different_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources merge key by key: each setting comes from the strongest source that has it."""
    monkeypatch.setenv("WORKER_FOLLOW", "true")
    monkeypatch.setenv("WORKER_MAX_RATE", "50")
    config = write_config(tmp_path, 'max_rate = 10\non_bad_record = "fail"\ninput = "in.txt"\n')
    settings = load_settings({"input": "flag.txt"}, config)
    assert (settings.follow, settings.max_rate, settings.on_bad_record, settings.input) == (
        True,
        50.0,
        "fail",
        ("flag.txt",),
    )


def test_worker_config_variable_is_not_an_unknown_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """WORKER_CONFIG names the file; it is not mistaken for a setting."""
    monkeypatch.setenv("WORKER_CONFIG", "somewhere.toml")
    assert dataclasses.asdict(load_settings({}, None)) == DOCUMENTED_DEFAULTS


def test_two_variables_that_give_one_setting_differently_are_a_usage_error(
    tmp_path: Path,
) -> None:
    """`WORKER_CHECKPOINT` and `worker_checkpoint` both set: which one won depended on their
    order in the environment. Differing, they are one line and exit 2, no value shown; equal,
    they are one setting."""
    (tmp_path / "numbers.txt").write_text("4\n5\n")
    env = worker_env(WORKER_CHECKPOINT="upper.json", worker_checkpoint="lower.json")
    done = cli(["run"], tmp_path, env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "WORKER_CHECKPOINT and worker_checkpoint both give the setting 'checkpoint'" in (
        done.stderr
    )
    assert "upper.json" not in done.stderr
    assert not (tmp_path / "lower.json").exists()
    assert not (tmp_path / "upper.json").exists()
    same = worker_env(WORKER_CHECKPOINT="upper.json", worker_checkpoint="upper.json")
    assert cli(["run"], tmp_path, same).returncode == 0
    assert (tmp_path / "upper.json").exists()


def test_a_misspelt_variable_is_named_with_the_one_it_may_mean(tmp_path: Path) -> None:
    """A `WORKER_*` variable that names no setting leaves nothing unsaid: `run` warns, once each,
    and goes on with the settings it has; a setting's own variable is not warned about."""
    (tmp_path / "numbers.txt").write_text("4\n5\n")
    env = worker_env(
        WORKER_CHEKPOINT_INTERVAL="7", WORKER_REPLICA="2", WORKER_IMAGE="x", WORKER_MAX_RATE="0"
    )
    done = cli(["run"], tmp_path, env)
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    ignored = [e for e in events if e["event"] == "variable_ignored"]
    assert [(e["variable"], e.get("did_you_mean"), e["level"]) for e in ignored] == [
        ("WORKER_CHEKPOINT_INTERVAL", "WORKER_CHECKPOINT_INTERVAL", "warning"),
        ("WORKER_REPLICA", None, "warning"),
    ]
    assert "did you mean WORKER_CHECKPOINT_INTERVAL?" in ignored[0]["message"]
    completed = [e for e in events if e["event"] == "completed"]
    assert [e["sum"] for e in completed] == [9]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9108", ("127.0.0.1", 9108)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:9108", ("::1", 9108)),
    ],
)
def test_metrics_address_is_host_and_port(address: str, expected: tuple[str, int]) -> None:
    """A metrics address is HOST:PORT, an IPv6 host in brackets, port 0 for any free port."""
    assert load_settings({"metrics_address": address}, None).metrics_address == address
    assert split_address(address) == expected


def test_unknown_key_in_file(tmp_path: Path) -> None:
    """An unknown key in the TOML file is a usage error naming the key and the file."""
    config = write_config(tmp_path, "checkpoint_intervall = 2.0\n")
    with pytest.raises(UsageError) as caught:
        load_settings({}, config)
    assert caught.value.exit_code == 2
    assert "checkpoint_intervall" in caught.value.message
    assert str(config) in caught.value.message


BAD_VALUES = [
    ("checkpoint_interval", "0"),
    ("checkpoint_interval", "-1"),
    ("checkpoint_interval", "abc"),
    ("checkpoint_interval", "nan"),
    ("checkpoint_interval", "inf"),
    ("checkpoint_interval", ""),
    ("poll_interval", "0"),
    ("max_rate", "-1"),
    ("max_line_bytes", "0"),
    ("max_line_bytes", "1.5"),
    ("shutdown_timeout", "0"),
    ("follow", "maybe"),
    ("on_bad_record", "maybe"),
    ("on_input_change", "ignore"),
    ("log_format", "xml"),
    ("log_level", "verbose"),
    ("metrics_address", "9108"),
    ("metrics_address", ":9108"),
    ("metrics_address", "localhost:"),
    ("metrics_address", "localhost:http"),
    ("metrics_address", "localhost:65536"),
    ("metrics_address", "[]:9108"),
    ("metrics_address", "127.0.0.1:0:0"),  # an IPv6 host must be in brackets
    ("metrics_address", "[::1:0"),
    ("metrics_address", "[localhost]:9108"),  # only an IPv6 address goes in brackets
    ("metrics_address", "127.0.0.1:\u0660"),  # an Arabic-Indic zero is not a port
    ("metrics_address", " 127.0.0.1:9108"),  # a space is no part of a host name
    ("metrics_address", "127.0.0.1 :9108"),
    ("metrics_address", "127.0.0.1:9108 "),
    ("shutdown_timeout", "0.001"),  # no final save fits in it
    ("source", "s3"),
    ("kafka_bootstrap_servers", ""),
    ("kafka_bootstrap_servers", "localhost"),
    ("kafka_bootstrap_servers", "localhost:99999"),  # no such port
    ("kafka_bootstrap_servers", "localhost:0"),
    ("kafka_bootstrap_servers", "a:9092, b:9092"),
    ("kafka_topic", ""),
    ("kafka_group", ""),
    ("kafka_security_protocol", "TLS"),
    ("kafka_sasl_mechanism", "GSSAPI"),
    ("checkpoint_interval", "1e-320"),
    ("checkpoint_interval", "1e10"),
    ("poll_interval", "0.0001"),
    ("shutdown_timeout", "1e10"),
    ("close_inactive", "1e300"),
    ("forget_closed_after", "-1"),
    ("kafka_unavailable_timeout", "1e12"),
    ("kafka_session_timeout", "1e12"),
    ("max_rate", "1.7e308"),
    ("max_rate", "1_0"),
    ("max_rate", "\u0661"),
    ("max_line_bytes", "\u0662"),
    ("max_line_bytes", "1_0"),
    ("checkpoint", "/"),  # a directory's path, where a file is written
    ("checkpoint", "state/"),
    ("checkpoint", "state/."),
    ("checkpoint", ".."),
    ("result", "/"),
    ("checkpoint", "c" * 242),  # its temporary file's name would not fit a directory entry
    ("result", "r" * 242),
    ("input", "[" * 3000),  # a JSON list nested past the parser's recursion limit
    ("exclude", "[" * 3000 + "]" * 3000),
    ("max_rate", "1e-400"),  # no float holds it: it would read as 0, no limit at all
    ("forget_closed_after", "1e-400"),  # likewise 0, "never forget"
    ("input", "*/" * 200 + "*"),  # deeper than the standard glob walks
]


def test_a_kafka_workers_checkpoint_name_leaves_room_for_its_heartbeats() -> None:
    """With the kafka source the checkpoint's name also names the heartbeat file, with this
    host's name and a pid added: a name too long for that is exit 2 at start, not a failed
    write later; one that fits is taken."""
    added = len(os.fsencode(heartbeat_path(Path("c"), PID_MAX).name)) - 1  # host, pid, suffix
    room = NAME_MAX - added
    with pytest.raises(UsageError) as caught:
        load_settings({"source": "kafka", "checkpoint": "c" * (room + 1)}, None)
    assert caught.value.exit_code == 2
    assert f"at most {room} bytes" in caught.value.message
    fits = "c" * min(room, LONGEST_WRITTEN_NAME)
    assert load_settings({"source": "kafka", "checkpoint": fits}, None).checkpoint.name == fits
    assert load_settings({"checkpoint": "c" * LONGEST_WRITTEN_NAME}, None).source == "file"


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_flag_value(name: str, value: str) -> None:
    """A bad flag value is a usage error (exit 2) naming the setting."""
    with pytest.raises(UsageError) as caught:
        load_settings({name: value}, None)
    assert caught.value.exit_code == 2
    assert repr(name) in caught.value.message


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_bad_environment_value(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad WORKER_* value is a usage error (exit 2) naming the setting."""
    monkeypatch.setenv(f"WORKER_{name.upper()}", value)
    with pytest.raises(UsageError) as caught:
        load_settings({}, None)
    assert caught.value.exit_code == 2
    assert repr(name) in caught.value.message


@pytest.mark.parametrize(
    ("line", "name"),
    [
        ("checkpoint_interval = 0", "checkpoint_interval"),
        ("checkpoint_interval = -1.0", "checkpoint_interval"),
        ('checkpoint_interval = "abc"', "checkpoint_interval"),
        ("checkpoint_interval = nan", "checkpoint_interval"),
        ("checkpoint_interval = inf", "checkpoint_interval"),
        ("checkpoint_interval = 1e-320", "checkpoint_interval"),
        ("max_rate = 1.7e308", "max_rate"),
        ("shutdown_timeout = 1e10", "shutdown_timeout"),
        ('on_bad_record = "maybe"', "on_bad_record"),
        ("max_line_bytes = 0", "max_line_bytes"),
        ("max_line_bytes = 1.5", "max_line_bytes"),
        ("input = 5", "input"),
        ('source = "s3"', "source"),
        ('kafka_security_protocol = "plaintext"', "kafka_security_protocol"),
        ("[checkpoint]\npath = 'x'", "checkpoint"),
        ("max_rate = 1" + "0" * 400, "max_rate"),  # a whole number past a float's range
        ('checkpoint = "c\\u0000p"', "checkpoint"),  # TOML can give a NUL; no path holds one
        ('result = "r\\u0000.json"', "result"),
        ('input = ["a.txt", "b\\u0000c"]', "input"),
        ('kafka_sasl_password_file = "p\\u0000w"', "kafka_sasl_password_file"),
    ],
)
def test_bad_file_value(line: str, name: str, tmp_path: Path) -> None:
    """A bad value in the TOML file is a usage error (exit 2) naming the setting."""
    with pytest.raises(UsageError) as caught:
        load_settings({}, write_config(tmp_path, line + "\n"))
    assert caught.value.exit_code == 2
    assert repr(name) in caught.value.message


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("checkpoint_interval = ", "checkpoint_interval"),
        ("checkpoint_interval = 1.0\ncheckpoint_interval = 2.0", "the key: checkpoint_interval"),
        ("[[[", "TOML"),
        ("input = " + "[" * 3000 + "]" * 3000, "TOML"),  # nested past the recursion limit
        ('s = "a\u2028b"\nmax_rate = 1\npoll_interval = @', "the key: poll_interval"),
        (" " * 300_000 + "x", "TOML"),  # a long line with no `=`: at once, no key named
    ],
)
def test_bad_toml_syntax(text: str, named: str, tmp_path: Path) -> None:
    """A file that is not valid TOML is a usage error naming the file, and the setting when the
    line it breaks on gives one (a key given twice is reported by its line alone)."""
    config = write_config(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load_settings({}, config)
    assert caught.value.exit_code == 2
    assert str(config) in caught.value.message
    assert "TOML" in caught.value.message
    assert named in caught.value.message


@pytest.mark.parametrize("name", ["missing.toml", "."], ids=["missing", "directory"])
def test_unreadable_config_file(name: str, tmp_path: Path) -> None:
    """A config file that cannot be read is a usage error naming it."""
    config = tmp_path / name
    with pytest.raises(UsageError) as caught:
        load_settings({}, config)
    assert caught.value.exit_code == 2
    assert str(config) in caught.value.message


# --- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        pytest.param(["run", "--checkpoint-interval", "0"], "checkpoint_interval", id="zero"),
        pytest.param(["run", "--on-bad-record", "maybe"], "on_bad_record", id="policy"),
        pytest.param(["run", "--metrics-address", "9108"], "metrics_address", id="address"),
        pytest.param(["run", "--no-such-flag"], "--no-such-flag", id="unknown-flag"),
        pytest.param(["run", "--max-rate"], "--max-rate", id="missing-value"),
        pytest.param(["status", "--config", "nowhere.toml"], "nowhere.toml", id="missing-config"),
        pytest.param(["frobnicate"], "frobnicate", id="unknown-command"),
        pytest.param(
            ["--max-rate", "5", "status"],
            "the command comes first, then its flags: `checkpoint-worker status --max-rate ...`",
            id="flag-before-command",
        ),
        pytest.param(
            ["--kafka-sasl-password", "s3cret", "run"],
            "`checkpoint-worker run --kafka-sasl-password ...`",
            id="secret-before-command",
        ),
    ],
)
def test_cli_usage_error_is_one_line_and_exit_2(
    args: list[str], named: str, tmp_path: Path
) -> None:
    """A bad flag, value or file exits 2 with one stderr line naming it, and no traceback."""
    done = cli(args, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr
    assert not (tmp_path / "checkpoint.json").exists()


def test_cli_bad_value_in_config_file(tmp_path: Path) -> None:
    """A bad value in the --config file exits 2 with one line naming the setting."""
    write_config(tmp_path, "max_line_bytes = -4\n")
    done = cli(["run", "--config", "worker.toml"], cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "max_line_bytes" in done.stderr


@pytest.mark.parametrize("command", ["run", "status", "healthcheck"])
def test_an_empty_config_flag_is_a_usage_error_not_a_run_on_the_defaults(
    tmp_path: Path, command: str
) -> None:
    """`--config "$CFG"` with CFG unset: exit 2 naming --config, nothing read or written."""
    (tmp_path / "numbers.txt").write_bytes(b"1\n")
    done = cli([command, "--config", ""], cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "checkpoint-worker: error: --config: expected a TOML file's path, got ''"
    ]
    assert not (tmp_path / "checkpoint.json").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("YES", True), ("on", True), ("false", False), ("0", False)],
)
def test_switch_words_in_the_environment(
    value: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WORKER_FOLLOW takes the words people write for on and off, in any case."""
    monkeypatch.setenv("WORKER_FOLLOW", value)
    assert load_settings({}, None).follow is expected


def test_values_are_typed_whatever_their_source(tmp_path: Path) -> None:
    """Text from a flag becomes the setting's type; a whole float in TOML is an integer."""
    config = write_config(tmp_path, "max_line_bytes = 512.0\n")
    settings = load_settings({"checkpoint_interval": "2", "checkpoint": "c.json"}, config)
    assert (settings.checkpoint_interval, settings.max_line_bytes, settings.checkpoint) == (
        2.0,
        512,
        Path("c.json"),
    )
    assert type(settings.max_line_bytes) is int


@pytest.mark.parametrize("written", ["1e3", "1000.0", "1E+3", " 1000 "])
def test_a_whole_number_is_read_alike_from_every_source(
    written: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`1e3` is a thousand for an integer setting from a flag, a variable or the file alike,
    as the documented way of writing numbers says."""
    assert load_settings({"max_line_bytes": written}, None).max_line_bytes == 1000
    config = write_config(tmp_path, f"max_line_bytes = {written.strip()}\n")
    assert load_settings({}, config).max_line_bytes == 1000
    monkeypatch.setenv("WORKER_MAX_LINE_BYTES", written)
    assert load_settings({}, None).max_line_bytes == 1000


def test_a_large_whole_number_reads_the_same_with_an_exponent_or_in_digits() -> None:
    """`1e100` is exactly the number its 101 digits are, not "expected a whole number"."""
    digits = "1" + "0" * 100
    with_exponent = load_settings({"max_open_files": "1e100"}, None).max_open_files
    assert with_exponent == load_settings({"max_open_files": digits}, None).max_open_files
    assert with_exponent == 10**100


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("max_rate = 1e-400", "too close to 0"),  # a float holds no such number: not "no limit"
        ("forget_closed_after = 1e-400", "too close to 0"),  # nor "forever"
        ("max_line_bytes = 1.5", "expected a whole number, got 1.5"),
    ],
)
def test_a_toml_number_is_checked_as_written(tmp_path: Path, line: str, expected: str) -> None:
    """The file's numbers are read as their text, like a flag's: none becomes 0 by rounding."""
    with pytest.raises(UsageError, match=expected):
        load_settings({}, write_config(tmp_path, line + "\n"))


def test_a_toml_whole_number_with_an_exponent_is_exact(tmp_path: Path) -> None:
    """`max_open_files = 1e20` is 10**20 in the file as on the command line."""
    config = write_config(tmp_path, "max_open_files = 1e20\ncheckpoint_interval = 2.5\n")
    settings = load_settings({}, config)
    assert settings.max_open_files == 10**20
    assert settings.checkpoint_interval == 2.5


def test_a_bad_value_names_the_one_source_it_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag, the variable or the file: the one that gave the value, not a list of all."""
    config = write_config(tmp_path, 'max_rate = "fast"\n')
    with pytest.raises(UsageError, match=rf"'max_rate' \({config}\): expected a number"):
        load_settings({}, config)
    monkeypatch.setenv("WORKER_MAX_RATE", "quick")
    with pytest.raises(UsageError, match=r"'max_rate' \(WORKER_MAX_RATE\): expected a number"):
        load_settings({}, config)
    with pytest.raises(UsageError, match=r"'max_rate' \(--max-rate\): expected a number"):
        load_settings({"max_rate": "x"}, config)


def test_a_bad_secret_read_from_its_file_names_where_that_file_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password file holding a NUL: the error names `--kafka-sasl-password-file`, its
    variable or the config file, whichever gave it, and never the secret."""
    secret_file = tmp_path / "pw"
    secret_file.write_bytes(b"s3cr\0t\n")
    config = write_config(tmp_path, f'kafka_sasl_password_file = "{secret_file}"\n')
    expected = r"'kafka_sasl_password' \({}\): must not hold a NUL"
    with pytest.raises(UsageError, match=expected.format(config)) as from_config:
        load_settings({}, config)
    monkeypatch.setenv("WORKER_KAFKA_SASL_PASSWORD_FILE", str(secret_file))
    with pytest.raises(UsageError, match=expected.format("WORKER_KAFKA_SASL_PASSWORD_FILE")):
        load_settings({}, config)
    flags = {"kafka_sasl_password_file": str(secret_file)}
    with pytest.raises(UsageError, match=expected.format("--kafka-sasl-password-file")):
        load_settings(flags, None)
    assert "s3cr" not in from_config.value.message


@pytest.mark.parametrize("setting", ["input", "checkpoint", "result", "exclude"])
def test_a_path_longer_than_the_system_takes_is_refused_at_once(setting: str) -> None:
    """800 KB of `a/a/...`: one line and exit 2 at once, where walking it took minutes."""
    with pytest.raises(UsageError, match=f"'{setting}' .*a path of at most 4095 bytes"):
        load_settings({setting: "a/" * 400_000 + "c.json"}, None)
    assert load_settings({setting: "a/" * 2000 + "c.json"}, None)  # 4,006 bytes: fine


@pytest.mark.parametrize("setting", ["input", "exclude"])
def test_a_glob_deeper_than_the_standard_glob_walks_is_one_line(
    tmp_path: Path, setting: str
) -> None:
    """A thousand `*/` levels (2,001 bytes, a legal length) would exhaust the stack of the
    standard glob: `status` and `run` say so in one line and exit 2, never a traceback."""
    deep = "*/" * 1000 + "*"
    for command in ("status", "run"):
        done = cli([command, f"--{setting}", deep], tmp_path)
        assert done.returncode == 2
        assert "a glob of at most 128 levels from its first wildcard on" in done.stderr
        assert "Traceback" not in done.stderr
    plain_deep = "d/" * 1000 + "*.txt"  # deep, but walked from its one wildcard only
    assert load_settings({setting: plain_deep}, None)


def test_a_config_file_name_is_shown_escaped_on_one_line(tmp_path: Path) -> None:
    """A config file named with a newline or bytes that are not UTF-8: one line, escaped."""
    for name in ("a\nb.toml", os.fsdecode(b"bad\xff.toml")):
        done = cli(["status", "--config", name], cwd=tmp_path, timeout=60)
        assert done.returncode == 2
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert ("a\\x0ab.toml" if "\n" in name else "bad\\xff.toml") in done.stderr


def test_settings_built_in_code_are_validated_too() -> None:
    """`Settings(...)` from Python checks its values as the command line does."""
    assert Settings(max_line_bytes=512).max_line_bytes == 512
    with pytest.raises(ValueError, match="checkpoint_interval"):
        Settings(checkpoint_interval=0)
