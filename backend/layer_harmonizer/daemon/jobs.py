"""The daemon's worker thread: runs ``harmonize`` jobs from a queue on the warm
:class:`~.engine.Engine` and hands their progress events and final replies to the main thread
through an inproc PUSH socket (ZeroMQ sockets are not shared between threads)."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from layer_harmonizer.daemon.engine import EmptyMask, Engine, UnknownJob
from layer_harmonizer.errors import HarmonizeError
from layer_harmonizer.wire import messages as M
from layer_harmonizer.wire import protocol as P
from layer_harmonizer.wire import shm_mapping

log = logging.getLogger("harmonize.daemon")


class Cancelled(Exception):
    """Raised in the worker at a checkpoint when its job was cancelled."""


@dataclass
class Job:
    """One ``harmonize_request`` (or ``reapply_request``) on its way through the queue."""

    route: list[Any]  # ROUTER identity frames (+ empty delimiter for REQ peers)
    msg: P.Message
    options: M.HarmonizeOptions
    nbytes: int = 0  # pixel bytes held by the job's frames
    state: str = "queued"  # queued -> running -> done | cancelled
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel: threading.Event = field(default_factory=threading.Event)
    shm: shm_mapping.Request | None = None  # the client's segment, when the pixels came that way
    segment: Any = None  # its mapping (mmap) while the job runs
    shm_map: float = 0.0  # seconds spent opening, checking and mapping it
    result_spec: dict[str, Any] = field(default_factory=dict)  # the result written there

    def release(self) -> None:
        """Drop the frames (views of a client's segment, whose mapping the server keeps)."""
        views = [pix.data for pix in self.msg.frames.values()]
        self.msg.frames = {}
        self.segment = None
        if self.shm is not None:
            for view in views:
                with contextlib.suppress(BufferError):
                    view.release()


def _array(pix: P.Pixels) -> np.ndarray:
    """A read-only numpy view of received pixels (no copy)."""
    return np.frombuffer(pix.data, dtype=np.dtype(pix.dtype).newbyteorder("<")).reshape(pix.shape)


# ---- the daemon -------------------------------------------------------------------------------


class Worker:
    r"""One thread running jobs in order. The main thread :meth:`put`\ s jobs (and owns
    ``jobs``, which the worker pops a job from before its final reply goes out)."""

    def __init__(self, engine: Engine, jobs: dict[str, Job], out: zmq.Socket) -> None:
        self.engine = engine
        self.jobs = jobs
        self._out = out
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="harmonize-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, job: Job) -> None:
        self.queue.put(job)

    def stop(self, timeout: float = 30.0) -> None:
        """Let the running job end (it was cancelled) and the thread exit."""
        self.queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)

    def _emit(self, route: list[Any], parts: list[Any]) -> None:
        """Hand a message to the main thread (worker side; never touches the ROUTER)."""
        self._out.send_multipart([str(len(route)).encode(), *route, *parts], copy=False)

    def _work(self) -> None:
        """The thread's loop: run queued jobs until the ``None`` that :meth:`stop` puts."""
        while True:
            job = self.queue.get()
            if job is None:
                return
            with job.lock:
                skip = job.state == "cancelled"
                job.state = "done" if skip else "running"
            if skip:
                job.release()
                continue
            try:
                final = self._run(job)
            finally:
                job.release()
            with job.lock:
                job.state = "done"
            self.jobs.pop(job.msg.id, None)  # before the reply: the client may send the next job
            self._emit(job.route, final)
            del job, final  # nothing of it stays referenced while the worker waits

    def _run(self, job: Job) -> list[Any]:
        """Run one job; returns its final message (reply or error)."""
        parent = job.msg.id

        def checkpoint(stage: str, **info: Any) -> None:
            if job.cancel.is_set():
                raise Cancelled
            self._emit(job.route, P.pack(P.PROGRESS, {"stage": stage, **info}, parent=parent))

        def error(code: str, text: str) -> list[Any]:
            return P.pack(P.ERROR, P.error_body(code, text), parent=parent)

        try:
            out, (x, y), info = self._compute(job, checkpoint)
            if job.shm is not None:
                info["timings"] = {**info.get("timings", {}), "shm_map": job.shm_map}
        except Cancelled:
            log.info("job %s cancelled", parent)
            return error(P.ErrorCode.CANCELLED, "cancelled")
        except P.ProtocolError as exc:
            return error(exc.code, exc.message)
        except EmptyMask:
            return error(
                P.ErrorCode.EMPTY_MASK, "the mask is empty (no pixel above 0): nothing to do"
            )
        except UnknownJob:
            return error(
                P.ErrorCode.UNKNOWN_JOB,
                f"reapply: the daemon no longer keeps job {P.echo(job.msg.body.get('job'))} "
                f"(it keeps the last {self.engine.job_cache}); send the whole request again",
            )
        except HarmonizeError as exc:
            return error(P.ErrorCode.INVALID_INPUT, str(exc))
        except MemoryError:
            return error(
                P.ErrorCode.OUT_OF_MEMORY, "out of memory: try a smaller layer or selection"
            )
        except Exception as exc:
            if "out of memory" in str(exc).lower():
                return error(
                    P.ErrorCode.OUT_OF_MEMORY, f"out of memory on {self.engine.device}: {exc}"
                )
            log.error("job %s failed:\n%s", parent, traceback.format_exc())
            return error(P.ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        h, w = out.shape[:2]
        log.info("job %s: %d x %d at (%d, %d), cached=%s", parent, w, h, x, y, info["cached"])
        order = info.pop("order", None)
        order = order and order + "A"[: out.shape[2] - 3]  # "BGR" -> "BGRA" for 4 channels
        job_id = job.msg.body["job"] if job.msg.type == P.REAPPLY else parent
        body = {"offset": [x, y], "size": [w, h], "job": job_id, **info}
        reply = P.reply_type(job.msg.type)
        if job.shm is None:
            return P.pack(reply, body, {"result": P.Pixels.of(out, order)}, parent=parent)
        spec = {**job.result_spec, **({"order": order} if order else {})}
        body["result"] = {**spec, "offset": job.shm.result_offset}
        return P.pack(reply, body, parent=parent)

    def _compute(self, job: Job, checkpoint: Any) -> tuple[np.ndarray, tuple[int, int], dict]:
        """The engine's work for a harmonize job (kept for reapply under its id) or a reapply
        job (no frames)."""
        if job.msg.type == P.REAPPLY:
            return self.engine.reapply(
                job.msg.body["job"], job.options, checkpoint, self._destination(job)
            )
        arrays = {name: _array(pix) for name, pix in job.msg.frames.items()}
        return self.engine.run(
            arrays, job.options, checkpoint, self._destination(job),
            bgr=job.msg.frames["layer"].bgr, job_id=job.msg.id,
        )  # fmt: skip

    @staticmethod
    def _destination(job: Job) -> Any:
        """Where the engine writes a shared-memory job's result: the segment's result region
        (its capacity checked first), in place. None for a frames job."""
        if job.segment is None:
            return None

        def destination(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
            count = shape[0] * shape[1] * shape[2]
            if count * dtype.itemsize > job.shm.result_capacity:
                raise P.ProtocolError(
                    P.ErrorCode.BAD_FRAMES,
                    f"shm: the result needs {count * dtype.itemsize} bytes but the segment's "
                    f"result region holds {job.shm.result_capacity}",
                )
            job.result_spec = {"name": "result", "shape": list(shape), "dtype": dtype.name}
            offset = job.shm.result_offset
            return np.frombuffer(job.segment, dtype, count, offset).reshape(shape)

        return destination
