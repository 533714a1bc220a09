"""The job database: training jobs recorded in SQLite (`jobs.sqlite3` under `ORCA_STATE_DIR`), so
`GET /jobs/<id>` and `GET /jobs` answer after a restart and a job whose process died is reported as
interrupted instead of vanishing.

Only the app's `service.jobqueue.JobManager` writes here (one connection per store, behind a lock;
WAL mode, so readers in other processes never wait for a writer). The file is created on first use,
not when the app is built: the CLI, which builds the same runtime but runs no jobs, never touches it.

    jobs        one row per job: seq (submission order), id, kind, status, params (JSON),
                created / started / finished (unix seconds), epoch, epochs, result / error (JSON),
                owner (the process that runs it)
    job_epochs  one row per finished epoch: job_id, epoch, metrics (JSON)

Which process owns a job: every store holds an exclusive `flock` on `jobs.owners/<owner>.lock` while it
is open. The kernel drops that lock when its process ends, however it ends (`kill -9` included), so a
`queued` or `running` row whose owner's lock can be taken belongs to a dead process: `reap_dead_owners`
marks it failed. Rows of live owners (another gunicorn worker, another app on the same folder) are
left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid

from .errors import ServiceError

log = logging.getLogger(__name__)

FILENAME = "jobs.sqlite3"
OWNERS = "jobs.owners"
SCHEMA_VERSION = 1
LIVE = ("queued", "running")
FINISHED = ("succeeded", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT NOT NULL UNIQUE,
    kind     TEXT NOT NULL,
    status   TEXT NOT NULL,
    params   TEXT NOT NULL,
    created  REAL NOT NULL,
    started  REAL,
    finished REAL,
    epoch    INTEGER NOT NULL DEFAULT 0,
    epochs   INTEGER,
    result   TEXT,
    error    TEXT,
    owner    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS job_epochs (
    job_id  TEXT NOT NULL,
    epoch   INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (job_id, epoch)
);
"""

COLUMNS = ("id", "kind", "status", "params", "created", "started", "finished", "epoch", "epochs", "result",
           "error", "owner")
JSON_COLUMNS = ("params", "result", "error")


class JobStoreError(ServiceError):
    """The job database cannot be opened or written (a full disk, a folder the service cannot write)."""

    status = 503


def dumps(value) -> str:
    return json.dumps(value, default=_jsonable)


def _jsonable(value):
    """What Flask's JSON would make of values plain `json` refuses (numpy scalars and arrays, …)."""
    for name in ("tolist", "item"):
        if hasattr(value, name):
            return getattr(value, name)()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class JobStore:
    """`jobs.sqlite3` in `folder`, opened on first use (`open()`), closed by `close()`."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, FILENAME)
        self.owner = uuid.uuid4().hex  # this store's jobs, while its lock is held
        self.lock = threading.RLock()
        self.connection: sqlite3.Connection | None = None
        self.owner_fd: int | None = None
        self.closed = False

    # ------------------------------------------------------------------ opening and closing
    def open(self) -> None:
        """Create the folder and the database if needed and take this store's owner lock (idempotent)."""
        with self.lock:
            if self.connection is not None:
                return
            if self.closed:
                raise JobStoreError("the job database is closed (the service is shutting down)")
            connection = None
            try:
                os.makedirs(os.path.join(self.folder, OWNERS), exist_ok=True)
                self.owner_fd = self._take_owner_lock()
                connection = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")  # WAL: survives a killed process
                with _transaction(connection):
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            connection.execute(statement)
                    version = connection.execute("PRAGMA user_version").fetchone()[0]
                    if version > SCHEMA_VERSION:
                        raise sqlite3.DatabaseError(f"written by a newer version (schema {version}, "
                                                    f"this service knows {SCHEMA_VERSION})")
                    connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._sweep_owner_locks()
            except (OSError, sqlite3.Error) as error:
                if connection is not None:
                    connection.close()
                self._release_owner_lock()
                if isinstance(error, PermissionError):
                    raise JobStoreError(self._not_writable(error)) from error
                raise JobStoreError(f"cannot open the job database {self.path}: {error}") from error
            self.connection = connection
            log.info("job database %s (owner %s)", self.path, self.owner)

    def _not_writable(self, error: PermissionError) -> str:
        """One line naming the state folder, its owner and the uid that needs to write it."""
        where = os.path.dirname(os.path.abspath(error.filename)) if error.filename else self.folder
        while not os.path.isdir(where) and os.path.dirname(where) != where:
            where = os.path.dirname(where)
        try:
            owner = f"belongs to uid {os.stat(where).st_uid}"
        except OSError:
            owner = "cannot be looked at"
        uid = os.geteuid()
        return (f"cannot open the job database in {self.folder} (ORCA_STATE_DIR): {where} {owner} and is not "
                f"writable by uid {uid}, which this service runs as; make it writable by uid {uid} "
                f"(chown, or a volume it owns) or set ORCA_STATE_DIR")

    def close(self) -> None:
        """Close the database and drop the owner lock; later writes are ignored, reads refused."""
        with self.lock:
            self.closed = True
            if self.connection is not None:
                try:
                    self.connection.close()
                finally:
                    self.connection = None
            self._release_owner_lock()

    def _lock_path(self, owner: str) -> str:
        return os.path.join(self.folder, OWNERS, f"{owner}.lock")

    def _take_owner_lock(self) -> int:
        # locked under a temporary name, then renamed: a lock file under an owner's name is always locked
        # while that owner lives, so another process never mistakes a starting owner for a dead one
        temporary = self._lock_path(f".{self.owner}")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.rename(temporary, self._lock_path(self.owner))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _release_owner_lock(self) -> None:
        if self.owner_fd is None:
            return
        try:
            os.unlink(self._lock_path(self.owner))
        except OSError:
            pass
        os.close(self.owner_fd)  # closing drops the flock
        self.owner_fd = None

    def _alive(self, owner: str) -> bool:
        """Whether `owner`'s store is open in some process (its lock file is locked)."""
        return owner == self.owner or self._locked(self._lock_path(owner))

    def _sweep_owner_locks(self) -> None:
        """Remove the lock files that processes killed with their store open left behind."""
        folder = os.path.join(self.folder, OWNERS)
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if not name.endswith(".lock") or name == f"{self.owner}.lock":
                continue
            try:  # a temporary name may belong to a store being opened right now: only old ones
                if name.startswith(".") and time.time() - os.stat(path).st_mtime < 60:
                    continue
            except OSError:
                continue
            self._locked(path)

    @staticmethod
    def _locked(path: str) -> bool:
        """Whether the lock file at `path` is locked; one that is not is removed."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            try:
                os.unlink(path)  # the owner is gone: its lock file too
            except OSError:
                pass
            return False
        finally:
            os.close(fd)

    def _db(self) -> sqlite3.Connection:
        if self.connection is None:
            self.open()
        return self.connection

    # ------------------------------------------------------------------ writes (the JobManager only)
    def insert(self, row: dict) -> None:
        values = dict(row, owner=self.owner)
        with self.lock:
            self._write("INSERT INTO jobs ({}) VALUES ({})".format(", ".join(COLUMNS), ", ".join("?" * len(COLUMNS))),
                        [_encode(name, values.get(name)) for name in COLUMNS])

    def update(self, job_id: str, **values) -> None:
        if not values:
            return
        names = sorted(values)
        with self.lock:
            self._write("UPDATE jobs SET {} WHERE id = ?".format(", ".join(f"{n} = ?" for n in names)),
                        [_encode(n, values[n]) for n in names] + [job_id])

    def add_epoch(self, job_id: str, epoch: int, epochs: int, metrics: dict) -> None:
        with self.lock, self._writing() as db:
            if db is not None:
                db.execute("INSERT OR REPLACE INTO job_epochs (job_id, epoch, metrics) VALUES (?, ?, ?)",
                           (job_id, int(epoch), dumps(metrics)))
                db.execute("UPDATE jobs SET epoch = ?, epochs = ? WHERE id = ?", (int(epoch), int(epochs), job_id))

    def finish_live(self, owner: str | None, status: str, error: dict, finished: float,
                    ids: list[str] | None = None) -> list[str]:
        """Mark the queued and running jobs of `owner` (or those in `ids`) finished with `status`
        and `error`; return their ids."""
        where, args = "status IN (?, ?)", list(LIVE)
        if owner is not None:
            where, args = where + " AND owner = ?", args + [owner]
        if ids is not None:
            where += " AND id IN ({})".format(", ".join("?" * len(ids)))
            args += list(ids)
        with self.lock, self._writing() as db:
            if db is None:
                return []
            found = [r[0] for r in db.execute(f"SELECT id FROM jobs WHERE {where}", args)]
            db.execute(f"UPDATE jobs SET status = ?, error = ?, finished = ? WHERE {where}",
                       [status, dumps(error), finished] + args)
        return found

    def reap_dead_owners(self, status: str, error: dict) -> list[str]:
        """Mark failed (`status`, `error`) the queued and running jobs whose process has ended; their ids."""
        with self.lock:
            db = self._db()
            owners = [r[0] for r in db.execute("SELECT DISTINCT owner FROM jobs WHERE status IN (?, ?)", LIVE)]
            reaped = []
            for owner in owners:
                if not self._alive(owner):
                    reaped += self.finish_live(owner, status, error, time.time())
            return reaped

    def trim(self, keep: int) -> None:
        """Keep the newest `keep` finished jobs (by submission order), and every queued or running one."""
        with self.lock, self._writing() as db:
            if db is None:
                return
            old = [r[0] for r in db.execute(
                "SELECT id FROM jobs WHERE status IN (?, ?) ORDER BY seq DESC LIMIT -1 OFFSET ?",
                (*FINISHED, int(keep)))]
            for start in range(0, len(old), 500):
                chunk = old[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                db.execute(f"DELETE FROM job_epochs WHERE job_id IN ({marks})", chunk)
                db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", chunk)

    @contextlib.contextmanager
    def _writing(self):
        """One transaction on the connection (None once closed: a job still finishing while the process
        exits writes nothing); a database error becomes JobStoreError naming the file."""
        db = None if self.closed else self._db()
        try:
            if db is None:
                yield None
                return
            with _transaction(db):
                yield db
        except sqlite3.Error as error:
            raise JobStoreError(f"cannot write the job database {self.path}: {error}") from error

    def _write(self, sql: str, args) -> None:
        with self._writing() as db:
            if db is not None:
                db.execute(sql, args)

    # ------------------------------------------------------------------ reads
    def get(self, job_id: str) -> dict | None:
        rows = self._select("WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def list(self) -> list[dict]:
        """Every job, newest first."""
        return self._select("ORDER BY seq DESC", ())

    def _select(self, clause: str, args) -> list[dict]:
        with self.lock:
            if self.closed:
                raise JobStoreError("the job database is closed (the service is shutting down)")
            db = self._db()
            try:
                with _transaction(db, "DEFERRED"):  # one snapshot of the jobs and their epochs
                    rows = [dict(zip(COLUMNS, r)) for r in db.execute(
                        "SELECT {} FROM jobs {}".format(", ".join(COLUMNS), clause), args)]
                    epochs: dict[str, list] = {row["id"]: [] for row in rows}
                    ids = list(epochs)
                    for start in range(0, len(ids), 500):
                        chunk = ids[start:start + 500]
                        for job_id, metrics in db.execute(
                                "SELECT job_id, metrics FROM job_epochs WHERE job_id IN ({}) ORDER BY job_id, epoch"
                                .format(", ".join("?" * len(chunk))), chunk):
                            epochs[job_id].append(json.loads(metrics))
            except sqlite3.Error as error:
                raise JobStoreError(f"cannot read the job database {self.path}: {error}") from error
        for row in rows:
            for name in JSON_COLUMNS:
                row[name] = json.loads(row[name]) if row[name] is not None else None
            row["metrics"] = epochs[row["id"]]
        return rows


def _encode(name: str, value):
    return dumps(value) if name in JSON_COLUMNS and value is not None else value


class _transaction:
    """BEGIN IMMEDIATE (a write) or DEFERRED (a read: one snapshot) … COMMIT, ROLLBACK on an error."""

    def __init__(self, connection: sqlite3.Connection, mode: str = "IMMEDIATE"):
        self.connection, self.mode = connection, mode

    def __enter__(self):
        self.connection.execute(f"BEGIN {self.mode}")
        return self.connection

    def __exit__(self, kind, value, traceback):
        self.connection.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
