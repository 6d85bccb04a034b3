"""Streams handed to the process holding their call on the same machine
(ivr/calls/handover.py): the connection itself moves, so no process reads another's stream.

Three services share one data directory here, in one test process, each served as ``ivr
serve`` serves (ivr.serving, which is what adopts a handed-over connection). The simulator
sends each request of a call to the next of them in turn, as the kernel spreads the
connections of ``ivr serve --workers N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from ivr import serving
from ivr.calls.handover import HandoverListener, hand_over
from ivr.config import Limits, load_config
from ivr.harness import twilio_wire as wire
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.platforms.twilio.app import TWILIO
from ivr.service import VAULT, create_app
from tests.test_relay import CASE_IDS, CASES


@pytest.fixture
async def served_nodes(tmp_path, monkeypatch) -> AsyncIterator[list[tuple[object, str]]]:
    """Three services on one data directory, served by ivr.serving: [(app, base URL), ...]."""
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    config = load_config(None)
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for _ in range(3):
            app = create_app(config, tmp_path / "var", fsync=False)
            served = await serving.start(app, host="127.0.0.1", port=0, limits=Limits())
            stack.push_async_callback(served.stop)
            nodes.append((app, f"http://127.0.0.1:{served.port}"))
        yield nodes


def counters(nodes) -> Counter[str]:
    total: Counter[str] = Counter()
    for app, _ in nodes:
        total.update(app[TWILIO].counters)
    return total


@pytest.mark.parametrize(("to", "kw", "decision", "status"), CASES, ids=CASE_IDS)
async def test_every_consent_mode_with_streams_handed_over_not_relayed(
    served_nodes, to, kw, decision, status
):
    urls = tuple(url for _, url in served_nodes)
    result = await simulate_call(CallOptions(url=urls[0], to=to, fast=True, nodes=urls, **kw))
    assert result.error is None, result.transcript
    assert (result.decision, result.recording_status) == (decision, status)
    vault = served_nodes[0][0][VAULT]
    if status == "complete":
        assert result.status_response["frames_lost"] == 0
        row = vault.get(result.recording_id)
        with vault.open_reader(row.id) as reader:
            assert {frame.track for frame in reader.frames()} == (
                {0, 1} if len(row.tracks) == 2 else {0}
            )
    total = counters(served_nodes)
    # The voice webhook went to the first node, the consent stream to the second: it was
    # handed to the first, which took it; no stream was relayed message by message.
    assert total["streams_handed_over"] >= 1
    assert total["streams_taken_over"] == total["streams_handed_over"]
    assert total["streams_relayed"] == 0 and total["handovers_refused"] == 0
    assert vault.catalog.call_of("twilio", result.call_sid)["outcome"] == decision


async def test_a_stream_naming_no_process_here_is_served_where_it_lands(served_nodes):
    """A holder id that no process of this machine listens as (another node's, or malformed):
    the stream is served as before, here; an unknown call's token is refused (1008)."""
    _, url = served_nodes[0]

    for holder in ("0123456789abcdef", "..%2F..%2Fnot-a-writer-id"):
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(
                url.replace("http", "ws") + f"/twilio/stream/consent/{holder}"
            )
            await ws.send_bytes(wire.connected())
            sids = (wire.new_sid("MZ"), wire.new_sid("CA"), wire.new_sid("AC"))
            await ws.send_str(wire.start(*sids, ["inbound"], {"token": "not-a-token"}).decode())
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1008
            await ws.close()
    assert counters(served_nodes)["streams_handed_over"] == 0


async def test_the_listener_takes_only_one_tcp_socket_with_a_stream_request(tmp_path):
    """What another process of this user could send: no descriptor, two, one that is not a
    TCP socket, a head that is not a stream request. Each is refused, its descriptors closed;
    adopt is called only for the well-formed one."""
    adopted: list[bytes] = []

    async def adopt(sock: socket.socket, head: bytes) -> bool:
        adopted.append(head)
        sock.close()
        return True

    seen = Counter[str]()
    directory = tmp_path / "h"
    listener = HandoverListener("0123456789abcdef", adopt, seen, directory=directory)
    assert listener.start()
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    good = b"GET /twilio/stream/consent/0123456789abcdef HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_server(("127.0.0.1", 0)) as server:  # a connected TCP pair
        tcp_b = socket.create_connection(server.getsockname())
        tcp_a, _ = server.accept()
    read_end, write_end = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as out:
            out.connect(str(listener.path))
            out.send(good)  # no descriptor
            socket.send_fds(out, [good], [tcp_a.fileno(), tcp_a.fileno()])  # two
            socket.send_fds(out, [good], [read_end])  # not a socket
            socket.send_fds(out, [b"POST /twilio/voice HTTP/1.1\r\n\r\n"], [tcp_a.fileno()])
            socket.send_fds(out, [good], [tcp_a.fileno()])  # the one well-formed
        for _ in range(200):
            if adopted:
                break
            await asyncio.sleep(0.01)
        assert adopted == [good]
        assert seen == Counter(handovers_refused=4, streams_taken_over=1)
    finally:
        listener.close()
        for s in (tcp_a, tcp_b):
            s.close()
        os.close(read_end)
        os.close(write_end)
    assert not listener.path.exists()


async def test_no_listener_in_a_directory_others_can_use(tmp_path: Path):
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    listener = HandoverListener("0123456789abcdef", None, Counter(), directory=directory)  # type: ignore[arg-type]
    assert listener.start() is False


def test_a_bad_holder_id_is_never_a_path(tmp_path: Path):
    class Request:  # only what hand_over reads before it gives up
        transport = None

    for holder in ("..", "0123456789ABCDEF", "0123456789abcde", "a/b"):
        assert hand_over(Request(), holder, tmp_path) is False  # type: ignore[arg-type]
