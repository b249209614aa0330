"""Which routes need which scope.

Decided by route template (`/v2/models/{name}/infer`), as Litestar's own router resolves the
request, so the guard and the router can never disagree about which route a path is: no
trailing slash, doubled slash or percent-escape reaches a route past its rule. A path that is no
route at all needs a valid key (of any scope) under `--auth required`, so callers without one
cannot probe which routes exist: they get 401 everywhere but on the public routes.
"""

from __future__ import annotations

import enum
import re

from batchserve.server.auth.keys import Scope


class Access(enum.Enum):
    PUBLIC = "public"  # health, readiness, the API docs, the pages and their static files
    AUTHENTICATED = "authenticated"  # any valid key: paths that are no route
    CLASSIFY = "classify"
    STATS = "stats"
    ADMIN = "admin"

    @property
    def scope(self) -> Scope | None:
        match self:
            case Access.CLASSIFY:
                return "classify"
            case Access.STATS:
                return "stats"
            case Access.ADMIN:
                return "admin"
            case _:
                return None


_SEGMENT = r"[^/]+"


def _rule(pattern: str, access: Access) -> tuple[re.Pattern[str], Access]:
    return re.compile(f"^(?:{pattern})$"), access


Rules = tuple[tuple[re.Pattern[str], Access], ...]


def rules(page_paths: tuple[str, ...], schema_path: str, static_prefix: str) -> Rules:
    pages = "|".join(re.escape(p) for p in page_paths)
    return (
        _rule(r"/healthz|/readyz|/v2|/v2/health/live|/v2/health/ready", Access.PUBLIC),
        _rule(f"{re.escape(schema_path)}(?:/.*)?|{re.escape(static_prefix)}(?:/.*)?|{pages}", Access.PUBLIC),
        _rule(f"/v1/classify|/v1/jobs(?:/.*)?|/v1/models(?:/.*)?|/v2/models/{_SEGMENT}(?:/.*)?|/v2/repository/index",
              Access.CLASSIFY),
        _rule(r"/v1/stats(?:/.*)?|/metrics", Access.STATS),
        _rule(f"/v2/repository/models/{_SEGMENT}/(?:load|unload)|/v1/keys(?:/.*)?", Access.ADMIN),
    )


class AccessPolicy:
    def __init__(self, page_paths: tuple[str, ...], schema_path: str, static_prefix: str) -> None:
        self._rules = rules(page_paths, schema_path, static_prefix)
        self._known: dict[str, Access] = {}  # templates are the app's routes: a few dozen at most

    def for_template(self, template: str | None) -> Access:
        """The access rule of a route template (`None`: the path is no route)."""
        if template is None:
            return Access.AUTHENTICATED
        access = self._known.get(template)
        if access is None:
            access = self._known[template] = next(
                (access for pattern, access in self._rules if pattern.match(template)), Access.AUTHENTICATED)
        return access

    def has_rule(self, template: str) -> bool:
        return any(pattern.match(template) for pattern, _ in self._rules)
