"""`raydino serve` on the session's Ray: the API, its refusals, batching, and the page in a real browser.

The run is untrained (random generator and prior, the session's tiny
encoders and CLIP): what is tested is the serving, and `raydino sample`'s
images for the same seed are the reference. Its prior's weights are all
random, the layers a new prior starts at zero included: a zero prior's
velocity is zero, so it would return its starting noise whatever the
prompt, guidance or steps, and a server ignoring them would pass.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import chromium
import numpy as np
import pytest
import torch
from conftest import interruptible
from PIL import Image
from safetensors.torch import save_file

from raydino.cli import main
from raydino.config import load_config, save_config
from raydino.layout import Run
from raydino.models.flow_prior import FlowPrior, metadata
from raydino.models.generator import ProgressiveGenerator
from raydino.models.student import student_of
from raydino.sampling import Sampler
from raydino.serve.faces import Ask, Faces
from raydino.train import checkpoint

LIMITS = ["serve.max_images=4", "serve.max_prompt_chars=40", "serve.max_body_bytes=20000", "serve.batch_wait_s=0.2",
          "serve.num_cpus=0.5", "serve.replicas=1"]


def moving(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Random noise on every weight: a prior whose output layers start at zero now answers its inputs."""
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(scale * torch.randn(weight.shape, generator=rng))
    return model


def write_run(folder, tiny_models, prior: bool = True, clip_dim: int = 32):
    """A finished run of the demo's shapes with random weights: a config, a generator and, with ``prior``, a prior.

    ``clip_dim=0``: the prior is unconditional, as one trained on a pyramid without a CLIP column.
    """
    cfg = load_config("demo", overrides=[f"pyramids.dino={tiny_models['dino']}", f"pyramids.clip={tiny_models['clip']}",
                                         "prior.width=64", "prior.sample_steps=4", *LIMITS])
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    torch.manual_seed(0)
    grid = cfg.pyramids.sizes[0] // 14  # the coarse code's grid
    generator = ProgressiveGenerator(cfg.model, 48, grid)
    save_file(generator.state_dict(), str(folder / Run.GENERATOR), metadata=checkpoint.generator_metadata(generator))
    if prior:
        model = FlowPrior(cfg.prior, grid * grid, 48, clip_dim=clip_dim)
        moving(model)
        save_file(model.state_dict(), str(Run(folder).prior), metadata=metadata(model))
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, ray_local, tiny_models):
    from ray import serve

    from raydino.serve.app import APP_NAME, application

    run = write_run(tmp_path_factory.mktemp("serve") / "run", tiny_models)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application(run, load_config(config_file=str(run / "config.yaml"))), name=APP_NAME, route_prefix="/")
    yield {"port": port, "run": run}
    serve.shutdown()


@pytest.fixture(scope="module")
def unconditional(server, tmp_path_factory, tiny_models):
    """A second application beside ``server``'s, at ``/unconditional``: a run whose prior never saw text."""
    from ray import serve

    from raydino.serve.app import application

    run = write_run(tmp_path_factory.mktemp("serve") / "run", tiny_models, clip_dim=0)
    serve.run(application(run, load_config(config_file=str(run / "config.yaml"))), name="unconditional",
              route_prefix="/unconditional")
    yield "/unconditional"
    serve.delete("unconditional")


def call(server, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=120)
    conn.request(method, path, body, headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.getheader("content-type"), data


def generate(server, **body):
    status, _, data = call(server, "POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
    assert status == 200, data
    return json.loads(data)


def vary(server, face: bytes, prefix: str = "", **query) -> dict:
    status, _, data = call(server, "POST", f"{prefix}/vary?{urlencode(query)}", face, {"Content-Type": "image/png"})
    assert status == 200, data
    return json.loads(data)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [0, 1] as the server's PNGs hold them."""
    return images.mul(255).byte().permute(0, 2, 3, 1).numpy()


def test_generate_returns_the_faces_raydino_sample_draws_for_the_seed(server):
    answer = generate(server, prompt="a face with red hair", n=2, seed=7, cfg=1.5)
    got = np.stack([pixels(b) for b in answer["images"]])
    assert got.shape == (2, 32, 32, 3) and answer["seed"] == 7 and answer["latency_ms"] > 0
    again = generate(server, prompt="a face with red hair", n=2, seed=7, cfg=1.5)
    assert again["images"] == answer["images"]  # a seed gives the same PNG bytes every time
    assert generate(server, prompt="a face with red hair", n=2, seed=8, cfg=1.5)["images"] != answer["images"]

    sampler = Sampler(server["run"], device="cpu")
    (row,) = sampler.from_prompts(["a face with red hair"], n=2, seed=7, guidance=1.5)
    assert np.abs(got.astype(int) - as_uint8(row.images).astype(int)).max() <= 1  # a batched pass's last bits
    unconditional = np.stack([pixels(b) for b in generate(server, n=3, seed=2)["images"]])
    (row,) = sampler.from_prior(3, seed=2)
    assert np.abs(unconditional.astype(int) - as_uint8(row.images).astype(int)).max() <= 1


def test_the_prompt_cfg_and_steps_of_a_request_each_change_its_faces(server):
    """One seed, one thing changed at a time: a server that ignored any of them would answer the same images."""
    base = dict(prompt="someone with red hair", n=2, seed=11, cfg=3.0, steps=4)
    images = generate(server, **base)["images"]
    for changed in ({"prompt": "someone with black hair"}, {"cfg": 1.0}, {"steps": 1}, {"prompt": None, "cfg": None}):
        other = generate(server, **{k: v for k, v in {**base, **changed}.items() if v is not None})["images"]
        diff = np.abs(np.stack([pixels(b) for b in other]).astype(int) - np.stack([pixels(b) for b in images]).astype(int))
        assert diff.max() > 8, (changed, diff.max())  # well above a batched pass's last bits


def test_one_image_comes_back_as_png_when_asked(server):
    status, kind, data = call(server, "POST", "/generate", json.dumps({"n": 1, "seed": 3}), {"Accept": "image/png"})
    assert (status, kind) == (200, "image/png")
    assert Image.open(io.BytesIO(data)).size == (32, 32)


def test_vary_answers_an_uploaded_face_with_its_reconstruction_and_variations(server, faces_dir):
    face = sorted(faces_dir.glob("*.png"))[0].read_bytes()
    status, _, data = call(server, "POST", "/vary?t=0.4&n=3&seed=1", face, {"Content-Type": "image/png"})
    assert status == 200, data
    answer = json.loads(data)
    got = np.stack([pixels(b) for b in answer["images"]])
    (row,) = Sampler(server["run"], device="cpu").from_image(sorted(faces_dir.glob("*.png"))[0], 3, 1, vary=0.4)
    assert got.shape == (3, 32, 32, 3)
    assert np.abs(got.astype(int) - as_uint8(row.images[1:]).astype(int)).max() <= 1


def test_vary_with_a_prompt_answers_edits_and_echoes_prompt_and_cfg(server, faces_dir):
    path = sorted(faces_dir.glob("*.png"))[0]
    answer = vary(server, path.read_bytes(), t=0.6, n=3, seed=1, prompt=" someone smiling ", cfg=1.5)
    assert (answer["prompt"], answer["cfg"], answer["t"], answer["n"]) == ("someone smiling", 1.5, 0.6, 3)
    got = np.stack([pixels(b) for b in answer["images"]])
    (row,) = Sampler(server["run"], device="cpu").from_image(path, 3, 1, vary=0.6, prompt="someone smiling",
                                                             guidance=1.5)
    assert got.shape == (3, 32, 32, 3)
    assert np.abs(got.astype(int) - as_uint8(row.images[1:]).astype(int)).max() <= 1
    other = vary(server, path.read_bytes(), t=0.6, n=3, seed=1, prompt="someone with red hair", cfg=1.5)["images"]
    assert other[0] == answer["images"][0] and other[1:] != answer["images"][1:]  # the same face, other words' edits
    guidance = json.loads(call(server, "GET", "/healthz")[2])["guidance"]
    assert vary(server, path.read_bytes(), n=2, prompt="someone smiling")["cfg"] == guidance  # the prior's own
    plain = vary(server, path.read_bytes(), n=2)
    assert (plain["prompt"], plain["cfg"]) == (None, None)  # no prompt: no guidance


def test_vary_at_t_0_with_a_prompt_gives_the_face_itself(server, faces_dir):
    answer = vary(server, sorted(faces_dir.glob("*.png"))[1].read_bytes(), t=0, n=3, seed=2, prompt="someone smiling",
                  cfg=4)
    reconstruction, *edits = answer["images"]
    assert len(edits) == 2 and all(edit == reconstruction for edit in edits)


def test_faces_vary_edits_toward_the_prompt_with_its_guidance(tmp_path, tiny_models, faces_dir):
    faces = Faces(write_run(tmp_path / "run", tiny_models), device="cpu")
    face = sorted(faces_dir.glob("*.png"))[0].read_bytes()
    smiling = faces.vary(face, 0.6, 3, 1, prompt="someone smiling", guidance=3.0)
    plain = faces.vary(face, 0.6, 3, 1)
    assert torch.equal(smiling[0], plain[0])  # the reconstruction is the face's, whatever the prompt
    assert not torch.equal(smiling[1:], plain[1:])
    assert not torch.equal(smiling[1:], faces.vary(face, 0.6, 3, 1, prompt="someone frowning", guidance=3.0)[1:])
    assert not torch.equal(smiling[1:], faces.vary(face, 0.6, 3, 1, prompt="someone smiling", guidance=1.0)[1:])


def test_a_mixed_batch_gives_each_request_what_it_gets_alone(tmp_path, tiny_models):
    """Prompted and unprompted asks, several guidances and steps in one call: the grouping must not mix them."""
    faces = Faces(write_run(tmp_path / "run", tiny_models), device="cpu")
    asks = [Ask("someone with red hair", 2, 7, guidance=3.0), Ask(None, 1, 3), Ask("someone with black hair", 1, 5, 3.0),
            Ask("someone with red hair", 2, 7, guidance=1.5), Ask(None, 2, 4, steps=2), Ask("a smiling face", 1, 6, steps=2),
            Ask("someone with red hair", 2, 7, guidance=3.0)]
    together = faces.generate(asks)
    for ask, got in zip(asks, together, strict=True):
        (alone,) = faces.generate([ask])
        assert got.shape == alone.shape and torch.allclose(got, alone, atol=1e-4), ask
    assert not torch.allclose(together[0], together[3], atol=1e-2)  # the same prompt and seed at cfg 3 and 1.5
    assert torch.equal(together[0], together[6])  # the same ask twice in one batch


def test_the_serve_path_samples_the_student_where_the_run_has_one(tmp_path, tiny_models):
    """A run with a distilled student: the server's codes are the student's, one evaluation each, not the teacher's."""
    run = write_run(tmp_path / "run", tiny_models)
    teacher = Faces(run, device="cpu").prior
    student = moving(student_of(teacher, sample_steps=1), seed=1)  # its zero layers would give every request the mean code
    save_file(student.state_dict(), str(Run(run).student), metadata=metadata(student))
    faces, taught = Faces(run, device="cpu"), Faces(run, device="cpu", teacher=True)
    assert faces.prior.student and faces.prior.describe().startswith("student, K=1 euler, 1 evaluations")
    assert not taught.prior.student
    asks = [Ask("someone with red hair", 2, 7, guidance=3.0), Ask(None, 1, 3)]
    served = faces.generate(asks)
    sampler = Sampler(run, device="cpu")
    cond = sampler.text_condition(["someone with red hair"]).expand(2, -1)
    assert torch.allclose(served[0], sampler.from_condition(cond, 7, guidance=3.0), atol=1e-5)
    assert torch.allclose(served[1], sampler.from_prior(1, 3)[0].images, atol=1e-5)
    assert not torch.allclose(served[0], taught.generate(asks)[0], atol=1e-3)


def test_a_prompt_for_an_unconditional_prior_is_refused(server, unconditional, faces_dir):
    status, _, data = call(server, "POST", f"{unconditional}/generate", json.dumps({"prompt": "a face", "n": 1}),
                           {"Content-Type": "application/json"})
    assert status == 422 and "this run's prior is unconditional" in data.decode(), data
    assert len(generate(server, prompt="a face", n=1)["images"]) == 1  # the conditional app beside it still does
    status, _, data = call(server, "POST", f"{unconditional}/generate", json.dumps({"n": 2, "seed": 1}),
                           {"Content-Type": "application/json"})
    assert status == 200 and len(json.loads(data)["images"]) == 2, data
    face = sorted(faces_dir.glob("*.png"))[0].read_bytes()
    status, _, data = call(server, "POST", f"{unconditional}/vary?prompt=someone%20smiling", face)
    assert status == 422 and "this run's prior is unconditional" in data.decode() and "prompt" in data.decode(), data
    assert len(vary(server, face, unconditional, n=2)["images"]) == 2  # its flow variations still come


BAD = [
    ("POST", "/generate", {"prompt": ""}, 422, "prompt must be a non-empty string"),
    ("POST", "/generate", {"prompt": "x" * 41}, 422, "over serve.max_prompt_chars=40"),
    ("POST", "/generate", {"n": 5}, 422, "n=5 must be in [1, 4]"),
    ("POST", "/generate", {"n": 0}, 422, "n=0 must be in [1, 4]"),
    ("POST", "/generate", {"seed": -1}, 422, "seed=-1 must be in"),
    ("POST", "/generate", {"seed": 1.5}, 422, "seed must be an integer, got 1.5"),
    ("POST", "/generate", {"seed": "3"}, 422, "seed must be an integer, got '3'"),
    ("POST", "/generate", {"cfg": "high"}, 422, "cfg must be a number"),
    ("POST", "/generate", {"steps": 1000}, 422, "steps=1000 must be in [1, 64]"),
    ("POST", "/generate", {"colour": "red"}, 422, "unknown fields ['colour']"),
    ("POST", "/generate", [1, 2], 422, "the body must be a JSON object"),
    ("POST", "/generate", b'{"n": 1', 400, "the body is not JSON"),
    ("POST", "/generate", b"[" * 9000 + b"]" * 9000, 400, "the body is not JSON: maximum recursion depth"),
    ("POST", "/generate", {"prompt": "\u200b\u200d \ufeff"}, 422, "prompt must be a non-empty string"),
    ("POST", "/generate", b" " * 20001, 413, "over serve.max_body_bytes=20000"),
    ("POST", "/vary", b"not a picture", 415, "cannot read image (the upload): not an image"),
    ("POST", "/vary", b"\x89PNG" + b"\0" * 20000, 413, "over serve.max_body_bytes=20000"),
    ("POST", "/vary?t=2", b"x", 422, "t=2.0 must be in [0, 1]"),
    ("POST", "/vary?seed=-3", b"x", 422, "seed=-3 must be at least 0"),
    ("POST", "/vary?prompt=", b"x", 422, "prompt must be a non-empty string (leave it out for flow variations)"),
    ("POST", "/vary?prompt=%20%20", b"x", 422, "prompt must be a non-empty string (leave it out for flow variations)"),
    ("POST", f"/vary?prompt={'x' * 41}", b"x", 422, "prompt is 41 characters, over serve.max_prompt_chars=40"),
    ("POST", "/vary?prompt=a%20face&cfg=high", b"x", 422, "cfg must be a number in [0, 20], got 'high'"),
    ("POST", "/vary?prompt=a%20face&cfg=21", b"x", 422, "cfg must be a number in [0, 20], got 21.0"),
    ("POST", "/vary?cfg=2", b"x", 422, "cfg is the guidance of a prompt's edits"),
]


@pytest.mark.parametrize("method, path, body, status, message", BAD, ids=[b[-1][:30] for b in BAD])
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(server, method, path, body, status, message):
    raw = body if isinstance(body, bytes) else json.dumps(body)
    got, _, data = call(server, method, path, raw, {"Content-Type": "application/json"})
    assert got == status and message in data.decode(), (got, data.decode())
    assert call(server, "GET", "/healthz")[0] == 200
    assert len(generate(server, n=1, seed=0)["images"]) == 1


def test_concurrent_requests_share_a_generator_pass(server):
    before = json.loads(call(server, "GET", "/stats")[2])
    with ThreadPoolExecutor(6) as pool:  # serve.batch_wait_s=0.2: they arrive well within it
        answers = list(pool.map(lambda seed: generate(server, n=1, seed=seed, prompt="a face"), range(6)))
    after = json.loads(call(server, "GET", "/stats")[2])
    assert after["requests"] - before["requests"] == 6
    assert after["passes"] - before["passes"] < 6, (before, after)
    assert max(a["batch_size"] for a in answers) > 1
    # each request still gets its own seed's face
    assert len({a["images"][0] for a in answers}) == 6
    single = generate(server, n=1, seed=4, prompt="a face")["images"][0]
    assert np.abs(pixels(single).astype(int) - pixels(answers[4]["images"][0]).astype(int)).max() <= 1


def test_healthz_and_the_page(server):
    status, _, data = call(server, "GET", "/healthz")
    health = json.loads(data)
    assert status == 200 and health["status"] == "ok" and health["text"] is True and health["max_images"] == 4
    status, kind, page = call(server, "GET", "/")
    assert status == 200 and kind.startswith("text/html") and b'id="prompt"' in page


@pytest.mark.skipif(chromium.find() is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_the_page_shows_faces_for_a_typed_prompt_in_headless_chromium(server):
    browser = chromium.Browser(chromium.find())
    try:
        browser.open(f"http://127.0.0.1:{server['port']}/")
        browser.wait_for("document.getElementById('run').textContent.includes('32 px')")
        browser.type("#prompt", "a face with red hair")
        browser.evaluate("document.getElementById('n').value = 3; document.getElementById('go').click()")
        loaded = "[...document.querySelectorAll('#faces img')].filter(i => i.complete && i.naturalWidth === 32).length"
        assert browser.wait_for(f"{loaded} === 3 && {loaded}") == 3
        captions = browser.evaluate("[...document.querySelectorAll('#faces figcaption')].map(c => c.textContent)")
        assert all(" ms (batch of " in c for c in captions), captions
        assert browser.evaluate("document.getElementById('error').textContent") == ""
    finally:
        browser.close()


@pytest.mark.skipif(chromium.find() is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_the_page_edits_an_uploaded_face_in_headless_chromium(server, faces_dir):
    face = base64.b64encode(sorted(faces_dir.glob("*.png"))[0].read_bytes()).decode()
    browser = chromium.Browser(chromium.find())
    try:
        browser.open(f"http://127.0.0.1:{server['port']}/")
        browser.wait_for("document.getElementById('run').textContent.includes('32 px')")
        browser.evaluate(f"""{{  // what choosing the file does: a page cannot be handed a path
            const files = new DataTransfer();
            files.items.add(new File([Uint8Array.from(atob("{face}"), (c) => c.charCodeAt(0))], "face.png"));
            document.getElementById("face").files = files.files;
        }}""")
        browser.type("#edit-prompt", "someone smiling")
        browser.evaluate("document.getElementById('edit-go').click()")
        loaded = "[...document.querySelectorAll('#edits img')].filter(i => i.complete && i.naturalWidth === 32).length"
        assert browser.wait_for(f"{loaded} === 4 && {loaded}") == 4
        captions = browser.evaluate("[...document.querySelectorAll('#edits figcaption')].map(c => c.textContent)")
        assert captions[0].startswith("reconstruction: ") and captions[1:] == [f"edit {i} at T=0.6" for i in (1, 2, 3)]
        assert browser.evaluate("document.getElementById('edit-error').textContent") == ""

        browser.type("#edit-prompt", "x" * 30)  # 45 characters now: the server's refusal is shown, not faces
        browser.evaluate("document.getElementById('edit-go').click()")
        error = browser.wait_for("document.getElementById('edit-error').textContent")
        assert "over serve.max_prompt_chars=40" in error
        assert browser.evaluate("document.querySelectorAll('#edits img').length") == 0
    finally:
        browser.close()


def test_a_replica_never_asks_for_more_cpus_than_the_cluster_has(ray_local):
    """Serve would wait forever for a replica of serve.num_cpus=3 on the session's two CPUs."""
    from raydino.serve.app import cpus

    assert cpus(load_config("demo", overrides=["serve.num_cpus=3"]).serve) == 2
    assert cpus(load_config("demo", overrides=["serve.num_cpus=0.5"]).serve) == 0.5


# ------------------------------------------------------------ the command line


def test_serve_refuses_what_it_cannot_serve_before_ray_starts(tmp_path, tiny_models, capsys):
    assert main(["serve", "--run", str(tmp_path / "nowhere")]) == 2
    assert "--run" in capsys.readouterr().err
    run = write_run(tmp_path / "no-prior", tiny_models, prior=False)
    assert main(["serve", "--run", str(run)]) == 2
    assert "has no flow prior (prior.safetensors missing)" in capsys.readouterr().err
    run = write_run(tmp_path / "run", tiny_models)
    assert main(["serve", "--run", str(run), "train.seed=3"]) == 2
    assert "serve.* overrides only" in capsys.readouterr().err
    assert main(["serve", "--run", str(run), "serve.max_images=0"]) == 2
    assert "serve.max_images=0 must be at least 1" in capsys.readouterr().err
    with socket.socket() as taken:  # a port something else listens on: refused here, not by Serve's proxy later
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--run", str(run), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["serve", "--run", str(run), "--port", "70000"]) == 2
    assert "a port is a number from 1 to 65535" in capsys.readouterr().err


def test_ctrl_c_stops_the_server_cleanly(tmp_path, tiny_models):
    """A real `raydino serve` process: it answers, then SIGINT ends it with 0 and takes its Ray down."""
    run = write_run(tmp_path / "run", tiny_models)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}  # its own Ray
    proc = subprocess.Popen([sys.executable, "-m", "raydino.cli", "serve", "--run", str(run), "--port", str(port), "serve.num_cpus=0.5"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=interruptible)
    try:
        for line in proc.stdout:
            if "Ctrl-C stops" in line:
                break
        assert proc.poll() is None, "raydino serve ended before it served"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        ray = _processes_of(proc.pid)  # its Ray: the GCS, raylet, proxy, controller and replica, started by it
        assert len(ray) >= 3, ray
        proc.send_signal(2)
        out, _ = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "raydino serve: stopped" in out
    deadline = time.monotonic() + 30
    while (left := {pid: name for pid, name in ray.items() if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes of the server still running after it stopped: {left}"


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, pgrp, session, ...), None if it is gone."""
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _processes_of(root: int) -> dict[int, str]:
    """Every live process descended from ``root`` or in its session: pid -> command line."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents[int(entry)] = (int(stat[1]), int(stat[3]))
    found, grew = {pid for pid, (_, sid) in parents.items() if sid == root}, True
    while grew:
        more = {pid for pid, (ppid, _) in parents.items() if ppid in found | {root}} - found
        found |= more
        grew = bool(more)
    found.discard(root)
    names = {}
    for pid in found:
        try:
            names[pid] = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:80]
        except OSError:
            pass
    return names
