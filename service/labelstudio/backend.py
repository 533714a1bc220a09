"""The Label Studio ML backend's work, without HTTP: plain functions of a `Runtime`
(`service.routes.labelstudio` is the HTTP side).

- One Label Studio project ↔ one model folder: ORCA_LABELSTUDIO_PROJECTS (`ID=URL,…`), else
  ORCA_LABELSTUDIO_MODEL_URL. The folder's newest version (highest `_N`) predicts; its file name is
  the `model_version` Label Studio sees, so a new version makes Label Studio ask again.
- `predict`: each task's media (its label config's `$field`) fetched (`client.fetch_media`), drawn to
  the model's input like /predict's clips (audio: the 2020 spectrogram; images: the PNG decode), scored
  by the app's scorer for that version (ONNX Runtime on the CPU, torch on CUDA), with the pixel and
  score caches; one answer per task, in order: `[]` (no prediction) for a task whose media cannot be
  read, logged and counted.
- The prediction's class: the model's class (P(class 1) >= 0.5 → the second class in sorted order);
  its `score`: ORCA_LABELSTUDIO_STRATEGY's score of the registry (`active_learning.acquisition`) turned
  into a confidence in [0, 1] (`CONFIDENCE`): Label Studio's prediction score sorted ascending lists
  the tasks that strategy would label first.
- `submit_training`: a job on the service's training queue that exports the project's annotations
  (or takes the ones an older server sent), lays them out as a labeled set (seeded
  train/validation split) under ORCA_LABELSTUDIO_DATA_URL, and fine-tunes the newest version through
  the service's /train work (`runtime.run_train`), whose sidecar records the project and annotations.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import os
import posixpath
import random
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from conversion.model_formats import is_model_file
from scoring.clips import clip_identity
from scoring.stream import stream_batches

from ..datasets import model_errors, name_urls, unprocessable
from ..errors import BadRequest, NotFound, ServiceError, Unprocessable
from ..jobqueue import QUEUED, RUNNING
from ..params import TrainParams
from ..storage import Location
from ..versions import split_version
from . import labelconfig
from .client import LabelStudio, MediaError, fetch_media

log = logging.getLogger(__name__)

JOB_KIND = "labelstudio-train"
SPLIT_SEED = 0  # the train/validation split and the training's seed: the same annotations, the same run
LN2 = math.log(2.0)
# Pointwise strategies of the registry, their score turned into a confidence in [0, 1]: 0 = the clip
# that strategy labels first. Strategies that rank a whole pool (coreset, badge) have no per-task score.
CONFIDENCE = MappingProxyType({  # read only
    "uncertainty": lambda s: 2.0 * s,  # |0.5 - p| in [0, 0.5], smallest first
    "entropy": lambda s: 1.0 - s / LN2,  # H(p) in [0, ln 2], largest first
    "bald": lambda s: 1.0 - s / LN2,  # mutual information in [0, ln 2], largest first
    "variation_ratio": lambda s: 1.0 - 2.0 * s,  # in [0, 0.5] for two classes, largest first
    "random": lambda s: s,  # uniform in [0, 1), smallest first
})
TRAINING_EVENTS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")


# --------------------------------------------------------------------------- projects and models

def project_id(value) -> int:
    """Label Studio's project: `"12.1700000000"` (id.created time, in /setup and /predict), 12, or
    `{"id": 12, …}` (webhooks)."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip():
        head = value.strip().split(".", 1)[0]
        if head.isdigit():
            return int(head)
    raise BadRequest(f"project must be a Label Studio project id, got {value!r}")


def project_models(setting: str | None) -> dict[int, str]:
    """ORCA_LABELSTUDIO_PROJECTS: `ID=URL,ID=URL` → {id: url}; BadRequest naming a malformed entry."""
    mapping = {}
    for entry in (setting or "").split(","):
        if not entry.strip():
            continue
        key, sep, url = entry.partition("=")
        if not sep or not key.strip().isdigit() or not url.strip():
            raise BadRequest(f"ORCA_LABELSTUDIO_PROJECTS: {entry.strip()!r} is not PROJECT_ID=URL")
        mapping[int(key)] = url.strip()
    return mapping


def model_source(runtime, project: int | None) -> tuple[Location, str | None]:
    """(the project's model folder, the base name its versions must have, or None for any). Project None
    (Label Studio's GET /versions names none): ORCA_LABELSTUDIO_MODEL_URL, or the one folder of
    ORCA_LABELSTUDIO_PROJECTS."""
    config = runtime.config
    mapping = project_models(config["LABELSTUDIO_PROJECTS"])
    url = mapping.get(project) or config["LABELSTUDIO_MODEL_URL"]
    if not url and project is None:
        folders = set(mapping.values())
        if len(folders) > 1:
            raise BadRequest("project: the request names none and ORCA_LABELSTUDIO_PROJECTS has several model "
                             "folders; ask with ?project=ID")
        url = next(iter(folders), None)
    if not url:
        raise NotFound(f"no model folder for Label Studio project {project}: set ORCA_LABELSTUDIO_MODEL_URL "
                       "(every project) or ORCA_LABELSTUDIO_PROJECTS (PROJECT_ID=URL)")
    runtime.allow.check(url, "ORCA_LABELSTUDIO_MODEL_URL")
    base = None
    name = posixpath.basename(url.rstrip("/"))
    if not url.endswith("/") and is_model_file(name):
        base = split_version(name)[0]
        url = url[: len(url) - len(name)] or "./"
    return runtime.locate(url, "ORCA_LABELSTUDIO_MODEL_URL"), base


def versions(runtime, project: int | None) -> list[Location]:
    """The project's model versions, newest first (highest `_N`; a name without one counts as 0)."""
    folder, base = model_source(runtime, project)
    try:
        objects = folder.storage.list(folder.prefix)
    except NotFound:
        objects = []
    found = []
    for info in objects:
        name = info.key[len(folder.prefix):]
        if "/" in name or not is_model_file(name):
            continue
        stem, number, _ = split_version(name)
        if base is None or stem == base:
            found.append((number or 0, name, Location(folder.storage, info.key, folder.prefix_url + name)))
    found.sort(key=lambda item: (-item[0], item[1]))
    return [location for _, _, location in found]


def newest(runtime, project: int) -> Location:
    found = versions(runtime, project)
    if not found:
        folder, base = model_source(runtime, project)
        raise NotFound(f"no model{f' {base}_N' if base else ''} in {folder.prefix_url} (the model folder of "
                       f"Label Studio project {project})")
    return found[0]


def strategy(runtime) -> str:
    from active_learning.acquisition import names

    name = (runtime.config["LABELSTUDIO_STRATEGY"] or "").strip()
    if name not in CONFIDENCE:
        known = [n for n in names() if n in CONFIDENCE]
        pooled = [n for n in names() if n not in CONFIDENCE]
        raise Unprocessable(f"ORCA_LABELSTUDIO_STRATEGY={name!r}: Label Studio's score is per task, one of "
                            f"{', '.join(known)}" + (f" ({', '.join(pooled)} rank a whole pool: use /query)"
                                                     if name in pooled else ""))
    return name


def studio_for(runtime, project: int) -> LabelStudio | None:
    """Label Studio's API for the project: LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY, else what its
    /setup said (hostname, access_token); None when neither names a server."""
    config = runtime.config
    facts = runtime.labelstudio.facts(project)
    url = config["LABEL_STUDIO_URL"] or facts.get("hostname")
    if not url:
        return None
    return LabelStudio(url, config["LABEL_STUDIO_API_KEY"] or facts.get("access_token"), runtime.labelstudio)


# --------------------------------------------------------------------------- the routes' work

def health(runtime) -> dict:
    return {"status": "UP", "model_class": "orca-ml-endpoint", "version": runtime.version}


def setup(runtime, body: dict) -> dict:
    """Check the project's label config against the model, remember how to reach Label Studio, and
    answer the newest version (Label Studio skips tasks that have a prediction of it)."""
    project = project_id(body.get("project"))
    schema = body.get("schema") or body.get("label_config")
    labelconfig.checked(schema, runtime.config["LABELSTUDIO_CLASSES"])
    strategy(runtime)
    model = newest(runtime, project)
    runtime.labelstudio.remember(project, hostname=body.get("hostname"), access_token=body.get("access_token"),
                                 label_config=schema)
    return {"model_version": model.name}


def version_listing(runtime, project: int | None) -> dict:
    found = versions(runtime, project)
    return {"versions": [v.name for v in found], "model_version": found[0].name if found else None}


@dataclass
class Fetched:
    index: int  # the task's position in the request
    path: str
    identity: tuple | None  # the pixel cache's key: the media URL and its bytes' digest
    score_key: tuple  # the score cache's key


def _fetch_all(runtime, studio, tasks, config, folder) -> tuple[list[Fetched], dict[int, str]]:
    """The tasks' media as local files; {task index: why not} for those that could not be read."""
    def one(item):
        index, task = item
        data = task.get("data") if isinstance(task, dict) else None
        value = data.get(config.data_key) if isinstance(data, dict) else None
        if value is None:
            raise MediaError(f"the task has no data.{config.data_key} (the label config's ${config.data_key})")
        path = fetch_media(runtime, studio, value, config.kind, folder, f"task-{index}")
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        size = os.path.getsize(path)
        # keyed by the media's URL and the digest of its bytes (the suffix says how it was decoded)
        return Fetched(index, path, clip_identity(str(value) + os.path.splitext(path)[1], size, digest),
                       (str(value), size, digest))

    fetched, failed = [], {}
    with ThreadPoolExecutor(max(1, runtime.config["DOWNLOAD_THREADS"])) as pool:
        futures = [(index, pool.submit(one, (index, task))) for index, task in enumerate(tasks)]
        for index, future in futures:
            try:
                fetched.append(future.result())
            except (MediaError, ServiceError) as error:
                failed[index] = getattr(error, "message", None) or str(error)
    return fetched, failed


def input_size(scorer) -> tuple[int, int]:
    """(rows, cols) of the scorer's model input (what /predict's img_width, img_height must be)."""
    shape = getattr(scorer, "input_shape", None)
    if shape is None:
        shapes = getattr(getattr(scorer, "model", None), "input_shapes", None) or [None]
        shape = shapes[0]
    if shape is None or len(shape) != 4 or not all(isinstance(n, int) for n in shape[1:3]):
        raise Unprocessable(f"the model's input size is not fixed ({shape}): Label Studio tasks need a model "
                            "that fixes its rows and columns")
    return int(shape[1]), int(shape[2])


def predict(runtime, body: dict) -> dict:
    """`{"results": [...]}`, one entry per task in order: `{"model_version", "score", "result": [the
    choice]}`, or `[]` for a task whose media cannot be read (logged, counted as skipped)."""
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise BadRequest("tasks must be a list of Label Studio tasks")
    project = project_id(body.get("project"))
    schema = body.get("label_config") or runtime.labelstudio.facts(project).get("label_config")
    config, classes = labelconfig.checked(schema, runtime.config["LABELSTUDIO_CLASSES"])
    chosen = strategy(runtime)
    model = newest(runtime, project)
    if not tasks:
        return {"results": [], "model_version": model.name}
    model_path = runtime.cache.model(model)
    replacements = {model_path: model.url}
    values: dict[int, float] = {}
    passes: dict[int, np.ndarray] = {}
    needs_passes = _needs_passes(chosen)
    try:
        scorer = runtime.scorers.get(model_path)
        rows, cols = input_size(scorer)
        probe = _probe(runtime, model_path) if needs_passes else None
        with tempfile.TemporaryDirectory(prefix="orca-labelstudio-", dir=runtime.config["WORK_DIR"]) as folder:
            fetched, failed = _fetch_all(runtime, studio_for(runtime, project), tasks, config, folder)
            table = runtime.scores.table(runtime.scorers.digest(model_path), rows, cols)
            pending = []
            for item in fetched:
                hit = table.get(item.score_key) if table is not None and not needs_passes else None
                if hit is not None:
                    values[item.index] = hit
                else:
                    pending.append(item)
            batches = stream_batches(pending, lambda item: item.path, rows, cols,
                                     min(runtime.config["BATCH_SIZE"], scorer.batch_size),
                                     workers=runtime.config["DOWNLOAD_THREADS"], skip_unreadable=True,
                                     max_pixels=runtime.config["MAX_PIXELS"], decode=scorer.decode,
                                     cache=runtime.pixels, identity=lambda item: item.identity) if pending else ()
            for number, batch in enumerate(batches):
                for item, reason in batch.skipped:
                    failed[item.index] = name_urls(reason, {item.path: str(_media(tasks[item.index], config))})
                if batch.items:
                    for item, value in zip(batch.items, scorer.score_pixels(batch.pixels)):
                        values[item.index] = float(value)
                        runtime.scores.store(table, item.score_key, float(value))
                    if probe is not None:
                        drawn = probe.mc_passes(batch.pixels, runtime.config["LABELSTUDIO_PASSES"], SPLIT_SEED + number)
                        for column, item in enumerate(batch.items):
                            passes[item.index] = drawn[:, column]
    except model_errors() as error:
        raise unprocessable(error, replacements) from error
    for index, reason in sorted(failed.items()):
        log.warning("labelstudio: project %s: no prediction for task %s: %s", project, _task_id(tasks[index]), reason)
    runtime.metrics.count_scored(len(values))
    runtime.metrics.count_skipped(len(failed), stage="predict")
    order = sorted(values)
    scores = _confidences(chosen, [values[i] for i in order],
                          np.stack([passes[i] for i in order], axis=1) if needs_passes and order else None)
    answer: list = [[] for _ in tasks]
    for index, score in zip(order, scores):
        label = classes[int(values[index] >= 0.5)]
        answer[index] = {"model_version": model.name, "score": score,
                         "result": [{"from_name": config.from_name, "to_name": config.to_name, "type": "choices",
                                     "value": {"choices": [label]}}]}
    return {"results": answer, "model_version": model.name}


def _media(task, config) -> object:
    data = task.get("data") if isinstance(task, dict) else None
    return data.get(config.data_key) if isinstance(data, dict) else None


def _task_id(task) -> object:
    return task.get("id") if isinstance(task, dict) else None


def _needs_passes(name: str) -> bool:
    from active_learning.acquisition import needs

    return bool(needs(name).passes)


def _probe(runtime, model_path: str):
    from ..selection import _model_probe

    return _model_probe(runtime, model_path)


def _confidences(name: str, probabilities: list[float], passes: np.ndarray | None) -> list[float]:
    """The strategy's score of each clip (the registry's `select` over these clips), as a confidence."""
    from active_learning.acquisition import select

    if not probabilities:
        return []
    p = np.asarray(probabilities, dtype=np.float64)
    chosen = select(name, len(p), probabilities=p, passes=passes)
    raw = np.empty(len(p))
    raw[chosen.indices] = chosen.scores
    return [float(min(1.0, max(0.0, CONFIDENCE[name](float(s))))) for s in raw]


# --------------------------------------------------------------------------- training

@dataclass(frozen=True)
class Annotated:
    task: int
    annotation: int | None
    label: str
    media: object


def annotated_tasks(tasks: list, config, classes) -> tuple[list[Annotated], list[dict]]:
    """(each task's label from its newest annotation that is not cancelled and chooses one of the
    model's classes in the config's Choices, the tasks left out with why)."""
    chosen, left_out = [], []
    for task in tasks:
        if not isinstance(task, dict):
            continue
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        annotations.sort(key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
        label = None
        for annotation in reversed(annotations):
            for item in annotation.get("result") or []:
                if not isinstance(item, dict) or item.get("from_name") != config.from_name:
                    continue
                picked = (item.get("value") or {}).get("choices") or []
                if len(picked) == 1 and picked[0] in classes:
                    label = (annotation.get("id"), picked[0])
                    break
            if label is not None:
                break
        if label is None:
            if annotations:
                left_out.append({"task": task.get("id"), "reason": f"no annotation chooses one of {', '.join(classes)}"})
            continue
        chosen.append(Annotated(task.get("id"), label[0], label[1], _media(task, config)))
    return chosen, left_out


def split(items: list[Annotated], share: float, seed: int = SPLIT_SEED) -> dict[str, list[Annotated]]:
    """A seeded split of each class: round(share × n) validate (at least one where a class has two or
    more, never all), the rest train."""
    out = {"train": [], "validation": []}
    for label in sorted({i.label for i in items}):
        members = sorted((i for i in items if i.label == label), key=lambda i: str(i.task))
        random.Random(f"{seed}:{label}").shuffle(members)
        n = len(members)
        held = 0 if n < 2 else min(n - 1, max(1, round(share * n)))
        out["validation"] += members[:held]
        out["train"] += members[held:]
    return out


def data_folder(runtime, model: Location) -> str:
    """ORCA_LABELSTUDIO_DATA_URL, else `labelstudio/` beside the model folder."""
    setting = runtime.config["LABELSTUDIO_DATA_URL"]
    if setting:
        return setting.rstrip("/") + "/"
    folder = model.url.rsplit("/", 1)[0] if "/" in model.url else ""  # the model folder
    scheme, sep, rest = folder.rpartition("://")
    if "/" in rest:
        parent = folder.rsplit("/", 1)[0]
    else:  # a bucket root (s3://bucket), or a folder of the working directory (models)
        parent = folder if sep else ""
    return (parent + "/" if parent else "") + "labelstudio/"


def running_job(runtime, project: int):
    """The project's queued or running training job, or None."""
    for job in runtime.jobs.list():
        if job.kind == JOB_KIND and job.status in (QUEUED, RUNNING) and job.params.get("labelstudio_project") == project:
            return job
    return None


def submit_training(runtime, project: int, tasks: list | None = None, label_config: str | None = None):
    """Queue a training of the project's newest version on its annotations (exported from Label
    Studio when `tasks` is None); the job, at once, or the project's job already waiting or running."""
    waiting = running_job(runtime, project)
    if waiting is not None:
        return waiting
    model = newest(runtime, project)
    data = data_folder(runtime, model)
    runtime.allow.check_model_write(model.url)
    runtime.allow.check(data, "ORCA_LABELSTUDIO_DATA_URL", "write")
    if label_config:
        runtime.labelstudio.remember(project, label_config=label_config)
    epochs = runtime.config["LABELSTUDIO_EPOCHS"]

    def run(job):
        return train_from_annotations(runtime, project, model, data, tasks, job.on_epoch)

    public = {"labelstudio_project": project, "model_url": model.url, "data_url": data, "epochs": epochs,
              "seed": SPLIT_SEED}
    return runtime.jobs.submit(JOB_KIND, public, run)


def train_from_annotations(runtime, project: int, model: Location, data: str, tasks: list | None,
                           on_epoch=None) -> dict:
    """The job's work: export, lay out, upload the labeled set, then `runtime.run_train`."""
    studio = studio_for(runtime, project)
    schema = runtime.labelstudio.facts(project).get("label_config")
    if (tasks is None or not schema) and studio is None:
        raise Unprocessable(f"Label Studio's URL for project {project} is unknown: set LABEL_STUDIO_URL and "
                            "LABEL_STUDIO_API_KEY, or let Label Studio call /labelstudio/setup first")
    if not schema:
        schema = studio.project(project).get("label_config")
    config, classes = labelconfig.checked(schema, runtime.config["LABELSTUDIO_CLASSES"])
    if tasks is None:
        tasks = studio.export(project)
    chosen, left_out = annotated_tasks(tasks, config, classes)
    model_path = runtime.cache.model(model)
    try:
        rows, cols = input_size(runtime.scorers.get(model_path))
    except model_errors() as error:
        raise unprocessable(error, {model_path: model.url}) from error
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target = runtime.locate(f"{data}project-{project}/{stamp}/", "ORCA_LABELSTUDIO_DATA_URL")
    used = []
    with tempfile.TemporaryDirectory(prefix="orca-labelstudio-train-", dir=runtime.config["WORK_DIR"]) as folder:
        parts = split(chosen, runtime.config["LABELSTUDIO_VALIDATION"])
        jobs = []
        for part, members in parts.items():
            for item in members:
                place = os.path.join(folder, part, item.label)
                os.makedirs(place, exist_ok=True)
                jobs.append((part, item, place))

        def one(job):
            part, item, place = job
            try:
                return part, item, fetch_media(runtime, studio, item.media, config.kind, place, f"task-{item.task}")
            except (MediaError, ServiceError) as error:
                return part, item, error

        with ThreadPoolExecutor(max(1, runtime.config["DOWNLOAD_THREADS"])) as pool:
            fetched = list(pool.map(one, jobs))
        counts = {part: {label: 0 for label in classes} for part in parts}
        for part, item, path in fetched:
            if isinstance(path, Exception):
                reason = getattr(path, "message", None) or str(path)
                log.warning("labelstudio: project %s: task %s left out of training: %s", project, item.task, reason)
                left_out.append({"task": item.task, "reason": reason})
                continue
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            target.storage.upload(path, target.prefix + relative)
            counts[part][item.label] += 1
            used.append(item)
    short = [f"{part} {label}" for part, by_label in counts.items() for label, n in by_label.items() if not n]
    if short:
        raise Unprocessable(f"Label Studio project {project} has too few usable annotations to train: none for "
                            f"{', '.join(short)} (counts {counts}; each class needs two annotated tasks whose "
                            f"media can be read)")
    provenance = {"labelstudio": {"url": studio.url if studio is not None else None, "project": project,
                                  "tasks": sorted((u.task for u in used), key=str),
                                  "annotations": sorted((u.annotation for u in used if u.annotation is not None),
                                                        key=str),
                                  "skipped": left_out}}
    params = TrainParams(model.url, target.prefix_url, rows, cols, runtime.config["LABELSTUDIO_EPOCHS"],
                         SPLIT_SEED, provenance=provenance)
    result = dict(runtime.run_train(runtime, params, on_epoch=on_epoch))
    result["labelstudio"] = {"project": project, "labeled_url": target.prefix_url, "counts": counts,
                             "skipped": left_out}
    return result


def webhook(runtime, body: dict, authorized) -> dict:
    """Any project event gets an answer; START_TRAINING (`authorized()` must pass) queues a training;
    with ORCA_LABELSTUDIO_TRAIN_EVERY, annotation events check Label Studio's count of annotated tasks."""
    action = body.get("action")
    if action == "START_TRAINING":
        authorized()
        job = submit_training(runtime, project_id(body.get("project")))
        return {"status": "training", "job_id": job.id, "job": job.id, "url": f"/jobs/{job.id}"}
    every = runtime.config["LABELSTUDIO_TRAIN_EVERY"]
    if every > 0 and action in TRAINING_EVENTS and body.get("project") is not None:
        try:
            return _train_if_due(runtime, project_id(body.get("project")), every)
        except ServiceError as error:
            log.warning("labelstudio: %s event: not checked for training: %s", action, error.message)
            return {"status": "ignored", "reason": error.message}
    return {"status": "ignored", "action": action}


def _train_if_due(runtime, project: int, every: int) -> dict:
    """Train when Label Studio counts `every` more annotated tasks than the newest version was trained
    on (its sidecar's `labelstudio.tasks`; none: every annotated task counts). The count comes from
    Label Studio's API with the backend's own key, never from the event itself."""
    if running_job(runtime, project) is not None:
        return {"status": "training already queued"}
    studio = studio_for(runtime, project)
    if studio is None:
        return {"status": "ignored", "reason": "Label Studio's URL is unknown"}
    annotated = int(studio.project(project).get("num_tasks_with_annotations") or 0)
    trained = _trained_tasks(newest(runtime, project))
    if annotated - trained < every:
        return {"status": "waiting", "annotated": annotated, "trained_on": trained}
    job = submit_training(runtime, project)
    return {"status": "training", "job_id": job.id, "url": f"/jobs/{job.id}"}


def _trained_tasks(model: Location) -> int:
    import json

    from ..provenance import sidecar_name

    sidecar = model.sibling(sidecar_name(model.name, ".json"))
    try:
        facts = json.loads(sidecar.storage.read_bytes(sidecar.key)).get("labelstudio") or {}
    except (ServiceError, ValueError, AttributeError):
        return 0
    return len(facts.get("tasks") or [])


def train_request(runtime, body: dict) -> dict:
    """POST /train of older Label Studio servers: the annotated tasks come in the body."""
    project = project_id(body.get("project"))
    tasks = body.get("annotations")
    if not isinstance(tasks, list):
        raise BadRequest("annotations must be a list of annotated Label Studio tasks")
    job = submit_training(runtime, project, tasks=tasks, label_config=body.get("label_config"))
    return {"job": job.id, "job_id": job.id, "url": f"/jobs/{job.id}"}

