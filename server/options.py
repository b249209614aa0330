"""`batchserve serve`'s options, derived from the configuration's fields: one flag and one
`BATCHSERVE_<NAME>` environment variable per field, and one per model knob.

An option's type, default, help and allowed values (a `Literal`'s) come from its field, so
nothing here lists a setting by hand. `from_sources` builds the composed `ServerConfig` from
command-line values (typed by argparse; None = not given) and the environment.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from batchserve.server.config import ServerConfig
from batchserve.serving.knobs import KNOBS, KnobOverrides, alternatives, env_name, parse_setting

SERVING_SECTION = "serving"
KNOBS_FIELD = "knobs"


@dataclass(frozen=True)
class Option:
    name: str  # flag without dashes, with underscores: "events_pii" is --events-pii, BATCHSERVE_EVENTS_PII
    section: str  # the ServerConfig field holding it, e.g. "events"
    field: str | None  # the section's field; None for a model knob (it goes to ServingConfig.knobs)
    type: Any
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def choices(self) -> tuple[Any, ...] | None:
        literal = next((t for t in self._alternatives if get_origin(t) is Literal), None)
        return get_args(literal) if literal is not None else None

    @property
    def is_switch(self) -> bool:
        """A boolean: --name / --no-name."""
        return bool in self._alternatives

    @property
    def is_list(self) -> bool:
        """Several values, comma-separated."""
        return any(get_origin(t) is tuple for t in self._alternatives)

    @property
    def _alternatives(self) -> tuple[Any, ...]:
        return alternatives(self.type)

    @property
    def is_knob(self) -> bool:
        return self.field is None

    def parse(self, raw: str) -> Any:
        return parse_setting(self.type, raw)


def _section_options(section: str, config: type) -> Iterator[Option]:
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("knobs"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        yield Option(
            f.metadata.get("flag", f.name), section, f.name, hints[f.name], default, f.metadata.get("help", "")
        )


def _knob_options() -> Iterator[Option]:
    # None = not overridden: the model's config.toml decides.
    for knob in KNOBS.values():
        yield Option(knob.name, SERVING_SECTION, None, knob.type | None, None, f"{knob.help} (default: config.toml)")


def _all_options() -> tuple[Option, ...]:
    hints = typing.get_type_hints(ServerConfig)
    options = [option for f in dataclasses.fields(ServerConfig) for option in _section_options(f.name, hints[f.name])]
    options += _knob_options()
    names = [o.name for o in options]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise RuntimeError(f"two settings claim the option name(s) {', '.join(sorted(duplicated))}")
    return tuple(options)


OPTIONS: tuple[Option, ...] = _all_options()


def build_config(values: Mapping[str, Any], *, from_cli: frozenset[str] = frozenset()) -> ServerConfig:
    """The composed config from typed values by option name (absent: the field's default).
    `from_cli` names the knobs given as flags: they beat per-model environment variables too."""
    known = {o.name: o for o in OPTIONS}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
    sections: dict[str, dict[str, Any]] = {}
    knobs: dict[str, Any] = {}
    for name, value in values.items():
        option = known[name]
        if option.field is None:
            knobs[name] = value
        else:
            sections.setdefault(option.section, {})[option.field] = value
    sections.setdefault(SERVING_SECTION, {})[KNOBS_FIELD] = KnobOverrides(knobs, from_cli & knobs.keys())
    hints = typing.get_type_hints(ServerConfig)
    return ServerConfig(**{section: hints[section](**fields) for section, fields in sections.items()})


def from_sources(cli: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> ServerConfig:
    """CLI values (typed; None = not given) beat the environment, which beats the defaults."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = cli.get(option.name)
        if given is not None:
            values[option.name] = given
            continue
        raw = environ.get(option.env)
        if raw:
            try:
                values[option.name] = option.parse(raw)
            except ValueError as exc:
                raise ValueError(f"{option.env}={raw!r}: {exc}") from None
    if "port" not in values and environ.get("PORT"):
        try:
            values["port"] = int(environ["PORT"])  # Cloud Run tells the container its port this way
        except ValueError:
            raise ValueError(f"PORT={environ['PORT']!r} is not a port number") from None
    from_cli = frozenset(name for name, value in cli.items() if value is not None)
    return build_config(values, from_cli=from_cli)
