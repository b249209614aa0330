"""Command-line flags and their `BATCHSERVE_<NAME>` environment twins, derived from a command's
configuration: a frozen dataclass whose fields are its sections, each a config dataclass.

Every field of a section is one option: its name is the field's unless the field's metadata
gives a `flag`; type, default, help and allowed values (a `Literal`'s) come from the field, so no
command lists a setting by hand. A section field marked `knobs` in its metadata stands for the
model knobs (serving/knobs.py): one option per knob, collected into its `KnobOverrides`. A field
whose type the generic parser cannot read from text (a union of a path and a URL, say) names its
own `parse` function in its metadata.
Precedence: flag > environment > default (> a model's config.toml, for knobs).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from batchserve.serving.knobs import KNOBS, KnobOverrides, alternatives, env_name, parse_setting

Config = TypeVar("Config")
KNOB_GROUP = "model knobs (override every model's config.toml)"


@dataclass(frozen=True)
class Option:
    name: str  # flag without dashes, with underscores: "events_pii" is --events-pii, BATCHSERVE_EVENTS_PII
    section: str  # the root config's field holding it, e.g. "events"
    field: str | None  # the section's field; None for a model knob (it goes to the section's knobs field)
    type: Any
    default: Any
    help: str
    parser: Callable[[str], Any] | None = None  # the field's own text parser; None: by its type

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
        return self.parser(raw) if self.parser is not None else parse_setting(self.type, raw)


def options_of(root: type) -> tuple[Option, ...]:
    """One option per field of each section, in field order; the knobs where a section has its knobs field."""
    options: list[Option] = []
    for section, config in _sections(root).items():
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            if f.metadata.get("knobs"):
                # None = not overridden: the model's config.toml decides.
                options += [Option(k.name, section, None, k.type | None, None, f"{k.help} (default: config.toml)")
                            for k in KNOBS.values()]
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()  # e.g. a directory that depends on the user: shown in --help
            options.append(Option(f.metadata.get("flag", f.name), section, f.name, hints[f.name], default,
                                  f.metadata.get("help", ""), f.metadata.get("parse")))
    names = [o.name for o in options]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise RuntimeError(f"two settings claim the option name(s) {', '.join(duplicated)}")
    return tuple(options)


def read_sources(options: tuple[Option, ...], cli: Mapping[str, Any],
                 environ: Mapping[str, str] = os.environ) -> tuple[dict[str, Any], frozenset[str]]:
    """Typed values by option name, a CLI value (None = not given) beating the environment; an
    option neither sets is absent. Also the names given on the command line."""
    values: dict[str, Any] = {}
    for option in options:
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
    return values, frozenset(o.name for o in options if cli.get(o.name) is not None)


def build(root: type[Config], options: tuple[Option, ...], values: Mapping[str, Any], *,
          from_cli: frozenset[str] = frozenset()) -> Config:
    """The root config from typed values by option name (absent: the field's default). `from_cli`
    names the knobs given as flags: they beat per-model environment variables too. Raises
    ValueError naming the setting that is wrong."""
    known = {o.name: o for o in options}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}")
    sections = _sections(root)
    fields: dict[str, dict[str, Any]] = {section: {} for section in sections}
    knobs: dict[str, Any] = {}
    for name, value in values.items():
        option = known[name]
        if option.field is None:
            knobs[name] = value
        else:
            fields[option.section][option.field] = value
    for section, config in sections.items():
        for f in dataclasses.fields(config):
            if f.metadata.get("knobs"):
                fields[section][f.name] = KnobOverrides(knobs, from_cli & knobs.keys())
    try:
        return root(**{section: config(**fields[section]) for section, config in sections.items()})
    except (TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def from_sources(root: type[Config], options: tuple[Option, ...], cli: Mapping[str, Any],
                 environ: Mapping[str, str] = os.environ) -> Config:
    """The root config from CLI values (typed; None = not given), else the environment, else the defaults."""
    values, from_cli = read_sources(options, cli, environ)
    return build(root, options, values, from_cli=from_cli)


def add_flags(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    """The flags, grouped in --help by the section each one sets, in the order of `options`."""
    groups: dict[str, Any] = {}
    for option in options:
        title = KNOB_GROUP if option.is_knob else option.section
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        groups[title].add_argument(option.flag, **_argument(option))


def _argument(option: Option) -> dict[str, Any]:
    """argparse settings for one option; its default is None so `read_sources` can tell 'not given'."""
    if option.is_knob:
        default = "config.toml"
    else:
        default = str(option.default) if isinstance(option.default, Path) else repr(option.default)
    kwargs: dict[str, Any] = {"default": None, "dest": option.name,
                              "help": f"{option.help} [env {option.env}; default {default}]"}
    if option.is_switch:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif option.choices is not None:
        kwargs["choices"] = option.choices
        kwargs["type"] = str.lower  # as the environment variable: DEBUG is debug
    else:
        def parse(raw: str) -> Any:
            if option.parser is None:
                return option.parse(raw)
            try:
                return option.parser(raw)
            except ValueError as exc:  # argparse shows this message; a ValueError's it would replace
                raise argparse.ArgumentTypeError(str(exc)) from None

        parse.__name__ = option.name  # argparse names it in "invalid <name> value"
        kwargs["type"] = parse
        if option.is_list:
            kwargs["metavar"] = "A,B,..."
    return kwargs


def _sections(root: type) -> dict[str, type]:
    hints = typing.get_type_hints(root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root)}
