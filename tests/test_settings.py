"""``hyperst.settings``: values are checked (and converted) when set."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

import hyperst as hst
from hyperst._settings import Settings


@pytest.fixture
def fresh():
    return Settings()


def test_defaults(fresh):
    assert fresh.progress_bar is True and fresh.num_workers == 0 and fresh.read_ahead == 1
    assert isinstance(fresh.cache_dir, Path) and fresh.verbosity == "info"
    assert not hasattr(fresh, "seed")  # removed: nothing read it


@pytest.mark.parametrize(
    ("name", "value", "error", "match"),
    [
        ("progress_bar", 1, TypeError, r"Expected `hyperst.settings.progress_bar` to be True or False, found `int`"),
        ("progress_bar", "no", TypeError, r"progress_bar` to be True or False, found `str`"),
        ("num_workers", -1, ValueError, r"Expected `hyperst.settings.num_workers` to be an integer >= 0, found `-1`"),
        ("num_workers", 2.0, TypeError, r"num_workers` to be an integer >= 0, found `float`"),
        ("num_workers", True, TypeError, r"num_workers` to be an integer >= 0, found `bool`"),
        ("read_ahead", -1, ValueError, r"read_ahead` to be an integer >= 0, found `-1`"),
        ("read_ahead", None, TypeError, r"read_ahead` to be an integer >= 0, found `NoneType`"),
        ("cache_dir", 3, TypeError, r"cache_dir` to be a str or os.PathLike path, found `int`"),
        ("verbosity", "loud", ValueError, r"verbosity` to be one of \['debug', 'error', 'info', 'warning'\]"),
    ],
)
def test_bad_values_raise_and_leave_the_setting_unchanged(fresh, name, value, error, match):
    before = getattr(fresh, name)
    with pytest.raises(error, match=match):
        setattr(fresh, name, value)
    assert getattr(fresh, name) == before


def test_good_values_are_converted(fresh, tmp_path):
    fresh.num_workers = np.int64(2)
    assert fresh.num_workers == 2 and type(fresh.num_workers) is int
    fresh.read_ahead = 0
    fresh.progress_bar = False
    assert fresh.read_ahead == 0 and fresh.progress_bar is False
    fresh.cache_dir = str(tmp_path)
    assert fresh.cache_dir == tmp_path
    fresh.cache_dir = "~/hyperst-cache"
    assert fresh.cache_dir == Path(os.path.expanduser("~/hyperst-cache"))


def test_checked_at_construction_too():
    with pytest.raises(ValueError, match="read_ahead"):
        Settings(read_ahead=-2)
    assert Settings(cache_dir="data").cache_dir == Path("data")


def test_unknown_setting_is_refused(fresh):
    with pytest.raises(AttributeError, match=r"`hyperst.settings` has no setting `seed`; the settings are \["):
        fresh.seed = 1


def test_verbosity_sets_the_logger_level(fresh):
    log = logging.getLogger("hyperst")
    level = log.level
    try:
        fresh.verbosity = "debug"
        assert log.level == logging.DEBUG and fresh.verbosity == "debug"
        fresh.verbosity = "warning"
        assert log.level == logging.WARNING
    finally:
        log.setLevel(level)


def test_monkeypatching_the_global_settings_is_checked_too(monkeypatch):
    with pytest.raises(ValueError, match="read_ahead"):
        monkeypatch.setattr(hst.settings, "read_ahead", -1)
    assert hst.settings.read_ahead >= 0
