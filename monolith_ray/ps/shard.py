"""ShardServer: one parameter-server shard, holding its share of every slot's embedding rows.

A plain class so it runs in-process as is and becomes a Ray actor with
``ray.remote(ShardServer)``. Each method handles every slot in one call, so a training step
costs one call per shard however many slots the model has. Its per slot arrays come as a
mapping of slot name to array or as one :class:`PackedSlots` array, and the result takes the form
they came in: the trainers' client sends ``PackedSlots`` arrays, because every array that crosses
a process costs a fixed serialization overhead, and a mapping would cost it once per slot.

Row layout: a slot configured with ``dim = D`` has table rows ``D + 1`` wide. Column 0 is the
feature's first-order (linear) weight and columns ``1..D`` its embedding vector, the layout
``monolith_ray.model`` expects (one row serves the linear, FM and deep parts, so a step moves
one matrix per slot). Both parts share the slot's optimizer and initializer.

Inputs may be read-only (arrays from Ray's object store): they are made writable copies where
needed, and the tables never keep a reference to a caller's array.

Trainers reach a shard actor's per-step methods over a channel (``open_channel``, see
``monolith_ray.ps.channel``) as well as through Ray: every table method holds the shard's lock,
so calls from both and from several trainers run one at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import mmap
import os
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, TypeVar

import numpy as np
import pyarrow.fs as pafs

from monolith_ray.config import AdmissionConfig, OptimizerConfig, SlotConfig
from monolith_ray.ps.packed_slots import PackedSlots
from monolith_ray.files import filesystem_and_path
from monolith_ray.supervision import restore_if_restarted
from monolith_ray.table import EmbeddingTable, TableDelta
from monolith_ray.table.embedding import SnapshotPart, write_parts


SlotArrays = TypeVar("SlotArrays", PackedSlots, Mapping[str, np.ndarray])
logger = logging.getLogger(__name__)
TABLE_SUFFIX = ".table"  # a slot's snapshot file: <folder>/<slot>.table
POSITION_FILE = "position.json"  # the incarnation and table versions a snapshot starts from


Method = TypeVar("Method", bound=Callable[..., Any])


def _serialized(method: Method) -> Method:
    """``method`` run under its shard's lock (channel threads and Ray's thread share tables)."""
    @functools.wraps(method)
    def locked(self: ShardServer, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return locked  # type: ignore[return-value]


def table_slot(slot: SlotConfig) -> SlotConfig:
    """The config of ``slot``'s table: the same settings with rows ``slot.dim + 1`` wide."""
    return dataclasses.replace(slot, dim=slot.dim + 1)


class ShardServer:
    """One shard's ``EmbeddingTable`` per slot; every method handles all slots in one call."""

    def __init__(self, slots: Sequence[SlotConfig], admission: AdmissionConfig = AdmissionConfig(),
                 capacity: int = 1024,
                 restore_on_restart: Callable[[], str | None] | None = None,
                 optional: Sequence[str] = ()) -> None:
        """``restore_on_restart`` (a picklable callable -> this shard's latest snapshot folder,
        or None): when Ray restarts this actor after its process died, the new one restores
        that snapshot before it answers any call; a first start never restores.
        ``optional``: tables a snapshot may lack (e.g. the retrieval towers', for a snapshot
        taken before retrieval was configured): a restore starts them empty."""
        self._admission, self._capacity = admission, capacity
        self._slots = {s.name: s for s in slots}
        self.optional = frozenset(optional)
        self.tables = {s.name: self._new_table(s) for s in slots}
        self._lock = threading.RLock()
        self._channel: Any = None
        self._incarnation = uuid.uuid4().hex  # new on every start and restore
        self.restored_from = restore_if_restarted(self, restore_on_restart)

    def _new_table(self, slot: SlotConfig) -> EmbeddingTable:
        return EmbeddingTable(table_slot(slot), self._admission, self._capacity)

    def incarnation(self) -> str:
        """This shard's incarnation: a new random id on every start and every restore, and
        when a table dropped eviction records no reader had taken
        (``EmbeddingTable.max_eviction_records``), so a reader can tell that the versions it
        read before no longer lead to the tables now: it reads them whole."""
        return self._incarnation

    def _check_eviction_records(self) -> None:
        """A new incarnation if a table dropped unread eviction records since the last look
        (its ``eviction_floor`` moved): a reader behind them would miss those evictions, so
        it reads the shard whole (the sync then drops what the shard no longer has). Called
        with the lock held: after evicting, and before and after a delta is read."""
        moved = [name for name, t in self.tables.items() if t.eviction_floor > t.floor_seen]
        if moved:
            for name in moved:
                self.tables[name].floor_seen = self.tables[name].eviction_floor
            self._incarnation = uuid.uuid4().hex
            logger.warning("shard: slots %s dropped eviction records no reader took (more "
                           "than %d unread): readers will read this shard whole", moved,
                           self.tables[moved[0]].max_eviction_records)

    def open_channel(self) -> tuple[str, int, bytes]:
        """Start (once) this shard's channel server -> (host, port, token) to connect to; see
        ``monolith_ray.ps.channel``. It listens on this node's address (Ray's node IP in an
        actor, loopback otherwise)."""
        from monolith_ray.ps.channel import ChannelServer

        with self._lock:
            if self._channel is None:
                self._channel = ChannelServer(self, _node_address())
            return self._channel.address

    def pid(self) -> int:
        """This server's process id (to find the process that holds a shard)."""
        return os.getpid()

    @_serialized
    def pull(self, ids: SlotArrays, now: float) -> SlotArrays:
        """Training lookup: per slot ids int64 (n,) -> rows float32 (n, D+1), inserting admitted
        new ids stamped with event time ``now`` (seconds)."""
        return _like(ids, {name: self._table(name).lookup_train(_writable(a), now)
                           for name, a in _arrays(ids).items()})

    @_serialized
    def push(self, ids: SlotArrays, grads: SlotArrays, now: float) -> int:
        """Apply per slot gradients float32 (n, D+1) to ids int64 (n,) -> rows updated in all."""
        ids, grads = _arrays(ids), _arrays(grads)
        if ids.keys() != grads.keys():
            raise ValueError(
                f"ids and grads name different slots: {sorted(ids)} vs {sorted(grads)}")
        return sum(self._table(name).apply_gradients(_writable(a), _writable(grads[name]), now)
                   for name, a in ids.items())

    @_serialized
    def push_pull(self, ids: SlotArrays, grads: SlotArrays, now: float, pull_ids: SlotArrays,
                  pull_now: float) -> SlotArrays:
        """``push(ids, grads, now)`` then ``pull(pull_ids, pull_now)`` -> the pulled rows: one
        call where a pipelined trainer would make two (each remote call has a fixed cost)."""
        self.push(ids, grads, now)
        return self.pull(pull_ids, pull_now)

    @_serialized
    def lookup(self, ids: SlotArrays) -> SlotArrays:
        """Serving lookup: per slot ids (n,) -> rows (n, D+1); unknown ids read zeros, nothing
        is inserted or counted."""
        return _like(ids, {name: self._table(name).lookup_serve(_writable(a))
                           for name, a in _arrays(ids).items()})

    def evict_expired(self, now: float) -> dict[str, np.ndarray]:
        """Evict rows idle for their slot's ``expire_s`` -> per slot the evicted ids int64.
        Tables are scanned a chunk at a time under the shard's lock, beside training."""
        with self._lock:
            tables = dict(self.tables)
        try:
            return {name: t.evict_expired(now, self._lock) for name, t in tables.items()}
        finally:
            with self._lock:
                self._check_eviction_records()

    @_serialized
    def evict(self, ids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evict the given ids now, per slot (absent ones are ignored) -> per slot the ids
        evicted int64."""
        try:
            return {name: self._table(name).evict(_writable(a)) for name, a in ids.items()}
        finally:
            self._check_eviction_records()

    @_serialized
    def set_optimizers(self, optimizers: Mapping[str, OptimizerConfig]) -> None:
        """Switch each named slot's table to its optimizer from now on (e.g. the slots'
        ``online`` settings once batch training ends; ``EmbeddingTable.set_optimizer``)."""
        tables = {name: self._table(name) for name in optimizers}
        for name, cfg in optimizers.items():
            tables[name].set_optimizer(cfg)

    @_serialized
    def stats(self) -> dict[str, dict[str, int]]:
        """Per slot: rows, version, bytes and the table's counters."""
        return {name: t.stats() for name, t in self.tables.items()}

    def export_since(self, versions: Mapping[str, int] | int = 0) -> dict[str, TableDelta]:
        """Per slot the rows changed and ids evicted after that slot's version (a mapping; slots
        missing from it start at 0) or after one version for all slots (an int). Tables are
        scanned in chunks, the shard's lock held per chunk (``EmbeddingTable.export_since``)
        and the scan paced to ``EXPORT_DUTY`` of a core: training goes on while a delta of
        millions of rows is read."""
        if isinstance(versions, int):
            versions = dict.fromkeys(self.tables, versions)
        with self._lock:
            tables = dict(self.tables)
        return self._export(tables, versions)

    def changes_since(self, versions: Mapping[str, int], incarnation: str | None
                      ) -> tuple[str, dict[str, TableDelta]]:
        """``(this shard's incarnation, export_since(versions))`` if ``incarnation`` is this
        shard's current one, else ``(incarnation, export_since(0))``: everything, since the
        versions a reader holds mean nothing to a shard started or restored after it read
        them (its tables' versions start over from the snapshot's), nor to one that dropped
        eviction records no reader took (``_check_eviction_records``). A restore while the
        delta is read leaves it labelled with the old incarnation, so the reader's next call
        reads everything again. The shard holds the delta at most twice while it reads it
        (``EmbeddingTable.export_since``), 2 x (8 + 4 x width) bytes per changed row."""
        with self._lock:
            self._check_eviction_records()
            current, tables = self._incarnation, dict(self.tables)
        if incarnation != current:
            versions = {}
        deltas = self._export(tables, versions)
        with self._lock:  # records dropped while it was read: labelled with the old
            self._check_eviction_records()  # incarnation, so the next call reads whole
        return current, deltas

    def _export(self, tables: Mapping[str, EmbeddingTable], versions: Mapping[str, int]
                ) -> dict[str, TableDelta]:
        """Each of ``tables``' changes after its version in ``versions`` (0 if missing),
        scanned under this shard's lock a chunk at a time, paced to ``EXPORT_DUTY``."""
        with _quick_gil_handover():
            return {name: t.export_since(versions.get(name, 0), self._lock, duty=EXPORT_DUTY)
                    for name, t in tables.items()}

    @_serialized
    def forget_evictions(self, versions: Mapping[str, int], incarnation: str | None = None
                         ) -> None:
        """Drop each slot's eviction records at or before its version: the parameter sync
        (their one reader) has taken them. Given the ``incarnation`` those versions were read
        from, a shard started or restored since ignores the call: its records are unread."""
        if incarnation is not None and incarnation != self._incarnation:
            return
        for name, version in versions.items():
            self._table(name).forget_evictions(version)

    def snapshot(self, location: str | os.PathLike[str], mb_per_s: float = 0.0
                 ) -> dict[str, float]:
        """Write every slot's table to ``<location>/<slot>.table``, a local folder or any
        ``pyarrow.fs`` URI, resolved here, on this actor's node and with its credentials ->
        {rows, bytes, seconds}. Each table is copied a chunk at a time under the shard's lock,
        on the calling thread, and written outside it on a thread of lower priority
        (``EmbeddingTable.snapshot_parts``: a fuzzy cut), so trainers' calls wait at most one
        chunk's copy, never the write, and never a low-priority thread holding the lock.
        Files are written in place: a reader learns they are whole from the manifest that
        ``monolith_ray.train.snapshots`` writes after every shard has returned. ``mb_per_s``
        > 0 caps this shard's write rate (``data.snapshot_mb_per_s``), leaving CPU and disk to
        training. ``position.json`` beside the tables names this shard's incarnation and each
        table's version when the copy began: a serving shard restored from the files asks
        for the changes since.

        Memory: beside its tables a shard holds at most three chunks' copies (the one being
        made, ``COPIES_AHEAD`` waiting, the one being written: 1.3 MB each at dim 17 with
        Adagrad) and a 4-MB write block; a local file is written with ``O_DIRECT``
        (``DirectFile``), so no page cache fills (where the file system refuses it, the
        written pages are dropped every 64 MB, ``_Uncached``): its peak during a snapshot is
        its tables' ``stats()`` bytes (181 per id at dim 16 with Adagrad, RSS 1.05x that)
        plus about 8 MB and its runtime (about 0.37 GB). What can grow meanwhile is the
        tables, by the ids trained in while it writes (``benchmarks.scale``)."""
        t0 = time.perf_counter()
        pace = _Pace(mb_per_s * 1e6) if mb_per_s > 0 else None
        fs, folder = filesystem_and_path(location)
        fs.create_dir(folder, recursive=True)
        with self._lock:
            tables = dict(self.tables)
            # Every change after these versions may be missing from the fuzzy cut: a serving
            # shard restored from it asks for the changes since them (``serve.shards``).
            position = {"incarnation": self._incarnation,
                        "versions": {name: t.version for name, t in tables.items()}}

        # Copies are made here, on the actor's thread, and written on a thread of lower
        # priority: the shard's lock is only ever held by threads of the usual priority (a
        # low-priority thread preempted while holding it would stall trainers' calls until
        # the scheduler ran it again). At most ``COPIES_AHEAD`` copies wait for the writer.
        copies: queue.Queue = queue.Queue(COPIES_AHEAD)

        def table_parts() -> Iterator[SnapshotPart]:
            while (part := copies.get()) is not _END_OF_TABLE:
                if part is _ABANDONED:
                    raise RuntimeError("snapshot abandoned: copying the tables failed")
                yield part

        def write() -> tuple[int, int]:
            rows = n_bytes = 0
            for name in tables:
                path = f"{folder}/{name}{TABLE_SUFFIX}"
                if isinstance(fs, pafs.LocalFileSystem):
                    with _local_file(path) as f:
                        uncached = pace if isinstance(f, DirectFile) else _Uncached(f, pace)
                        rows += write_parts(f, table_parts(), pace=uncached)
                        n_bytes += f.tell()
                else:
                    with fs.open_output_stream(path, compression=None, buffer_size=1 << 22) as f:
                        rows += write_parts(f, table_parts(), pace=pace)
                        n_bytes += f.tell()
            return rows, n_bytes

        def copy(writer: threading.Thread) -> None:
            def hand(part: object) -> None:
                while True:
                    try:
                        copies.put(part, timeout=0.5)
                        return
                    except queue.Full:
                        if not writer.is_alive():  # the writer failed: its error is raised
                            raise _WriterGone from None

            try:
                for table in tables.values():
                    for part in table.snapshot_parts(self._lock):
                        hand(part)
                        del part
                    hand(_END_OF_TABLE)
            except _WriterGone:
                return
            except BaseException:
                with contextlib.suppress(_WriterGone):
                    hand(_ABANDONED)
                raise

        with _quick_gil_handover():
            rows, n_bytes = _on_background_thread(write, beside=copy)
        with fs.open_output_stream(f"{folder}/{POSITION_FILE}") as f:
            f.write(json.dumps(position).encode())
        return {"rows": rows, "bytes": n_bytes, "seconds": time.perf_counter() - t0}

    @_serialized
    def restore(self, location: str | os.PathLike[str]) -> None:
        """Replace every slot's table by its snapshot at ``location`` (a local folder or
        ``pyarrow.fs`` URI); all or nothing. An ``optional`` table the snapshot lacks starts
        empty."""
        fs, folder = filesystem_and_path(location)
        paths = {}
        for name in self.tables:  # <slot>.table, or <slot>.npz of the earlier format
            candidates = [f"{folder}/{name}{TABLE_SUFFIX}", f"{folder}/{name}.npz"]
            found = [i.path for i in fs.get_file_info(candidates)
                     if i.type == pafs.FileType.File]
            if found:
                paths[name] = found[0]
            elif name not in self.optional:
                raise FileNotFoundError(f"no snapshot of slot {name!r} in {location}")
        restored = {}
        for name, table in self.tables.items():
            if name not in paths:  # optional, and not in this snapshot: starts empty
                restored[name] = self._new_table(self._slots[name])
                continue
            if paths[name].endswith(".npz"):
                with fs.open_input_file(paths[name]) as f:
                    new = EmbeddingTable.restore_npz(f)
            else:
                with fs.open_input_stream(paths[name], buffer_size=1 << 22) as f:
                    new = EmbeddingTable.restore(f)
            if new.dim != table.dim:
                raise ValueError(f"snapshot {paths[name]} has rows {new.dim} wide, slot "
                                 f"{name!r} needs {table.dim}")
            restored[name] = new
        self.tables = restored
        self._incarnation = uuid.uuid4().hex

    def _table(self, name: str) -> EmbeddingTable:
        try:
            return self.tables[name]
        except KeyError:
            raise KeyError(f"no slot {name!r} on this shard; slots: "
                           f"{', '.join(self.tables)}") from None


_handovers = 0
_handover_lock = threading.Lock()


@contextlib.contextmanager
def _quick_gil_handover(seconds: float = 0.0005) -> Iterator[None]:
    """While a long snapshot or export runs on one thread, have Python hand the GIL to a
    waiting thread (a trainer's call on its channel) after ``seconds`` instead of the default
    5 ms, so calls are not held up by the writer's Python work."""
    global _handovers
    with _handover_lock:
        _handovers += 1
        if _handovers == 1:
            _quick_gil_handover.saved = sys.getswitchinterval()  # type: ignore[attr-defined]
            sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        with _handover_lock:
            _handovers -= 1
            if _handovers == 0:
                sys.setswitchinterval(_quick_gil_handover.saved)  # type: ignore[attr-defined]


T = TypeVar("T")

#: The share of a core a shard's export (a sync's read, ``export_since``) takes at most: its
#: scan sleeps three times each chunk's lock hold after it. Measured (``benchmarks.scale``,
#: 12M ids): at full speed a sync's reads took the shards from 0.71 to 0.98 cores and the
#: trainer from 0.95 to 0.72; paced, from 0.75 to 0.82 and from 0.90 to 0.82. A sync is read
#: once a minute; the scan's 0.1 s a shard of 13M rows becomes 0.4 s.
EXPORT_DUTY = 0.25

#: How much lower than the shard's other threads a snapshot writer runs (Linux nice steps):
#: on a node whose cores trainers keep busy, the writer takes the CPU they leave instead of
#: time slices from the threads answering their calls.
WRITER_NICENESS = 10


def _on_background_thread(work: Callable[[], T], niceness: int = WRITER_NICENESS,
                          beside: Callable[[threading.Thread], None] | None = None) -> T:
    """Run ``work`` on a new thread of its own with ``niceness`` added to its scheduling
    priority (Linux schedules threads apart; elsewhere, or if refused, at the usual one),
    and ``beside(that thread)`` on this one meanwhile, and return work's result or raise
    the first error. A thread of its own because an unprivileged process cannot raise a
    thread's priority back: the actor's call threads stay as they are."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + niceness)
        except (AttributeError, OSError):
            pass
        try:
            result.append(work())
        except BaseException as e:  # handed to the caller below
            error.append(e)

    thread = threading.Thread(target=run, name="snapshot-writer", daemon=True)
    thread.start()
    try:
        if beside is not None:
            beside(thread)
    finally:
        thread.join()
    if error:
        raise error[0]
    return result[0]


class _WriterGone(Exception):
    """The snapshot's writer thread ended before taking every copy (it raised)."""


_END_OF_TABLE = object()  # in a snapshot's queue of copies: the table's parts are all in
_ABANDONED = object()  # the copying failed: the writer stops with an error
COPIES_AHEAD = 1  # copied chunks a snapshot keeps waiting for its writer (1.3 MB each)


class DirectFile:
    """A file written with ``O_DIRECT`` through one page-aligned block: the kernel copies
    nothing into its page cache, so there is nothing for its writeback threads to flush (work
    they do at the usual priority, beside training) and no cache to drop; the writing thread
    does the I/O at its own priority. Whole ``block`` bytes go out as they fill; ``close``
    writes the last block padded to the device's 4,096 bytes and truncates the padding.
    Raises OSError at open where the file system has no ``O_DIRECT`` (e.g. tmpfs)."""

    ALIGN = 4096

    def __init__(self, path: str, block: int = 4 << 20) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        self.buffer = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
        self.view = memoryview(self.buffer)
        self.block, self.fill, self.written = block, 0, 0

    def write(self, data: Any) -> int:
        data = memoryview(data).cast("B")
        n, at = len(data), 0
        while at < n:
            take = min(self.block - self.fill, n - at)
            self.view[self.fill: self.fill + take] = data[at: at + take]
            self.fill += take
            at += take
            if self.fill == self.block:
                self._out(self.block)
        return n

    def _out(self, n_bytes: int) -> None:
        done = 0
        while done < n_bytes:
            done += os.write(self.fd, self.view[done:n_bytes])
            if done % self.ALIGN and done < n_bytes:
                raise OSError(f"a direct write stopped at {done} bytes, off alignment")
        self.written += self.fill
        self.fill = 0

    def tell(self) -> int:
        return self.written + self.fill

    def flush(self) -> None:
        """Nothing: a partial block can only go out padded, at ``close``."""

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            size = self.tell()
            if self.fill:
                padded = -(-self.fill // self.ALIGN) * self.ALIGN
                self.view[self.fill: padded] = bytes(padded - self.fill)
                self._out(padded)
            os.ftruncate(self.fd, size)
        finally:
            os.close(self.fd)
            self.fd = -1
            self.view.release()
            self.buffer.close()

    def __enter__(self) -> "DirectFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _local_file(path: str) -> Any:
    """A snapshot file on a local disk: written directly (``DirectFile``) where the file
    system allows it, else through a 4-MB buffer whose pages ``_Uncached`` drops."""
    try:
        return DirectFile(path)
    except (OSError, AttributeError):
        return open(path, "wb", buffering=1 << 22)


class _Uncached:
    """A pace callback for a local file that also drops the file's written pages from the
    page cache every ``every`` bytes (after writing them out): a snapshot of gigabytes would
    otherwise fill the node's memory with cache, and the kernel would reclaim it while
    trainers and shards wait for pages. Calls ``pace`` too, if given."""

    def __init__(self, file: BinaryIO, pace: Callable[[int], None] | None,
                 every: int = 64 << 20) -> None:
        self.file, self.pace, self.every, self.pending = file, pace, every, 0

    def __call__(self, n_bytes: int) -> None:
        if self.pace is not None:
            self.pace(n_bytes)
        self.pending += n_bytes
        if self.pending >= self.every and hasattr(os, "posix_fadvise"):
            self.file.flush()
            fd = self.file.fileno()
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            self.pending = 0


class _Pace:
    """Called with the bytes just written; sleeps so that writing goes no faster than
    ``bytes_per_s`` on average since the first call."""

    def __init__(self, bytes_per_s: float) -> None:
        self.rate, self.written, self.start = bytes_per_s, 0, time.perf_counter()

    def __call__(self, n_bytes: int) -> None:
        self.written += n_bytes
        ahead = self.written / self.rate - (time.perf_counter() - self.start)
        if ahead > 0:
            time.sleep(ahead)


def _node_address() -> str:
    """This node's address as Ray knows it, or loopback outside Ray."""
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def _arrays(arrays: PackedSlots | Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Per slot arrays as a mapping, whichever form they came in."""
    return arrays.unpack() if isinstance(arrays, PackedSlots) else arrays


def _like(form: PackedSlots | Mapping[str, np.ndarray], result: dict[str, np.ndarray]
          ) -> PackedSlots | dict[str, np.ndarray]:
    """``result`` in the form of ``form``: packed if it came packed."""
    return PackedSlots.of(result) if isinstance(form, PackedSlots) else result


def _writable(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous writable array, copied only if it is not one; the dtype is
    kept, for the table to check."""
    return np.require(a, requirements=["C", "W"])
