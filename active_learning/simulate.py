"""Pool-based active-learning simulation: how does the query strategy change what the model learns?

From a labeled folder (`train/<class>/`, `validation/<class>/`), the training split becomes the pool
whose labels are hidden until queried, and the validation split stays the yardstick. For each seed
and each strategy: start from `initial` clips (one of each class, the rest drawn at random with the
seed; the same start for every strategy), then `rounds` times fine-tune the model on everything
labeled so far (`training.loop.train`, from the previous round's model, as the orcaal client does),
record validation accuracy, ROC AUC and average precision, score the rest of the pool
(`active_learning.embedding.ModelProbe`) and move the `k` clips the strategy picks (`active_learning.acquisition`)
into the labeled set. One line per strategy in the plot, the seeds' spread as a band.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .acquisition import names, needs, select
from scoring.stream import decode_checked
from training.data import find_classes, list_split
from training.errors import TrainingError

log = logging.getLogger(__name__)


@dataclass
class SimulationConfig:
    model: str  # a model file (.h5, .pt, .onnx) every run starts from
    labeled_dir: str
    rows: int
    cols: int
    strategies: list[str] = field(default_factory=lambda: ["uncertainty", "random"])
    seeds: list[int] = field(default_factory=lambda: [0])
    initial: int = 4
    k: int = 4
    rounds: int = 3
    epochs: int = 2
    passes: int = 10
    batch_size: int = 32
    device: str | None = None


def _check(config: SimulationConfig, pool_size: int, n_classes: int) -> None:
    unknown = [s for s in config.strategies if s not in names()]
    if unknown:
        raise TrainingError(f"unknown strategy {unknown[0]!r}; one of {', '.join(names())}")
    if n_classes != 2:
        raise TrainingError(f"the simulation needs two classes, found {n_classes}")
    if config.initial < 2 or config.k < 1 or config.rounds < 1 or config.epochs < 1:
        raise TrainingError("initial must be at least 2, and k, rounds and epochs at least 1")
    if config.initial + config.k * (config.rounds - 1) > pool_size:
        raise TrainingError(f"the pool has {pool_size} training images: too few for initial={config.initial} "
                            f"plus k={config.k} for {config.rounds - 1} more rounds")


def initial_picks(labels: np.ndarray, n: int, seed: int) -> list[int]:
    """One clip of each class, then random ones: the same start for every strategy of a seed."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    picks = [int(next(i for i in order if labels[i] == c)) for c in np.unique(labels)]
    picks += [int(i) for i in order if int(i) not in picks][:max(0, n - len(picks))]
    return picks


def _lay_out(folder: Path, classes: list[str], pool_paths, labels, picks, validation_dir: Path) -> None:
    """`folder/train/<class>/` with links to the picked pool clips, `folder/validation` → the real one."""
    if folder.exists():
        shutil.rmtree(folder)
    for name in classes:
        (folder / "train" / name).mkdir(parents=True)
    for i in picks:
        source = Path(pool_paths[i])
        target = folder / "train" / classes[labels[i]] / f"{i:06d}_{source.name}"
        try:
            os.symlink(source.resolve(), target)
        except OSError:
            shutil.copyfile(source, target)
    os.symlink(validation_dir.resolve(), folder / "validation", target_is_directory=True)


def _probe_pool(model_path: str, pixels: np.ndarray, rest: list[int], strategy: str, config: SimulationConfig,
                seed: int):
    from conversion.formats import load_trainable

    from .embedding import ModelProbe

    probe = ModelProbe(load_trainable(model_path), device=config.device, batch_size=config.batch_size)
    embeddings, probabilities, passes = [], [], []
    wanted = needs(strategy)
    for start in range(0, len(rest), config.batch_size):
        batch = pixels[rest[start:start + config.batch_size]]
        e, p = probe.embed(batch)
        embeddings.append(e)
        probabilities.append(p)
        if wanted.passes:
            passes.append(probe.mc_passes(batch, config.passes, seed * 7919 + start))
    return (np.concatenate(probabilities), np.concatenate(embeddings),
            np.concatenate(passes, axis=1) if passes else None, probe)


def run_strategy(config: SimulationConfig, strategy: str, seed: int, pool_paths, labels, pixels,
                 classes, validation_dir: Path, work: Path, on_round=None, pixel_cache=None) -> list[dict]:
    """One learning curve: a row per round (labels used, validation metrics, seconds). `pixel_cache`
    (a `scoring.pixel_cache.PixelCache`): each round's training reads the clips decoded before from it
    (keyed by the real file behind the round's links), so an audio clip's spectrogram is drawn once."""
    from scoring.clips import file_clip_identity
    from training.loop import train

    labeled = initial_picks(labels, config.initial, seed)
    model = config.model
    rows = []
    for round_number in range(1, config.rounds + 1):
        started = time.perf_counter()
        folder = work / f"{strategy}-{seed}-round{round_number}"
        _lay_out(folder, classes, pool_paths, labels, labeled, validation_dir)
        out = work / f"{strategy}-{seed}-round{round_number}{Path(config.model).suffix}"
        result = train(model, folder, config.rows, config.cols, config.epochs, out, device=config.device,
                       seed=seed, batch_size=config.batch_size, log=log, pixel_cache=pixel_cache,
                       identity=file_clip_identity if pixel_cache is not None else None)
        row = {"round": round_number, "labels": len(labeled), "val_acc": result.model_acc,
               "val_loss": result.model_loss, "roc_auc": result.roc_auc,
               "average_precision": result.average_precision}
        model = str(out)
        if round_number < config.rounds:
            taken = set(labeled)
            rest = [i for i in range(len(labels)) if i not in taken]
            p, embeddings, passes, probe = _probe_pool(model, pixels, rest, strategy, config, seed)
            labeled_embeddings = probe.embed(pixels[labeled])[0] if needs(strategy).labeled_embeddings else None
            chosen = select(strategy, config.k, probabilities=p, passes=passes, embeddings=embeddings,
                            labeled_embeddings=labeled_embeddings, seed=seed * 1000 + round_number)
            labeled = labeled + [rest[i] for i in chosen.indices.tolist()]
        row["seconds"] = round(time.perf_counter() - started, 3)
        rows.append(row)
        if on_round is not None:
            on_round(strategy, seed, row)
    return rows


def simulate(config: SimulationConfig, on_round=None) -> dict:
    """Run every strategy for every seed; returns {"config", "classes", "pool", "validation", "runs"}."""
    root = Path(config.labeled_dir)
    classes = find_classes(root)
    pool = list_split(root, "train", classes)
    validation = list_split(root, "validation", classes)
    _check(config, len(pool), len(classes))
    if not len(validation):
        raise TrainingError(f"{root / 'validation'} holds no images")
    # decoded once: images, and audio clips drawn as their spectrogram (scoring.clips)
    pixels = np.stack([decode_checked(p, config.rows, config.cols) for p in pool.paths])
    runs = []
    with tempfile.TemporaryDirectory(prefix="orca-simulate-") as tmp:
        from scoring.pixel_cache import PixelCache

        cache = PixelCache(Path(tmp) / "pixels", max_bytes=(len(pool) + len(validation) + 1) * config.rows * config.cols * 4)
        for seed in config.seeds:
            for strategy in config.strategies:
                rows = run_strategy(config, strategy, seed, pool.paths, pool.labels, pixels, classes,
                                    root / "validation", Path(tmp) / "runs", on_round, pixel_cache=cache)
                runs.append({"strategy": strategy, "seed": seed, "rounds": rows})
    return {"config": asdict(config), "classes": classes, "pool": len(pool), "validation": len(validation),
            "runs": runs}


METRICS = (("val_acc", "validation accuracy"), ("roc_auc", "ROC AUC"), ("average_precision", "average precision"))


def plot(results: dict, path: str | os.PathLike) -> str:
    """Labels used against each metric, one line per strategy (mean over seeds), min–max band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(METRICS))
    strategies = list(dict.fromkeys(run["strategy"] for run in results["runs"]))
    for ax, (key, title) in zip(axes, METRICS):
        for strategy in strategies:
            runs = [run["rounds"] for run in results["runs"] if run["strategy"] == strategy]
            labels = [row["labels"] for row in runs[0]]
            values = np.array([[np.nan if row[key] is None else row[key] for row in rounds] for rounds in runs])
            mean = np.nanmean(values, axis=0)
            line, = ax.plot(labels, mean, marker="o", label=strategy)
            if len(runs) > 1:
                ax.fill_between(labels, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                                color=line.get_color(), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("labeled clips")
        ax.grid(alpha=0.3)
    seeds = len({run["seed"] for run in results["runs"]})
    axes[0].legend(title=f"mean of {seeds} seed{'s' if seeds > 1 else ''}" + (", min–max" if seeds > 1 else ""))
    figure.suptitle(f"pool {results['pool']}, validation {results['validation']}")
    figure.savefig(path)
    return os.fspath(path)


def write(results: dict, out_dir: str | os.PathLike) -> tuple[str, str]:
    """`simulation.json` and `simulation.png` in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "simulation.json").write_text(json.dumps(results, indent=1) + "\n")
    return str(out / "simulation.json"), plot(results, out / "simulation.png")
