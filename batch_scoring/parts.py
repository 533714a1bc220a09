"""What a batch scoring leaves under DEST (S3 or local), and how a re-run resumes from it.

    DEST/_plan.parquet           every clip to score, in /predict's order (sorted by file name), with
                                 the number of the part it belongs to; its metadata names the model
                                 (URL and SHA-256), the source and the image size
    DEST/part-000000.parquet     one row per clip of part 0 (OUTPUT_SCHEMA), in plan order
    DEST/part-000001.parquet     ...

The plan is written once, by the first run. A re-run reads it instead of listing the source again,
so its parts hold the same clips even when clips were added to or removed from the source since
(a live archive grows all day); it refuses a DEST planned for another model, source or image size.
Parts are written whole or not at all (`Storage.upload`: one S3 PutObject, or a local file linked
into place) and never replaced, so a part that exists is complete and a re-run skips it: a run
killed at any point loses at most the parts it had not written yet.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass

from service.errors import AlreadyExists, BadRequest
from service.storage import Location

PLAN_NAME = "_plan.parquet"
PART_NAME = re.compile(r"^part-(\d{6})\.parquet$")
PLAN_FIELDS = ("model_url", "model_sha256", "source_url", "rows", "cols", "part_size")


def part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def output_schema():
    """One row per clip: /predict's item (audio_url, timestamp, location, duration, predicted_value),
    the spectrogram it was read from, `error` (null when scored; predicted_value is null when not),
    and the model that scored it."""
    import pyarrow as pa

    return pa.schema([
        ("spectrogram_url", pa.string()),
        ("audio_url", pa.string()),
        ("timestamp", pa.string()),  # /predict's HTTP date in UTC, "Tue, 07 Jul 2020 15:35:18 GMT"
        ("location", pa.string()),
        ("duration", pa.int32()),
        ("predicted_value", pa.float64()),  # P(class 1), the float32 of the model as /predict returns it
        ("error", pa.string()),
        ("model_url", pa.string()),
        ("model_sha256", pa.string()),
    ])


@dataclass(frozen=True)
class Plan:
    """The clips of a scoring, split into parts: `table` has columns part, name, key, size (one row
    per clip, in order); the other fields are the plan's metadata."""

    model_url: str
    model_sha256: str
    source_url: str
    rows: int
    cols: int
    part_size: int
    table: object  # pyarrow.Table

    @property
    def parts(self) -> int:
        return -(-self.table.num_rows // self.part_size) if self.table.num_rows else 0

    def part_rows(self, index: int):
        """The plan's rows of part `index` (a zero-copy slice)."""
        return self.table.slice(index * self.part_size, self.part_size)

    def metadata(self) -> dict[bytes, bytes]:
        return {f"orca.{name}".encode(): str(getattr(self, name)).encode() for name in PLAN_FIELDS}


def make_plan(clips, *, model_url: str, model_sha256: str, source_url: str, rows: int, cols: int,
              part_size: int) -> Plan:
    """A plan of `clips` ((file name, ObjectInfo) in /predict's order: `service.predict.unlabeled_clips`)."""
    import pyarrow as pa

    if part_size < 1:
        raise BadRequest(f"--part-size must be at least 1, got {part_size}")
    table = pa.table({
        "part": pa.array([i // part_size for i in range(len(clips))], pa.int32()),
        "name": pa.array([name for name, _ in clips], pa.string()),
        "key": pa.array([info.key for _, info in clips], pa.string()),
        "size": pa.array([info.size for _, info in clips], pa.int64()),
    })
    return Plan(model_url, model_sha256, source_url, rows, cols, part_size, table)


def _child(dest: Location, name: str) -> str:
    return dest.prefix + name


def read_plan(dest: Location) -> Plan | None:
    """The plan under DEST, or None when there is none yet."""
    import pyarrow.parquet as pq

    key = _child(dest, PLAN_NAME)
    if not dest.storage.exists(key):
        return None
    with tempfile.TemporaryDirectory(prefix="orca-plan-") as tmp:
        path = os.path.join(tmp, PLAN_NAME)
        dest.storage.download(key, path)
        table = pq.read_table(path)
    meta = {k.decode()[len("orca."):]: v.decode() for k, v in (table.schema.metadata or {}).items()
            if k.startswith(b"orca.")}
    missing = [name for name in PLAN_FIELDS if name not in meta]
    if missing:
        raise BadRequest(f"{dest.storage.url(key)} is not a plan of `orca score` (no {', '.join(missing)}); "
                         "choose another --out")
    return Plan(meta["model_url"], meta["model_sha256"], meta["source_url"], int(meta["rows"]), int(meta["cols"]),
                int(meta["part_size"]), table.replace_schema_metadata(None))


def write_plan(dest: Location, plan: Plan) -> Plan:
    """Store `plan` under DEST, unless a concurrent run stored one first: then that one is the plan."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="orca-plan-") as tmp:
        path = os.path.join(tmp, PLAN_NAME)
        pq.write_table(plan.table.replace_schema_metadata(plan.metadata()), path)
        try:
            dest.storage.upload(path, _child(dest, PLAN_NAME))
        except AlreadyExists:
            return read_plan(dest)
    return plan


def check_same_plan(found: Plan, wanted: Plan, dest: Location) -> None:
    """Refuse to resume into a DEST planned for another model, source or size (BadRequest naming it)."""
    for name, label in (("model_sha256", "model (SHA-256)"), ("source_url", "SOURCE"), ("rows", "img_width"),
                        ("cols", "img_height")):
        if getattr(found, name) != getattr(wanted, name):
            raise BadRequest(f"--out {dest.url} holds a scoring of another {label}: {getattr(found, name)} there, "
                             f"{getattr(wanted, name)} now; choose another --out (parts are never replaced)")


def written_parts(dest: Location) -> set[int]:
    """Numbers of the parts already under DEST (each whole: parts are written atomically)."""
    done = set()
    for info in dest.storage.list(dest.prefix):
        relative = info.key[len(dest.prefix):]
        match = PART_NAME.match(relative)
        if match:
            done.add(int(match[1]))
    return done


def write_part(dest: Location, index: int, columns: dict) -> bool:
    """Write part `index` (`columns`: OUTPUT_SCHEMA's names → lists); False when it exists already
    (another run wrote it: parts are never replaced)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns, schema=output_schema())
    with tempfile.TemporaryDirectory(prefix="orca-part-") as tmp:
        path = os.path.join(tmp, part_name(index))
        pq.write_table(table, path)
        try:
            dest.storage.upload(path, _child(dest, part_name(index)))
        except AlreadyExists:
            return False
    return True


def read_scores(dest: Location):
    """Every part under DEST, concatenated in part order (one pyarrow.Table in /predict's order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    with tempfile.TemporaryDirectory(prefix="orca-parts-") as tmp:
        for index in sorted(written_parts(dest)):
            path = os.path.join(tmp, part_name(index))
            dest.storage.download(_child(dest, part_name(index)), path)
            tables.append(pq.read_table(path))
    return pa.concat_tables(tables) if tables else output_schema().empty_table()
