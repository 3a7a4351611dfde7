"""The public API (``offline_dt.__all__``): every name resolves to its owner's object, the
same one the layer exports, and ``import offline_dt`` stays cheap (no torch)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import offline_dt


def test_every_public_name_is_its_owners_object():
    assert 12 <= len(offline_dt.__all__) <= 20
    for name in offline_dt.__all__:
        owner = importlib.import_module(offline_dt._OWNERS[name])
        assert getattr(offline_dt, name) is getattr(owner, name), name
    assert set(offline_dt.__all__) <= set(dir(offline_dt))


def test_an_unknown_name_lists_the_api():
    with pytest.raises(AttributeError, match=r"no attribute 'trian'.*'train'"):
        offline_dt.trian  # noqa: B018


def test_import_is_cheap():
    out = subprocess.run([sys.executable, "-c", "import sys, offline_dt; "
                          "print('torch' in sys.modules, 'offline_dt.training' in sys.modules)"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"]
