"""benchmarks/speed.py's page: the CPU features it reports beside the ratios, and one section
(and one set of CSV rows) per machine kind, a new run replacing only its own."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import machine, speed

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
processor\t: 1
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
"""


def test_cpu_features_are_read_from_the_flags_line():
    f = machine.cpu_features(CPUINFO, capability="AVX512")
    assert f["vendor"] == "AuthenticAMD" and f["capability"] == "AVX512"
    assert f["AVX2"] and f["AVX512F"] and f["AVX512-BF16"]
    assert not f["AMX-BF16"] and not f["AMX-TILE"]
    assert f["kind"] == "AuthenticAMD/AVX512/avx512_bf16"
    line = machine.features_line(f)
    assert "AVX512-BF16 yes" in line and "AMX-BF16 no" in line and "capability AVX512" in line
    amx = CPUINFO.replace("avx512_vnni", "avx512_vnni amx_bf16 amx_tile")
    assert machine.cpu_features(amx, "AVX512")["kind"] == "AuthenticAMD/AVX512/avx512_bf16+amx_bf16"
    plain = "vendor_id : AuthenticAMD\nflags : fpu avx avx2\n"
    f = machine.cpu_features(plain, capability="AVX2")
    assert f["AVX2"] and not f["AVX512F"] and f["kind"] == "AuthenticAMD/AVX2/no-bf16"
    assert machine.cpu_features("", capability="DEFAULT")["kind"] == "unknown/DEFAULT/no-bf16"


def test_a_run_replaces_only_its_own_machine_kinds_section():
    head = "# Page\n\nhead text"
    page = machine.merge_page("", head, "A/AVX2/no-bf16", "## A\n\n| a | 1 |\n")
    page = machine.merge_page(page, head, "B/AVX512/avx512_bf16", "## B\n\n| b | 2 |\n")
    page = machine.merge_page(page, head, "A/AVX2/no-bf16", "## A again\n\n| a | 3 |\n")
    got_head, sections = machine.page_sections(page)
    assert got_head.startswith("# Page") and "head text" in got_head
    assert list(sections) == ["A/AVX2/no-bf16", "B/AVX512/avx512_bf16"]  # A keeps its place
    assert sections["A/AVX2/no-bf16"] == "## A again\n\n| a | 3 |\n"
    assert sections["B/AVX512/avx512_bf16"] == "## B\n\n| b | 2 |\n"
    assert page.count("| a |") == 1
    with pytest.raises(ValueError, match="markers"):
        machine.merge_page(page, head, "C", "<!-- machine: X -->")


def test_a_page_from_before_sections_is_kept_as_one(tmp_path):
    """A page and CSV written before there were sections stay, under ``unrecorded``."""
    (tmp_path / "s.md").write_text("# Speed\n\nCommand: old\n\n| x | 1 |\n")
    pd.DataFrame({"benchmark": ["old"], "ratio": [0.5]}).to_csv(tmp_path / "s.csv", index=False)
    table = pd.DataFrame({"benchmark": ["new"], "ratio": [0.25]})
    machine.write_page(tmp_path / "s", speed.PAGE_HEAD, "K/AVX512/avx512_bf16",
                       "## K\n\n| y | 2 |\n", table)
    head, sections = machine.page_sections((tmp_path / "s.md").read_text())
    assert head.startswith(speed.PAGE_HEAD.splitlines()[0])
    assert sections[machine.UNRECORDED] == "Command: old\n\n| x | 1 |\n"
    assert list(sections) == [machine.UNRECORDED, "K/AVX512/avx512_bf16"]
    csv = pd.read_csv(tmp_path / "s.csv")
    assert csv.columns[0] == "machine"
    assert csv.to_dict("records") == [
        {"machine": machine.UNRECORDED, "benchmark": "old", "ratio": 0.5},
        {"machine": "K/AVX512/avx512_bf16", "benchmark": "new", "ratio": 0.25}]
    # the same kind again replaces its rows and section only
    machine.write_page(tmp_path / "s", speed.PAGE_HEAD, "K/AVX512/avx512_bf16",
                       "## K\n\n| y | 3 |\n", table.assign(ratio=0.2))
    csv = pd.read_csv(tmp_path / "s.csv")
    assert csv["machine"].tolist() == [machine.UNRECORDED, "K/AVX512/avx512_bf16"]
    assert csv["ratio"].tolist() == [0.5, 0.2]
    assert not list(tmp_path.glob("*.tmp"))


def test_the_committed_page_keeps_the_avx2_section_first():
    """docs/results.md copies the page's first table: the AVX2 section stays first."""
    _, sections = machine.page_sections((speed.RESULTS / "speed.md").read_text())
    assert next(iter(sections)) == "AuthenticAMD/AVX2/no-bf16"
    csv = pd.read_csv(speed.RESULTS / "speed.csv")
    assert set(csv["machine"]) >= {"AuthenticAMD/AVX2/no-bf16"}


def test_a_run_of_some_sections_is_refused_where_it_would_drop_others(tmp_path, capsys):
    page = tmp_path / "speed.md"
    page.write_text(machine.merge_page("", "# Speed\n", "K", "## Machine kind `K`\n\n"
                                       "### Train step (x)\n\n### Memory\n\nPeak RSS\n"))
    assert speed.dropped_sections(page, "K", ["train"]) == ["memory"]
    assert speed.dropped_sections(page, "K", ["train", "memory"]) == []
    assert speed.dropped_sections(page, "other kind", ["train"]) == []
    assert speed.dropped_sections(tmp_path / "none.md", "K", ["train"]) == []
    kind = machine.machine_kind("cpu", machine.cpu_features())
    page.write_text(machine.merge_page("", "# Speed\n", kind, "### Memory\n\nPeak\n"))
    with pytest.raises(SystemExit):
        speed.main(["--sections", "train", "--out", str(tmp_path)])
    assert "would drop" in capsys.readouterr().err and page.read_text().count("Peak") == 1
