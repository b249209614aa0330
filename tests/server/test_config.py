"""Configuration precedence: CLI flag > environment > model config.toml > built-in default."""

from pathlib import Path

import pytest

from batchserve.cli import build_parser
from batchserve.server.config import ServerConfig, from_sources


def parse_serve(*argv: str) -> dict:
    args = build_parser().parse_args(["serve", *argv])
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")}


def test_defaults_without_flags_or_env() -> None:
    config = from_sources(parse_serve(), environ={})
    assert config.port == 8000
    assert config.host == "127.0.0.1"
    assert config.events is True
    assert config.shutdown_grace == 8.0


def test_env_beats_default_and_flag_beats_env() -> None:
    env = {"BATCHSERVE_PORT": "9001", "BATCHSERVE_MAX_BATCH_SIZE": "8"}
    assert from_sources(parse_serve(), environ=env).port == 9001
    config = from_sources(parse_serve("--port", "9002", "--max-batch-size", "4"), environ=env)
    assert config.port == 9002
    assert config.max_batch_size == 4


def test_dollar_port_is_used_only_when_nothing_else_sets_the_port() -> None:
    assert from_sources(parse_serve(), environ={"PORT": "8080"}).port == 8080
    assert from_sources(parse_serve(), environ={"PORT": "8080", "BATCHSERVE_PORT": "8081"}).port == 8081
    assert from_sources(parse_serve("--port", "8082"), environ={"PORT": "8080"}).port == 8082


def test_typed_parsing_of_lists_bools_and_paths() -> None:
    env = {"BATCHSERVE_MODELS": "a, b", "BATCHSERVE_EVENTS": "false", "BATCHSERVE_MODEL_REPO": "/tmp/repo",
           "BATCHSERVE_PREFERRED_BATCH_SIZES": "8,16"}
    config = from_sources(parse_serve(), environ=env)
    assert config.models == ("a", "b")
    assert config.events is False
    assert config.model_repo == Path("/tmp/repo")
    assert config.preferred_batch_sizes == (8, 16)
    assert from_sources(parse_serve("--no-events"), environ={}).events is False


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="BATCHSERVE_PORT"):
        from_sources(parse_serve(), environ={"BATCHSERVE_PORT": "eighty"})
    with pytest.raises(ValueError, match="BATCHSERVE_EVENTS"):
        from_sources(parse_serve(), environ={"BATCHSERVE_EVENTS": "maybe"})


def test_bad_flag_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_serve("--max-batch-size", "many")
    assert exit_info.value.code == 2
    assert "max-batch-size" in capsys.readouterr().err


def test_model_knob_precedence() -> None:
    toml = {"max_batch_size": 32, "max_queue_delay_ms": 0.0, "max_queue_size": 256}
    env = {"BATCHSERVE_MAX_BATCH_SIZE": "16", "BATCHSERVE_MODEL_TINY_MAX_BATCH_SIZE": "8",
           "BATCHSERVE_MODEL_TINY_MAX_QUEUE_SIZE": "64"}
    config = from_sources(parse_serve(), environ=env)
    assert config.model_knobs("tiny", toml, env) == {"max_batch_size": 8, "max_queue_delay_ms": 0.0, "max_queue_size": 64}
    assert config.model_knobs("other", toml, env)["max_batch_size"] == 16
    from_cli = from_sources(parse_serve("--max-batch-size", "4"), environ=env)
    assert from_cli.model_knobs("tiny", toml, env)["max_batch_size"] == 4


def test_invalid_combinations_are_rejected() -> None:
    with pytest.raises(ValueError, match="drain_delay"):
        ServerConfig(drain_delay=9, shutdown_grace=8)
    with pytest.raises(ValueError, match="port"):
        ServerConfig(port=70000)
