"""layer_harmonizer.wire.host_session through an in-process daemon: one client (and segment) per
session, a strength change as a reapply without pixels, the fallback when the daemon no longer
keeps the job, a new client when the daemon changed, channel orders checked on the way back."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer_harmonizer.daemon.engine import Engine
from layer_harmonizer.wire import client as real_client
from layer_harmonizer.wire import host_side as S
from tests.test_server import Running


class CountingClients(types.SimpleNamespace):
    """The client module, counting the clients made and the requests of each kind."""

    def __init__(self) -> None:
        super().__init__(DaemonError=real_client.DaemonError, made=[], calls=[])

    def answering_client(self, path: Path, **kw: Any) -> Any:
        found = real_client.answering_client(path, **kw)
        if found is not None:
            self.made.append(found)
            calls = self.calls
            for name in ("harmonize", "harmonize_layer", "reapply"):
                method = getattr(found, name)
                setattr(found, name, _counted(calls, name, method))
        return found

    def ensure_daemon(self, **_kw: Any) -> Any:
        raise AssertionError("the test's daemon is running")


def _counted(calls: list, name: str, method: Any) -> Any:
    def call(*args: Any, **kw: Any) -> Any:
        calls.append((name, [a for a in args if a is not None]))
        return method(*args, **kw)

    return call


def publish(run: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint file for the in-process daemon, where plug-ins look for it."""
    info = {"endpoint": run.endpoint, "token": run.token, "pid": os.getpid()}
    (run.folder / "daemon.json").write_text(json.dumps(info))
    monkeypatch.setenv("HARMONIZE_RUNTIME_DIR", str(run.folder))


@pytest.fixture
def daemon(light_model, monkeypatch):
    run = Running(Engine(light_model))
    publish(run, monkeypatch)
    yield run
    run.close()


def request(seed: int = 0, order: str = "RGBA", selection: bool = True) -> S.Request:
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    layer = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    layer[..., 3] = 255
    sel = np.zeros((h, w), np.uint8)
    sel[12:36, 16:40] = 255
    back = rng.integers(0, 256, (h, w, 4 if order == "BGRA" else 3), dtype=np.uint8)
    return S.Request(
        layer.tobytes(), sel.tobytes() if selection else None, back.tobytes(), w, h,
        S.wire_format("U8_NON_LINEAR"), order=order, backdrop_channels=back.shape[2],
    )  # fmt: skip


def pixels(result: S.Result) -> np.ndarray:
    return np.frombuffer(result.pixels, np.uint8).reshape(result.box.h, result.box.w, 4)


def test_one_client_and_segment_for_all_the_requests_of_a_session(daemon):
    clients = CountingClients()
    with S.open_session(client_module=clients) as session:
        box = session.harmonize(request(1), strength=1.0).box  # the result is not kept
        segment = session.client._segment
        session.harmonize(request(2), strength=0.5)
        session.restrength(request(2), strength=0.5)  # never answered: a whole request
        assert len(clients.made) == 1 and session.client._segment is segment
        held = session.harmonize(request(1))  # a result still held: its memory is left alone
        session.harmonize(request(2))
        assert session.client._segment is not segment and held.box == box
    assert session.client is None
    assert [name for name, _ in clients.calls] == ["harmonize_layer"] * 5


def test_a_strength_change_is_a_reapply_without_pixels(daemon):
    clients = CountingClients()
    req = request(3)
    with S.open_session(client_module=clients) as session:
        session.harmonize(req, strength=1.0)
        assert req.job is not None
        events: list[str] = []
        weaker = session.restrength(req, strength=0.25, on_progress=lambda f, s: events.append(s))
        expected = pixels(session.harmonize(request(3), strength=0.25))
        assert np.array_equal(pixels(weaker), expected)
    assert [name for name, _ in clients.calls] == ["harmonize_layer", "reapply", "harmonize_layer"]
    assert clients.calls[1][1] == [req.job]  # the job id, no pixels
    assert events == ["received", "applied"]


def test_a_job_no_longer_kept_is_sent_whole_again(light_model, monkeypatch):
    run = Running(Engine(light_model, job_cache=0))  # keeps nothing
    publish(run, monkeypatch)
    try:
        clients = CountingClients()
        req = request(5)
        with S.open_session(client_module=clients) as session:
            session.harmonize(req, strength=1.0)
            job = req.job
            again = session.restrength(req, strength=0.5)
            assert req.job not in (None, job)  # the new request's id
        names = [name for name, _ in clients.calls]
        assert names == ["harmonize_layer", "reapply", "harmonize_layer"]
        assert again.box.w > 0
    finally:
        run.close()


def test_a_restarted_daemon_gets_a_new_client(light_model, monkeypatch, daemon):
    clients = CountingClients()
    with S.open_session(client_module=clients) as session:
        session.harmonize(request(7))
        other = Running(Engine(light_model))
        try:
            publish(other, monkeypatch)  # the endpoint file now names another daemon
            session.harmonize(request(7))
        finally:
            other.close()
    assert len(clients.made) == 2 and clients.made[0].endpoint != clients.made[1].endpoint


def test_krita_order_travels_both_ways_and_no_selection_means_the_whole_layer(daemon):
    rgba, bgra = request(9, selection=False), request(9, "BGRA", selection=False)
    layer = np.frombuffer(bgra.layer, np.uint8).reshape(48, 64, 4)
    bgra.layer = np.ascontiguousarray(layer[..., [2, 1, 0, 3]]).tobytes()
    back = np.frombuffer(rgba.backdrop, np.uint8).reshape(48, 64, 3)
    bgra.backdrop = np.dstack([back[..., ::-1], np.zeros((48, 64), np.uint8)]).tobytes()
    rgba.layer = layer.tobytes()
    with S.open_session(client_module=CountingClients()) as session:
        plain = session.harmonize(rgba)
        krita = session.harmonize(bgra)
    assert krita.box == plain.box == S.Box(0, 0, 64, 48)  # all of the layer, opaque
    assert np.array_equal(pixels(krita)[..., [2, 1, 0, 3]], pixels(plain))


def test_a_result_in_another_order_than_asked_is_refused():
    req = request(11, "BGRA")

    class OldDaemon:
        DaemonError = real_client.DaemonError

        @staticmethod
        def harmonize_layer(*_a: Any, **_k: Any) -> Any:
            from layer_harmonizer.wire import protocol as P

            pix = P.Pixels(b"\0" * 4 * 64 * 48, (48, 64, 4), "uint8")  # no order: RGBA
            return types.SimpleNamespace(pixels=pix, offset=(0, 0), timings={}, job="j")

        def close(self) -> None:
            pass

    session = S.Session(None, client_module=OldDaemon, connect=lambda *_a: OldDaemon())
    with pytest.raises(S.PluginError, match=r"RGBA uint8 pixels .* expected BGRA"):
        session.harmonize(req)
    with pytest.raises(S.PluginError, match="the selection has 3 bytes"):
        session.harmonize(S.Request(b"\0" * 4, b"\0" * 3, b"\0" * 3, 1, 1, req.fmt))
