"""Figures for the template: bake time, fresh bake -> trained model, training-loop overhead, DDP
scaling, GPU precision, serving throughput and latency, and the container build (full vs code-only
rebuild, image size).

Run with `make bench`. Prints numbers (and ratios against a baseline measured in the same run);
nothing here is asserted. Goals: bake <= 0.5 s; fresh bake -> model <= 45 s on 2 cores on the
default path (no uv installed beforehand), its environment step <= 15 s with warm caches; the
generated train loop within 3 % of a bare PyTorch loop; 2 DDP processes (1 thread each) at
least 0.9x the samples/s of 1 process (2 threads) at the same global batch; on a GPU, bf16 at least
1.5x fp32; a code-only image rebuild under 10 % of a full build; the CPU image under 1.3 GB; the
server (one worker) at concurrency 64 at least 1.5x the answered requests/s of a plain FastAPI server
(one forward pass per request), its throughput at concurrency 256 no lower than at 64 with a p99
bounded by the queue budget, and at concurrency 1 a p50 within 1 ms of the plain server. The loop and
serving figures are measured for each example task (the digits CNN and the breast-cancer MLP).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(TEMPLATE / "tests"))  # the engine and base-image helpers the tests use
# `make bench` passes the same index as `make demo`: PyTorch's CPU index when it answers, else empty.
TORCH_INDEX_URL = os.environ.get("TORCH_INDEX_URL", "")
DEMO_TORCH = os.environ.get("DEMO_TORCH", "")  # as make demo: empty = the template's default release

LOOP_SCRIPT = r"""
import math, os, statistics, sys, time
import torch, torch.nn.functional as F
from tqdm import tqdm
from digit_classifier.config import load_config
from digit_classifier.tasks import build_model, get_task
from digit_classifier.training.loop import Accumulator, Precision, make_loader, train_batches
from digit_classifier.training.progress import Progress

config = load_config("configs/train.yaml", [f"task={sys.argv[1]}"])
task = get_task(config.task)
splits = task.load_splits(config.seed, config.data.val_fraction, config.data.test_fraction)
preprocessing = task.fit_preprocessing(splits.train)
device = torch.device("cpu")
ROUNDS, MIN_SECONDS = 11, 0.4  # a timed stretch of at least MIN_SECONDS, however small the task

def fresh():
    torch.manual_seed(0)
    model = build_model(task, config.model, preprocessing)
    optim = config.optim
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    loader = make_loader(splits.train, config.data.batch_size, shuffle=True, seed=config.seed)
    return model, optimizer, loader

def bare(model, optimizer, loader, epochs):
    model.train()
    for _ in range(epochs):
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step()

def template(model, optimizer, loader, epochs):  # as train.fit_epoch runs it, with a live bar
    with open(os.devnull, "w") as sink, Progress(epochs * len(loader), 0, show=False) as report:
        report.bar = tqdm(total=epochs * len(loader), file=sink)  # live, as on a terminal
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch)
            totals = Accumulator(device)
            train_batches(model, iter(loader), optimizer, Precision("fp32", device), totals, report.step)
            totals.score()

def timed(loop, epochs):
    model, optimizer, loader = fresh()
    loop(model, optimizer, loader, 1)  # warm-up epoch
    start = time.perf_counter()
    loop(model, optimizer, loader, epochs)
    return time.perf_counter() - start

epochs = max(3, math.ceil(MIN_SECONDS / min(timed(bare, 1) for _ in range(3))))
rates = {bare: [], template: []}
for i in range(ROUNDS):  # interleaved, in alternating order, so drift in machine load hits both alike
    for loop in (bare, template) if i % 2 == 0 else (template, bare):
        rates[loop].append(epochs * len(splits.train) / timed(loop, epochs))
bare_rate, template_rate = statistics.median(rates[bare]), statistics.median(rates[template])
pairs = sorted(t / b for t, b in zip(rates[template], rates[bare]))
print(f"{epochs} {bare_rate:.0f} {template_rate:.0f} {pairs[0]:.3f} {pairs[-1]:.3f}")
"""
# The example tasks and where the benchmark's project keeps their models.
TASKS = {"digits": "models/model.pt", "breast_cancer": "models/breast_cancer.pt"}


def timed_run(command: list[str], cwd: Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(
            f"benchmark step failed: {' '.join(command)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return elapsed


def bake(out: Path, cuda: str = "cpu") -> tuple[float, Path]:
    command = [
        str(BIN / "cookiecutter"),
        "--no-input",
        "--output-dir",
        str(out),
        str(TEMPLATE),
        f"cuda_version={cuda}",
        *([f"torch_version={DEMO_TORCH}"] if DEMO_TORCH else []),
    ]
    return timed_run(command, cwd=out), out / "digit-classifier"


# How the lines `make env` echoes map to the steps of a first run; a line that matches none (a
# tool's own output) belongs to the step before it.
ENV_STEPS = (
    ("Creating ", "venv"),
    ("locktool.py bootstrap", "install uv (pip, hash-checked)"),
    ("-m pip install --quiet pip-tools", "install pip-tools"),
    ("pip compile", "resolve (joint + 3 locks, uv)"),
    ("piptools compile", "resolve (joint + 3 locks, pip-compile)"),
    ("pip sync", "sync (download + install)"),
    ("piptools sync", "sync (download + install)"),
    ("envtool.py develop", "src/ on the path (.pth)"),
)


def env_steps(make: list[str], project: Path, env: dict) -> dict[str, float]:
    """`make env`, timed per step: a step runs from the line that starts it to the next step's."""
    steps: dict[str, float] = {}
    step, start = "make (parse, index check)", time.perf_counter()
    process = subprocess.Popen(
        [*make, "env"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = []
    for line in process.stdout:
        output.append(line)
        found = next((name for key, name in ENV_STEPS if key in line), None)
        if found:
            now = time.perf_counter()
            steps[step] = steps.get(step, 0.0) + now - start
            step, start = found, now
    if process.wait() != 0:
        sys.exit(f"benchmark step failed: make env\n{''.join(output)[-3000:]}")
    steps[step] = steps.get(step, 0.0) + time.perf_counter() - start
    return steps


PROJECT_LOCKS = ("joint", "prod", "dev", "mlflow")


def bake_to_model(
    work: Path, label: str, env: dict, make_args: tuple[str, ...] = (), resolve: bool = False
) -> dict[str, float]:
    """A fresh bake to a trained model (the default config), each step timed; the training step split
    into the run itself (metrics.json's seconds) and the rest (interpreter start, imports, make).
    resolve: without the shipped locks, so that the first make resolves them (as of the lock date)."""
    seconds, project = bake(work)
    for name in PROJECT_LOCKS if resolve else ():
        (project / "requirements" / f"{name}.txt").unlink()
    make = ["make", "--no-print-directory", f"TORCH_INDEX_URL={TORCH_INDEX_URL}", *make_args]
    figures = {"bake": seconds}
    steps = env_steps(make, project, env)
    figures["env step"] = sum(steps.values())
    train = timed_run([*make, "train", "ARGS=--no-progress"], project, env)
    run = json.loads(max((project / "runs").glob("*/metrics.json")).read_text())
    figures["train step"] = train
    figures["total"] = seconds + figures["env step"] + train
    print(f"\nFresh bake -> trained model, {label}")
    print(f"  {'bake':34s} {seconds:6.1f} s")
    print(f"  {'env step':34s} {figures['env step']:6.1f} s")
    for name, value in steps.items():
        print(f"    {name:32s} {value:6.1f} s")
    print(f"  {'train step':34s} {train:6.1f} s")
    print(f"    {'start-up (make, python, imports)':32s} {train - run['seconds']:6.1f} s")
    print(f"    {'epochs (train_seconds)':32s} {run['train_seconds']:6.1f} s")
    print(f"    {'rest of the run (imports, test)':32s} {run['seconds'] - run['train_seconds']:6.1f} s")
    print(f"  {'total':34s} {figures['total']:6.1f} s")
    return figures


BASELINE_SERVER = """
import os

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from digit_classifier.predict import Predictor

predictor = Predictor(os.environ["MODEL"], "cpu")
app = FastAPI()
Sample = float
for _ in predictor.task.input_spec.shape:  # digits: list[list[float]] per sample; tabular: list[float]
    Sample = list[Sample]


class Request(BaseModel):
    inputs: list[Sample]


@app.post("/predict")
def predict(request: Request):
    predictions = predictor.predict(np.asarray(request.inputs, dtype=np.float32))
    return {
        "predictions": [p.label for p in predictions],
        "labels": [p.name for p in predictions],
        "probabilities": [p.probabilities for p in predictions],
    }
"""
# One real test sample of a task, as the JSON body of a request.
SAMPLE_SCRIPT = """
import json, sys
from digit_classifier.config import load_config
from digit_classifier.tasks import get_task

config = load_config("configs/train.yaml", [f"task={sys.argv[1]}"])
splits = get_task(config.task).load_splits(config.seed, config.data.val_fraction, config.data.test_fraction)
print(json.dumps({"inputs": [splits.test.inputs[0].astype(float).round(6).tolist()]}))
"""
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{body}'
"""
LEVELS = (1, 16, 64, 256)
QUEUE_BUDGET_MS = 100  # max_queue_ms of the generated servers measured here


def wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"server did not start: {url}")
            time.sleep(0.3)


def wrk(url: str, script: Path, connections: int) -> dict[str, float]:
    """Requests/s (all answers, and 2xx only: shed 503s are fast but are not service), p50, p99."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", "-d8s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}
    latency = {
        p: float(v) * scale[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    }
    if len(latency) < 2:
        sys.exit(f"unexpected wrk output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out)[1])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    failed = int(errors[1]) if errors else 0
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "ok_rps": rps * (total - failed) / max(total, 1),
        "p50": latency["50"],
        "p99": latency["99"],
        "errors": failed,
        "socket_errors": sum(map(int, sockets.groups())) if sockets else 0,
    }


def load_servers(project: Path, work: Path, task: str) -> dict[str, dict[int, dict[str, float]]]:
    """wrk against the naive baseline and the generated server (one worker, then `workers: auto`),
    one after the other, serving the task's model with one real test sample of the task per request."""
    python, model = project / ".venv" / "bin" / "python", project / TASKS[task]
    body = subprocess.run(
        [str(python), "-c", SAMPLE_SCRIPT, task], cwd=project, capture_output=True, text=True, check=True
    ).stdout.strip()
    script = work / f"post-{task}.lua"
    script.write_text(WRK_SCRIPT.format(body=body))
    uvicorn = ["-m", "uvicorn", "baseline:app", "--log-level", "warning", "--no-access-log"]
    serve = ["-m", "digit_classifier", "serve", "device=cpu", f"model_path={model}"]
    serve.append(f"max_queue_ms={QUEUE_BUDGET_MS}")
    servers = {
        "naive baseline": (8791, uvicorn),
        "generated, 1 worker": (8792, [*serve, "workers=1"]),
        "generated, auto": (8793, [*serve, "workers=auto"]),
    }
    env = {**os.environ, "MODEL": str(model), "PYTHONPATH": f"{work}{os.pathsep}{project / 'src'}"}
    results: dict[str, dict[int, dict[str, float]]] = {}
    for name, (port, args) in servers.items():
        process = subprocess.Popen(
            [str(python), *args, "--port", str(port)],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/docs", process)
            url = f"http://127.0.0.1:{port}/predict"
            wrk(url, script, 16)  # warm-up
            results[name] = {c: wrk(url, script, c) for c in LEVELS}
        finally:
            process.terminate()
            process.wait(timeout=60)
    return results


def print_serving(task: str, results: dict[str, dict[int, dict[str, float]]]) -> None:
    print(f"\nServing one {task} sample per request, wrk 1 thread, 8 s per level ({os.cpu_count()} cores)")
    columns = ("req/s", "2xx/s", "p50 ms", "p99 ms", "non-2xx", "sockerr")
    print(f"  {'server':20s} {'conc':>4s} " + " ".join(f"{c:>8s}" for c in columns))
    for name, levels in results.items():
        for c, r in levels.items():
            print(
                f"  {name:20s} {c:4d} {r['rps']:8.0f} {r['ok_rps']:8.0f} {r['p50']:8.2f} {r['p99']:8.2f} "
                f"{r['errors']:8d} {r['socket_errors']:8d}"
            )
    one, auto, base = results["generated, 1 worker"], results["generated, auto"], results["naive baseline"]
    print(
        f"  c=64 2xx/s, 1 worker vs naive: {one[64]['ok_rps'] / base[64]['ok_rps']:.2f}x (goal >= 1.5); "
        f"auto workers vs 1: {auto[64]['ok_rps'] / one[64]['ok_rps']:.2f}x"
    )
    for name, r in (("1 worker", one), ("auto", auto)):
        print(
            f"  {name}: c=256 2xx/s / c=64 2xx/s = {r[256]['ok_rps'] / r[64]['ok_rps']:.2f} (goal >= 1); "
            f"c=256 p99 {r[256]['p99']:.0f} ms (goal: bounded by max_queue_ms={QUEUE_BUDGET_MS} plus a pass)"
        )
    difference = one[1]["p50"] - base[1]["p50"]
    print(f"  c=1 p50 difference, 1 worker - naive: {difference:+.2f} ms (goal within 1 ms)")


def serving_figures(project: Path, work: Path, env: dict) -> None:
    """Both example tasks: the tabular model is trained here, next to the default (digits) one."""
    if shutil.which("wrk") is None:
        print("\nServing figures skipped: wrk is not installed (apt-get install wrk)")
        return
    train = ["make", "--no-print-directory", f"TORCH_INDEX_URL={TORCH_INDEX_URL}", "train"]
    args = f"ARGS=task=breast_cancer output.model_path={TASKS['breast_cancer']} --no-progress"
    timed_run([*train, args], project, env)
    (work / "baseline.py").write_text(BASELINE_SERVER)
    for task in TASKS:
        print_serving(task, load_servers(project, work, task))


def container_figures(project: Path, work: Path) -> None:
    from containers import (
        Unavailable,
        build_settings,
        docker,
        docker_engine,
        ensure_python_base,
        image_ids,
        remove_images_since,
    )

    try:
        with docker_engine(work), build_settings() as settings:
            ensure_python_base("3.11")
            before = image_ids()
            variables = {**settings, "TORCH_INDEX_URL": TORCH_INDEX_URL, "IMAGE": "bench"}
            make = ["make", "--no-print-directory", *(f"{k}={v}" for k, v in variables.items())]
            try:
                full = timed_run([*make, "build", "BUILD_FLAGS=--no-cache"], project)
                source = project / "src" / "digit_classifier" / "cli.py"
                source.write_text(source.read_text() + "\n# a code change\n")
                code = timed_run([*make, "build"], project)
                dev = timed_run([*make, "build-dev"], project)
                inspect = docker("image", "inspect", "bench", "bench-dev", "python:3.11-slim")
                runtime, dev_image, base = (image["Size"] for image in json.loads(inspect.stdout))
            finally:
                remove_images_since(before)
    except Unavailable as reason:
        print(f"\nContainer figures skipped: {reason}")
        return
    print("\nCPU image (the classic builder here; the base is this machine's python:3.11-slim)")
    print(f"  full build (--no-cache)    {full:6.1f} s")
    print(f"  code-only rebuild          {code:6.1f} s   ratio {code / full:.3f}   goal < 0.10")
    gb = {"runtime": runtime / 1e9, "base": base / 1e9, "dev": dev_image / 1e9}
    added, dev_added = gb["runtime"] - gb["base"], gb["dev"] - gb["runtime"]
    print(f"  runtime image              {gb['runtime']:6.2f} GB   goal < 1.3 GB")
    print(f"    the base image           {gb['base']:6.2f} GB   (layers added {added:.2f} GB)")
    print(f"  dev stage (after runtime)  {dev:6.1f} s   {gb['dev']:.2f} GB (+{dev_added:.2f} GB)")


def docker_gpu_stop(work: Path) -> None:
    _, project = bake(work, cuda="13.0")
    start = time.perf_counter()
    result = subprocess.run(["make", "-C", str(project), "docker-gpu"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    verdict = (
        "stopped by the toolkit check"
        if "container_toolkit" in result.stdout
        else f"exit {result.returncode}"
    )
    print(f"  make docker-gpu without the NVIDIA Container Toolkit: {elapsed:.2f} s ({verdict})")


def loop_figures(project: Path) -> None:
    python = project / ".venv" / "bin" / "python"
    print("\nTraining loop, same model/data/batch size, 11 interleaved rounds (median)")
    for task in TASKS:
        out = subprocess.run(
            [str(python), "-c", LOOP_SCRIPT, task], cwd=project, capture_output=True, text=True, check=True
        ).stdout.split()
        epochs, bare, template, low, high = int(out[0]), *map(float, out[1:])
        print(f"  {task}, {epochs} epochs per round")
        print(f"    bare PyTorch loop      {bare:8.0f} samples/s")
        print(f"    generated train loop   {template:8.0f} samples/s")
        print(f"    ratio template/bare    {template / bare:8.3f}   goal >= 0.97")
        print(f"    per-round ratios       {low:.3f} to {high:.3f}")


# Models for the DDP comparison: the default one (150k parameters, 8 ms steps), and one whose
# convolutions dominate (wide convolutions, a small dense layer: more compute per gradient byte).
DDP_MODELS = {
    "digits default": ["optim.epochs=4"],
    "digits conv-heavy": ["optim.epochs=2", "model.channels=96", "model.hidden=32"],
}


def train_rate(python: Path, project: Path, runs: Path, nproc: int, overrides: list[str]) -> float:
    """Training samples/s of one run: the samples trained over the seconds spent in training steps.
    `overrides` come last, so they may change the device."""
    launch = ["--nproc", str(nproc)] if nproc > 1 else []
    out = [
        f"output.runs_dir={runs}",
        f"output.model_path={runs}/model.pt",
        "device=cpu",
        *overrides,
    ]  # last wins
    command = [str(python), "-m", "digit_classifier", "train", "--no-progress", *launch, *out]
    subprocess.run(command, cwd=project, capture_output=True, text=True, check=True)
    metrics = json.loads(max(runs.glob("*/metrics.json")).read_text())
    return metrics["epochs"] * metrics["train_samples"] / metrics["train_seconds"]


def ddp_figures(project: Path, work: Path) -> None:
    python = project / ".venv" / "bin" / "python"
    print(
        "\nDDP on the CPU: 1 process (2 threads) vs torchrun 2 processes (1 thread each), same global batch"
    )
    for label, overrides in DDP_MODELS.items():
        rates: dict[int, list[float]] = {1: [], 2: []}
        for i in range(3):  # interleaved, so drift in machine load hits both alike
            for nproc in (1, 2) if i % 2 == 0 else (2, 1):
                rates[nproc].append(
                    train_rate(python, project, work / f"ddp-{label}-{i}-{nproc}", nproc, overrides)
                )
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        print(f"  {label} ({' '.join(overrides)})")
        print(f"    1 process              {one:8.0f} samples/s")
        print(f"    2 processes            {two:8.0f} samples/s")
        print(f"    ratio 2/1              {two / one:8.3f}   goal >= 0.9")


# 1 GPU, fp32 vs bf16 vs bf16 + torch.compile, on a digits model wide enough to load a GPU.
GPU_MODEL = [
    "device=cuda",
    "model.channels=256",
    "model.hidden=2048",
    "data.batch_size=512",
    "optim.epochs=6",
]
GPU_SETTINGS = {"fp32": [], "bf16": ["precision=bf16"], "bf16 + compile": ["precision=bf16", "compile=true"]}


def gpu_precision_figures(project: Path, work: Path) -> None:
    python = project / ".venv" / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True, text=True
    )
    print("\n1 GPU: fp32 vs bf16 vs bf16 + compile (goal: bf16 >= 1.5x fp32)")
    if probe.stdout.strip() != "True":
        print("  skipped: no usable CUDA device on this machine")
        return
    rates = {
        label: train_rate(python, project, work / f"gpu-{i}", 1, [*GPU_MODEL, *extra])
        for i, (label, extra) in enumerate(GPU_SETTINGS.items())
    }
    for label, rate in rates.items():
        print(f"  {label:22s} {rate:8.0f} samples/s   {rate / rates['fp32']:.2f}x fp32")


def run_metrics(python: Path, project: Path, runs: Path, overrides: list[str], env: dict) -> dict:
    """The metrics of one CPU training run (seconds: start to promoted model; train_seconds: in
    training steps; tracking_seconds: in the tracking backends' calls)."""
    command = [str(python), "-m", "digit_classifier", "train", "--no-progress", "device=cpu"]
    command += [f"output.runs_dir={runs}", f"output.model_path={runs}/model.pt", *overrides]
    subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=True)
    return json.loads(max(runs.glob("*/metrics.json")).read_text())


TRACKING_EPOCHS = 6


def tracking_figures(project: Path, work: Path) -> None:
    """What logging costs: per epoch, the time in the backends' calls against the time in training
    steps (the same runs); and whole runs with and without each backend, interleaved, whose
    difference is mostly the backend's start-up (imports, opening the store)."""
    python = project / ".venv" / "bin" / "python"
    make = ["make", "--no-print-directory", f"TORCH_INDEX_URL={TORCH_INDEX_URL}"]
    timed_run([*make, "sync", "EXTRAS=mlflow"], project)  # MLflow is an optional extra
    settings = ("none", "tensorboard", "mlflow")
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlruns/mlflow.db"}  # not the project's
    for i in range(5):
        for name in settings if i % 2 == 0 else reversed(settings):
            overrides = [f"tracking={name}", f"optim.epochs={TRACKING_EPOCHS}"]
            runs[name].append(run_metrics(python, project, work / f"track-{name}-{i}", overrides, env))
    wall = {name: statistics.median(m["seconds"] for m in found) for name, found in runs.items()}
    print(f"\nTracking, digits on the CPU, {TRACKING_EPOCHS} epochs per run, 5 interleaved runs (medians)")
    for name in settings:
        share = statistics.median(m["tracking_seconds"] / m["train_seconds"] for m in runs[name])
        per_epoch = statistics.median(m["tracking_seconds"] for m in runs[name]) / TRACKING_EPOCHS
        goal = "  goal <= 3 %" if name == "tensorboard" else ""
        print(f"  tracking={name:12s} {1000 * per_epoch:7.2f} ms/epoch logging, {100 * share:5.2f} %", end="")
        print(f" of training{goal}; whole run {wall[name]:6.2f} s ({wall[name] - wall['none']:+.2f} s)")


def pre_commit_figures(tmp: Path, env: dict) -> None:
    """`pre-commit run --all-files` on a fresh bake after git init (environment already synced)."""
    (tmp / "hooks").mkdir()
    project = bake(tmp / "hooks")[1]
    timed_run(["make", "env", f"TORCH_INDEX_URL={TORCH_INDEX_URL}"], project, env)
    subprocess.run(["git", "init", "--quiet"], cwd=project, check=True)
    subprocess.run(["git", "add", "--all"], cwd=project, check=True)
    runs = [timed_run([".venv/bin/pre-commit", "run", "--all-files"], project, env) for _ in range(3)]
    hooks = (project / ".pre-commit-config.yaml").read_text().count("- id: ")
    print(f"\npre-commit run --all-files, fresh bake ({hooks} hooks): first {runs[0]:.2f} s, then ", end="")
    print(f"{statistics.median(runs[1:]):.2f} s")


def bake_figures(tmp: Path) -> None:
    times = []
    for i in range(7):
        (tmp / f"b{i}").mkdir()
        times.append(bake(tmp / f"b{i}")[0])
    median = statistics.median(times)
    print(f"\nBake (cookiecutter --no-input, hooks included), 7 runs: median {median:.2f} s, ", end="")
    print(f"min {min(times):.2f} s   goal <= 0.5 s")


def bake_to_model_figures(tmp: Path, with_uv: dict) -> Path:
    """The first run on each path: the default (shipped locks, no uv installed: the Makefile
    bootstraps it), with empty caches, with uv on PATH; then the dated resolution (the locks of answers
    the template ships none for), with uv and with LOCKER=pip-tools. The uv-on-PATH project serves the
    later figures."""
    no_uv = {
        **os.environ,
        "PATH": os.pathsep.join(
            p for p in with_uv["PATH"].split(os.pathsep) if not (Path(p) / "uv").exists()
        ),
    }
    empty = {**no_uv, "UV_CACHE_DIR": str(tmp / "uv-cache"), "PIP_CACHE_DIR": str(tmp / "pip-cache")}
    paths = {
        "default": ("default path: shipped locks, no uv on PATH, warm caches", no_uv, (), False),
        "cold": ("default path: shipped locks, no uv on PATH, empty pip and uv caches", empty, (), False),
        "uv": ("shipped locks, uv on PATH, warm cache", with_uv, (), False),
        "dated": ("dated resolution (no shipped locks), no uv on PATH, warm caches", no_uv, (), True),
        "pip-tools": ("dated resolution, LOCKER=pip-tools, warm caches", no_uv, ("LOCKER=pip-tools",), True),
    }
    figures = {}
    for key, (label, env, make_args, resolve) in paths.items():
        (tmp / key).mkdir()
        figures[key] = bake_to_model(tmp / key, label, env, make_args, resolve)
    default, dated, pip_tools = figures["default"], figures["dated"], figures["pip-tools"]
    print(f"  goals: default path <= 45 s end to end: {default['total']:.1f} s (empty caches ", end="")
    print(
        f"{figures['cold']['total']:.1f} s); env step <= 10 s with warm caches: {default['env step']:.1f} s"
    )
    print(
        f"  dated resolution: {dated['total']:.1f} s end to end, env step {dated['env step']:.1f} s ", end=""
    )
    print(f"({dated['env step'] / default['env step']:.1f}x the shipped locks')")
    print(f"  LOCKER=pip-tools: {pip_tools['total']:.1f} s, its env step ", end="")
    print(f"{pip_tools['env step'] / dated['env step']:.1f}x the dated uv resolution's")
    return tmp / "uv" / "digit-classifier"


SECTIONS = ("bake", "first-run", "loop", "tracking", "pre-commit", "ddp", "gpu", "serving", "containers")


def main(only: list[str]) -> None:
    """Every section, or those named (`make bench ONLY="first-run serving"`)."""
    unknown = set(only) - set(SECTIONS)
    if unknown:
        sys.exit(
            f"error: no benchmark section {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}"
        )
    wanted = set(only or SECTIONS)
    print(f"Machine: {os.cpu_count()} cores; torch index: {TORCH_INDEX_URL or '(pip configuration)'}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with_uv = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        if "bake" in wanted:
            bake_figures(tmp)
        if "first-run" in wanted:
            project = bake_to_model_figures(tmp, with_uv)
        elif wanted - {"bake", "pre-commit"}:  # the later sections measure a trained project
            (tmp / "uv").mkdir()
            project = bake(tmp / "uv")[1]
            timed_run(
                ["make", "train", f"TORCH_INDEX_URL={TORCH_INDEX_URL}", "ARGS=--no-progress"],
                project,
                with_uv,
            )
        sections = {
            "loop": lambda: loop_figures(project),
            "tracking": lambda: tracking_figures(project, tmp),
            "pre-commit": lambda: pre_commit_figures(tmp, with_uv),
            "ddp": lambda: ddp_figures(project, tmp),
            "gpu": lambda: gpu_precision_figures(project, tmp),
            "serving": lambda: serving_figures(project, tmp, with_uv),
            "containers": lambda: (
                container_figures(project, tmp),
                (tmp / "gpu").mkdir(),
                docker_gpu_stop(tmp / "gpu"),
            ),
        }
        for name, run in sections.items():
            if name in wanted:
                run()


if __name__ == "__main__":
    main(sys.argv[1:])
