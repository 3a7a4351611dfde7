"""benchmarks/page_characteristics.py: a results page's TQ/SACo section from its datasets and
its committed table (the hand-worked datasets of tests/offline_dt/conftest.py), the check that
the files are the page's own data, and the section replaced, not repeated, on a rerun."""

from __future__ import annotations

import pandas as pd
from conftest import saco_medium as medium
from conftest import saco_replay as replay

from benchmarks.page_characteristics import BEGIN, END, Page, update_page
from offline_dt.data.d4rl import write_hdf5


def _table() -> pd.DataFrame:
    rows = [("toy-medium-v0", "data", 2, 20.0, 50.0), ("toy-medium-v0", "dt", 3, -1, 55.0),
            ("toy-medium-v0", "bc", 3, -1, 40.0), ("toy-medium-v0", "behaviour", 3, -1, 90.0),
            # the replay file's episodes return 6 and 15 (mean 10.5): the page says 11
            ("toy-full-replay-v0", "data", 2, 11.0, 27.5),
            ("toy-full-replay-v0", "bc", 3, -1, 70.0)]
    return pd.DataFrame(rows, columns=["dataset", "method", "episodes", "mean_return",
                                       "normalized_score"]).assign(env="Toy-v0")


def test_section_from_the_pages_table_and_files(tmp_path):
    paths = {"full-replay": write_hdf5(replay(), tmp_path / "toy-full-replay-v0.hdf5"),
             "medium": write_hdf5(medium(), tmp_path / "toy-medium-v0.hdf5")}
    page = Page("Toy-v0", "none", "toy")
    (tmp_path / "toy.md").write_text("# toy\n\n| a |\n|---|\n| 1 |\n")
    chars = update_page(page, paths, _table(), tmp_path, "python -m x", 1.0).set_index(
        "dataset")
    assert chars.loc["toy-medium-v0", ["tq", "unique_sa", "saco"]].tolist() == [0.5, 2, 0.5]
    assert chars.loc["toy-full-replay-v0", ["tq", "unique_sa", "saco"]].tolist() == [
        0.2625, 4, 1.0]
    # best among trained and reference rows; behaviour (90) is not one
    assert chars.loc["toy-medium-v0", ["best_method", "best_score"]].tolist() == ["dt", 55.0]
    md = (tmp_path / "toy.md").read_text()
    med = next(line for line in md.splitlines() if line.startswith("| toy-medium-v0"))
    rep = next(line for line in md.splitlines() if line.startswith("| toy-full-replay-v0"))
    assert med.rstrip(" |").endswith("same")
    assert "differs: 2 episodes, mean 10.500 (page: 2, 11.000)" in rep
    assert md.startswith("# toy\n\n| a |") and md.rstrip().endswith(END)
    assert (tmp_path / "characteristics_Toy-v0.png").is_file()
    update_page(page, paths, _table(), tmp_path, "python -m x", 2.0)
    again = (tmp_path / "toy.md").read_text()
    assert again.count(BEGIN) == 1 and again.count("| a |") == 1
    assert "(2 s for this section" in again
    assert "![TQ against SACo](characteristics_Toy-v0.png)" in again


def test_without_a_full_replay_level_no_plot_and_no_broken_link(tmp_path):
    # the Hopper page's case: no full-replay level, so no SACo and nothing to plot
    paths = {"medium": write_hdf5(medium(), tmp_path / "toy-medium-v0.hdf5")}
    (tmp_path / "toy.md").write_text("# toy\n")
    chars = update_page(Page("Toy-v0", "none", "toy"), paths, _table(), tmp_path, "x", 1.0)
    # unique_sa on the grid of medium alone (its own min and max): 3 cells, not the 2 above
    assert chars["saco"].isna().all() and chars["unique_sa"].tolist() == [3]
    md = (tmp_path / "toy.md").read_text()
    assert not (tmp_path / "characteristics_Toy-v0.png").exists()
    assert "![TQ against SACo]" not in md and "No TQ-SACo plot" in md
