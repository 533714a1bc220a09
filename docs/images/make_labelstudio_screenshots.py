"""Take the Label Studio screenshots of docs/labelstudio.md with a real Label Studio and a headless chromium.

Makes, in docs/images/ (or --out):

    labelstudio-data-manager.png   the project's Data Manager after "Retrieve predictions": a tab sorted by
                                   Prediction score, ascending (least certain clip first), with the
                                   prediction's model version, result and the uploaded file's name
    labelstudio-labeling.png       the least certain clip opened for labeling: its waveform (y-axis zoomed,
                                   the clips are quiet) and spectrogram, the model's choice pre-selected,
                                   the prediction's tab (srkw_cnn_0.h5, its score) beside the annotation
    labelstudio-model.png          Settings → Model: "orca detector" connected, its ⋯ menu open

What it runs, all on 127.0.0.1 and in one temporary folder that it removes at the end: the demo's data
(service/demo.py's `prepare`: the fresh, untrained 607×617 srkw_cnn_0.h5 and the 4 real Orcasound clips),
this service in-process (tests/ops_support.Served), a Label Studio 1.23.2 (tests/labelstudio_server.
LabelStudio), a project with the audio config of tests/test_labelstudio_e2e.py, the 4 clips uploaded, the
backend connected and the predictions retrieved through Label Studio's API (the helpers of that test);
then chromium logs in through /user/login/ and takes the pictures.

Needs, besides the project's `.venv` (`make setup`) and `.venv-labelstudio` (`make labelstudio`):

    apt-get install -y chromium chromium-driver          # /usr/bin/chromium, /usr/bin/chromedriver
    python3 -m venv /tmp/shots-venv && /tmp/shots-venv/bin/pip install selenium

Run from the repository root with the project's Python (selenium is taken from --shots-venv, appended to
sys.path after the project's own packages):

    .venv/bin/python docs/images/make_labelstudio_screenshots.py --shots-venv /tmp/shots-venv

Options: --out (default docs/images), --labelstudio-venv (default .venv-labelstudio of this checkout),
--chromium, --chromedriver. A 1400×900 viewport; the Data Manager is cropped below its rows, the model
page to 1180×740; a PNG over 300 KB is quantized to 256 colours.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import torch  # noqa: E402,F401  (before anything may import TensorFlow)

import labelstudio_server  # noqa: E402
import test_labelstudio_e2e as e2e  # noqa: E402  (its helpers: create_project, connect, retrieve_predictions)
from ops_support import Served  # noqa: E402
from service import create_app  # noqa: E402
from service.demo import prepare, service_config  # noqa: E402

WIDTH, HEIGHT = 1400, 900
WAIT = 90  # seconds, at most, for a page to render
MAX_BYTES = 300_000
# The Data Manager tab's columns: the rest are hidden
SHOWN = ["id", "total_annotations", "predictions_score", "predictions_model_versions", "predictions_results",
         "file_upload"]
WIDTHS = {"tasks:predictions_score": 150, "tasks:predictions_model_versions": 230,
          "tasks:predictions_results": 360, "tasks:file_upload": 370}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="where the PNGs go")
    parser.add_argument("--shots-venv", type=Path, default=Path("/tmp/shots-venv"),
                        help="a venv with selenium installed (default /tmp/shots-venv)")
    parser.add_argument("--labelstudio-venv", type=Path, default=labelstudio_server.VENV,
                        help="the venv of Label Studio 1.23.2 (default: .venv-labelstudio of this checkout)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ the project, through the API

def make_project(studio, backend) -> tuple[int, int, int]:
    """The project with its clips, the backend connected, predictions retrieved, and a Data Manager tab sorted
    by prediction score (ascending). Returns (project id, tab id, the least certain task's id)."""
    project = e2e.create_project(studio, "Orcasound calls", e2e.AUDIO_CONFIG)
    files = [(clip.name, (clip.name, clip.read_bytes(), "audio/mpeg")) for clip in e2e.CLIPS]
    studio.api("POST", f"/api/projects/{project}/import", expect=201, files=files)
    status, ml = e2e.connect(studio, backend, project)
    if status != 201 or ml.get("state") != "CO":
        raise RuntimeError(f"the backend did not connect: {status} {ml}")
    e2e.retrieve_predictions(studio, project)
    predictions = e2e.predictions_of(studio, project)
    if len(predictions) != len(e2e.CLIPS):
        raise RuntimeError(f"predictions for {len(predictions)} of {len(e2e.CLIPS)} tasks: {predictions}")

    _, columns = studio.api("GET", "/api/dm/columns/", expect=200, params={"project": project})
    hidden = [f"tasks:{c['id']}" for c in columns["columns"]
              if c.get("target") == "tasks" and c["id"] not in SHOWN and c["id"] != "data"]
    _, view = studio.api("POST", "/api/dm/views/", expect=201, json={"project": project, "data": {
        "title": "Least certain first", "ordering": ["tasks:predictions_score"],
        "hiddenColumns": {"explore": hidden, "labeling": hidden}, "columnsWidth": WIDTHS}})
    _, page = studio.api("GET", "/api/tasks/", expect=200, params={"project": project, "view": view["id"],
                                                                      "fields": "all", "page_size": 100})
    scores = [task["predictions_score"] for task in page["tasks"]]
    if scores != sorted(scores):
        raise RuntimeError(f"the tab is not sorted by score: {scores}")
    return project, view["id"], page["tasks"][0]["id"]


# ------------------------------------------------------------------------------------------ the browser

def browser(args, scratch: Path):
    sys.path.append(str(next((args.shots_venv / "lib").glob("python3*/site-packages"))))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={scratch / 'chromium-profile'}",
                "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # chromium's own scratch folders (org.chromium.Chromium.*) go under TMPDIR: ours, removed at the end
    service = Service(args.chromedriver, env={**os.environ, "TMPDIR": str(scratch)})
    driver = webdriver.Chrome(service=service, options=options)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    return driver


def log_in(driver, studio):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT)
    driver.get(f"{studio.url}/user/login/")
    wait.until(EC.visibility_of_element_located((By.NAME, "email"))).send_keys(studio.username)
    driver.find_element(By.NAME, "password").send_keys(studio.password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait.until(lambda d: "/user/login" not in d.current_url)


def text_count(driver, text: str) -> int:
    return driver.execute_script("return document.body.innerText.split(arguments[0]).length - 1", text)


def data_manager(driver, studio, project, tab, out: Path):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{studio.url}/projects/{project}/data?tab={tab}")
    n = len(e2e.CLIPS)
    # the tab's header, one model version per row, and each row's upload name
    WebDriverWait(driver, WAIT).until(lambda d: text_count(d, "Least certain first") >= 1
                                      and text_count(d, "Prediction score") >= 1
                                      and text_count(d, "srkw_cnn_0.h5") >= n
                                      and text_count(d, ".mp3") >= n)
    settle(driver)
    save(driver, out, below_rows=True)


def labeling(driver, studio, project, tab, task, out: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT)
    driver.get(f"{studio.url}/projects/{project}/data?tab={tab}&task={task}")
    # the prediction's choice ticked in the new annotation, its tab named after the model version
    wait.until(lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('input[type=checkbox]:checked'))"
        ".some(e => /^(calls|nocalls)/.test(((e.closest('label') || e.parentElement).innerText || '').trim()))"))
    wait.until(lambda d: text_count(d, "srkw_cnn_0.h5") >= 1)
    # the clip decoded: its duration shown, and the waveform's canvas drawn
    wait.until(lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('.lsf-time-box__input-time'))"
        ".some(e => e.value && e.value !== '00:00:00:000')"))
    wait.until(lambda d: d.execute_script("""
        const c = document.querySelector('.lsf-audio-tag canvas');
        if (!c || !c.width || !c.height) return false;
        const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let drawn = 0;
        for (let i = 3; i < px.length; i += 4) if (px[i] > 0) drawn++;
        return drawn > 1000;"""))
    wave_height = canvas_height(driver)
    # the clips are quiet: zoom the waveform's y axis, and show the spectrogram too (Audio settings, ⚙)
    settings = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "button[aria-label='Audio settings']")))
    settings.click()
    zoom = wait.until(EC.visibility_of_element_located(
        (By.XPATH, "//*[normalize-space(text())='Audio zoom y-axis']/following::input[1]")))
    zoom.send_keys(Keys.CONTROL, "a")
    zoom.send_keys("25", Keys.ENTER)
    show = wait.until(lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('.lsf-audio-config__menu-button'))"
        ".find(e => e.innerText.trim() === 'Show spectrogram')"))
    show.click()
    wait.until(lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('.lsf-audio-config__menu-button'))"
        ".some(e => e.innerText.trim() === 'Hide spectrogram')"))
    # close the menu: a click on the empty part of the labeling area, below the choices
    click_at(driver, 700, HEIGHT - 120)
    wait.until(lambda d: not d.execute_script(
        "return Array.from(document.querySelectorAll('.lsf-audio-config__menu-button'))"
        ".some(e => e.offsetParent !== null)"))
    # the spectrogram drawn below the waveform: the audio's canvases grew taller
    wait.until(lambda d: canvas_height(d) > wave_height)
    settle(driver, 2)
    save(driver, out)


def canvas_height(driver) -> int:
    """The total height of the audio tag's drawn canvases (waveform, spectrogram)."""
    return driver.execute_script("return Array.from(document.querySelectorAll('.lsf-audio-tag canvas'))"
                                 ".reduce((sum, c) => sum + c.getBoundingClientRect().height, 0)")


def click_at(driver, x: int, y: int):
    """A real mouse click at a point of the viewport."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(x, y).click()
    actions.perform()


def model_page(driver, studio, project, out: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT)
    driver.get(f"{studio.url}/projects/{project}/settings/ml")
    wait.until(lambda d: text_count(d, "orca detector") >= 1 and text_count(d, "Connected") >= 1
               and text_count(d, "http://127.0.0.1:") >= 1)
    menu = wait.until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, "button[aria-label='Machine learning model options']")))
    menu.click()
    wait.until(lambda d: text_count(d, "Start Training") >= 1)
    settle(driver)
    save(driver, out, box=(0, 0, 1180, 740))


def settle(driver, seconds: float = 1.0):
    """What the explicit waits cannot see: fonts and the last paint. Then one more frame."""
    driver.execute_script("return document.fonts.ready")
    time.sleep(seconds)


def save(driver, out: Path, below_rows: bool = False, box: tuple[int, int, int, int] | None = None):
    """The viewport as PNG: cropped (to `box`, or just below the last table row if `below_rows`), then
    quantized to 256 colours if it is over MAX_BYTES."""
    from PIL import Image

    raw = out.with_suffix(".raw.png")
    driver.save_screenshot(str(raw))
    image = Image.open(raw).convert("RGB")
    raw.unlink()
    if below_rows:
        bottom = driver.execute_script("""
            const rows = Array.from(document.querySelectorAll('[class*=row], tr'));
            return Math.max(0, ...rows.map(r => r.getBoundingClientRect().bottom));""")
        if 0 < bottom < image.height - 40:
            image = image.crop((0, 0, image.width, int(bottom) + 24))
    if box:
        image = image.crop(box)
    image.save(out, optimize=True)
    if out.stat().st_size > MAX_BYTES:
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"{out}: {image.width}x{image.height}, {out.stat().st_size} bytes", flush=True)


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    labelstudio_server.VENV = args.labelstudio_venv.resolve()  # what LabelStudio starts `label-studio` from
    scratch = Path(tempfile.mkdtemp(prefix="orca-ls-shots-"))
    studio = backend = driver = None
    try:
        studio = labelstudio_server.LabelStudio(scratch / "label-studio")
        demo = scratch / "demo"
        prepare(demo)  # models/srkw_cnn_0.h5: the demo's fresh 607×617 srkw_cnn
        config = service_config(demo)
        config.update({"DEVICE": "cpu", "API_TOKEN": e2e.TOKEN,
                       "LABELSTUDIO_MODEL_URL": str(demo / "models") + "/",
                       "LABEL_STUDIO_URL": studio.url, "LABEL_STUDIO_API_KEY": studio.token})
        backend = Served(create_app(config))
        project, tab, least_certain = make_project(studio, backend)
        print(f"Label Studio {studio.url}, project {project}, backend {backend.base}/labelstudio", flush=True)

        driver = browser(args, scratch)
        log_in(driver, studio)
        data_manager(driver, studio, project, tab, args.out / "labelstudio-data-manager.png")
        labeling(driver, studio, project, tab, least_certain, args.out / "labelstudio-labeling.png")
        model_page(driver, studio, project, args.out / "labelstudio-model.png")
    finally:
        if driver is not None:
            driver.quit()
        if backend is not None:
            backend.close()
        if studio is not None:
            studio.close()
        shutil.rmtree(scratch, ignore_errors=True)
        for leftover in glob.glob(str(scratch) + "*"):  # nothing else of ours should be left
            shutil.rmtree(leftover, ignore_errors=True)


if __name__ == "__main__":
    main()
