"""Screenshots of a Label Studio project with this service as its ML backend, for docs/labelstudio.md.

    apt-get install chromium chromium-driver                  # a headless browser and its driver (Debian)
    python3 -m venv /tmp/shots-venv && /tmp/shots-venv/bin/pip install selenium requests pillow
    make setup labelstudio                                    # .venv (the service) and .venv-labelstudio
    /tmp/shots-venv/bin/python docs/images/make_labelstudio_screenshots.py

It starts a Label Studio (tests/labelstudio_server.py: SQLite in a temporary folder, a user and a token) and
`orca demo` (the demo's untrained srkw_cnn_0.h5 and its 4 real clips) on free ports, does steps 4 and 5 of
docs/labelstudio.md through Label Studio's API, retrieves the predictions, logs in with chromium and writes
docs/images/labelstudio-{data-manager,labeling,model}.png; then stops both and removes the folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "images"
sys.path.insert(0, str(REPO / "tests"))
from labelstudio_server import LabelStudio, free_port  # noqa: E402

TOKEN = "backend-secret"
CONFIG = ('<View><Audio name="audio" value="$audio"/><Choices name="call" toName="audio" choice="single">'
          '<Choice value="calls"/><Choice value="nocalls"/></Choices></View>')


def start_backend(folder: Path, studio: LabelStudio) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(API_TOKEN=TOKEN, LABEL_STUDIO_URL=studio.url, LABEL_STUDIO_API_KEY=studio.token,
               ORCA_LABELSTUDIO_MODEL_URL=str(folder / "local" / "models") + "/", ORCA_DEVICE="cpu")
    log = open(folder / "backend.log", "wb")
    process = subprocess.Popen([str(REPO / ".venv" / "bin" / "orca"), "demo", "--dir", str(folder / "local"),
                                "--port", str(port)], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if requests.get(f"{url}/labelstudio/health", timeout=2).status_code == 200:
                return process, url
        except requests.RequestException:
            time.sleep(0.5)
    raise SystemExit(f"the backend did not start: {(folder / 'backend.log').read_text()[-2000:]}")


def prepare(studio: LabelStudio, backend: str, clips: list[Path]) -> tuple[int, int, int]:
    """The project, its clips, the connection and the predictions; (project, a task, the view)."""
    _, project = studio.api("POST", "/api/projects/", expect=201, json={"title": "Orcasound calls", "label_config": CONFIG})
    pid = project["id"]
    files = [(f"clip{i}", (clip.name, clip.read_bytes(), "audio/mpeg")) for i, clip in enumerate(clips)]
    studio.api("POST", f"/api/projects/{pid}/import", expect=201, files=files)
    studio.api("POST", "/api/ml/", expect=201, json={
        "project": pid, "url": f"{backend}/labelstudio", "title": "orca detector", "auth_method": "BASIC_AUTH",
        "basic_auth_user": "labelstudio", "basic_auth_pass": TOKEN})
    studio.api("POST", "/api/dm/actions", expect=200, params={"id": "retrieve_tasks_predictions", "project": pid},
               json={"selectedItems": {"all": True, "excluded": []}})
    _, view = studio.api("POST", "/api/dm/views/", expect=201, json={"project": pid, "data": {
        "title": "Least certain first", "ordering": ["tasks:predictions_score"],
        "hiddenColumns": {"explore": ["tasks:inner_id", "tasks:annotators", "tasks:total_annotations",
                                      "tasks:cancelled_annotations", "tasks:annotations_results",
                                      "tasks:annotations_ids", "tasks:predictions_results", "tasks:file_upload",
                                      "tasks:storage_filename", "tasks:created_at", "tasks:updated_at",
                                      "tasks:updated_by", "tasks:avg_lead_time", "tasks:draft_exists"],
                        "labeling": []}}})
    _, page = studio.api("GET", "/api/tasks/", expect=200, params={"project": pid, "view": view["id"]})
    return pid, page["tasks"][0]["id"], view["id"]


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService("/usr/bin/chromedriver"), options=options)


def shoot(driver, url: str, wait_for: str, name: str, settle: float = 3.0) -> Path:
    driver.get(url)
    WebDriverWait(driver, 90).until(ready.presence_of_element_located((By.CSS_SELECTOR, wait_for)))
    time.sleep(settle)  # the table's cells and the waveform fill in after their element exists
    path = OUT / name
    driver.save_screenshot(str(path))
    image = Image.open(path).convert("RGB")
    image.save(path, optimize=True)
    return path


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="orca-ls-shots-"))
    studio = backend = driver = None
    try:
        studio = LabelStudio(folder / "label-studio")
        subprocess.run([str(REPO / ".venv" / "bin" / "orca"), "demo", "--dir", str(folder / "local"), "--prepare-only"],
                       check=True, stdout=subprocess.DEVNULL)
        backend, url = start_backend(folder, studio)
        clips = sorted((folder / "local" / "unlabeled_audio" / "mp3").glob("*.mp3"))
        project, task, view = prepare(studio, url, clips)
        driver = browser()
        driver.get(f"{studio.url}/user/login/")
        WebDriverWait(driver, 60).until(ready.presence_of_element_located((By.NAME, "email")))
        driver.find_element(By.NAME, "email").send_keys(studio.username)
        driver.find_element(By.NAME, "password").send_keys(studio.password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
        WebDriverWait(driver, 60).until(lambda d: "/user/login" not in d.current_url)
        base = f"{studio.url}/projects/{project}"
        for path in (shoot(driver, f"{base}/data?tab={view}", ".dm-table__row, [class*=table] [class*=row]",
                           "labelstudio-data-manager.png"),
                     shoot(driver, f"{base}/data?tab={view}&task={task}", "canvas, wave, [class*=waveform]",
                           "labelstudio-labeling.png", settle=6.0),
                     shoot(driver, f"{base}/settings/ml", "[class*=ml], [class*=Model], main",
                           "labelstudio-model.png")):
            print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    finally:
        if driver is not None:
            driver.quit()
        if backend is not None:
            backend.terminate()
            backend.wait(30)
        if studio is not None:
            studio.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
