"""Progress bars for the long silent steps (adagrpo.progress): on stderr, only on a terminal or when forced,
never with ADAGRPO_QUIET; they leave results and stdout untouched."""

from __future__ import annotations

import torch

from adagrpo import progress as prog
from adagrpo.datamodules.rqkmeans import rq_kmeans


def test_bars_on_stderr_when_forced(monkeypatch, capsys):
    monkeypatch.delenv(prog.QUIET_ENV, raising=False)
    monkeypatch.setenv(prog.FORCE_ENV, "1")
    assert prog.enabled()
    assert list(prog.progress(range(5), "counting", unit="x")) == [0, 1, 2, 3, 4]
    out = capsys.readouterr()
    assert "counting" in out.err and out.out == ""


def test_quiet_wins_and_no_terminal_means_no_bar(monkeypatch, capsys):
    monkeypatch.setenv(prog.FORCE_ENV, "1")
    prog.set_quiet()
    try:
        assert not prog.enabled()
        assert list(prog.progress(range(3), "quiet")) == [0, 1, 2]
    finally:
        prog.set_quiet(False)
    monkeypatch.delenv(prog.FORCE_ENV)
    assert not prog.enabled()  # pytest captures stderr: not a terminal
    assert list(prog.progress(iter("ab"), "plain")) == ["a", "b"]
    assert capsys.readouterr().err == ""


def test_rq_kmeans_shows_its_levels_and_gives_the_same_codes(monkeypatch, capsys):
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    monkeypatch.delenv(prog.FORCE_ENV, raising=False)
    plain = rq_kmeans(x, [8, 4], iters=10, seed=3)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(prog.FORCE_ENV, "1")
    shown = rq_kmeans(x, [8, 4], iters=10, seed=3)
    err = capsys.readouterr().err
    assert "RQ-KMeans level 1/2" in err and "RQ-KMeans level 2/2" in err
    assert torch.equal(plain.codes, shown.codes)
