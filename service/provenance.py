"""Provenance of every model version the service writes: a JSON sidecar `NAME_N.json` and a PNG of
the training curves `NAME_N.png`, beside `NAME_N.h5` in the same storage, written after the model
and never overwriting anything. `list_versions` reads them back for `GET /models`.

Sidecar (schema "orca-model-provenance/1"):

    {"schema", "model_url", "created" (ISO 8601 UTC), "service_version", "device", "duration_s",
     "parent": {"model_url", "etag", "size"},
     "labeled": {"url", "classes", "counts": {"train": {class: n}, "validation": {class: n}},
                 "objects": n, "listing_sha256": sha256 of the sorted "key<TAB>etag-or-size" lines},
     "hyperparameters": {"epochs", "batch_size", "optimizer", "optimizer_params", "learning_rate",
                         "seed", "img_width", "img_height", "augment", "loss"},
     "metrics": {"epochs": [{"epoch", "loss", "acc", "val_loss", "val_acc"}, ...], "best_epoch",
                 "cm": [tn, fp, fn, tp], "model_acc", "model_loss", "roc_auc", "average_precision"},
     "skipped_files": [{"url", "split", "reason"}], "curves_url"}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import posixpath

from .errors import AlreadyExists, ServiceError
from .storage import Location, ObjectInfo
from .versions import split_version

log = logging.getLogger(__name__)

SCHEMA = "orca-model-provenance/1"
MODEL_EXTENSIONS = (".h5", ".hdf5", ".keras")


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

def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def curves_png(result, title: str = "") -> bytes:
    """Two panels, loss and accuracy per epoch (training solid, validation dashed), drawn with PIL."""
    from PIL import Image, ImageDraw

    width, height, margin = 960, 420, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(12)
    draw.text((margin, 8), title or "training curves", fill="black", font=font)
    panels = [("loss", result.loss, result.val_loss), ("accuracy", result.acc, result.val_acc)]
    panel_width = (width - 3 * margin) // 2
    colors = ("#1f77b4", "#ff7f0e")
    for p, (name, train_values, val_values) in enumerate(panels):
        left, top = margin + p * (panel_width + margin), 50
        right, bottom = left + panel_width, height - margin
        draw.rectangle((left, top, right, bottom), outline="black")
        draw.text((left, bottom + 22), f"{name} per epoch", fill="black", font=small)
        values = [v for v in list(train_values) + list(val_values) if v == v and abs(v) != float("inf")]
        if not values:
            continue
        low, high = min(values), max(values)
        if name == "accuracy":
            low, high = min(low, 0.0), max(high, 1.0)
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        n = max(len(train_values), len(val_values))

        def xy(i, v, left=left, right=right, top=top, bottom=bottom, low=low, high=high, n=n):
            x = left + 10 + (right - left - 20) * (i / (n - 1) if n > 1 else 0.5)
            y = bottom - 10 - (bottom - top - 20) * (v - low) / (high - low)
            return x, y

        for frac in (0.0, 0.5, 1.0):
            value = low + frac * (high - low)
            _, y = xy(0, value)
            draw.line((left - 4, y, left, y), fill="black")
            draw.text((left - 56, y - 7), f"{value:.3g}", fill="black", font=small)
        for series, color, label, dashed in ((train_values, colors[0], "train", False),
                                             (val_values, colors[1], "validation", True)):
            points = [xy(i, v) for i, v in enumerate(series) if v == v and abs(v) != float("inf")]
            for a, b in zip(points, points[1:]):
                draw.line((a, b), fill=color, width=2 if dashed else 3)
            for x, y in points:
                r = 3 if dashed else 4
                draw.ellipse((x - r, y - r, x + r, y + r), fill=color if not dashed else "white", outline=color)
        for k, (label, color) in enumerate((("train", colors[0]), ("validation", colors[1]))):
            draw.line((right - 120, top + 12 + 16 * k, right - 96, top + 12 + 16 * k), fill=color, width=3)
            draw.text((right - 90, top + 5 + 16 * k), label, fill="black", font=small)
        draw.text((right - 60, bottom + 4), f"{n} epochs", fill="black", font=small)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------- writing

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
        try:
            target.storage.upload(path, target.key)
            out.append(target.url)
        except AlreadyExists:
            log.warning("not overwriting %s (it exists already)", target.url)
    return out


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
    models = [(name, info) for name, info in names.items() if name.lower().endswith(MODEL_EXTENSIONS)]

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
