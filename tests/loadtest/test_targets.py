"""Targets files: the absolute and the relative form, and the errors that name what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batchserve.loadtest.targets import (
    DEFAULT_TARGETS,
    Relative,
    Targets,
    TargetsError,
    load_profile,
    parse_duration,
)

RELATIVE = "[p]\nrate = 0.8\n[p.targets]\nmax_p99_ms = 500\n"


def test_shipped_profiles_parse() -> None:
    smoke = load_profile(DEFAULT_TARGETS, "smoke")
    assert smoke.relative is None and smoke.targets.min_rps and smoke.targets.max_failure_ratio == 0.0
    for name, user_class in (("raw", "RawImageUser"), ("multipart", "MultipartUser"), ("mixed", "MixedUser")):
        profile = load_profile(DEFAULT_TARGETS, name)
        assert profile.user_class == user_class and profile.model == "efficientnet_lite0"
        assert profile.relative == Relative(rate=0.8, calibrate_s=10.0)
        assert profile.targets.min_rps is None  # relative: no absolute throughput
        assert profile.targets.min_achieved_ratio == 0.95 and profile.targets.max_p99_ms
        assert profile.targets.max_failure_ratio == 0.0


def test_an_absolute_profile_keeps_its_form(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("[p]\nusers = 3\nduration = 45\n[p.targets]\nmin_rps = 2\n")
    profile = load_profile(path, "p")
    assert (profile.user_class, profile.users, profile.spawn_rate, profile.duration_s) == ("RawImageUser", 3, 3.0, 45.0)
    assert profile.targets == Targets(min_rps=2.0) and profile.model is None and profile.relative is None


def test_a_relative_profile_and_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(RELATIVE)
    assert load_profile(path, "p").relative == Relative(rate=0.8, calibrate_s=10.0, reference_rps=None)
    path.write_text("[p]\nusers = 4\nrate = 1.5\ncalibrate = '1m'\nreference_rps = 190\nduration = 20\n"
                    "[p.targets]\nmin_achieved_ratio = 0.95\nmin_capacity_ratio = 0.8\nmax_failure_ratio = 0.01\n")
    profile = load_profile(path, "p")
    assert profile.relative == Relative(rate=1.5, calibrate_s=60.0, reference_rps=190.0)
    assert (profile.users, profile.duration_s) == (4, 20.0)
    assert profile.targets == Targets(min_achieved_ratio=0.95, min_capacity_ratio=0.8, max_failure_ratio=0.01)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # the absolute form
        ("[p]\n[p.targets]\nmin_rsp = 3\n", "unknown field `min_rsp` - at `$.targets`"),
        ("[p]\n[p.targets]\nmin_rps = -1\n", "Expected `float` >= 0.0 - at `$.targets.min_rps`"),
        ("[p]\n[p.targets]\nmax_p99_ms = true\n", "got `bool` - at `$.targets.max_p99_ms`"),
        ("[p]\n[p.targets]\n", "targets sets no target"),
        ("[p]\nusers = 2\n", "missing required field `targets`"),
        ("[p]\nuser_class = 'Nobody'\n[p.targets]\nmin_rps = 1\n", "user_class must be one of RawImageUser, "),
        ("[p]\nusers = 0\n[p.targets]\nmin_rps = 1\n", "Expected `int` >= 1 - at `$.users`"),
        ("[p]\nspawn_rate = 0\n[p.targets]\nmin_rps = 1\n", "Expected `float` > 0.0 - at `$.spawn_rate`"),
        ("[p]\nduration = 'soon'\n[p.targets]\nmin_rps = 1\n", "`duration`: duration must look like"),
        ("[p]\nduration = -5\n[p.targets]\nmin_rps = 1\n", "`duration`: duration must be positive, not -5"),
        ("[p\n", "not valid TOML"),
        # a key of the profile table that nothing reads (here a misspelt `rate`) is refused
        ("[p]\nrtae = 0.8\n[p.targets]\nmax_p99_ms = 500\n", "unknown field `rtae`"),
        # the relative form
        ("[p]\nrate = 0\n[p.targets]\nmax_p99_ms = 500\n", "Expected `float` > 0.0 - at `$.rate`"),
        ("[p]\nrate = 1.6\n[p.targets]\nmax_p99_ms = 500\n", "Expected `float` <= 1.5 - at `$.rate`"),
        ("[p]\nrate = '80%'\n[p.targets]\nmax_p99_ms = 500\n", "Expected `float | null`, got `str` - at `$.rate`"),
        ("[p]\nrate = 0.8\ncalibrate = -1\n[p.targets]\nmax_p99_ms = 500\n",
         "`calibrate`: duration must be positive, not -1"),
        ("[p]\nrate = 0.8\ncalibrate = '0s'\n[p.targets]\nmax_p99_ms = 500\n",
         "`calibrate`: duration must be positive, not '0s'"),
        ("[p]\nrate = 0.8\nreference_rps = 0\n[p.targets]\nmax_p99_ms = 500\n",
         "Expected `float` > 0.0 - at `$.reference_rps`"),
        ("[p]\nrate = 0.8\n[p.targets]\nmin_achieved_ratio = 1.5\n",
         "Expected `float` <= 1.0 - at `$.targets.min_achieved_ratio`"),
        ("[p]\nrate = 0.8\n[p.targets]\nmin_capacity_ratio = 0\n",
         "Expected `float` > 0.0 - at `$.targets.min_capacity_ratio`"),
        ("[p]\nrate = 0.8\n[p.targets]\nmin_rps = 10\n",
         "targets.min_rps is an absolute throughput; a relative profile (one with `rate`) checks"),
        # relative keys in an absolute profile would go unchecked
        ("[p]\ncalibrate = '5s'\nreference_rps = 100\n[p.targets]\nmin_capacity_ratio = 0.8\n",
         "calibrate, reference_rps, targets.min_capacity_ratio need `rate`"),
        ("[p]\n[p.targets]\nmin_achieved_ratio = 0.9\n", "targets.min_achieved_ratio need `rate`"),
    ],
)
def test_bad_targets_files_are_explained(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(text)
    with pytest.raises(TargetsError, match=re.escape(message)) as caught:
        load_profile(path, "p")
    assert str(path) in str(caught.value)


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(RELATIVE)
    with pytest.raises(TargetsError, match=r"no profile 'q' in .*; profiles: p$"):
        load_profile(path, "q")


def test_durations() -> None:
    assert parse_duration("30s") == 30
    assert parse_duration("2m") == 120
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    assert parse_duration(2.5) == 2.5
    for bad in ("", "0s", "ten", -1):
        with pytest.raises(TargetsError):
            parse_duration(bad)
