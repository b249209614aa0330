"""`batchserve serve`'s options, derived from the composed `ServerConfig`'s fields by
batchserve.serving.options: one flag and one `BATCHSERVE_<NAME>` environment variable per field,
and one per model knob.

`from_sources` builds the `ServerConfig` from command-line values (typed by argparse; None = not
given) and the environment, where `$PORT` also sets the port when nothing else does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from batchserve.server.config import ServerConfig
from batchserve.serving.options import Option, build, options_of, read_sources

# The model knobs close serve's --help, after every section.
OPTIONS: tuple[Option, ...] = tuple(sorted(options_of(ServerConfig), key=lambda option: option.is_knob))


def build_config(values: Mapping[str, Any], *, from_cli: frozenset[str] = frozenset()) -> ServerConfig:
    """The composed config from typed values by option name (absent: the field's default).
    `from_cli` names the knobs given as flags: they beat per-model environment variables too."""
    return build(ServerConfig, OPTIONS, values, from_cli=from_cli)


def from_sources(cli: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> ServerConfig:
    """CLI values (typed; None = not given) beat the environment, which beats the defaults."""
    values, from_cli = read_sources(OPTIONS, cli, environ)
    if "port" not in values and environ.get("PORT"):
        try:
            values["port"] = int(environ["PORT"])  # Cloud Run tells the container its port this way
        except ValueError:
            raise ValueError(f"PORT={environ['PORT']!r} is not a port number") from None
    return build_config(values, from_cli=from_cli)
