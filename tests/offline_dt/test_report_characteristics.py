"""The report's dataset characteristics (offline_dt.study.characteristics): TQ, unique
state-action bins and SACo per dataset on one grid per env, the best method beside them, the
results.md section and the scatter plot; the numbers are those worked out by hand in
tests/offline_dt/conftest.py (saco_replay, saco_medium)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from conftest import saco_medium as medium
from conftest import saco_replay as replay

from offline_dt.data.d4rl import write_hdf5
from offline_dt.study.characteristics import (
    characteristics_markdown,
    characteristics_table,
    plot_characteristics,
)
from offline_dt.study.runs import _limits


def _entries(tmp_path):
    out = {}
    for name, ds in (("toy-full-replay-v0", replay()), ("toy-medium-v0", medium())):
        path = write_hdf5(ds, tmp_path / f"{name}.hdf5")
        out[("Toy-v0", name)] = {"tq": 0.5 if "medium" in name else 0.2625,
                                 "level": ds.metadata["level"], "source": (str(path), None),
                                 "limits": _limits(ds)}
    return out


def test_table_section_and_plot(tmp_path):
    table = pd.DataFrame({"env": ["Toy-v0"] * 4,
                          "dataset": ["toy-medium-v0"] * 3 + ["toy-full-replay-v0"],
                          "method": ["data", "bc", "dt", "dt"],
                          "normalized_score": [90.0, 40.0, 55.0, math.nan]})
    chars = characteristics_table(_entries(tmp_path), table).set_index("dataset")
    med = chars.loc["toy-medium-v0"]
    assert med["unique_sa"] == 2 and med["saco"] == pytest.approx(0.5)
    assert med["tq"] == 0.5
    assert (med["best_method"], med["best_score"]) == ("dt", 55.0)  # "data" is no method
    rep = chars.loc["toy-full-replay-v0"]
    assert rep["unique_sa"] == 4 and rep["saco"] == 1.0 and pd.isna(rep["best_method"])
    md = characteristics_markdown(chars.reset_index(), "Toy-v0")
    assert "| toy-medium-v0 " in md and "characteristics_Toy-v0.png" in md
    assert [p.name for p in plot_characteristics(chars.reset_index(), tmp_path)] == [
        "characteristics_Toy-v0.png"]
