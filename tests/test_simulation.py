"""The pool-based active-learning simulation, end to end on the bundled sample data and on a small
synthetic set: real training rounds, real queries, JSON and plot."""

from __future__ import annotations

import json

import torch  # noqa: F401  (before anything that may import TensorFlow)

import numpy as np
import pytest
from PIL import Image

from bench.synthetic_calls import write_set
from models.create import write_new_model
from active_learning.simulate import SimulationConfig, initial_picks, simulate, write

ROWS, COLS = 32, 40


def test_initial_picks_hold_both_classes_and_depend_only_on_the_seed():
    labels = np.array([0] * 18 + [1] * 2)
    for seed in range(5):
        picks = initial_picks(labels, 4, seed)
        assert len(set(picks)) == 4 and set(labels[picks]) == {0, 1}
        assert picks == initial_picks(labels, 4, seed)


@pytest.mark.slow
def test_simulation_runs_every_strategy_from_the_same_start_and_plots_it(tmp_path, sample_dir):
    model = tmp_path / "small_cnn_0.pt"
    write_new_model("small_cnn", model, ROWS, COLS, seed=0)
    config = SimulationConfig(model=str(model), labeled_dir=str(sample_dir), rows=ROWS, cols=COLS,
                              strategies=["uncertainty", "bald", "coreset"], seeds=[0], initial=4, k=2,
                              rounds=2, epochs=1, passes=3, device="cpu")
    seen = []
    results = simulate(config, on_round=lambda strategy, seed, row: seen.append((strategy, row["labels"])))
    assert seen == [(s, n) for s in ("uncertainty", "bald", "coreset") for n in (4, 6)]
    assert results["pool"] == 10 and results["validation"] == 4
    for run in results["runs"]:
        first, second = run["rounds"]
        assert 0.0 <= first["val_acc"] <= 1.0 and second["labels"] == first["labels"] + 2
    firsts = {run["strategy"]: run["rounds"][0]["val_acc"] for run in results["runs"]}
    assert len(set(firsts.values())) == 1  # round 1 trains every strategy on the same initial clips
    json_path, png_path = write(results, tmp_path / "out")
    assert json.loads(open(json_path).read())["runs"][0]["strategy"] == "uncertainty"
    with Image.open(png_path) as image:
        assert image.size == (1300, 420)


def test_synthetic_set_is_seeded_and_balanced(tmp_path):
    first = write_set(tmp_path / "a", train=6, validation=2, rows=24, cols=32, seed=4)
    second = write_set(tmp_path / "b", train=6, validation=2, rows=24, cols=32, seed=4)
    files = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert len(files) == 8 and len([f for f in files if f.parts[:2] == ("train", "calls")]) == 3
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
