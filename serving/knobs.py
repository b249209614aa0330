"""Model knobs: what a model's config.toml `[batching]` table may set and the server may override,
globally (flag, `BATCHSERVE_<KNOB>`) or per model (`BATCHSERVE_MODEL_<MODEL>_<KNOB>`).

The knobs are the fields of four typed configs, and every list of knob names, every flag and
every environment name is derived from those fields: `BatchingConfig` (how batches form),
`RequestLimits` (deadlines), `RuntimeKnobs` (ONNX Runtime) and `RoutingKnobs` (which model
stands in when this one cannot answer). Precedence, per model:
config.toml < BATCHSERVE_<KNOB> < BATCHSERVE_MODEL_<MODEL>_<KNOB> < a command-line flag.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import msgspec

from batchserve.batching import BatchingConfig
from batchserve.model_repo.errors import ModelLoadError

ENV_PREFIX = "BATCHSERVE_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class RequestLimits:
    """Per-model deadline policy: a default for requests that set none, and a cap."""

    default_timeout_ms: float = field(default=0.0, metadata={"help": "deadline for requests that set none (0: none)"})
    max_timeout_ms: float = field(default=60_000.0, metadata={"help": "cap on a client's timeout_ms"})

    def __post_init__(self) -> None:
        for name in ("default_timeout_ms", "max_timeout_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of milliseconds >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))


@dataclass(frozen=True)
class RuntimeKnobs:
    """ONNX Runtime settings a deployment tunes per model."""

    intra_op_threads: int = field(
        default=0, metadata={"help": "ONNX Runtime intra-op threads (0: the model's [runtime] setting, else ORT's)"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.intra_op_threads, bool) or not isinstance(self.intra_op_threads, int) \
                or self.intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be an integer >= 0, got {self.intra_op_threads!r}")


@dataclass(frozen=True)
class RoutingKnobs:
    """Where a model's requests go when it cannot answer them itself (serving/fallback.py)."""

    fallback: str | None = field(default=None, metadata={
        "help": "model that answers instead when this one is not loaded, its queue is full or its batch fails "
                "(one hop: the fallback's own fallback is never asked)"})

    def __post_init__(self) -> None:
        if self.fallback is not None and (not isinstance(self.fallback, str) or not self.fallback.strip()):
            raise ValueError(f"fallback must be a model name, got {self.fallback!r}")


@dataclass(frozen=True)
class Knob:
    name: str
    type: Any
    help: str


def _knobs_of(config: type) -> dict[str, Knob]:
    hints = typing.get_type_hints(config)
    return {f.name: Knob(f.name, hints[f.name], f.metadata.get("help", "")) for f in dataclasses.fields(config)}


_GROUPS: dict[str, type] = {"batching": BatchingConfig, "limits": RequestLimits, "runtime": RuntimeKnobs,
                            "routing": RoutingKnobs}
_GROUP_KNOBS = {group: _knobs_of(config) for group, config in _GROUPS.items()}
KNOBS: dict[str, Knob] = {name: knob for knobs in _GROUP_KNOBS.values() for name, knob in knobs.items()}


def refuse_unknown(names: Iterable[str]) -> None:
    """A misspelt knob is refused: a silently ignored `max_bach_size` would be worse."""
    unknown = sorted(set(names) - set(KNOBS))
    if unknown:
        raise ValueError(f"unknown model setting(s) {', '.join(unknown)}; known: {', '.join(KNOBS)}")


@dataclass(frozen=True)
class ModelSettings:
    """One model's knobs, typed."""

    batching: BatchingConfig
    limits: RequestLimits
    runtime: RuntimeKnobs
    routing: RoutingKnobs

    @classmethod
    def from_knobs(cls, knobs: Mapping[str, Any]) -> ModelSettings:
        """The merged knob values as typed configs; an unknown knob or a bad value is refused, naming it."""
        try:
            refuse_unknown(knobs)
            groups = {
                group: config(**{name: knobs[name] for name in _GROUP_KNOBS[group] if name in knobs})
                for group, config in _GROUPS.items()
            }
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(str(exc)) from exc
        return cls(**groups)


def alternatives(tp: Any) -> tuple[Any, ...]:
    """The types a value of type `tp` may have: `int | None` -> (int, NoneType)."""
    return get_args(tp) if get_origin(tp) in (Union, UnionType) else (tp,)


def parse_setting(tp: Any, raw: str) -> Any:
    """A flag's or environment variable's text as a value of type `tp`: numbers, paths, `a,b`
    lists, one of a Literal's values (in any case: `DEBUG` is `debug`), and
    true/false/yes/no/on/off/1/0 for booleans."""
    base = alternatives(tp)
    if bool in base:
        lowered = raw.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise ValueError(f"expected a boolean (true/false), got {raw!r}")
    value: Any = raw.strip()
    if any(get_origin(t) is tuple for t in base):
        value = [part.strip() for part in value.split(",") if part.strip()]
    elif any(get_origin(t) is Literal for t in base):
        value = value.lower()
    try:
        return msgspec.convert(value, tp, strict=False, dec_hook=_path_hook)
    except msgspec.ValidationError as exc:
        raise ValueError(f"cannot use {raw!r}: {exc}") from None


def _path_hook(tp: Any, value: Any) -> Any:
    if tp is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError(f"unsupported setting type {tp!r}")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def per_model_env(model: str, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """`BATCHSERVE_MODEL_<MODEL>_<KNOB>` overrides for one model, typed."""
    prefix = f"{ENV_PREFIX}MODEL_{model.upper()}_"
    found: dict[str, Any] = {}
    for knob in KNOBS.values():
        raw = environ.get(prefix + knob.name.upper())
        if raw:
            try:
                found[knob.name] = parse_setting(knob.type, raw)
            except ValueError as exc:
                raise ValueError(f"{prefix + knob.name.upper()}={raw!r}: {exc}") from None
    return found


@dataclass(frozen=True)
class KnobOverrides:
    """Server-wide knob values (typed, by knob name) that beat every model's config.toml; those
    given on the command line beat the per-model environment variables too."""

    values: Mapping[str, Any] = field(default_factory=dict)
    from_cli: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        refuse_unknown(self.values)

    def for_model(
        self, model: str, from_toml: Mapping[str, Any], environ: Mapping[str, str] = os.environ
    ) -> dict[str, Any]:
        """One model's knobs: config.toml < global override < per-model env < command-line flag."""
        merged = dict(from_toml)
        merged.update({k: v for k, v in self.values.items() if k not in self.from_cli})
        merged.update(per_model_env(model, environ))
        merged.update({k: self.values[k] for k in self.from_cli if k in self.values})
        return merged
