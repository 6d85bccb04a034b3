"""SIP calls for the real-Asterisk tests: sipp speaks SIP, the test speaks RTP and decides.

Each call is one sipp process running a scenario generated here, so that everything the SIP
side does is real sipp on the wire: INVITE/ACK/BYE, keys as SIP INFO (``application/dtmf-relay``),
and a BYE answered when Asterisk hangs up. The media and the timing stay in the test process:

* The scenario's SDP points at a UDP socket of the test's (``RtpPeer``), which sends a
  recognisable signal (every 20 ms frame a distinct pseudo-random μ-law pattern derived from a
  seed, so each frame can be found bit-exact in a recording), sends keys as RFC 4733 events,
  and keeps every packet Asterisk sends (the prompts) with its arrival time.
* sipp reports the answer and the far end's RTP address (``<exec>`` to a control socket), and
  when the call ends, who hung up.
* The test tells sipp what to do next with a request on the call's own Call-ID, which sipp's
  scenario waits for: ``OPTIONS`` with ``Signal=d`` sends that key as SIP INFO, ``NOTIFY``
  hangs up. Keys are thus pressed after an observed event (say, one second of prompt heard),
  never after a guessed delay, and the tests stay right under CPU load.

The agent side (``SipAgent``) is the same in reverse: a sipp UAS that answers the service's
``forward_to`` INVITE with SDP pointing at its own ``RtpPeer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import struct
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FRAME_MS = 20
FRAME_BYTES = 160
PT_PCMU, PT_EVENT = 0, 101
SILENCE = b"\xff" * FRAME_BYTES
EVENT_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14}
EVENT_CODES["D"] = 15


def sipp_binary() -> str:
    found = shutil.which("sipp")
    if found is None:
        raise RuntimeError("sipp not found: tests/asterisk/build.sh installs it (sip-tester)")
    return found


def _ulaw_magnitude(code: int) -> int:
    """|sample| of a μ-law code (G.711: sign, 3-bit exponent, 4-bit mantissa, inverted)."""
    code = ~code & 0xFF
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    return (((mantissa << 3) + 0x84) << exponent) - 0x84


# Codes of speech-like loudness (|sample| <= 4000 of 32767). A mixing bridge adds everyone's
# audio and then takes each listener's own back out; full-scale noise would clip in that sum
# and come back changed, where speech levels never do. 0x7F is μ-law's negative zero, which any
# decode/encode step turns into 0xFF, so it is left out too.
PATTERN_CODES = bytes(c for c in range(256) if _ulaw_magnitude(c) <= 4000 and c != 0x7F)


def pattern_frame(seed: str, index: int) -> bytes:
    """Frame ``index`` of a party's signal: 160 pseudo-random μ-law bytes from PATTERN_CODES,
    so that every frame is unique and survives G.711 → linear → G.711 unchanged: a frame that
    went through Asterisk can be compared byte for byte."""
    out = bytearray()
    counter = 0
    while len(out) < FRAME_BYTES:
        block = hashlib.sha256(f"{seed}/{index}/{counter}".encode()).digest()
        out.extend(PATTERN_CODES[b % len(PATTERN_CODES)] for b in block)
        counter += 1
    return bytes(out[:FRAME_BYTES])


def is_silence(payload: bytes) -> bool:
    return not payload.strip(b"\xff\x7f")


@dataclass
class Received:
    at: float  # time.monotonic()
    wall: float  # time.time(), to compare with sipp's log
    seq: int
    timestamp: int
    pt: int
    payload: bytes


@dataclass
class Sent:
    at: float
    index: int  # pattern frame index, or -1 for silence
    payload: bytes
    on_time: bool = True  # sent within LATE_SEND of its 20 ms slot


# A frame the test process sent this much after its slot (the process was starved of CPU) is
# one a real phone would not have sent late; a mixing bridge, which keeps no jitter buffer, may
# drop such a burst, so the checks of mixed audio do not require it.
LATE_SEND = 0.06


class RtpPeer(asyncio.DatagramProtocol):
    """One side's RTP: a paced signal out, everything in kept with its arrival time."""

    def __init__(self, seed: str) -> None:
        self.seed = seed
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.received: list[Received] = []
        self.keys: list[tuple[float, float]] = []  # RFC 4733 keys sent: (start, end) times
        self.voiced = 0  # received audio packets that are not silence
        self.sent: list[Sent] = []
        self.talking = True  # send the pattern; False sends silence
        self._ssrc = int.from_bytes(os.urandom(4), "big")
        self._seq = int.from_bytes(os.urandom(2), "big")
        self._ts = int.from_bytes(os.urandom(4), "big")
        self._index = 0
        self._task: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._watchers: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        pt = data[1] & 0x7F
        seq, ts = struct.unpack("!HI", data[2:8])
        cc = data[0] & 0x0F
        if pt == PT_PCMU and not is_silence(data[12 + 4 * cc :]):
            self.voiced += 1
        self.received.append(
            Received(time.monotonic(), time.time(), seq, ts, pt, data[12 + 4 * cc :])
        )
        self._check_watchers()

    def _check_watchers(self) -> None:
        for item in list(self._watchers):
            predicate, future = item
            if not future.done() and predicate():
                future.set_result(None)
                self._watchers.remove(item)

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.append((predicate, future))
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None

    # -- what was heard ---------------------------------------------------------------------------
    def audio_heard_ms(self) -> int:
        return FRAME_MS * self.voiced

    async def heard(self, ms: int, timeout: float = 30.0) -> None:
        """Wait until ``ms`` of non-silent audio has arrived (e.g. a prompt playing)."""
        await self.until(lambda: self.audio_heard_ms() >= ms, f"{ms} ms of audio heard", timeout)

    # -- sending ----------------------------------------------------------------------------------
    def start(self, remote: tuple[str, int]) -> None:
        self.remote = remote
        if self._task is None:
            self._task = asyncio.create_task(self._send_loop())

    def _packet(
        self, pt: int, payload: bytes, *, marker: bool = False, ts: int | None = None
    ) -> bytes:
        self._seq = (self._seq + 1) & 0xFFFF
        head = struct.pack(
            "!BBHII",
            0x80,
            (0x80 if marker else 0) | pt,
            self._seq,
            (self._ts if ts is None else ts) & 0xFFFFFFFF,
            self._ssrc,
        )
        return head + payload

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        first = True
        while True:
            n += 1
            digit = None
            with contextlib.suppress(asyncio.QueueEmpty):
                digit = self._events.get_nowait()
            if digit is not None:
                n = await self._send_event(digit, start, n)
                first = True
                continue
            if self.talking:
                payload = pattern_frame(self.seed, self._index)
                index = self._index
                self._index += 1
            else:
                payload, index = SILENCE, -1
            assert self.transport is not None and self.remote is not None
            self.transport.sendto(self._packet(PT_PCMU, payload, marker=first), self.remote)
            late = loop.time() - (start + (n - 1) * FRAME_MS / 1000) > LATE_SEND
            self.sent.append(Sent(time.monotonic(), index, payload, on_time=not late))
            self._check_watchers()
            first = False
            self._ts += FRAME_BYTES
            await asyncio.sleep(max(0.0, start + n * FRAME_MS / 1000 - loop.time()))

    async def _send_event(self, digit: str, start: float, n: int) -> int:
        """An RFC 4733 key: 5 packets over 100 ms, then the end packet three times, all with
        the event's start timestamp (as a phone sends it); audio pauses meanwhile."""
        loop = asyncio.get_running_loop()
        code = EVENT_CODES[digit]
        event_ts = self._ts
        began = time.monotonic()
        assert self.transport is not None and self.remote is not None
        for i in range(8):
            end = i >= 5
            duration = min(i + 1, 5) * FRAME_BYTES
            payload = struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)
            self.transport.sendto(
                self._packet(PT_EVENT, payload, marker=i == 0, ts=event_ts), self.remote
            )
            if i < 5 or i == 7:
                self._ts += FRAME_BYTES if i < 5 else 0
                await asyncio.sleep(max(0.0, start + n * FRAME_MS / 1000 - loop.time()))
                n += 1
        self.keys.append((began, time.monotonic()))
        return n

    def stop(self) -> None:
        """Stop sending, as a phone does once its call is over: a stream left running would
        reach whichever channel Asterisk gives that RTP port next."""
        if self._task is not None:
            self._task.cancel()

    def press(self, digit: str) -> None:
        """Send ``digit`` as RFC 4733 events in place of the next audio frames."""
        self._events.put_nowait(digit)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.transport is not None:
            self.transport.close()


class Control(asyncio.DatagramProtocol):
    """Where sipp's ``<exec>`` lines report: ``SDP addr port``, ``END remote|local``."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.messages: asyncio.Queue[list[str]] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.messages.put_nowait(data.decode(errors="replace").split())

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


def _report(ctl_port: int, words: str) -> str:
    """An sipp <exec> that sends ``words`` (sipp keywords expanded) to the control socket."""
    return f"<exec command=\"bash -c 'echo {words} > /dev/udp/127.0.0.1/{ctl_port}'\"/>"


SDP = """v=0
o=- 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio {rtp_port} RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
"""

# After the answer, the call waits in one place for whichever comes first: the far end's BYE,
# the test's OPTIONS (send the key in its body as SIP INFO) or the test's NOTIFY (hang up). The
# 200 to an INFO is taken there too (and after our BYE), whenever it comes: a busy PBX may answer
# it after the test has moved on. Transactions keep the INFO's 200 apart from the BYE's.
WAIT_LOOP = """
  <label id="wait"/>
  <recv response="200" optional="true" response_txn="info" next="wait"/>
  <recv request="BYE" optional="true" next="remote_bye"/>
  <recv request="OPTIONS" optional="true" next="info">
    <action>
      <ereg regexp="Signal=([0-9*#A-D])" search_in="msg" check_it="true" assign_to="all,digit"/>
    </action>
  </recv>
  <recv request="NOTIFY" next="local_bye"/>

  <label id="info"/>
  <send start_txn="info" next="wait">
    <![CDATA[
      INFO [next_url] SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
      [routes]
      From: {from_}
      To: {to}
      Call-ID: [call_id]
      CSeq: [cseq] INFO
      Contact: <sip:{user}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/dtmf-relay
      Content-Length: [len]

      Signal=[$digit]
      Duration=160
    ]]>
  </send>

  <label id="local_bye"/>
  <send start_txn="bye">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
      [routes]
      From: {from_}
      To: {to}
      Call-ID: [call_id]
      CSeq: [cseq] BYE
      Contact: <sip:{user}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <label id="bye_sent"/>
  <recv response="200" optional="true" response_txn="info" next="bye_sent"/>
  <recv response="200" response_txn="bye" next="end"/>

  <label id="remote_bye"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
  <label id="end"/>
"""

ANSWER_EREG = """
      <ereg regexp="c=IN IP4 ([0-9.]+)" search_in="body" check_it="true" assign_to="c1,raddr"/>
      <ereg regexp="m=audio ([0-9]+)" search_in="body" check_it="true" assign_to="m1,rport"/>
"""


def caller_scenario(*, call_id: str, caller: str, number: str, rtp_port: int, ctl_port: int) -> str:
    sdp = SDP.format(rtp_port=rtp_port).replace("\n", "\n      ")
    from_ = f"<sip:{caller}@[local_ip]:[local_port]>;tag=[pid]c"
    to = f"<sip:{number}@[remote_ip]:[remote_port]>[peer_tag_param]"
    loop = WAIT_LOOP.format(
        from_=from_,
        to=to,
        user=caller,
    )
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="ivr test caller">
  <send retrans="500" start_txn="invite">
    <![CDATA[
      INVITE sip:{number}@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
      From: {from_}
      To: <sip:{number}@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      {sdp}
    ]]>
  </send>
  <recv response="100" optional="true" response_txn="invite"/>
  <recv response="180" optional="true" response_txn="invite"/>
  <recv response="183" optional="true" response_txn="invite"/>
  <recv response="200" rrs="true" response_txn="invite">
    <action>{ANSWER_EREG}
      {_report(ctl_port, "SDP [$raddr] [$rport] [local_port]")}
    </action>
  </recv>
  <send ack_txn="invite">
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/UDP [local_ip]:[local_port];branch=[branch]
      [routes]
      From: {from_}
      To: {to}
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:{caller}@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
{loop}
  <Reference variables="all,c1,m1"/>
</scenario>
"""


def agent_scenario(*, rtp_port: int, ctl_port: int) -> str:
    sdp = SDP.format(rtp_port=rtp_port).replace("\n", "\n      ")
    from_ = "[$remote_from]"
    to = "[$local_to]"
    loop = WAIT_LOOP.format(
        from_=to,
        to=from_,
        user="agent",
    )
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="ivr test agent">
  <recv request="INVITE" rrs="true">
    <action>{ANSWER_EREG}
      <ereg regexp="[^ ].*" search_in="hdr" header="From:" check_it="true" assign_to="remote_from"/>
      <ereg regexp="[^ ].*" search_in="hdr" header="To:" check_it="true" assign_to="remote_to"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]a
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:agent@[local_ip]:[local_port]>
      Content-Length: 0
    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]a
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:agent@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      {sdp}
    ]]>
  </send>
  <recv request="ACK">
    <action>
      <assignstr assign_to="local_to" value="[$remote_to];tag=[pid]a"/>
      {_report(ctl_port, "SDP [$raddr] [$rport]")}
    </action>
  </recv>
{loop}
  <Reference variables="all,c1,m1"/>
</scenario>
"""


@dataclass
class SippRun:
    """One sipp process and the files it leaves (for a failing test's message)."""

    workdir: Path
    process: asyncio.subprocess.Process | None = None
    returncode: int | None = None

    def log(self) -> str:
        parts = []
        for name in ("errors.log", "screen.log", "messages.log", "stdout.log"):
            path = self.workdir / name
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")
                if text.strip():
                    parts.append(f"--- {name}\n{text[-6000:]}")
        return "\n".join(parts)

    def bye_direction(self) -> str | None:
        """From sipp's message log: "local" if it sent the BYE, "remote" if it received it."""
        with contextlib.suppress(OSError):
            text = (self.workdir / "messages.log").read_text(errors="replace")
            m = re.search(r"^UDP message (sent|received).*\n\s*BYE ", text, re.M)
            if m:
                return "local" if m.group(1) == "sent" else "remote"
        return None

    def invite_sent_at(self) -> float | None:
        """The INVITE's send time from sipp's message log, as a Unix time."""
        with contextlib.suppress(OSError):
            text = (self.workdir / "messages.log").read_text(errors="replace")
            m = re.search(
                r"^-+ (\d{4}-\d\d-\d\d\s+\d\d:\d\d:\d\d(?:[.:]\d+)?)\s*\n"
                r"\s*UDP message sent.*?\n\s*INVITE ",
                text,
                re.M,
            )
            if m:
                return _parse_sipp_time(m.group(1))
        return None


def _parse_sipp_time(text: str) -> float:
    from datetime import datetime

    date, clock = text.split()
    if clock.count(":") == 3:  # HH:MM:SS:micro
        hms, micro = clock.rsplit(":", 1)
    else:
        hms, _, micro = clock.partition(".")
    stamp = datetime.strptime(f"{date} {hms}", "%Y-%m-%d %H:%M:%S")
    return stamp.timestamp() + int(micro or 0) / 10 ** len(micro or "0")


async def _start_sipp(
    workdir: Path,
    scenario: str,
    sip_port: int | None,
    target: str | None,
    extra: list[str],
    calls: int | None = 1,
) -> SippRun:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "scenario.xml").write_text(scenario)
    args = [
        sipp_binary(),
        *([target] if target else []),
        "-sf",
        str(workdir / "scenario.xml"),
        "-i",
        "127.0.0.1",
        *(["-p", str(sip_port)] if sip_port else []),
        *(["-m", str(calls)] if calls else []),
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(workdir / "errors.log"),
        "-trace_msg",
        "-message_file",
        str(workdir / "messages.log"),
        "-timeout",
        "300s",
        "-timeout_error",
        "-trace_screen",
        "-screen_file",
        str(workdir / "screen.log"),
        *extra,
    ]
    out = open(workdir / "stdout.log", "wb")  # noqa: SIM115 - handed to the process
    try:
        process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, cwd=workdir
        )
    finally:
        out.close()
    return SippRun(workdir, process)


def _trigger(method: str, call_id: str, sip_port: int, body: str = "") -> bytes:
    """A request sipp's scenario matches by Call-ID: the test's way to say "now"."""
    return (
        f"{method} sip:test@127.0.0.1:{sip_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{uuid.uuid4().hex}\r\n"
        "From: <sip:test@127.0.0.1>;tag=t\r\nTo: <sip:test@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


class _Party:
    """What caller and agent share: sipp, an RTP peer, the control socket, triggers."""

    def __init__(self, seed: str, workdir: Path) -> None:
        self.seed = seed
        self.workdir = workdir
        self.rtp = RtpPeer(seed)
        self.control = Control()
        self.sip_port = 0
        self.call_id = ""
        self.run: SippRun | None = None
        self.answered_at: float | None = None
        self.ended_by: str | None = None  # "remote" (BYE from Asterisk) or "local"
        self._trigger_sock: asyncio.DatagramTransport | None = None
        self._watch: asyncio.Task[None] | None = None
        self.answered = asyncio.Event()
        self.answers = 0
        self.sends_audio = True

    async def _open_sockets(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self.rtp, local_addr=("127.0.0.1", 0))
        await loop.create_datagram_endpoint(lambda: self.control, local_addr=("127.0.0.1", 0))
        self._trigger_sock, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )

    async def _watch_control(self) -> None:
        while True:
            words = await self.control.messages.get()
            if words[:1] == ["SDP"] and len(words) >= 3 and words[2].isdigit():
                if len(words) == 4 and words[3].isdigit():
                    self.sip_port = int(words[3])  # a caller's sipp picked its own port
                self.answered_at = time.monotonic()
                self.answers += 1
                if self.sends_audio:
                    self.rtp.start((words[1], int(words[2])))
                self.answered.set()

    def _send_trigger(self, method: str, body: str = "") -> None:
        assert self._trigger_sock is not None
        # A caller's sipp port is known only from its answer report: a trigger sent before it
        # would go to port 0 and be lost without a word.
        assert self.sip_port, f"{self.seed}: a trigger before sipp reported its port (answer)"
        self._trigger_sock.sendto(
            _trigger(method, self.call_id, self.sip_port, body), ("127.0.0.1", self.sip_port)
        )

    def press_info(self, digit: str) -> None:
        """The key as SIP INFO, sent by sipp."""
        self._send_trigger("OPTIONS", f"Signal={digit}\r\n")

    def press_rfc4733(self, digit: str) -> None:
        """The key as RFC 4733 events on the RTP stream."""
        self.rtp.press(digit)

    def hang_up(self) -> None:
        self.rtp.stop()
        self._send_trigger("NOTIFY")

    async def wait_answered(self, timeout: float = 30.0) -> None:
        await self._wait(self.answered, "the answer", timeout)

    async def wait_ended(self, timeout: float = 60.0) -> str:
        """Wait for sipp to finish the call; who hung up: "local" (our BYE) or "remote"."""
        assert self.run is not None and self.run.process is not None
        try:
            async with asyncio.timeout(timeout):
                self.run.returncode = await self.run.process.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.seed}: the call did not end in {timeout} s:\n{self.run.log()}"
            ) from None
        self.rtp.stop()
        assert self.run.returncode == 0, f"sipp failed ({self.run.returncode}):\n{self.run.log()}"
        self.ended_by = self.run.bye_direction()
        assert self.ended_by is not None, f"{self.seed}: no BYE in sipp's log:\n{self.run.log()}"
        return self.ended_by

    async def _wait(self, event: asyncio.Event, what: str, timeout: float) -> None:
        waiter = asyncio.create_task(event.wait())
        assert self.run is not None and self.run.process is not None
        died = asyncio.create_task(self.run.process.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, died}, timeout=timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            waiter.cancel()
            if not died.done():
                died.cancel()
        if event.is_set():
            return
        where = (
            f"sipp exited with {self.run.process.returncode}"
            if died in done
            else f"{timeout} s passed"
        )
        raise AssertionError(f"{self.seed}: no {what} ({where}):\n{self.run.log()}")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if (
            self.run is not None
            and self.run.process is not None
            and self.run.process.returncode is None
        ):
            with contextlib.suppress(ProcessLookupError):
                self.run.process.kill()
            await self.run.process.wait()
        await self.rtp.close()
        for transport in (self.control.transport, self._trigger_sock):
            if transport is not None:
                transport.close()


class SipCaller(_Party):
    """A caller: dials ``number`` at Asterisk's SIP port from ``caller``."""

    def __init__(self, seed: str, workdir: Path, *, number: str, caller: str) -> None:
        super().__init__(seed, workdir)
        self.number = number
        self.caller = caller

    async def dial(self, asterisk_sip: int) -> None:
        """Call; sipp takes a free port of the system's choosing (and reports it with the
        answer), so parallel callers never race for one."""
        await self._open_sockets()
        self.call_id = f"ivrtest-{uuid.uuid4().hex}"
        self._watch = asyncio.create_task(self._watch_control())
        scenario = caller_scenario(
            call_id=self.call_id,
            caller=self.caller,
            number=self.number,
            rtp_port=self.rtp.port,
            ctl_port=self.control.port,
        )
        # sipp maps messages to calls by the Call-ID it generated: name it, so that the test's
        # triggers carry the same one (call number 1 of 1).
        cid = self.call_id.replace("%", "")
        self.call_id = f"{cid}-1"
        self.run = await _start_sipp(
            self.workdir,
            scenario,
            None,
            f"127.0.0.1:{asterisk_sip}",
            ["-cid_str", f"{cid}-%u"],
        )


class SipAgent(_Party):
    """An agent: answers the service's ``forward_to`` INVITEs on ``sip_port``.

    ``calls=1`` answers one call, with the pattern signal on its own RTP; ``calls=None`` is a
    pool that answers every INVITE until closed and sends no audio (for tests that only need
    the agent leg to be picked up)."""

    def __init__(self, seed: str, workdir: Path, *, calls: int | None = 1) -> None:
        super().__init__(seed, workdir)
        self.calls = calls
        self.sends_audio = calls == 1

    async def listen(self, sip_port: int) -> None:
        await self._open_sockets()
        self.sip_port = sip_port
        self._watch = asyncio.create_task(self._watch_control())
        scenario = agent_scenario(rtp_port=self.rtp.port, ctl_port=self.control.port)
        self.run = await _start_sipp(self.workdir, scenario, sip_port, None, [], self.calls)

    async def wait_answered(self, timeout: float = 30.0) -> None:
        await super().wait_answered(timeout)
        # The agent's Call-ID is Asterisk's: read it from sipp's message log for triggers.
        assert self.run is not None
        text = (self.run.workdir / "messages.log").read_text(errors="replace")
        m = re.search(r"^\s*Call-ID:\s*(\S+)", text, re.M | re.I)
        assert m, text
        self.call_id = m.group(1)


def new_workdir(root: Path, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
