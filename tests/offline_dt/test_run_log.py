"""metrics.csv between checkpoints: a log row rewrites it once SAVE_INTERVAL_S have passed,
and a resume drops the rows after the checkpoint's step."""

from __future__ import annotations

import time

from offline_dt.training import run_log
from offline_dt.training.run_log import RunLog, read_metrics


def test_log_rows_reach_metrics_csv_between_checkpoints(tmp_path, monkeypatch):
    log = RunLog(tmp_path, 0, 10, progress=False, t_origin=time.perf_counter())
    monkeypatch.setattr(run_log, "SAVE_INTERVAL_S", 3600.0)
    log.append({"step": 1, "loss": 0.5})
    assert not log.path.exists()  # too soon after the run started
    monkeypatch.setattr(run_log, "SAVE_INTERVAL_S", 0.0)
    log.append({"step": 2, "loss": 0.25})
    assert read_metrics(log.path, 10) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    log.close("t")
    # a run resumed from a checkpoint at step 1 keeps the rows up to it
    resumed = RunLog(tmp_path, 1, 10, progress=False, t_origin=time.perf_counter())
    assert resumed.rows == [{"step": 1, "loss": 0.5}]
    resumed.close("t")
    assert read_metrics(log.path, 10) == [{"step": 1, "loss": 0.5}]
    assert (tmp_path / "loss.png").is_file()
    assert read_metrics(tmp_path / "none.csv", 10) == []
