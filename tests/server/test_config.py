"""Configuration precedence: CLI flag > environment > model config.toml > built-in default; one
flag and one environment variable per field, derived from the composed config."""

import dataclasses
import typing
from pathlib import Path

import pytest

from batchserve.cli import build_parser
from batchserve.server.config import LifecycleConfig, ListenConfig, ServerConfig
from batchserve.server.options import OPTIONS, build_config, from_sources
from batchserve.serving.knobs import KNOBS


def parse_serve(*argv: str) -> dict:
    args = build_parser().parse_args(["serve", *argv])
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")}


def test_defaults_without_flags_or_env() -> None:
    config = from_sources(parse_serve(), environ={})
    assert config == ServerConfig()
    assert config.listen.port == 8000
    assert config.listen.host == "127.0.0.1"
    assert config.events.enabled is True
    assert config.lifecycle.shutdown_grace == 8.0


def test_env_beats_default_and_flag_beats_env() -> None:
    env = {"BATCHSERVE_PORT": "9001", "BATCHSERVE_MAX_BATCH_SIZE": "8"}
    assert from_sources(parse_serve(), environ=env).listen.port == 9001
    config = from_sources(parse_serve("--port", "9002", "--max-batch-size", "4"), environ=env)
    assert config.listen.port == 9002
    assert config.serving.knobs.values == {"max_batch_size": 4}


def test_dollar_port_is_used_only_when_nothing_else_sets_the_port() -> None:
    assert from_sources(parse_serve(), environ={"PORT": "8080"}).listen.port == 8080
    assert from_sources(parse_serve(), environ={"PORT": "8080", "BATCHSERVE_PORT": "8081"}).listen.port == 8081
    assert from_sources(parse_serve("--port", "8082"), environ={"PORT": "8080"}).listen.port == 8082
    with pytest.raises(ValueError, match="PORT"):
        from_sources(parse_serve(), environ={"PORT": "http"})


def test_typed_parsing_of_lists_bools_paths_and_choices() -> None:
    env = {"BATCHSERVE_MODELS": "a, b", "BATCHSERVE_EVENTS": "false", "BATCHSERVE_MODEL_REPO": "/tmp/repo",
           "BATCHSERVE_PREFERRED_BATCH_SIZES": "8,16", "BATCHSERVE_EVENTS_PII": "off"}
    config = from_sources(parse_serve(), environ=env)
    assert config.serving.models == ("a", "b")
    assert config.events.enabled is False
    assert config.events.pii == "off"
    assert config.serving.model_repo == Path("/tmp/repo")
    assert config.serving.knobs.values["preferred_batch_sizes"] == (8, 16)
    assert from_sources(parse_serve("--no-events"), environ={}).events.enabled is False
    assert from_sources(parse_serve("--events-pii", "full"), environ={}).events.pii == "full"
    # Choices read in any case, as logging's own level names do.
    assert from_sources(parse_serve("--log-level", "DEBUG"), environ={}).logging.log_level == "debug"
    assert from_sources(parse_serve(), environ={"BATCHSERVE_LOG_LEVEL": "Warning"}).logging.log_level == "warning"


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="BATCHSERVE_PORT"):
        from_sources(parse_serve(), environ={"BATCHSERVE_PORT": "eighty"})
    with pytest.raises(ValueError, match="BATCHSERVE_EVENTS"):
        from_sources(parse_serve(), environ={"BATCHSERVE_EVENTS": "maybe"})
    with pytest.raises(ValueError, match="BATCHSERVE_EVENTS_PII"):
        from_sources(parse_serve(), environ={"BATCHSERVE_EVENTS_PII": "some"})


@pytest.mark.parametrize(("argv", "named"), [(("--max-batch-size", "many"), "max-batch-size"),
                                             (("--events-pii", "some"), "events-pii"),
                                             (("--log-format", "xml"), "log-format")])
def test_bad_flag_value_is_a_usage_error(argv: tuple[str, ...], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_serve(*argv)
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err


def test_model_knob_precedence() -> None:
    toml = {"max_batch_size": 32, "max_queue_delay_ms": 0.0, "max_queue_size": 256}
    env = {"BATCHSERVE_MAX_BATCH_SIZE": "16", "BATCHSERVE_MODEL_TINY_MAX_BATCH_SIZE": "8",
           "BATCHSERVE_MODEL_TINY_MAX_QUEUE_SIZE": "64"}
    knobs = from_sources(parse_serve(), environ=env).serving.knobs
    assert knobs.for_model("tiny", toml, env) == {"max_batch_size": 8, "max_queue_delay_ms": 0.0, "max_queue_size": 64}
    assert knobs.for_model("other", toml, env)["max_batch_size"] == 16
    from_cli = from_sources(parse_serve("--max-batch-size", "4"), environ=env).serving.knobs
    assert from_cli.for_model("tiny", toml, env)["max_batch_size"] == 4


def test_every_field_and_every_knob_has_exactly_one_flag_and_env_name() -> None:
    by_name = {option.name: option for option in OPTIONS}
    assert len(by_name) == len(OPTIONS)
    sections = typing.get_type_hints(ServerConfig)
    fields = [f for section in sections.values() for f in dataclasses.fields(section) if not f.metadata.get("knobs")]
    assert set(by_name) == {f.metadata.get("flag", f.name) for f in fields} | set(KNOBS)
    assert all(option.help for option in OPTIONS)
    # Names users rely on stay as they were.
    for known in ("port", "database_url", "events_pii", "events", "events_flush_interval_ms", "journal_dir",
                  "max_batch_size", "default_timeout_ms", "intra_op_threads", "log_format", "admin_key"):
        assert known in by_name
    assert by_name["events_pii"].choices == ("full", "truncated", "off")
    assert by_name["events_pii"].env == "BATCHSERVE_EVENTS_PII"


def test_build_config_refuses_unknown_settings() -> None:
    with pytest.raises(ValueError, match="max_bach_size"):
        build_config({"max_bach_size": 4})


def test_invalid_combinations_are_rejected() -> None:
    with pytest.raises(ValueError, match="drain_delay"):
        LifecycleConfig(drain_delay=9, shutdown_grace=8)
    with pytest.raises(ValueError, match="port"):
        ListenConfig(port=70000)
    with pytest.raises(ValueError, match="drain_delay"):
        from_sources(parse_serve("--drain-delay", "9", "--shutdown-grace", "8"), environ={})
