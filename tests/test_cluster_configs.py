"""The cluster configs in cluster/ are valid and agree with each other and the package.

The launcher YAML goes through Ray's own config preparation and schema, the
Serve config file through Ray Serve's; the KubeRay manifests are checked for
what the operator requires and rejects (its Go validation and CRD); the image,
Ray version, token settings, runtime env, Serve config and storage paths must
be the same everywhere, so that one edit cannot leave the others behind.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from raydino.cli import build_parser
from raydino.config import load_config
from raydino.layout import Output

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SHARED = "/mnt/shared"
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Where each kind keeps its RayCluster spec, and the longest name the operator
# accepts (it appends suffixes to name the RayCluster it creates).
CLUSTER_SPEC = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}
MAX_NAME = {"RayCluster": 53, "RayJob": 47, "RayService": 47}
MANIFESTS = ["raycluster", "rayjob", "rayservice"]


def _yaml(rel: str) -> dict:
    return yaml.safe_load((ROOT / rel).read_text())


def _manifest(name: str) -> dict:
    return _yaml(f"cluster/kuberay/{name}.yaml")


def _cluster_spec(doc: dict) -> dict:
    field = CLUSTER_SPEC[doc["kind"]]
    return doc["spec"][field] if field else doc["spec"]


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _dockerfile() -> str:
    return (CLUSTER / "Dockerfile").read_text()


def _workdir() -> str:
    return re.findall(r"^WORKDIR\s+(\S+)", _dockerfile(), re.M)[-1]


# ---------------------------------------------------------------- launcher


def test_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _yaml("cluster/launcher/aws-gpu.yaml")
    prepared = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating
    validate_config(prepared)

    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    workers = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert any(t["node_config"]["InstanceType"].startswith(("g5.", "g6.", "p4d.", "p5.")) for t in workers)
    assert all(t.get("min_workers", 0) == 0 < t["max_workers"] for t in workers), "GPU workers autoscale from 0"


def test_launcher_schema_check_is_not_vacuous():
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = _yaml("cluster/launcher/aws-gpu.yaml")
    bad["docker"]["imgae"] = "typo"
    with pytest.raises(ValidationError, match="imgae"):
        validate_config(prepare_config(bad))


def test_launcher_runs_token_auth_on_shared_storage():
    cfg = _yaml("cluster/launcher/aws-gpu.yaml")
    run_options = " ".join(cfg["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in run_options
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert f"--volume {SHARED}:{SHARED}" in run_options
    assert f"--env HF_HOME={SHARED}/" in run_options
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address" in c for c in cfg["worker_start_ray_commands"])


# ----------------------------------------------------------------- KubeRay


@pytest.mark.parametrize("name, kind", [("raycluster", "RayCluster"), ("rayjob", "RayJob"), ("rayservice", "RayService")])
def test_kuberay_manifest_has_what_the_operator_requires(name, kind):
    doc = _manifest(name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == kind
    assert DNS1035.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= MAX_NAME[kind]
    spec = _cluster_spec(doc)

    assert spec["rayVersion"] == ray.__version__, "rayVersion must be the Ray inside the image"
    assert spec["authOptions"] == {"mode": "token", "secretName": "raydino-ray-token"}

    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert _containers(head)[0]["name"] == "ray-head"
    head_limits = _containers(head)[0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits, "the head is a CPU pod"
    assert {p["containerPort"] for p in _containers(head)[0]["ports"]} >= {6379, 8265, 10001}

    gpu_groups = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in _containers(g)[0]["resources"]["limits"]]
    assert gpu_groups, "a worker group with nvidia.com/gpu limits"
    for group in spec["workerGroupSpecs"]:
        assert DNS1035.match(group["groupName"])
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        res = _containers(group)[0]["resources"]
        assert res["limits"] == res["requests"], "GPU pods get what they ask for (no overcommit)"
    for group in _groups(spec):
        # KubeRay rejects num-cpus/num-gpus in both rayStartParams and the group's `resources`.
        assert "resources" not in group
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), "rayStartParams values are strings"


@pytest.mark.parametrize("name", MANIFESTS)
def test_kuberay_pods_mount_the_shared_pvc(name):
    claim = _manifest("storage")
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for group in _groups(_cluster_spec(_manifest(name))):
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        container = pod["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert volumes[mounts[SHARED]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HF_HOME"].startswith(SHARED + "/")


@pytest.mark.parametrize("name", ["rayjob", "rayservice"])
def test_manifest_describes_the_same_cluster_as_raycluster(name):
    standalone = _cluster_spec(_manifest("raycluster"))
    other = _cluster_spec(_manifest(name))

    def shape(spec):
        return [(c["image"], c["resources"], c.get("env"), c["volumeMounts"]) for g in _groups(spec) for c in _containers(g)]

    assert shape(standalone) == shape(other)
    assert standalone["authOptions"] == other["authOptions"]


def test_rayjob_runs_the_ffhq256_pipeline_on_shared_storage():
    spec = _manifest("rayjob")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/pipeline.py"]
    assert (ROOT / argv[1]).exists()
    assert spec["shutdownAfterJobFinishes"] is True

    args = build_parser().parse_args(["run", *argv[2:]])  # a valid `raydino run` command line
    assert args.preset == "ffhq256"
    cfg = load_config(args.preset, args.config, args.overrides)
    for path in (args.out or cfg.out, cfg.data.images):
        assert path.startswith(SHARED + "/"), f"{path} is not on the shared volume"

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == _workdir(), "the job runs the image's copy of the repo"
    assert runtime_env["env_vars"] == _yaml("cluster/runtime_env.yaml")["env_vars"]


def test_all_configs_use_one_image():
    images = {c["image"] for name in MANIFESTS for g in _groups(_cluster_spec(_manifest(name))) for c in _containers(g)}
    images.add(_yaml("cluster/launcher/aws-gpu.yaml")["docker"]["image"])
    assert len(images) == 1, images
    assert f"-t {images.pop()} " in _dockerfile(), "the Dockerfile's build command names the same image"


# ------------------------------------------------------------------- Serve


def _serve_config() -> dict:
    return _yaml("cluster/serve.yaml")


def test_serve_config_passes_serves_own_schema():
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

    from raydino.serve.app import APP_NAME

    data = _serve_config()
    config = ServeDeploySchema.model_validate(data)  # what `serve deploy` and `serve run` do with the file
    # The schema lets unknown keys through (forward compatibility): a misspelt optional key would vanish silently.
    assert set(data) <= set(ServeDeploySchema.model_fields)
    assert all(set(app) <= set(ServeApplicationSchema.model_fields) for app in data["applications"])

    assert [(app.name, app.route_prefix) for app in config.applications] == [(APP_NAME, "/")]
    assert (config.http_options.host, config.http_options.port) == ("0.0.0.0", 8000), "reachable from outside the pod"


@pytest.mark.parametrize("breakage, message", [
    (lambda app: app["runtime_env"].update(working_dir="/home/ray/raydino"), "remote URIs"),
    (lambda app: app.update(imprt_path=app.pop("import_path")), "import_path"),
], ids=["working_dir-a-plain-path", "import_path-misspelt"])
def test_serve_schema_check_is_not_vacuous(breakage, message):
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    bad = _serve_config()
    breakage(bad["applications"][0])
    with pytest.raises(ValidationError, match=message):
        ServeDeploySchema.model_validate(bad)


def test_serve_config_runs_in_the_jobs_runtime_env():
    from ray.runtime_env import RuntimeEnv

    runtime_env = _serve_config()["applications"][0]["runtime_env"]
    RuntimeEnv(**runtime_env)
    assert runtime_env["working_dir"] == f"local://{_workdir()}", "the image's copy of the repo"
    assert runtime_env["env_vars"] == _yaml("cluster/runtime_env.yaml")["env_vars"]


def test_serve_config_builds_the_package_app_from_the_rayjobs_run():
    import inspect

    from ray._common.utils import import_attr

    from raydino.serve import app as serve_app

    (app,) = _serve_config()["applications"]
    builder = import_attr(app["import_path"])
    assert builder is serve_app.build and len(inspect.signature(builder).parameters) == 1

    args = app["args"]
    assert set(args) <= {"run", "overrides"}, "the keys build() reads"
    assert args["run"].startswith(SHARED + "/"), "the replicas load the run from the shared volume"
    job_argv = build_parser().parse_args(["run", *shlex.split(_manifest("rayjob")["spec"]["entrypoint"])[2:]])
    assert args["run"] == str(Output(job_argv.out).run.path), "serves the run the RayJob trains"

    overrides = args.get("overrides", [])
    assert all(o.startswith("serve.") for o in overrides), "raydino serve takes serve.* overrides only"
    cfg = load_config("ffhq256", None, overrides)  # the overrides parse and pass the config's checks
    assert cfg.serve.num_gpus >= 1, "a GPU per replica, whether or not a GPU pod is up when the app is built"
    commented = re.findall(r"^\s*#\s*- name: (\S+)", (CLUSTER / "serve.yaml").read_text(), re.M)
    assert commented == [serve_app.FaceServer.name], "the commented `deployments:` override names the deployment"


def test_rayservice_serves_the_serve_config():
    from ray.serve.schema import ServeDeploySchema

    doc = _manifest("rayservice")
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert serve_config == _serve_config()
    ServeDeploySchema.model_validate(serve_config)

    spec = _cluster_spec(doc)
    ports = {p["name"]: p["containerPort"] for p in _containers(spec["headGroupSpec"])[0]["ports"]}
    assert ports["serve"] == serve_config["http_options"]["port"], "the operator's Serve Service targets the port named serve"
    gpu_groups = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in _containers(g)[0]["resources"]["limits"]]
    assert sum(g["minReplicas"] for g in gpu_groups) >= 1, "a GPU pod stays up for the replica"
    # The operator names a RayService's head Service <name>-head-svc, as a RayCluster's: they must not collide.
    assert doc["metadata"]["name"] != _manifest("raycluster")["metadata"]["name"]


# ------------------------------------------------------- image, runtime env


def test_dockerfile_base_is_the_installed_ray_on_gpu():
    froms = re.findall(r"^FROM\s+(\S+)", _dockerfile(), re.M)
    assert len(froms) == 1
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-(gpu|cu\d+)", froms[0])
    assert m, f"unexpected base image {froms[0]}"
    assert m.group(1) == ray.__version__
    assert int(m.group(2)) >= 10, "pyproject requires Python >= 3.10"
    assert f"ray.__version__ == '{ray.__version__}'" in _dockerfile(), "the build checks pip kept the base's Ray"
    for path in ("raydino", "jobs", "cluster"):
        assert re.search(rf"^COPY .*\b{path} ", _dockerfile(), re.M), f"the image lacks {path}/"


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    data = _yaml("cluster/runtime_env.yaml")
    assert set(data) <= RuntimeEnv.known_fields
    RuntimeEnv(**data)  # Ray's own type checks (env_vars are str -> str, excludes a list)
    assert data["working_dir"] == "."
    assert data["env_vars"]["RAY_AUTH_MODE"] == "token"


def test_working_dir_upload_holds_the_package_and_no_outputs(tmp_path):
    """Package the checkout as `ray job submit` does: same excludes, same .gitignore handling."""
    from zipfile import ZipFile

    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import create_package

    excludes = get_runtime_env_default_excludes() + _yaml("cluster/runtime_env.yaml")["excludes"]
    create_package(str(ROOT), tmp_path / "pkg.zip", include_gitignore=True, excludes=excludes)
    names = set(ZipFile(tmp_path / "pkg.zip").namelist())

    needed = [p for pattern in ("raydino/**/*.py", "raydino/configs/*.yaml", "jobs/*.py") for p in ROOT.glob(pattern)]
    needed = {p.relative_to(ROOT).as_posix() for p in needed if "__pycache__" not in p.parts}
    assert "raydino/data/synth_faces.py" in needed
    assert not needed - names, f"missing from the job's working_dir: {sorted(needed - names)}"
    assert not [n for n in names if n.startswith(("data/", ".venv/", ".git/"))]


def test_every_placeholder_is_explained_in_the_docs():
    docs = (ROOT / "docs" / "cluster.md").read_text()
    files = [p for p in CLUSTER.rglob("*") if p.is_file()]
    placeholders = {m for p in files for m in re.findall(r"REPLACE_ME_[A-Z_]+", p.read_text())}
    assert placeholders
    missing = sorted(p for p in placeholders if p not in docs)
    assert not missing, f"docs/cluster.md does not say what to put for {missing}"
