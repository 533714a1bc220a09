"""deploy/kubernetes/, checked without a cluster: every manifest validates against the Kubernetes API
schemas bundled with kubernetes-validate (strict: an unknown field fails; nothing is downloaded), the
kustomization lists them all, and the Deployment agrees with Dockerfile.gpu and the service: the port,
the probe paths, the grace period against gunicorn's graceful timeout, the user, the state folder; the
ConfigMap holds real settings of service/config.py, at their defaults."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

import kubernetes_validate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_service_dockerfile import command, instructions  # noqa: E402  (the Dockerfile's parsed form)

from service import config as service_config  # noqa: E402
from service.__main__ import SHUTDOWN_TIMEOUT  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "deploy" / "kubernetes"
KUBERNETES = "1.37"  # the newest schemas kubernetes-validate 1.37 bundles
PLACEHOLDER = "REPLACE_ME"


def documents() -> list[tuple[str, dict]]:
    """(file name, document) of every YAML document in the folder, the kustomization included."""
    found = []
    for path in sorted(FOLDER.glob("*.yaml")):
        found += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return found


def resources() -> list[tuple[str, dict]]:
    return [(name, d) for name, d in documents() if d.get("kind") != "Kustomization"]


def one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in resources() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in deploy/kubernetes/"
    return found[0]


def container() -> dict:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def container_port(port) -> int:
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container()["ports"] if "name" in p}
    assert port in named, f"no container port named {port!r}"
    return named[port]


def image_port() -> int:
    exposed = {rest.split("/")[0] for word, rest in instructions() if word == "EXPOSE"}
    cmd = command()
    bound = cmd[cmd.index("--bind") + 1].rpartition(":")[2]
    assert exposed == {bound}, (exposed, bound)
    return int(bound)


def image_env() -> dict:
    """The ENV instructions of Dockerfile.gpu (key=value form)."""
    env = {}
    for word, rest in instructions():
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S*)", rest)))
    return env


def healthcheck_url() -> tuple[int, str]:
    [check] = [rest for word, rest in instructions() if word == "HEALTHCHECK"]
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", check)
    assert match, check
    return int(match[1]), match[2]


def exec_probe_url(probe: dict) -> tuple[int, str]:
    script = " ".join(probe["exec"]["command"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", script)
    assert match, script
    return int(match[1]), match[2]


# --------------------------------------------------------------------------- the schemas

@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: the validator must use its bundled schemas."""
    def refuse(self, address):
        raise AssertionError(f"the validation tried to connect to {address}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_the_manifests_validate_against_the_bundled_kubernetes_schemas(no_network):
    assert kubernetes_validate.latest_version().startswith(KUBERNETES), kubernetes_validate.latest_version()
    kinds = set()
    for name, document in resources():
        try:
            validated = kubernetes_validate.validate(document, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name}: {document['kind']} {document['metadata'].get('name')}: {error}")
        assert validated == KUBERNETES
        kinds.add(document["kind"])
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim"} <= kinds, kinds


def test_the_validation_catches_a_wrong_field(no_network):
    """The check above can fail: an unknown field, or a port given as a word, is refused."""
    deployment = yaml.safe_load((FOLDER / "deployment.yaml").read_text())
    typo = yaml.safe_load((FOLDER / "deployment.yaml").read_text())
    typo["spec"]["template"]["spec"]["terminationGracePeriod"] = 70
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES, strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "5001"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_kustomization_lists_every_manifest():
    [kustomization] = [d for _, d in documents() if d.get("kind") == "Kustomization"]
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    files = {path.name for path in FOLDER.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert not list(FOLDER.glob("*.yml")), "name manifests *.yaml"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl on this machine")
def test_kubectl_kustomize_builds_the_folder():
    done = subprocess.run(["kubectl", "kustomize", str(FOLDER)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(done.stdout) if d}
    assert built == {(d["kind"], d["metadata"]["name"]) for _, d in resources()}


# --------------------------------------------------------------------------- the Deployment and the image

def test_one_replica_on_one_gpu_replaced_not_rolled():
    spec = one("Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"  # one GPU, one ReadWriteOnce state volume
    assert str(container()["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


def test_the_port_is_the_images():
    port = image_port()
    assert [p["containerPort"] for p in container()["ports"]] == [port]
    service = one("Service")
    assert service["spec"]["selector"].items() <= one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    assert [container_port(p["targetPort"]) for p in service["spec"]["ports"]] == [port]


def test_liveness_asks_what_the_healthcheck_asks_and_readiness_asks_ready():
    port, path = healthcheck_url()
    assert (port, path) == (image_port(), "/health")
    probes = container()
    for kind in ("livenessProbe", "startupProbe"):
        probe = probes[kind]["httpGet"]
        assert (container_port(probe["port"]), probe["path"]) == (port, path), kind
    assert exec_probe_url(probes["readinessProbe"]) == (port, "/ready")
    # the start-up may take as long as the HEALTHCHECK's start period allows
    start_period = re.search(r"--start-period=(\d+)s", next(r for w, r in instructions() if w == "HEALTHCHECK"))
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= int(start_period[1])


def test_the_grace_period_outlasts_the_graceful_shutdown():
    cmd = command()
    graceful = float(cmd[cmd.index("--graceful-timeout") + 1])
    grace = one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > max(graceful, SHUTDOWN_TIMEOUT), (grace, graceful, SHUTDOWN_TIMEOUT)


def test_it_runs_as_the_images_user_without_privileges():
    users = [rest for word, rest in instructions() if word == "USER"]
    [useradd] = [rest for word, rest in instructions() if word == "RUN" and "useradd" in rest]
    uid = int(re.search(r"--uid\s+(\d+)", useradd)[1])
    assert re.search(rf"\buseradd\b.*\b{re.escape(users[-1])}\b", useradd)
    pod = one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid != 0
    assert pod["fsGroup"] == uid  # the volumes are writable by it
    own = container()["securityContext"]
    assert own["allowPrivilegeEscalation"] is False and own["capabilities"]["drop"] == ["ALL"]


def test_the_state_folder_is_a_persistent_volume_and_the_folders_are_the_images():
    env, data = image_env(), one("ConfigMap")["data"]
    for key in ("ORCA_STATE_DIR", "ORCA_LOCAL_ROOT", "ORCA_WORK_DIR"):
        assert data[key] == env[key], key
    pod = one("Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {d["metadata"]["name"]: d for _, d in resources() if d["kind"] == "PersistentVolumeClaim"}
    state = volumes[mounts[env["ORCA_STATE_DIR"]]]
    claim = claims[state["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    data_volume = volumes[mounts[env["ORCA_LOCAL_ROOT"]]]
    assert data_volume["persistentVolumeClaim"]["claimName"] in claims
    assert env["ORCA_WORK_DIR"] in mounts  # scratch and caches on a volume, not the container's layer
    for volume in volumes.values():
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims


# --------------------------------------------------------------------------- settings and secrets

def test_the_configmap_holds_real_settings_at_their_defaults():
    data = one("ConfigMap")["data"]
    settings = {s.env: s for s in service_config.SETTINGS}
    assert not set(data) - set(settings), f"not settings of service/config.py: {sorted(set(data) - set(settings))}"
    assert "API_TOKEN" not in data, "the token belongs in the Secret"
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values are strings: quote numbers"
    image = {k: v for k, v in image_env().items() if k in settings}
    # what the service makes of the ConfigMap is what it makes of the image's environment alone
    assert service_config.from_env({**image, **data}) == service_config.from_env(image)
    for key, value in data.items():
        if key not in image and value:
            assert value == str(settings[key].default), (key, value, settings[key].default)
    cmd = command()
    assert int(data["ORCA_MAX_TRAIN_WAITERS"]) < int(cmd[cmd.index("--threads") + 1])
    envs = {ref["configMapRef"]["name"] for ref in container()["envFrom"] if "configMapRef" in ref}
    assert envs == {one("ConfigMap")["metadata"]["name"]}


def test_the_configmap_names_the_settings_an_operator_sets():
    data = one("ConfigMap")["data"]
    # orca serve only; the Secret (an optional entry there, for the key); under the cache
    not_here = {"HOST", "PORT", "API_TOKEN", "LABEL_STUDIO_API_KEY", "ORCA_ONNX_CACHE"}
    missing = {s.env for s in service_config.SETTINGS} - not_here - set(data)
    assert not missing, f"documented settings missing from configmap.yaml: {sorted(missing)}"


def test_the_secret_is_a_template_the_deployment_reads():
    secret = one("Secret")
    values = secret.get("stringData", {})
    assert set(values) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "API_TOKEN"}
    assert "data" not in secret and set(values.values()) == {PLACEHOLDER}, "placeholders only, never real keys"
    refs = {ref["secretRef"]["name"] for ref in container()["envFrom"] if "secretRef" in ref}
    assert refs == {secret["metadata"]["name"]}


# --------------------------------------------------------------------------- the readiness command, run

def test_the_readiness_command_passes_with_the_token_and_fails_without(tmp_path):
    from werkzeug.serving import make_server

    from service.app import create_app

    app = create_app({"LOCAL_ROOT": str(tmp_path), "API_TOKEN": "s3cret", "PRELOAD_TORCH": "0",
                      "STATE_DIR": str(tmp_path / "state"), "CACHE_DIR": str(tmp_path / "cache")})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        probe = list(container()["readinessProbe"]["exec"]["command"])
        port, _ = exec_probe_url(container()["readinessProbe"])
        probe = [part.replace(f"127.0.0.1:{port}", f"127.0.0.1:{server.server_port}") for part in probe]
        assert probe[0] == "python"
        run = lambda token: subprocess.run([sys.executable, *probe[1:]], capture_output=True, text=True,  # noqa: E731
                                           timeout=60, env={**os.environ, "API_TOKEN": token})
        assert run("s3cret").returncode == 0, run("s3cret").stderr[-1000:]
        wrong = run("wrong")
        assert wrong.returncode != 0 and "401" in wrong.stderr
        (tmp_path / "gone").mkdir()
        app.extensions["orca"].config["LOCAL_ROOT"] = str(tmp_path / "gone" / "missing")
        unready = run("s3cret")
        assert unready.returncode != 0 and "503" in unready.stderr, unready.stderr[-1000:]
    finally:
        server.shutdown()
        thread.join()


def test_the_operations_guide_says_how_to_apply_them_with_the_same_grace_period():
    guide = (ROOT / "docs" / "operations.md").read_text()
    assert "kubectl apply -k deploy/kubernetes/" in guide
    grace = one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert set(re.findall(r"terminationGracePeriodSeconds: (\d+)", guide)) == {str(grace)}
