"""Parameter servers at scale: tables of tens of millions of ids, a snapshot and a sparse sync
taken while training runs, and a restore.

Workload: ``monolith_ray.data.workload.default_workload`` (24 slots, Zipf popularity,
cardinalities 10 to 30 million, about 3.1 never-seen ids an example), batch ``BATCH`` (4096),
every slot dim 16 with Adagrad, ids admitted at first sight and never expired. One trainer
actor (``ScaleTrainer``, a ``Trainer`` with the job's ``trainer_options`` and the dense
parameters local, as the batch job's single trainer has them) makes its own batches in a
background thread and trains the real JAX DeepFM (MLP 256-128) against ``SHARDS`` (4)
``ShardServer`` actors started by ``start_servers`` over the default transport (channels):
no step is simulated. Ray: ``ray.init(num_cpus=2, object_store_memory=512 MB)``.

Phases, training running through all but the last:

1. **start**: steps ``WARMUP_STEPS``..``WARMUP_STEPS + WINDOW_STEPS`` (after JIT and Numba
   warm-up): ``examples_per_s_start`` = examples / the window's wall seconds.
2. **fill**: train until the shards hold ``ids_target`` ids (the ``IDS`` environment variable,
   default 50,000,000), polling ``stats()`` every ``POLL_S``.
3. **full**: the next ``WINDOW_STEPS`` steps: ``examples_per_s_full`` and
   ``throughput_full_vs_start``, on live traffic as in phases 1 and 2.
4. **steady**: from here to the end of phase 6 the id inflow is bounded
   (``ScaleTrainer.bound_inflow``): one batch in ``LIVE_EVERY`` (the ``LIVE_EVERY``
   environment variable, default 4) is the next live one, with its never-seen ids, and the
   others replay batches trained before (oldest first: the same traffic, ids already held).
   Why: the workload compresses a day's inflow (tens of millions of new ids) into minutes:
   about 5.5 new ids an example (3.1 never-seen, the rest first draws from the Zipf tails),
   some 0.3 million a second at 59,000 examples/s. Fed in full through the 100-s paced
   snapshot and the sync, that is some 35M more ids on tables of 51M, about 6 GB: the last
   unbounded run's 20.6 GB peak is what about 86M ids at 181 B/id and 3.7 GB of runtimes
   add up to (an estimate: that run recorded no ids at its end). The snapshot was measured
   on tables growing by two thirds while it ran; a production table of this size takes in
   its day's new ids over a day, a fraction of a percent of them during one snapshot. A
   quarter of the compressed inflow still puts every kind of step work (inserts, map growth)
   beside the snapshot's copies and keeps the tables near the size measured; ``ids_end``
   reports how far they grew. ``LIVE_EVERY=1`` is the unbounded run.
   The median step time of ``WINDOW_STEPS`` steps of this traffic is the baseline of the
   ratios below (``step_median_steady_s``; ``step_p99_steady_vs_median`` is this window's
   own p99). Each shard's per-slot versions are recorded at its start.
5. **snapshot**: ``take_snapshot`` of every shard and the dense server into a local folder
   while the trainer trains, each shard capped at ``SNAPSHOT_MB_PER_S`` (the
   ``SNAPSHOT_MB_PER_S`` environment variable, default 25, so 100 MB/s in all, an object
   store's speed; ``data.snapshot_mb_per_s``): ``snapshot_s`` (wall, to the manifest), ``snapshot_mb_per_s``
   (bytes of the folder / seconds), ``step_p99_during_snapshot_vs_median`` (the 99th
   percentile of the steps that ended while it ran or within 2 s after it, which it may have
   slowed too / the steady window's median). Where the time goes:
   ``pull_wait_p50_p99_steady_s`` and ``pull_wait_p50_p99_during_snapshot_s``, the seconds a
   step waited for its pulled rows (the shards' answers; the rest is the trainer's own work),
   and ``tail_pull_wait_share_during_snapshot``, that wait's share of the slowest 1% of steps;
   ``cpu_shares_steady`` and ``cpu_shares_during_snapshot``, the machine's CPU time by kind
   (``/proc/stat``: ``nice`` is the Ray workers', ``system``, ``iowait``, ``softirq`` the
   kernel's).
6. **sync**: what ``ParameterSync`` does each sparse sync, ``SYNCS`` (3) times in a row:
   read every shard's changes since versions recorded ``SYNC_AFTER_S`` (5 s) of training
   before (``changes_since``, one shard at a time, as the sync reads them; at least a million
   rows change in that time here), while the trainer trains: ``sync_rows`` and ``sync_s``
   (means over the syncs; each one's rows, seconds and per-shard call seconds in
   ``sync_rows_s_calls_s``), ``step_p99_during_sync_vs_median``: the 99th percentile of the
   steps that ended during any of the reads or within 2 s after one, over the median of the
   steps that ended in the ``SYNC_AFTER_S`` before each read (from 1 s into it), when
   nothing but training ran: ``step_median_before_syncs_s``, with
   ``step_p99_before_syncs_vs_median``, that quiet window's own p99 on the same scale.
   Why that baseline: the snapshot lets some 13M ids into the tables, so the steady window's
   median (``step_median_steady_s``) is of smaller tables than the syncs train on (1-13%
   faster steps in three full runs); the ratio against it is
   ``step_p99_during_sync_vs_steady_median``. Why several reads: one read of 3-4M rows lasts
   2-6 s, some 70-115 steps, whose 99th percentile is their slowest step; pooled over three
   it is a percentile. Beside it, as for the snapshot: ``pull_wait_p50_p99_during_sync_s``,
   ``tail_pull_wait_share_during_sync``, ``cpu_shares_during_sync`` (over the reads only),
   and ``cores_by_process_steady`` / ``cores_by_process_during_sync``: the cores each kind of
   process used (``psutil``, user + system). The sync's publish to serving replicas is not
   part of it (replicas holding whole tables of this size are the serving tier's subject).
7. **restore**: the trainer stops; the shard actors are killed and new ones restore the
   snapshot (all at once, as after a failure): ``restore_s``; the restored row count must
   equal the distinct ids in the snapshot's files (``snapshot_rows``, counted by reading
   them back; ids evicted after their copy aside, which no slot here does).

``ids`` and ``bytes_per_id``: rows and ``stats()["bytes"]`` summed over every slot of every
shard at the end of phase 3 (map, committed row pages, optimizer state, admission sketch).
``shard_rss_growth_vs_stats``: how much the shard processes' summed RSS grew from their start
(empty tables: Python, Numba and Ray runtime, ``shard_rss_gb_start``) to the end of phase 3,
over those bytes: 1.0 when ``stats()`` accounts for every byte the tables took (the growth
also holds the first calls' Numba and channel start-up, tens of MB a shard). ``peak_rss_gb``: the largest sum of RSS over this process and all
its descendants (every Ray process of the session), sampled every 0.5 s over the whole run
(``MemorySampler``): an upper bound, since a page mapped by several processes (shared
libraries, about 0.23 GB in each Ray worker; the object store) counts in each. Beside it:
the phase it fell in and each kind of process's share at that sample
(``peak_rss_gb_by_process``, ``peak_shmem_gb_by_process``: the object store's pages), the
peak of each phase, and ``peak_pss_gb``, the largest sum of PSS, which counts a shared page
once over all processes: what the run took of the machine (sampled every 10 s only: reading
it walks each process's page tables under its memory-map lock, which at 0.5 s took 0.3 of a
core at full size and stalled the shards' own mmap and munmap meanwhile). The bound: the
runtimes (about 3.7 GB of summed RSS with the shards' empty tables, 2.2 of it outside the
shards) plus 181 B per id held at dim 16 with Adagrad (x 1.05 in RSS) plus a few hundred MB
while the sync's deltas are read (each shard holds its delta at most twice); the snapshot adds
a chunk per shard. So the peak comes where the tables are largest, at the end, and ``ids_end``
sets it: ``peak_rss_gb`` ~ 3.7 + 190e-9 x ``ids_end`` GB.
``load_avg_before_snapshot``, ``load_avg_after_snapshot``: the machine's 1-minute load
average (this run's own processes count in it too): step-time ratios from a machine that other
work shares are noise. ``call_timeouts``: trainer steps failed by a parameter-server call not answered within
``train.call_timeout_s`` (60 s); the trainer counts them and goes on.

Targets (issue 13): ids >= 50M, bytes_per_id <= 200, peak_rss_gb <= 20 (summed RSS),
throughput_full_vs_start >= 0.7, both p99 ratios <= 3, call_timeouts == 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray

from monolith_ray.config import Config
from monolith_ray.config.loader import load_yaml
from monolith_ray.config.root import DEFAULT_CONFIG
from monolith_ray.data.workload import Workload, default_workload
from monolith_ray.ps.calls import ShardUnavailableError
from monolith_ray.train.job import Trainer, start_servers, trainer_options
from monolith_ray.train.snapshots import restore_snapshot, take_snapshot

IDS_TARGET = int(float(os.environ.get("IDS", 50_000_000)))
SHARDS = 4
BATCH = 4096
WARMUP_STEPS = 10
WINDOW_STEPS = 40
POLL_S = 5.0
OBJECT_STORE_BYTES = 512 * 1024**2
PREFETCH = 3
SNAPSHOT_MB_PER_S = float(os.environ.get("SNAPSHOT_MB_PER_S", 25.0))  # per shard
SYNC_AFTER_S = 5.0
SYNCS = 3  # sparse syncs read in turn; the steps during all of them are pooled
LIVE_EVERY = int(os.environ.get("LIVE_EVERY", 4))  # from phase 4 on: 1 live batch in this many


class ScaleTrainer(Trainer):
    """A trainer that makes its own workload batches (a background thread, ``PREFETCH``
    ahead) and records each step's end time and seconds; ``stop`` ends ``run``.

    Batches are the workload's in order (live traffic, every id it brings is inserted) until
    :meth:`bound_inflow`; from then on only every ``live_every``-th batch is the next live
    one, the others replay batches already trained (the same traffic, ids already held)."""

    def __init__(self, cfg: Config, shards: list[Any], dense: Any, workload: Workload) -> None:
        super().__init__(cfg, shards, dense, local_dense=True)
        self.workload = workload
        # (end wall time, seconds, examples, seconds of it waiting for pulled rows)
        self.steps: list[tuple[float, float, int, float]] = []
        self.call_timeouts = 0
        self._stop = threading.Event()
        self._live = 0  # live batches made: the next live batch is step ``_live``
        self._live_every, self._replay_span = 1, 0

    def run(self) -> dict[str, Any]:
        """Train until :meth:`stop` -> steps and call timeouts."""
        batches: queue.Queue = queue.Queue(PREFETCH)

        def make() -> None:
            made = replayed = 0
            while not self._stop.is_set():
                every, span = self._live_every, self._replay_span
                if every > 1 and made % every:
                    step, replayed = replayed % span, replayed + 1  # oldest first
                else:
                    step, self._live = self._live, self._live + 1
                made += 1
                batch = self.workload.batch(step)
                while not self._stop.is_set():
                    try:
                        batches.put(batch, timeout=0.5)
                        break
                    except queue.Full:
                        continue

        def feed():
            while not self._stop.is_set():
                try:
                    yield batches.get(timeout=0.5)
                except queue.Empty:
                    continue

        maker = threading.Thread(target=make, daemon=True)
        maker.start()
        while not self._stop.is_set():
            try:
                for m in self.loop.train(feed()):
                    self.steps.append((time.time(), m["seconds"], m["examples"],
                                       m["pull_wait_s"]))
            except ShardUnavailableError as err:
                if "did not answer" not in str(err):
                    raise
                self.call_timeouts += 1
        maker.join()
        return {"steps": len(self.steps), "call_timeouts": self.call_timeouts}

    def bound_inflow(self, live_every: int) -> int:
        """From now on make every ``live_every``-th batch live and replay trained ones in
        between -> the live batches made so far (the replayed span)."""
        self._replay_span = max(self._live - PREFETCH - 1, 1)  # trained, not just queued
        self._live_every = live_every
        return self._replay_span

    def stop(self) -> None:
        self._stop.set()

    def timings(self, start: int = 0) -> list[tuple[float, float, int]]:
        """Step records from index ``start`` on."""
        return self.steps[start:]


def _role(p: psutil.Process) -> str:
    """What a process of the run is: the driver, a Ray actor by its class (Ray titles a
    worker ``ray::Class.method``), an idle worker, or a Ray daemon by its name."""
    if p.pid == os.getpid():
        return "driver"
    try:
        title = " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    if title.startswith("ray::"):
        name = title.split()[0][5:].split(".")[0]
        return "worker" if name in ("IDLE", "") else name
    return p.name()


def _status_kb(pid: int, keys: tuple[str, ...], rollup: bool = True) -> dict[str, int]:
    """Fields of ``/proc/<pid>/status`` (and, if ``rollup``, ``smaps_rollup``) in bytes."""
    out = {}
    for source in ("status", "smaps_rollup")[:2 if rollup else 1]:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/{source}") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in keys:
                        out[key] = int(value.split()[0]) * 1024
    return out


def role_cpu() -> dict[str, float]:
    """CPU seconds (user + system) so far of this process and each descendant, by role."""
    me, out = psutil.Process(), {}
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t, role = p.cpu_times(), _role(p)
            out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def role_cores(before: dict[str, float], after: dict[str, float], seconds: float
               ) -> dict[str, float]:
    """Cores each role used between two ``role_cpu`` readings ``seconds`` apart."""
    return {r: round((after[r] - before.get(r, 0.0)) / max(seconds, 1e-9), 3)
            for r in sorted(after)}


class MemorySampler(threading.Thread):
    """Memory of this process and its descendants (every Ray process of the session), sampled
    every ``every_s``: the largest sum of RSS (``peak``, the issue's ``peak_rss_gb``), where
    and when it happened (per process role, the phase the driver was in), and beside it the
    largest sum of PSS (proportional set size: a page mapped by k processes counts 1/k in
    each, so shared pages, the object store's and shared libraries', count once over all)."""

    def __init__(self, every_s: float = 0.5, pss_every: int = 20) -> None:
        super().__init__(daemon=True)
        self.every_s, self.phase, self._done = every_s, "start", threading.Event()
        self.pss_every = pss_every
        self.peak, self.peak_pss, self.peak_sample = 0, 0, {}
        self.phase_peaks: dict[str, int] = {}

    def run(self) -> None:
        me = psutil.Process()
        sample = 0
        while not self._done.wait(self.every_s):
            roles: dict[str, dict[str, int]] = {}
            # PSS only every ``pss_every`` samples (10 s): ``smaps_rollup`` walks a process's
            # page tables under its memory-map lock, tens of ms for a shard of GBs, which
            # stalls that process's own mmap and munmap meanwhile; ``status`` is O(1).
            pss = sample % self.pss_every == 0
            sample += 1
            for p in [me, *me.children(recursive=True)]:
                fields = _status_kb(p.pid, ("VmRSS", "RssAnon", "RssShmem", "Pss"), pss)
                role = roles.setdefault(_role(p), {"rss": 0, "anon": 0, "shmem": 0, "pss": 0})
                for key, field in (("rss", "VmRSS"), ("anon", "RssAnon"),
                                   ("shmem", "RssShmem"), ("pss", "Pss")):
                    role[key] += fields.get(field, 0)
            total = sum(r["rss"] for r in roles.values())
            self.peak_pss = max(self.peak_pss, sum(r["pss"] for r in roles.values()))
            self.phase_peaks[self.phase] = max(self.phase_peaks.get(self.phase, 0), total)
            if total > self.peak:
                self.peak, self.peak_sample = total, {"phase": self.phase, "roles": roles}

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def bench_config(workload: Workload) -> Config:
    """The default config with the workload's slots (dim 16, Adagrad), ``SHARDS`` shards and
    batch ``BATCH``."""
    data = load_yaml(DEFAULT_CONFIG, [f"train.n_shards={SHARDS}",
                                      f"train.batch_size={BATCH}", "model.hidden=[256, 128]",
                                      f"train.xla_threads={os.cpu_count() or 1}"])
    data["slots"] = [{"name": s.name, "slot_id": s.slot_id, "dim": 16,
                      "optimizer": {"kind": "adagrad", "learning_rate": 0.05}}
                     for s in workload.slots]
    data.setdefault("serve", {}).update({"user_slot": "user", "item_slot": "video"})
    return Config.from_dict(data)


def table_totals(shards: list[Any]) -> tuple[int, int, list[dict[str, dict[str, int]]]]:
    """(rows, bytes) over every slot of every shard, and each shard's stats."""
    stats = ray.get([s.stats.remote() for s in shards])
    rows = sum(t["rows"] for st in stats for t in st.values())
    n_bytes = sum(t["bytes"] for st in stats for t in st.values())
    return rows, n_bytes, stats


def window(steps: list[tuple[float, float, int]]) -> tuple[float, float]:
    """(examples per wall second, median step seconds) of consecutive step records."""
    if len(steps) < 2:
        return float("nan"), float("nan")
    wall = steps[-1][0] - steps[0][0]
    examples = sum(s[2] for s in steps[1:])
    return examples / wall, float(np.median([s[1] for s in steps]))


def during(steps: list[tuple[float, float, int]], t0: float, t1: float, field: int = 1
           ) -> np.ndarray:
    """Seconds (``field`` 3: seconds waiting for rows) of the steps that ended in [t0, t1]."""
    return np.array([s[field] for s in steps if t0 <= s[0] <= t1])


CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")


def cpu_times() -> np.ndarray:
    """The machine's CPU time so far by kind (``/proc/stat``, ``CPU_FIELDS``), in ticks."""
    with open("/proc/stat") as f:
        return np.array(f.readline().split()[1:1 + len(CPU_FIELDS)], dtype=np.int64)


def cpu_shares(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Each kind's share of the CPU time between two ``cpu_times`` (threads Ray starts run
    niced: ``nice`` is the actors' work, ``system``/``softirq``/``iowait`` the kernel's)."""
    spent = after - before
    return {k: round(float(v) / max(int(spent.sum()), 1), 4) for k, v in zip(CPU_FIELDS, spent)}


def tail_wait_share(steps: list[tuple[float, float, int, float]], t0: float, t1: float
                    ) -> float:
    """Of the time the slowest 1% of steps ending in [t0, t1] took, the share spent waiting
    for pulled rows (the shards' answers) rather than in the trainer's own work."""
    window = [s for s in steps if t0 <= s[0] <= t1]
    if not window:
        return float("nan")
    cut = np.percentile([s[1] for s in window], 99)
    tail = [s for s in window if s[1] >= cut]
    return float(sum(s[3] for s in tail) / sum(s[1] for s in tail))


def wait_steps(trainer: Any, n: int, timeout_s: float = 1800.0) -> list:
    deadline = time.monotonic() + timeout_s
    while True:
        steps = ray.get(trainer.timings.remote())
        if len(steps) >= n:
            return steps
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(steps)} of {n} steps")
        time.sleep(0.5)


def snapshot_row_count(folder: str) -> int:
    """Distinct ids in a snapshot's table files, read back chunk by chunk (an id the fuzzy
    cut wrote twice counts once; nothing is evicted in this workload). Only the ids frames
    are read, the others skipped by seeking (5% of the bytes), and each file's pages are
    dropped from the page cache after it: a read-back of every byte put gigabytes of cache
    on the machine while the trainer trained on."""
    from monolith_ray.table.embedding import _read_frame, _read_json

    total = 0
    for path in Path(folder).glob("shard-*/*.table"):
        with open(path, "rb") as f:
            header = _read_json(f)
            fields = {k: (w, np.dtype(dt)) for k, (w, dt) in header["fields"].items()}
            ids = []
            while (n := int(_read_frame(f, np.int64, (1,))[0])) >= 0:
                for name, (width, dtype) in fields.items():
                    if name == "ids":
                        ids.append(_read_frame(f, dtype, (n,)).copy())
                        continue
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}
                    shape, _, _ = read_header[np.lib.format.read_magic(f)](f)
                    f.seek(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, os.SEEK_CUR)
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        total += int(np.unique(np.concatenate(ids)).size) if ids else 0
    return total


def folder_bytes(folder: str) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def main() -> None:
    workload = default_workload(BATCH)
    cfg = bench_config(workload)
    sampler = MemorySampler()
    sampler.start()
    ray.init(address="local", num_cpus=2, object_store_memory=OBJECT_STORE_BYTES,
             include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    err = sys.stderr
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=os.environ.get("SNAPSHOT_DIR")) as out:
            shards, dense = start_servers(cfg)
            pids = ray.get([s.pid.remote() for s in shards])
            shard_rss_start = sum(psutil.Process(p).memory_info().rss for p in pids)
            trainer = ray.remote(ScaleTrainer).options(
                max_concurrency=3, **trainer_options(cfg)).remote(cfg, shards, dense, workload)
            run = trainer.run.remote()
            t_start = time.time()

            steps = wait_steps(trainer, WARMUP_STEPS + WINDOW_STEPS)
            start_rate, start_median = window(steps[WARMUP_STEPS:WARMUP_STEPS + WINDOW_STEPS])
            print(f"start: {start_rate:.0f} examples/s, median step {start_median * 1e3:.0f} ms",
                  file=err)

            sampler.phase = "fill"
            rows = 0
            while rows < IDS_TARGET:
                time.sleep(POLL_S)
                rows, n_bytes, _ = table_totals(shards)
                steps = ray.get(trainer.timings.remote())
                rate, _ = window(steps[-WINDOW_STEPS:])
                print(f"{time.time() - t_start:6.0f} s: {rows:,} ids, {n_bytes / max(rows, 1):.0f}"
                      f" B/id, {rate:.0f} examples/s, peak RSS {sampler.peak / 1e9:.1f} GB",
                      file=err)

            sampler.phase = "full"
            first = len(ray.get(trainer.timings.remote()))
            steps = wait_steps(trainer, first + WINDOW_STEPS)
            full_rate, full_median = window(steps[first:first + WINDOW_STEPS])
            ids, n_bytes, stats = table_totals(shards)
            shard_rss = sum(psutil.Process(p).memory_info().rss for p in pids)
            print(f"full: {ids:,} ids, {full_rate:.0f} examples/s, median step "
                  f"{full_median * 1e3:.0f} ms", file=err)

            sampler.phase = "steady"
            replayed = ray.get(trainer.bound_inflow.remote(LIVE_EVERY))
            first = len(ray.get(trainer.timings.remote())) + PREFETCH  # past queued batches
            cpu_steady, roles_steady, w0 = cpu_times(), role_cpu(), time.time()
            steps = wait_steps(trainer, first + WINDOW_STEPS)
            cpu_steady = cpu_shares(cpu_steady, cpu_times())
            cores_steady = role_cores(roles_steady, role_cpu(), time.time() - w0)
            _, baseline = window(steps[first:first + WINDOW_STEPS])
            print(f"steady: 1 live batch in {LIVE_EVERY}, {replayed:,} replayed, median step "
                  f"{baseline * 1e3:.0f} ms", file=err)

            sampler.phase = "snapshot"
            load_start = os.getloadavg()[0]
            t0, cpu_snapshot = time.time(), cpu_times()
            location = take_snapshot(f"{out}/snapshots", shards, dense,
                                     mb_per_s=SNAPSHOT_MB_PER_S)
            t1, cpu_snapshot = time.time(), cpu_shares(cpu_snapshot, cpu_times())
            snapshot_s = t1 - t0
            load_snapshot = os.getloadavg()[0]
            time.sleep(2.0)  # steps ending just after the snapshot are ones it slowed too
            snap_steps, snap_end = ray.get(trainer.timings.remote()), time.time()
            during_snapshot = during(snap_steps, t0, snap_end)
            snapshot_waits = during(snap_steps, t0, snap_end, field=3)
            snapshot_tail_wait = tail_wait_share(snap_steps, t0, snap_end)
            snapshot_bytes = folder_bytes(location)  # the benchmark's own checks: after
            snapshot_rows = snapshot_row_count(location)  # the window, not in it
            print(f"snapshot: {snapshot_bytes / 1e9:.2f} GB in {snapshot_s:.1f} s, "
                  f"{len(during_snapshot)} steps meanwhile", file=err)

            sampler.phase = "sync"
            syncs, sync_steps = [], []  # per sync: (rows, seconds, per-shard call seconds)
            before_syncs = []  # the steps of the SYNC_AFTER_S before each read: none running
            cpu_sync = np.zeros(len(CPU_FIELDS), np.int64)  # over the reads only
            roles_sync: dict[str, float] = {}
            for _ in range(SYNCS):
                versions = [{slot: t["version"] for slot, t in st.items()}
                            for st in ray.get([s.stats.remote() for s in shards])]
                incarnations = ray.get([s.incarnation.remote() for s in shards])
                b0 = time.time()
                time.sleep(SYNC_AFTER_S)  # the rows trained meanwhile are the sync's delta
                t0, cpu0, roles0, changes, calls = time.time(), cpu_times(), role_cpu(), [], []
                for s, v, inc in zip(shards, versions, incarnations):  # one shard at a
                    c0 = time.perf_counter()  # time, as the sync reads them
                    changes.append(ray.get(s.changes_since.remote(v, inc)))
                    calls.append(time.perf_counter() - c0)
                t1, cpu_sync = time.time(), cpu_sync + cpu_times() - cpu0
                for r, c in role_cores(roles0, role_cpu(), 1.0).items():
                    roles_sync[r] = roles_sync.get(r, 0.0) + c
                syncs.append((sum(d.ids.size for _, ds in changes for d in ds.values()),
                              t1 - t0, calls))
                del changes
                time.sleep(2.0)  # steps ending just after the sync are ones it slowed too
                steps_now, end = ray.get(trainer.timings.remote()), time.time()
                sync_steps += [s for s in steps_now if t0 <= s[0] <= end]
                before_syncs += [s[1] for s in steps_now if b0 + 1.0 <= s[0] < t0]
                print(f"sync: {syncs[-1][0]:,} rows in {t1 - t0:.1f} s", file=err)
            cpu_sync = cpu_shares(np.zeros_like(cpu_sync), cpu_sync)
            sync_rows = int(np.mean([r for r, _, _ in syncs]))
            sync_s = float(np.mean([t for _, t, _ in syncs]))
            during_sync = np.array([s[1] for s in sync_steps])
            sync_waits = np.array([s[3] for s in sync_steps])
            sync_tail_wait = tail_wait_share(sync_steps, 0.0, float("inf"))
            ids_end, _, _ = table_totals(shards)
            print(f"syncs: {sync_rows:,} rows in {sync_s:.1f} s each, {len(during_sync)} "
                  f"steps meanwhile; {ids_end:,} ids", file=err)

            sampler.phase = "restore"
            ray.get(trainer.stop.remote())
            result = ray.get(run)
            ray.kill(trainer)
            for s in shards:
                ray.kill(s, no_restart=True)
            ray.kill(dense, no_restart=True)
            del shards, dense
            time.sleep(2.0)
            fresh, fresh_dense = start_servers(cfg)
            ray.get([s.stats.remote() for s in fresh])
            t0 = time.perf_counter()
            restore_snapshot(location, fresh, fresh_dense)
            restore_s = time.perf_counter() - t0
            restored, _, _ = table_totals(fresh)
            print(f"restore: {restored:,} ids in {restore_s:.1f} s", file=err)
    finally:
        ray.shutdown()
        peak = sampler.stop()

    def p99_ratio(seconds: np.ndarray) -> float:
        return float(np.percentile(seconds, 99) / baseline) if seconds.size else float("nan")

    def pct(seconds: np.ndarray, q: float) -> float:
        return float(np.percentile(seconds, q) / baseline) if seconds.size else float("nan")

    sync_base = float(np.median(before_syncs))
    steady_steps = np.array([s[1] for s in steps[first:first + WINDOW_STEPS]])
    steady_waits = np.array([s[3] for s in steps[first:first + WINDOW_STEPS]])
    figures = {
        "ids": ids,
        "shards": SHARDS,
        "bytes_per_id": n_bytes / ids,
        "peak_rss_gb": peak / 1e9,
        "peak_rss_phase": sampler.peak_sample.get("phase"),
        "peak_rss_gb_by_process": {role: round(r["rss"] / 1e9, 3) for role, r in
                                   sorted(sampler.peak_sample.get("roles", {}).items())},
        "peak_shmem_gb_by_process": {role: round(r["shmem"] / 1e9, 3) for role, r in
                                     sorted(sampler.peak_sample.get("roles", {}).items())},
        "peak_rss_gb_by_phase": {k: round(v / 1e9, 3) for k, v in sampler.phase_peaks.items()},
        "peak_pss_gb": sampler.peak_pss / 1e9,
        "examples_per_s_start": start_rate,
        "examples_per_s_full": full_rate,
        "throughput_full_vs_start": full_rate / start_rate,
        "snapshot_s": snapshot_s,
        "snapshot_mb_per_s": snapshot_bytes / 1e6 / snapshot_s,
        "step_p99_during_snapshot_vs_median": p99_ratio(during_snapshot),
        "sync_rows": sync_rows,
        "sync_s": sync_s,
        "step_p99_during_sync_vs_median": float(np.percentile(during_sync, 99) / sync_base),
        "restore_s": restore_s,
        "call_timeouts": int(result["call_timeouts"]),
        "ids_target": IDS_TARGET,
        "step_p99_steady_vs_median": pct(steady_steps, 99),
        "step_p50_during_snapshot_vs_median": pct(during_snapshot, 50),
        "step_p90_during_snapshot_vs_median": pct(during_snapshot, 90),
        "step_max_during_snapshot_vs_median": pct(during_snapshot, 100),
        "step_p90_during_sync_vs_median": float(np.percentile(during_sync, 90) / sync_base),
        "step_p50_during_sync_vs_median": float(np.percentile(during_sync, 50) / sync_base),
        "step_p99_before_syncs_vs_median": float(np.percentile(before_syncs, 99) / sync_base),
        "step_median_before_syncs_s": sync_base,
        "step_p99_during_sync_vs_steady_median": p99_ratio(during_sync),
        "pull_wait_p50_p99_steady_s": [float(np.percentile(steady_waits, q)) for q in (50, 99)],
        "pull_wait_p50_p99_during_snapshot_s": [float(np.percentile(snapshot_waits, q))
                                                for q in (50, 99)],
        "tail_pull_wait_share_during_snapshot": snapshot_tail_wait,
        "pull_wait_p50_p99_during_sync_s": [float(np.percentile(sync_waits, q))
                                            for q in (50, 99)],
        "tail_pull_wait_share_during_sync": sync_tail_wait,
        "sync_rows_s_calls_s": [[r, round(t, 3), [round(c, 3) for c in calls]]
                                for r, t, calls in syncs],
        "cpu_shares_steady": cpu_steady,
        "cpu_shares_during_snapshot": cpu_snapshot,
        "cpu_shares_during_sync": cpu_sync,
        "cores_by_process_steady": cores_steady,
        "cores_by_process_during_sync": {r: round(c / sum(t for _, t, _ in syncs), 3)
                                         for r, c in roles_sync.items()},
        "snapshot_mb_per_s_cap": SNAPSHOT_MB_PER_S * SHARDS,
        "slots": len(workload.slots),
        "batch_size": BATCH,
        "new_ids_per_example": workload.new_ids_per_example(),
        "shard_rss_growth_vs_stats": (shard_rss - shard_rss_start) / n_bytes,
        "shard_rss_gb_start": shard_rss_start / 1e9,
        "shard_rss_gb": shard_rss / 1e9,
        "snapshot_bytes": snapshot_bytes,
        "snapshot_rows": snapshot_rows,
        "restored_rows": restored,
        "steps_during_snapshot": int(during_snapshot.size),
        "steps_during_sync": int(during_sync.size),
        "step_median_start_s": start_median,
        "step_median_full_s": full_median,
        "step_median_steady_s": baseline,
        "live_every": LIVE_EVERY,
        "load_avg_before_snapshot": load_start,
        "load_avg_after_snapshot": load_snapshot,
        "ids_end": ids_end,
        "steps": int(result["steps"]),
    }
    if restored != snapshot_rows:
        raise RuntimeError(f"restored {restored} ids, the snapshot holds {snapshot_rows}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
