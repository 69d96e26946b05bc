"""`adagrpo compare`: paired per-seed differences and runs read from several MLflow stores, on small
hand-made stores (no training)."""

from __future__ import annotations

import csv
import math
import re
import time

import pytest

from adagrpo.cli import main
from adagrpo.compare import CompareError, RunRow, collect, paired

EXP = "study"


def make_store(path, runs: dict[str, dict[str, float]], experiment: str = EXP,
               tags: dict[str, dict[str, str]] | None = None) -> str:
    """A SQLite MLflow store with ``experiment`` holding ``runs`` (name → metrics; ``tags``: name → tags), logged
    in order."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{path}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment)
    for name, metrics in runs.items():
        run = client.create_run(exp_id, run_name=name, tags=(tags or {}).get(name))
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
    return uri


def row(variant: str, seed: int | None, **values: float) -> RunRow:
    name = variant if seed is None else f"{variant}-s{seed}"
    return RunRow(name=name, variant=variant, label=variant, seed=seed,
                  values={k.replace("__", "/"): v for k, v in values.items()})


def test_paired_differences_by_seed():
    rows = [row("base", 0, test__hr_10=0.50), row("base", 1, test__hr_10=0.60), row("base", 2, test__hr_10=0.70),
            row("ada", 0, test__hr_10=0.52), row("ada", 1, test__hr_10=0.63), row("ada", 2, test__hr_10=0.71),
            row("lone", 7, test__hr_10=0.90)]  # seed 7 has no baseline run: no pair
    out = {e["variant"]: e for e in paired(rows, "base", ["test/hr_10"])}
    assert set(out) == {"ada", "lone"}
    # differences 0.02, 0.03, 0.01: mean 0.02, sample std 0.01
    assert out["ada"]["runs"] == 3
    assert out["ada"]["test/hr_10"] == pytest.approx(0.02)
    assert out["ada"]["test/hr_10:std"] == pytest.approx(0.01)
    assert out["lone"]["runs"] == 0 and math.isnan(out["lone"]["test/hr_10"])


def test_paired_with_a_single_unseeded_baseline_pairs_every_run():
    rows = [row("sft", None, test__hr_10=0.40), row("ada", 0, test__hr_10=0.45), row("ada", 1, test__hr_10=0.35),
            row("ada", 2, test__hr_10=0.43)]
    out = paired(rows, "sft", ["test/hr_10", "test_last/hr_10"])
    assert len(out) == 1 and out[0]["runs"] == 3
    assert out[0]["test/hr_10"] == pytest.approx((0.05 - 0.05 + 0.03) / 3)
    assert math.isnan(out[0]["test_last/hr_10"])  # a metric the baseline lacks gives no difference


def test_paired_unknown_baseline_names_the_variants():
    with pytest.raises(CompareError, match=r"'nope'.*\['ada', 'sft'\]"):
        paired([row("sft", None, test__hr_10=0.4), row("ada", 0, test__hr_10=0.5)], "nope", ["test/hr_10"])


def test_collect_merges_stores_and_the_latest_run_of_a_name_wins(tmp_path):
    older = make_store(tmp_path / "older.db", {"ada-s0": {"test/hr_10": 0.10}, "ada-s1": {"test/hr_10": 0.33},
                                               "reward": {"val/auc": 0.7}})
    time.sleep(0.01)  # MLflow start times are in milliseconds
    newer = make_store(tmp_path / "newer.db", {"sft": {"test/hr_10": 0.30}, "ada-s0": {"test/hr_10": 0.35}})
    for primary, extra in ((older, newer), (newer, older)):  # by start time, not by the order of the stores
        rows = {r.name: r for r in collect(EXP, primary, also_from=[extra])}
        assert set(rows) == {"sft", "ada-s0", "ada-s1"}  # the reward model has no test metrics
        assert rows["ada-s0"].values["test/hr_10"] == 0.35
        assert rows["ada-s1"].seed == 1 and rows["sft"].seed is None


def test_collect_names_the_store_that_lacks_the_experiment(tmp_path):
    first = make_store(tmp_path / "a.db", {"sft": {"test/hr_10": 0.30}})
    other = make_store(tmp_path / "other.db", {"sft": {"test/hr_10": 0.30}}, experiment="another")
    with pytest.raises(CompareError, match=f"no MLflow experiment named 'study' in {re.escape(other)}.*another"):
        collect(EXP, first, also_from=[other])


def test_collect_refuses_a_missing_sqlite_store_without_creating_it(tmp_path):
    first = make_store(tmp_path / "a.db", {"sft": {"test/hr_10": 0.30}})
    typo = f"sqlite:///{tmp_path / 'typo.db'}"
    with pytest.raises(CompareError, match=f"no MLflow store at {re.escape(typo)}"):
        collect(EXP, first, also_from=[typo])
    assert not (tmp_path / "typo.db").exists()


def test_paired_refuses_a_baseline_mixing_seeded_and_unseeded_runs():
    rows = [row("base", None, test__hr_10=0.5), row("base", 0, test__hr_10=0.5), row("ada", 0, test__hr_10=0.6)]
    with pytest.raises(CompareError, match="mix seeded and unseeded"):
        paired(rows, "base", ["test/hr_10"])


def test_paired_counts_only_pairs_where_the_metric_exists():
    rows = [row("base", 0, test__hr_10=0.5), row("base", 1, test__hr_10=0.5),
            row("ada", 0, test__hr_10=0.6, test_last__hr_10=0.7), row("ada", 1, test__hr_10=0.4)]
    rows[0].values["test_last/hr_10"] = 0.55  # only seed 0 has a final-checkpoint metric on both sides
    (out,) = paired(rows, "base", ["test/hr_10", "test_last/hr_10"])
    assert out["runs"] == 2 and out["test/hr_10:n"] == 2 and out["test_last/hr_10:n"] == 1
    assert out["test_last/hr_10"] == pytest.approx(0.15)


def test_cli_prints_and_writes_the_paired_table(tmp_path, capsys):
    first = make_store(tmp_path / "a.db", {"base-s0": {"test/hr_10": 0.50}, "base-s1": {"test/hr_10": 0.60},
                                           "sft": {"test/hr_10": 0.55}})
    second = make_store(tmp_path / "b.db", {"ada-s0": {"test/hr_10": 0.52}, "ada-s1": {"test/hr_10": 0.64},
                                            "bad-s1": {"test/hr_10": 0.45}})
    rc = main(["compare", "--experiment", EXP, "--tracking-uri", first, "--also-from", second, "--paired", "base",
               "--out", str(tmp_path / "out"), "--no-mlflow"])
    out = capsys.readouterr().out
    assert rc == 0, out
    section = out.split("paired with base", 1)[1]
    ada = next(line for line in section.splitlines() if line.startswith("ada"))
    assert ada.split()[1] == "2" and ada.split()[2] == "+0.030±0.014"  # differences 0.02 and 0.04
    bad = next(line for line in section.splitlines() if line.startswith("bad"))
    assert bad.split()[1:3] == ["1", "-0.1500"]  # one pair: no ± ; negative differences keep their sign
    assert "no run shares a seed with base: sft" in section
    assert f"csv:   {tmp_path / 'out' / 'compare_paired_base.csv'}" in out
    assert f"plot:  {tmp_path / 'out' / 'paired_base.png'}" in out  # the per-seed dot plot
    assert (tmp_path / "out" / "paired_base.png").stat().st_size > 1000
    with (tmp_path / "out" / "compare_paired_base.csv").open() as fh:
        records = list(csv.DictReader(fh))
    assert [r["variant"] for r in records] == ["ada", "bad"]
    assert records[0]["pairs"] == "2" and float(records[0]["test/hr_10"]) == pytest.approx(0.03)


def test_cli_unknown_paired_variant_fails_cleanly(tmp_path, capsys):
    first = make_store(tmp_path / "a.db", {"sft": {"test/hr_10": 0.30}})
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "--experiment", EXP, "--tracking-uri", first, "--paired", "missing",
              "--out", str(tmp_path / "out"), "--no-mlflow"])
    assert exit_.value.code == 2
    assert "--paired 'missing': no such variant (variants: ['sft'])" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written before the error


def test_table_shows_true_filtered_and_repeat_columns_that_some_run_logged(tmp_path, capsys):
    store = make_store(tmp_path / "a.db", {
        "sft": {"test/hr_10": 0.30, "test/true/hr_10": 0.70, "test/filtered/hr_10": 0.33,
                "test/filtered/true/hr_10": 0.80, "test/repeat_rate_10": 0.25},
        "ada-s0": {"test/hr_10": 0.31, "test/repeat_rate_10": 0.10},  # logged before the filter existed
    })
    rc = main(["compare", "--experiment", EXP, "--tracking-uri", store, "--out", str(tmp_path / "out"), "--no-mlflow"])
    out = capsys.readouterr().out
    assert rc == 0, out
    header = next(line for line in out.splitlines() if line.startswith("variant"))
    titles = re.split(r"\s{2,}", header.strip())
    assert titles[2:5] == ["best HR@10", "best NDCG@10", "best halluc."]  # today's columns first, unchanged
    for title in ("best true HR@10", "best filt. HR@10", "best filt. true HR@10", "best repeat@10"):
        assert title in titles
    assert "final true HR@10" not in titles  # no run has test_last/... metrics: no empty columns
    sft = next(line for line in out.splitlines() if line.startswith("sft"))
    cells = dict(zip(titles, re.split(r"\s{2,}", sft.strip())))
    assert cells["best filt. true HR@10"] == "0.8000" and cells["best repeat@10"] == "0.2500"
    ada = next(line for line in out.splitlines() if line.startswith("ada"))
    assert dict(zip(titles, re.split(r"\s{2,}", ada.strip())))["best filt. HR@10"] == "-"


def test_collect_reads_variant_and_seed_tags_and_skips_report_runs(tmp_path):
    store = make_store(tmp_path / "a.db", {
        "ada-s0": {"test/hr_10": 0.30},  # an old run: no tags, its name says variant and seed
        "my adagrpo run": {"test/hr_10": 0.40},  # tags say what the name does not
        "compare": {"test/hr_10": 0.99},  # a report run, even if it carried such a metric
    }, tags={"my adagrpo run": {"variant": "ada", "seed": "1", "stage": "rl"},
             "compare": {"adagrpo.kind": "comparison"}})
    rows = {r.name: r for r in collect(EXP, store)}
    assert set(rows) == {"ada-s0", "my adagrpo run"}
    assert (rows["ada-s0"].variant, rows["ada-s0"].seed) == ("ada", 0)
    assert (rows["my adagrpo run"].variant, rows["my adagrpo run"].seed) == ("ada", 1)


@pytest.mark.parametrize("value, std, signed, text", [
    (0.094123, None, False, "0.09412"),
    (0.5, None, False, "0.5000"),
    (0.094123, 0.0032, False, "0.0941±0.0032"),
    (0.000412, 0.0000312, False, "0.000412±0.000031"),  # the spread that printed as ±0.0000
    (0.03, 0.014142, True, "+0.030±0.014"),
    (-0.15, None, True, "-0.1500"),
    (0.25, 0.0, False, "0.2500±0"),
    (math.nan, 0.1, False, "-"),
    (12.3456, 1.234, False, "12.3±1.2"),
])
def test_numbers_print_with_significant_figures(value, std, signed, text):
    from adagrpo.compare import format_value

    assert format_value(value, std, signed) == text


def test_frontier_axis_is_logarithmic_when_rates_span_more_than_a_decade():
    from adagrpo.compare import log_threshold

    assert log_threshold([0.094, 0.002, 0.003, 0.0]) == pytest.approx(0.001)  # pure GRPO next to anchored ones
    assert log_threshold([0.02, 0.01, 0.0]) is None
    assert log_threshold([0.0, 0.0]) is None
