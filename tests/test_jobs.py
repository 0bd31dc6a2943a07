"""raydino as Ray jobs on a real local cluster, submitted the way a user submits them.

A head and a second node are started with the `ray` CLI, each in its own
temporary dir and on its own free ports, with token authentication on: the token reaches the nodes and the `ray` CLI clients
through RAY_AUTH_TOKEN, exactly as on a cluster. Jobs go through `ray job
submit` with cluster/runtime_env.yaml, so the checkout is uploaded and run
from the job's working_dir.

The test process never connects to this cluster (the session's `ray_local`
may be running in it), and stops it by killing only the cluster's own
processes: `ray stop` kills every Ray process on the machine, other test
sessions' included.

These are the slowest tests of the suite (a few minutes: a small pipeline
runs twice as jobs). RAYDINO_SKIP_CLUSTER_TESTS=1 skips them while iterating
on something else; `make test` runs them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from raydino.pyramids import schema

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this environment's `ray` and `python`
RUNTIME_ENV = "cluster/runtime_env.yaml"
JOB_TIMEOUT = 900  # a hung job fails the test; a loaded 2-core machine is slow
# The demo, smaller: the session's 48 faces as a user's image folder (so no held-out pyramid), 4 steps
# per stage, no sweep (tune.trials=0; tests/test_tune.py covers Tune), no CLIP (an unconditional prior),
# 20 prior steps of 16, no student (distill.steps=0) and no comparison run (eval.compare_loss=): what is
# under test here is the submission, not the stages.
SMALL = ["train.stages.0.images=64", "train.stages.1.images=64", "train.val_count=8",
         "tune.trials=0", "pyramids.clip=", "sample.prompts=[]", "sample.n=4", "prior.steps=20", "prior.cpus_per_worker=1",
         "prior.batch_size=16", "prior.width=64", "eval.compare_loss=", "data.synth_count=48",
         "model.channels=[16,8]", "model.code_dim=8",
         "distill.steps=0"]  # what the jobs are tested for is Ray's part, not the images (the student: test_own_folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class LocalCluster:
    """Ray nodes started with `ray start --block`, each in its own process group."""

    def __init__(self, root: Path):
        self.root = root  # short: Ray's unix sockets live below it
        self.token = secrets.token_hex(32)
        # None of the test session's Ray settings but its Ray Train tuning (tests/conftest.py)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k.startswith("RAY_TRAIN_")}
        self.env.update(
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `python` in entrypoints is this environment's
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
        )
        self.nodes: list[subprocess.Popen] = []
        self._node_logs: list = []
        self.gcs_port = _free_port()
        self.dashboard = f"http://127.0.0.1:{_free_port()}"
        # Ray processes that find "the" cluster by scanning this machine (Ray Train's placement
        # group cleaner does) would see several here; on a real node there is one.
        self.env["RAY_API_SERVER_ADDRESS"] = self.dashboard

    def _start_node(self, args: list[str], name: str, ready, what: str) -> None:
        # Every port explicit: another Ray on this machine may hold the defaults. A temp dir
        # per node, as on separate machines: each node's runtime env agent re-extracts a job's
        # working_dir in its own dir, which would pull a shared one from under the driver.
        ports = ["node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port"]
        for attempt in range(3):  # `ray start` gives a raylet 30 s to register: a busy machine can miss that
            label = f"{name}-{attempt}" if attempt else name
            cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
                   "--temp-dir", str(self.root / f"ray-{label}"), "--disable-usage-stats",
                   *args, *[f"--{p}={_free_port()}" for p in ports]]
            log = open(self.root / f"{label}.log", "w")  # closed by stop()
            self._node_logs.append(log)
            node = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.nodes.append(node)
            if self._wait(node, ready, what):
                return
            self.nodes.remove(node)
            _kill_group(node.pid, signal.SIGKILL)
        raise RuntimeError(f"{what} did not start in 3 attempts:\n{self.node_logs()}")

    def start_head(self, num_cpus: int) -> None:
        self._start_node(["--head", f"--port={self.gcs_port}", f"--num-cpus={num_cpus}",
                          "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                          f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                          f"--ray-client-server-port={_free_port()}"],
                         "head", lambda: self.get("/api/version"), "the head's dashboard")

    def add_node(self, num_cpus: int) -> None:
        self._start_node([f"--address=127.0.0.1:{self.gcs_port}", f"--num-cpus={num_cpus}"], f"node{len(self.nodes)}",
                         lambda: len(self.alive_nodes()) == len(self.nodes), "a second node")

    def _wait(self, node: subprocess.Popen, ready, what: str, timeout: float = 120) -> bool:
        """True once ``ready()``; False if the node's `ray start` exited first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if node.poll() is not None:
                return False
            try:
                if ready():
                    return True
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(1)
        raise TimeoutError(f"{what} did not come up in {timeout}s:\n{self.node_logs()}")

    def node_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.root.glob("*.log")))

    def get(self, path: str):
        """GET a dashboard API path, authenticated, as JSON."""
        req = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def alive_nodes(self) -> list[dict]:
        rows = self.get("/api/v0/nodes?limit=100&detail=1")["data"]["result"]["result"]
        return [n for n in rows if n["state"] == "ALIVE"]

    def ray(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """The `ray` CLI, as a user on the laptop runs it."""
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def submit(self, job_id: str, *entrypoint: str, runtime_env: dict | None = None) -> subprocess.CompletedProcess:
        """`ray job submit` with cluster/runtime_env.yaml (or a variant of it): waits, streams the logs."""
        env_args = ["--runtime-env", RUNTIME_ENV] if runtime_env is None else ["--runtime-env-json", json.dumps(runtime_env)]
        try:
            return self.ray("job", "submit", "--address", self.dashboard, "--submission-id", job_id, *env_args,
                            "--", *entrypoint, timeout=JOB_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.ray("job", "stop", "--address", self.dashboard, job_id)
            raise

    def job(self, job_id: str) -> dict:
        return self.get(f"/api/jobs/{job_id}")

    def actors(self, class_name: str) -> list[dict]:
        """Every actor of a class the cluster has seen, dead ones included, with its node and job."""
        query = f"filter_keys=class_name&filter_predicates=%3D&filter_values={class_name}&detail=1&limit=1000"
        return self.get(f"/api/v0/actors?{query}")["data"]["result"]["result"]

    def logs(self, job_id: str) -> str:
        return self.ray("job", "logs", "--address", self.dashboard, job_id).stdout

    def stop(self) -> None:
        """Stop this cluster's processes only: each node's process group, then stragglers under its temp dir."""
        from ray.thirdparty_files import psutil

        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):  # SIGTERM would drain for 30 s
            for node in self.nodes:
                _kill_group(node.pid, sig)
            deadline = time.time() + wait
            while time.time() < deadline and any(node.poll() is None for node in self.nodes):
                time.sleep(0.2)
        # Job drivers and workers run in sessions of their own; their command lines name the temp dir.
        mine = str(self.root)
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if proc.pid != os.getpid() and mine in " ".join(proc.info["cmdline"] or []):
                    proc.kill()
            except psutil.Error:
                pass
        for log in self._node_logs:
            log.close()


@pytest.fixture(scope="module")
def cluster():
    """A head with 2 CPUs and a second node with 3 (the `demo` fixture says why 3)."""
    if os.environ.get("RAYDINO_SKIP_CLUSTER_TESTS") == "1":
        pytest.skip("RAYDINO_SKIP_CLUSTER_TESTS=1")
    try:
        import aiohttp  # noqa: F401 - the Jobs API server is part of the dashboard
    except ImportError:
        pytest.fail("`ray job submit` needs the dashboard: install ray[default] (pyproject: ray[default,train,data,tune])")
    root = Path(tempfile.mkdtemp(prefix="rdj-", dir="/tmp"))
    c = LocalCluster(root)
    try:
        c.start_head(num_cpus=2)
        c.add_node(num_cpus=3)
        yield c
    finally:
        c.stop()
        if os.environ.get("RAYDINO_KEEP_CLUSTER_LOGS"):
            print(f"cluster logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _runtime_env(**env_vars: str) -> dict:
    """cluster/runtime_env.yaml with extra environment variables for the job."""
    data = yaml.safe_load((ROOT / RUNTIME_ENV).read_text())
    data["env_vars"] = {**data["env_vars"], **env_vars}
    return data


# ------------------------------------------------------------- entry points


@pytest.mark.parametrize("script, command", [("pipeline", "run"), ("pyramids", "pyramids"), ("train", "train"),
                                             ("tune", "tune"), ("sample", "sample")])
def test_entry_points_call_the_cli_and_nothing_else(script, command, capsys):
    from raydino.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0, f"`raydino {command}` does not exist"
    source = (ROOT / "jobs" / f"{script}.py").read_text()
    code = [line for line in source.split('"""')[-1].splitlines() if line.strip()]
    assert code == ["import sys", "from raydino.cli import main", 'if __name__ == "__main__":',
                    f'    sys.exit(main(["{command}", *sys.argv[1:]]))']


# ------------------------------------------- the demo pipeline, on two nodes


@pytest.fixture(scope="module")
def demo(cluster, tiny_models, faces_dir):
    """The small demo pipeline submitted twice to the same output folder on shared storage.

    The first job's training loses a worker at step 5 with no retry allowed,
    so the job fails; the second job is the same command and must finish the
    run. Its tiny models are copied in beforehand, so the pipeline skips that
    step: fitting the demo's tiny CLIP takes over a minute on two cores, and the
    session's (untrained) models are of the same kind.

    Returns the output folder, each job's `ray job submit` result, and which
    outputs existed right after the first job.
    """
    out = cluster.root / "out" / "demo"
    for key in ("dino", "fd", "clip", "attributes", "segmenter"):
        shutil.copytree(tiny_models[key], out / "models" / tiny_models[key].name)
    shutil.copy(tiny_models["dino"].parent / "tiny-models.json", out / "models")
    # One 2-CPU training worker fits on the 2-CPU head and one on the 3-CPU node, whose spare
    # CPU feeds Ray Data: no node can hold both, so the run's placement group spans the two.
    command = ["python", "jobs/pipeline.py", "--preset", "demo", "--out", str(out), "--images", str(faces_dir), *SMALL,
               "train.cpus_per_worker=2", "train.checkpoint_every=3", "train.max_failures=0"]
    t0 = time.time()
    first = cluster.submit("demo-1", *command, runtime_env=_runtime_env(RAYDINO_FAIL_AT_STEP="5"))
    after_first = {path: (out / path).exists() for path in AFTER_FIRST}
    t1 = time.time()
    second = cluster.submit("demo-2", *command)
    print(f"\ndemo-1: {t1 - t0:.0f}s, demo-2: {time.time() - t1:.0f}s")
    return out, {"demo-1": first, "demo-2": second}, after_first


AFTER_FIRST = ("runs/train/checkpoints/checkpoint_manager_snapshot.json", "runs/train/generator.safetensors",
               "samples")


def test_a_job_that_fails_ends_failed_with_the_error_and_keeps_only_resumable_state(cluster, demo):
    _, results, after_first = demo
    assert results["demo-1"].returncode != 0
    assert cluster.job("demo-1")["status"] == "FAILED"
    logs = cluster.logs("demo-1")
    assert "fault injection: killing worker 1 at step 5" in logs
    assert "TrainingError: training failed (worker" in logs  # which rank reports first is a race
    assert after_first == {
        "runs/train/checkpoints/checkpoint_manager_snapshot.json": True,  # checkpoints on the shared storage
        "runs/train/generator.safetensors": False,  # a failed run must not look finished
        "samples": False,
    }


def test_the_resubmitted_pipeline_resumes_and_finishes(cluster, demo):
    out, results, _ = demo
    proc = results["demo-2"]
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert cluster.job("demo-2")["status"] == "SUCCEEDED"
    logs = cluster.logs("demo-2")  # what the cluster kept, not what the CLI streamed
    for step in ("tiny models", "feature pyramids"):
        assert f"] {step}: done already" in logs, step
    # Ray Train found the first job's checkpoints where that job left them.
    assert "[train] resuming from the checkpoint of step " in logs
    # The summary lines: where everything is.
    assert f"outputs under {out}" in logs and "raydino run finished in" in logs, logs[-3000:]
    assert f"report       {out / 'report' / 'index.html'}" in logs
    # --images: a held-out split by path hash, recorded in both manifests, no image on both sides
    train_m, held_m = (schema.read_manifest(out / name) for name in ("pyramids", "pyramids-val"))
    assert (train_m["split"]["part"], held_m["split"]["part"]) == ("train", "holdout")
    assert train_m["rows"] + held_m["rows"] == 48 and held_m["rows"] == held_m["split"]["files_held_out"] > 0
    ids = [set(schema.load_arrays(out / name, ["id"])["id"]) for name in ("pyramids", "pyramids-val")]
    assert ids[0].isdisjoint(ids[1])
    figures = json.loads((out / "runs" / "train" / "eval.json").read_text())
    assert figures["set"].startswith("held-out split") and figures["n"] == held_m["rows"]
    assert {"fd_dinov2/reconstructions", "fd_dinov2/floor", "fd_dinov2/n"} <= set(figures)
    for path in ("config.yaml", "pyramids/manifest.json", "runs/train/generator.safetensors",
                 "runs/train/eval.json", "samples/mix.png", "report/index.html"):
        assert (out / path).is_file(), f"{path} missing"


def test_the_two_worker_training_ran_on_both_nodes(cluster, demo):
    nodes = {n["node_id"] for n in cluster.alive_nodes()}
    assert len(nodes) == 2
    for job_id in ("demo-1", "demo-2"):
        ray_job = cluster.job(job_id)["job_id"]
        groups: dict[str, set[str]] = {}  # placement group (one per Ray Train run) -> nodes of its workers
        for actor in cluster.actors("RayTrainWorker"):
            if actor["job_id"] == ray_job:
                groups.setdefault(actor["placement_group_id"], set()).add(actor["node_id"])
        assert nodes in groups.values(), f"{job_id}: no Ray Train run spans both nodes: {groups}"


# --------------------------------------------------------------- failures


def test_failing_jobs_end_failed_with_the_error_and_write_nothing(cluster):
    bad_preset, no_pyramids = cluster.root / "out" / "bad-preset", cluster.root / "out" / "no-pyramids"
    nowhere = cluster.root / "nowhere"
    with ThreadPoolExecutor(2) as pool:  # both at once: each mostly waits for its runtime env and imports
        jobs = {
            "bad-preset": pool.submit(cluster.submit, "bad-preset", "python", "jobs/pipeline.py",
                                      "--preset", "no-such-preset", "--out", str(bad_preset)),
            "no-pyramids": pool.submit(cluster.submit, "no-pyramids", "python", "jobs/train.py", "--preset", "demo",
                                       "--pyramids", str(nowhere), "--out", str(no_pyramids)),
        }
        results = {name: job.result() for name, job in jobs.items()}
    for name, proc in results.items():
        assert proc.returncode != 0, name
        assert cluster.job(name)["status"] == "FAILED", name
    assert "unknown preset 'no-such-preset' (known: demo, faces64, ffhq256)" in cluster.logs("bad-preset")
    error = [line for line in cluster.logs("no-pyramids").splitlines() if "raydino train: error" in line]
    assert error and str(nowhere) in error[0] and "pyramid" in error[0], error
    assert not bad_preset.exists()
    assert not no_pyramids.exists()


def test_wrong_token_is_refused(cluster):
    cluster_env = cluster.env
    try:
        cluster.env = {**cluster_env, "RAY_AUTH_TOKEN": "not-the-token"}
        proc = cluster.ray("job", "list", "--address", cluster.dashboard)
    finally:
        cluster.env = cluster_env
    assert proc.returncode != 0
    assert "Invalid authentication token" in proc.stdout + proc.stderr
