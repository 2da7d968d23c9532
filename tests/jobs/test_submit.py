"""``ray job submit --working-dir . -- python jobs/train_batch.py`` end to end, against a local
``ray start --head`` cluster of this test's own (not the session's ``ray_session``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from monolith_ray.train.snapshots import latest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "ml-100k" / "parquet"
BIN = Path(sys.executable).parent
PORTS = ("port", "dashboard-port", "node-manager-port", "object-manager-port",
         "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
         "metrics-export-port", "runtime-env-agent-port")


def ray_env() -> dict[str, str]:
    """The environment of the head and of the ``ray`` CLI.

    - ``RAY_AUTH_MODE=disabled``: unset, a token in ``~/.ray/auth_token`` switches token
      authentication on, and the CLI would need it.
    - ``PATH`` starts with this venv's ``bin``: the job's ``python`` is looked up on the
      head's ``PATH``, not taken from the venv ``ray`` was started from; another ``python``
      fails with ``No module named 'ray'``.
    - ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0``: on SIGTERM, ``ray start --block`` stops its
      processes at once instead of draining the node for up to 30 s.
    - no ``RAY_ADDRESS``: every command names this cluster.
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now (all held open together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def processes() -> dict[int, tuple[int, str]]:
    """Every live process -> (parent pid, start time); the start time tells a reused pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            found[int(entry.name)] = (int(stat[1]), stat[19])
        except (OSError, ValueError, IndexError):
            continue
    return found


def descendants(pid: int) -> dict[int, str]:
    """The live processes below ``pid`` -> their start times. Ray's workers leave the head's
    process group but stay in its process tree."""
    children: dict[int, list[int]] = {}
    table = processes()
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = table[child][1]
            todo.append(child)
    return found


def wait_for(url: str, head: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    """Poll ``url`` until it answers; fail with the head's log if ``head`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"no dashboard at {url} after {timeout_s}s:\n{log.read_text()}")


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[str]:
    """A one-node cluster from ``ray start --head --block`` in its own session, on free ports
    -> its dashboard URL. Afterwards that process is sent SIGTERM (it stops the processes it
    started), then whatever of its process tree is left is killed; never ``ray stop``, which
    would stop every Ray on the machine."""
    ports = dict(zip(PORTS, free_ports(len(PORTS))))
    # Ray's Unix sockets live under the temp dir; their paths must stay under 108 bytes,
    # which a session dir under tmp_path exceeds.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    log_path = tmp_path / "head.log"
    with log_path.open("w") as log:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2",
             f"--object-store-memory={300 << 20}", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
             *(f"--{name}={port}" for name, port in ports.items())],
            env=ray_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        wait_for(f"{url}/api/version", head, log_path)
        yield url
    finally:
        tree = descendants(head.pid)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        alive = processes()
        for pid, started in tree.items():
            if pid in alive and alive[pid][1] == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_train_batch_job_runs_on_a_ray_start_cluster(dashboard, tmp_path):
    if not (DATA / "train.parquet").exists():
        pytest.fail(f"{DATA} is missing: run `make data` (part of `make install`)")
    train = tmp_path / "train.parquet"
    pq.write_table(pq.read_table(DATA / "train.parquet").slice(0, 8_000), train)
    out = tmp_path / "out"
    sets = [f"data.train={train}", "data.valid=", f"data.test={DATA / 'test.parquet'}",
            f"data.output_dir={out}", "train.epochs=1", "train.batch_size=512"]
    # .gitignore already keeps .venv and data/ out of the upload; these hold without git too.
    # Anchored with "/": a bare "data" would also drop monolith_ray/data/.
    runtime_env = {"excludes": ["/.venv", "/data", "/runs", "/.git", "__pycache__"]}
    job_id = f"test-submit-{os.getpid()}-{time.time_ns()}"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--submission-id", job_id,
         "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
         "python", "jobs/train_batch.py", *(arg for s in sets for arg in ("--set", s))],
        env=ray_env(), capture_output=True, text=True, timeout=300)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    with urllib.request.urlopen(f"{dashboard}/api/jobs/{job_id}", timeout=10) as response:
        job = json.load(response)
    assert job["status"] == "SUCCEEDED", job
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 8_000
    assert 0.55 < metrics["test"]["auc"] < 1.0, metrics["test"]
    snapshot = latest(str(out / "snapshots"))
    assert snapshot is not None and metrics["snapshot"].endswith(Path(snapshot).name)
    assert (Path(snapshot) / "dense.npz").is_file()
