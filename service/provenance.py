"""Provenance of every model version the service writes: a JSON sidecar `NAME_N.json` and a PNG of
the training curves `NAME_N.png`, beside `NAME_N.h5` in the same storage, written after the model
and never overwriting anything. `list_versions` reads them back for `GET /models`.

Sidecar (schema "orca-model-provenance/1"):

    {"schema", "model_url", "created" (ISO 8601 UTC), "service_version", "device",
     "precision" ("fp32" or "bf16": the forward passes of the training; weights stay float32), "duration_s",
     "parent": {"model_url", "etag", "size"},
     "labeled": {"url", "classes", "counts": {"train": {class: n}, "validation": {class: n}},
                 "objects": n, "listing_sha256": sha256 of the sorted "key<TAB>etag-or-size" lines},
     "hyperparameters": {"epochs", "batch_size", "optimizer", "optimizer_params", "learning_rate",
                         "seed", "img_width", "img_height", "augment", "loss", "precision"},
     "metrics": {"epochs": [{"epoch", "loss", "acc", "val_loss", "val_acc"}, ...], "best_epoch",
                 "cm": [tn, fp, fn, tp], "model_acc", "model_loss", "roc_auc", "average_precision"},
     "skipped_files": [{"url", "split", "reason"}], "curves_url",
     "tensorboard" (where the training's TensorBoard event files are: `NAME_N.tensorboard/` beside the
                    model, or a folder under ORCA_TENSORBOARD_DIR; absent with `off`),
     "labelstudio" (a training from a Label Studio project only: {"url", "project", "tasks", "annotations":
                    [annotation ids used], "skipped": [{"task", "reason"}]})}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import posixpath

from conversion.model_formats import is_model_file

from .errors import AlreadyExists, ServiceError
from .storage import Location, ObjectInfo
from .versions import split_version

log = logging.getLogger(__name__)

SCHEMA = "orca-model-provenance/1"


def listing_digest(objects: list[ObjectInfo], prefix: str) -> str:
    """sha256 of the sorted `relative key<TAB>etag (or size)` lines of a dataset listing."""
    lines = sorted(f"{o.key[len(prefix):]}\t{o.etag or o.size}" for o in objects)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def sidecar_name(model_name: str, ext: str) -> str:
    return posixpath.splitext(model_name)[0] + ext


def build_sidecar(*, written: Location, parent: Location, parent_info: ObjectInfo | None, labeled: Location,
                  labeled_objects: list[ObjectInfo], result, skipped_urls: list[dict], duration_s: float,
                  version: str) -> dict:
    epochs = [{"epoch": i + 1, "loss": l, "acc": a, "val_loss": vl, "val_acc": va}
              for i, (l, a, vl, va) in enumerate(zip(result.loss, result.acc, result.val_loss, result.val_acc))]
    return {
        "schema": SCHEMA,
        "model_url": written.url,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "service_version": version,
        "device": result.device,
        "precision": getattr(result, "precision", "fp32"),
        "duration_s": round(float(duration_s), 3),
        "training_duration_s": round(float(result.duration_s), 3),
        "parent": {"model_url": parent.url, "etag": parent_info.etag if parent_info else None,
                   "size": parent_info.size if parent_info else None},
        "labeled": {"url": labeled.prefix_url, "classes": result.classes, "counts": result.counts,
                    "labeled_files": result.labeled_files, "objects": len(labeled_objects),
                    "listing_sha256": listing_digest(labeled_objects, labeled.prefix)},
        "hyperparameters": result.hyperparameters,
        "metrics": {"epochs": epochs, "best_epoch": result.best_epoch, "cm": result.cm,
                    "model_acc": result.model_acc, "model_loss": result.model_loss,
                    "roc_auc": result.roc_auc, "average_precision": result.average_precision},
        "skipped_files": skipped_urls,
        "curves_url": written.sibling(sidecar_name(written.name, ".png")).url,
    }


# ------------------------------------------------------------------------------------- the PNG

def _finite(values) -> list[float]:
    """Floats, with None, NaN and ±inf as NaN (matplotlib leaves a gap there)."""
    out = []
    for v in values or []:
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = float("nan")
        out.append(v if abs(v) != float("inf") else float("nan"))
    return out


def curves_png(result, title: str = "") -> bytes:
    """Two panels, loss and accuracy per epoch (training solid, validation dashed), drawn with
    matplotlib's Agg canvas on a figure of its own (no pyplot, so it is safe in a worker thread)."""
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    panels = [("loss", result.loss, result.val_loss), ("accuracy", result.acc, result.val_acc)]
    n = 0
    for ax, (name, train_values, val_values) in zip(axes, panels):
        train_values, val_values = _finite(train_values), _finite(val_values)
        n = max(n, len(train_values), len(val_values))
        for values, label, style in ((train_values, "training", {"color": "#1f77b4", "linestyle": "-",
                                                                 "marker": "o"}),
                                     (val_values, "validation", {"color": "#ff7f0e", "linestyle": "--",
                                                                 "marker": "s", "markerfacecolor": "white"})):
            ax.plot(range(1, len(values) + 1), values, label=label, linewidth=2, markersize=5, **style)
        ax.set_title(f"{name} per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_xlim(0.5, max(len(train_values), len(val_values), 1) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        shown = [v for v in train_values + val_values if not math.isnan(v)]
        if shown and name == "accuracy" and all(0 <= v <= 1 for v in shown):
            ax.set_ylim(-0.03, 1.03)
        if not shown:
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.grid(True, color="#dddddd", linewidth=0.8)
        ax.legend(loc="best", frameon=False)
    epochs = f"{n} epoch" + ("" if n == 1 else "s")
    figure.suptitle(f"{title} \N{EM DASH} {epochs}" if title else f"training curves \N{EM DASH} {epochs}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


# ------------------------------------------------------------------------------------- writing

def _upload_new(storage, path: str, key: str) -> bool:
    """Upload `path` as `key` unless `key` exists: never overwrite (logged; False then)."""
    try:
        storage.upload(path, key)
        return True
    except AlreadyExists:
        log.warning("not overwriting %s (it exists already)", storage.url(key))
        return False


def write_beside(written: Location, sidecar: dict, png: bytes | None, tmp: str) -> list[str]:
    """Upload the sidecar (and PNG) beside the written model; never overwrite. Returns their URLs."""
    out = []
    items = [(".json", json.dumps(sidecar, indent=2, sort_keys=True).encode())]
    if png is not None:
        items.append((".png", png))
    for ext, data in items:
        target = written.sibling(sidecar_name(written.name, ext))
        path = os.path.join(tmp, "sidecar" + ext)
        with open(path, "wb") as f:
            f.write(data)
        if _upload_new(target.storage, path, target.key):
            out.append(target.url)
    return out


def tensorboard_folder(written: Location) -> Location:
    """Where a version's TensorBoard event files go: `<NAME_N>.tensorboard/` beside it."""
    return written.sibling(sidecar_name(written.name, ".tensorboard") + "/")


def upload_tensorboard(written: Location, folder: str) -> str:
    """Upload the event files of `folder` beside the written model; returns the folder's URL."""
    target = tensorboard_folder(written)
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            path = os.path.join(root, name)
            _upload_new(target.storage, path, target.key + os.path.relpath(path, folder).replace(os.sep, "/"))
    return target.url


# ------------------------------------------------------------------------------------- listing

def _summary(sidecar: dict) -> dict:
    metrics = sidecar.get("metrics") or {}
    hyper = sidecar.get("hyperparameters") or {}
    labeled = sidecar.get("labeled") or {}
    return {
        "created": sidecar.get("created"),
        "parent_model_url": (sidecar.get("parent") or {}).get("model_url"),
        "labeled_url": labeled.get("url"),
        "labeled_files": labeled.get("labeled_files"),
        "listing_sha256": labeled.get("listing_sha256"),
        "epochs": hyper.get("epochs"),
        "model_acc": metrics.get("model_acc"),
        "model_loss": metrics.get("model_loss"),
        "roc_auc": metrics.get("roc_auc"),
        "average_precision": metrics.get("average_precision"),
        "cm": metrics.get("cm"),
        "skipped_files": len(sidecar.get("skipped_files") or []),
        "device": sidecar.get("device"),
        "duration_s": sidecar.get("duration_s"),
        "service_version": sidecar.get("service_version"),
    }


def list_versions(folder: Location, limit: int = 1000) -> list[dict]:
    """Model files directly in `folder`, newest version first, each with its sidecar's summary
    (`"sidecar": null` for a model without one, e.g. the seed model)."""
    prefix = folder.prefix
    objects = folder.storage.list(prefix)
    names = {o.key[len(prefix):]: o for o in objects if "/" not in o.key[len(prefix):]}
    models = [(name, info) for name, info in names.items() if is_model_file(name)]  # .h5, .onnx, .pt

    def order(item):
        base, n, _ = split_version(item[0])
        return (-(n if n is not None else -1), base)

    models.sort(key=order)
    out = []
    for name, info in models[:limit]:
        location = Location(folder.storage, info.key, folder.prefix_url + name)
        base, n, _ = split_version(name)
        entry = {"model_url": location.url, "name": name, "version": n, "size": info.size, "etag": info.etag,
                 "sidecar_url": None, "curves_url": None, "sidecar": None}
        json_name, png_name = sidecar_name(name, ".json"), sidecar_name(name, ".png")
        if png_name in names:
            entry["curves_url"] = folder.prefix_url + png_name
        if json_name in names:
            entry["sidecar_url"] = folder.prefix_url + json_name
            try:
                entry["sidecar"] = _summary(json.loads(folder.storage.read_bytes(names[json_name].key)))
            except (ServiceError, ValueError, AttributeError) as error:
                entry["sidecar"] = {"error": f"unreadable sidecar: {getattr(error, 'message', error)}"}
        out.append(entry)
    return out
