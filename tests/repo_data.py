"""The test data the repository itself ships, defined once. conftest.py's fixtures (`sample_dir`,
`srkw_h5`) and the helper modules (ops_support.py, module-level constants of test files) all take
it from here, never from ../shared: a clone outside the project has no ../shared."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO / "sample_data" / "orcasound"  # {train,validation,test}/{calls,nocalls}/*.png
SRKW_ROWS, SRKW_COLS = 67, 83  # the small srkw_cnn the tests train and score with


@cache
def srkw_h5() -> str:
    """Path of one fresh (untrained, seed 0) 67x83 srkw_cnn_0.h5, written once per test process.

    Shared by every test that asks: read it, upload it, use it as a template, but never write to it
    or beside it. A test that trains or versions a model in place copies it first
    (shutil.copyfile). conftest.py's `srkw_h5` fixture fails the session if its bytes changed."""
    from models.srkw_cnn import write_fresh_h5

    folder = Path(tempfile.mkdtemp(prefix="orca-srkw-h5-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return write_fresh_h5(folder / "srkw_cnn_0.h5", SRKW_ROWS, SRKW_COLS, seed=0)


def json_client(app):
    """A Flask test client that prefers JSON, as API clients that read error bodies do: on /train and
    /predict an error is then `{"error": …}` rather than the plain text legacy clients get."""
    client = app.test_client()
    client.environ_base["HTTP_ACCEPT"] = "application/json"
    return client

# Real Orcasound clips with the PNGs the 2020 tool drew from them (MIT, sample_data/orcasound_audio/README.md):
# mp3/{calls,nocalls}/<stem>.mp3, png/{calls,nocalls}/<stem>.png, hls/live000.ts.
AUDIO_DIR = REPO / "sample_data" / "orcasound_audio"
