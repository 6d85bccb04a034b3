"""Calls over Asterisk end to end: the service's ARI application against the fake Asterisk."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from ivr.calls import CallSession
from ivr.config import load_config
from ivr.harness.fake_asterisk import FakeAsterisk, FakeCall, build_rtp
from ivr.platforms.asterisk.call import AriCall
from ivr.service import ARI, VAULT, create_app
from storage.catalog import RecordingRow, RecordingStatus

CONSENT_LINE = "+15550100001"
OBJECTION_LINE = "+15550100002"
NOTICE_LINE = "+15550100003"
EMERGENCY_LINE = "+15550100004"
MESSAGE_LINE = "+15550100005"
CALLER = "+46701234567"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"ivr:pw").decode()}
DEMO = Path(__file__).parent.parent / "ivr" / "demo.toml"


def config_file(tmp_path: Path, url: str, ports: str = "42000-42199") -> Path:
    path = tmp_path / "ivr.toml"
    path.write_text(
        f'[asterisk]\nurl = "{url}"\nusername = "ivr"\napp = "ivr"\nrtp_ports = "{ports}"\n'
        + DEMO.read_text()
    )
    return path


def still_clock() -> Callable[[], datetime]:
    """The service's wall clock, held still. The fake sends RTP only when a test says so, so
    media time is the test's own virtual time; a wall clock that ran on would overtake it
    whenever the test runs slower than real time (a busy machine) and move prompts and deadlines
    by itself (call time is the later of the two)."""
    moment = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    return lambda: moment


@pytest.fixture
async def pbx(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    fake = FakeAsterisk(app="ivr", username="ivr", password="pw")
    await fake.start()
    config = load_config(config_file(tmp_path, fake.url), {"ARI_PASSWORD": "pw"})
    app = create_app(config, tmp_path / "var", fsync=False, clock=still_clock())
    server = TestServer(app)
    await server.start_server()
    await fake.wait_connected()
    try:
        yield fake, app
    finally:
        await server.close()
        await fake.stop()


async def until(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Call:
    """The fake's call plus a view of what the service made of it."""

    def __init__(self, app, fake_call: FakeCall) -> None:
        self.app = app
        self.fake = fake_call
        self.session: CallSession | None = None

    @property
    def ari(self) -> AriCall | None:
        return self.app[ARI].calls.get(self.fake.channel_id)

    async def ready(self) -> Call:
        await self.fake.wait_until_bridged()
        await until(lambda: self.ari and self.ari.session, "the call's session")
        self.session = self.ari.session
        return self

    async def talk(self, seconds: float, **faults) -> None:
        """Send this much caller audio and wait until the service has taken it in."""
        target = self.session.now + seconds
        frames = round(seconds * 50)
        if faults:
            await self.fake.send_audio(frames, **faults)
        else:  # in bursts a UDP socket buffer holds: real Asterisk paces at 20 ms anyway
            for start in range(0, frames, 100):
                step = min(100, frames - start)
                goal = self.session.now + step / 50
                await self.fake.send_audio(step)
                await until(
                    lambda g=goal: self.session.now >= g - 0.1 or self.session.ended, "media"
                )
        await until(lambda: self.session.now >= target - 0.1 or self.session.ended, "media")

    async def press(self, digit: str) -> None:
        """Press a key and wait until the service has acted on it in full: the decision taken
        and the answer it plays (every key pressed here is answered with a prompt) started.
        Only then may the test send more audio: media sent earlier would be call time the
        answer prompt never saw."""
        ari = self.ari
        assert ari is not None
        before = ari.rtp.playback.play_id if ari.rtp.playback else None
        await self.fake.press(digit)
        await until(
            lambda: ari.rtp.playback is not None and ari.rtp.playback.play_id != before,
            f"key {digit} to take effect",
        )

    async def hang_up(self, **kw) -> RecordingRow | None:
        await self.fake.hangup(**kw)
        await until(lambda: self.fake.channel_id not in self.app[ARI].calls, "the call to end")
        return self.session.row


async def place(fake, app, exten: str, **kw) -> Call:
    return await Call(app, await fake.place_call(exten, CALLER, **kw)).ready()


# -- each consent mode ----------------------------------------------------------------------------
async def test_opt_in_accept_connects_the_agent_and_records_the_mix(pbx):
    fake, app = pbx
    call = await place(fake, app, CONSENT_LINE)
    await call.talk(1.0)
    await call.press("1")  # during the prompt: barge-in
    assert call.session.decision.value == "accepted"
    await call.talk(3.0)  # "recording started" plays, then the agent is originated
    await until(lambda: call.fake.agent is not None and call.fake.agent.bridge_id, "agent")
    await call.talk(2.0)
    row = await call.hang_up()
    assert row.status is RecordingStatus.COMPLETE and row.tracks == ("mixed",)
    assert 4800 <= row.duration_ms <= 5300
    ev = row.consent_evidence
    assert ev["key_pressed"] == "1" and ev["prompt_played_in_full"] is False
    # The caller heard 1 s of the question and the 2 s confirmation, nothing more.
    heard = len(call.fake.prompt_audio()) / 8000
    assert 2.9 <= heard <= 3.2
    # Everything the service did was a well-formed ARI request, and it cleaned up after itself.
    assert fake.rejected == 0, [r for r in fake.requests if r.status >= 400]
    paths = [(r.method, r.path) for r in fake.requests]
    assert ("POST", "/ari/channels/externalMedia") in paths
    assert not fake.bridges or all(b.destroyed for b in fake.bridges.values())
    assert call.session.stats.frames_lost == 0
    # The PBX is told the outcome, for its dialplan and CDRs.
    variables = fake.channels[call.fake.channel_id].vars
    assert (
        variables["IVR_CONSENT_DECISION"] == "accepted" and variables["IVR_RECORDING_ID"] == row.id
    )


async def test_opt_in_decline_and_silence_record_nothing(pbx):
    fake, app = pbx
    declined = await place(fake, app, CONSENT_LINE)
    # The question's length is its line's words spoken (docs/prompts.md), not a constant.
    question = declined.session.prompts["consent_request"].duration_ms / 1000
    await declined.talk(question + 0.5)  # the whole question
    await declined.press("9")
    assert declined.session.decision.value == "declined"
    silent = await place(fake, app, CONSENT_LINE)
    await silent.talk(question + 8.5)  # question, then the 8 s timeout
    await until(lambda: silent.session.decision is not None, "the timeout")
    assert silent.session.decision.value == "no_response"
    for call in (declined, silent):
        await call.talk(3.0)
        assert await call.hang_up() is None
    assert app[VAULT].list() == []


async def test_opt_out_objection_and_notice_and_emergency(pbx):
    fake, app = pbx
    objector = await place(fake, app, OBJECTION_LINE)
    await objector.talk(2.0)
    await objector.press("9")
    notice = await place(fake, app, NOTICE_LINE)
    await notice.talk(notice.session.prompts["notice_only"].duration_ms / 1000 + 1.0)
    emergency = await place(fake, app, EMERGENCY_LINE)
    await emergency.talk(2.0)
    assert objector.session.decision.value == "objected"
    assert notice.session.decision.value == "notified" and notice.session.flow.recording
    assert emergency.session.decision.value == "not_asked"
    rows = [await c.hang_up() for c in (objector, notice, emergency)]
    assert rows[0] is None
    assert rows[1].lawful_basis == "contract" and rows[1].status is RecordingStatus.COMPLETE
    assert rows[2].lawful_basis == "vital_interests" and rows[2].duration_ms >= 1900


async def test_withdrawal_mid_call_discards(pbx):
    fake, app = pbx
    call = await place(fake, app, CONSENT_LINE)
    await call.talk(0.5)
    await call.press("1")
    await call.talk(5.0)  # confirmation played, agent connected: on Asterisk keys still arrive
    await call.press("*")
    assert call.session.flow.evidence()["withdrawn_at"] is not None
    await call.talk(1.0)
    row = await call.hang_up()
    assert row.status is RecordingStatus.DISCARDED and row.wrapped_dek is None


async def test_message_line_records_until_the_caller_hangs_up(pbx):
    fake, app = pbx
    call = await place(fake, app, MESSAGE_LINE)
    await call.talk(1.0)
    await call.press("1")
    await call.talk(6.0)
    row = await call.hang_up()
    assert row.status is RecordingStatus.COMPLETE and 5800 <= row.duration_ms <= 6200
    assert call.fake.agent is None  # nowhere to forward to


async def test_rfc4733_digits_count_once(pbx):
    fake, app = pbx
    call = await place(fake, app, CONSENT_LINE)
    await call.talk(0.5)
    await call.fake.also_send_dtmf_rtp("1")
    await call.fake.press("1")  # the same key, also as an ARI event
    await until(lambda: call.session.decision is not None, "the key")
    await call.talk(1.0)
    assert call.session.decision.value == "accepted"
    keys = [p for p in call.session.flow.evidence()["prompts_played"]]
    assert [p["prompt_id"] for p in keys] == ["consent_request", "recording_started"]
    await call.hang_up()


# -- hang-ups, RTP hygiene, two calls -------------------------------------------------------------
async def test_hang_up_during_the_prompt_releases_everything(pbx):
    fake, app = pbx
    call = await place(fake, app, CONSENT_LINE)
    port, media_id, bridge_id = call.ari.rtp.port, call.ari.media_id, call.ari.bridge_id
    await call.talk(2.0)
    assert await call.hang_up() is None
    assert call.session.decision.value == "hung_up"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))  # the UDP port was released
    await until(lambda: fake.channels[media_id].destroyed, "the media channel to go")
    assert bridge_id not in fake.bridges or fake.bridges[bridge_id].destroyed


@pytest.mark.parametrize(
    "order",
    [
        ("ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"),
        ("ChannelDestroyed", "StasisEnd", "ChannelHangupRequest"),
        ("StasisEnd",),
    ],
)
async def test_any_hang_up_order_finalises_exactly_once(pbx, order):
    fake, app = pbx
    call = await place(fake, app, EMERGENCY_LINE)
    await call.talk(1.0)
    row = await call.hang_up(order=order, duplicate=True)
    assert row.status is RecordingStatus.COMPLETE
    await asyncio.sleep(0.05)
    assert app[ARI].counters["calls_completed"] == 1
    assert len(app[VAULT].list()) == 1


async def test_lost_duplicated_and_reordered_rtp(pbx, caplog):
    caplog.set_level(logging.INFO)
    fake, app = pbx
    call = await place(fake, app, EMERGENCY_LINE)
    await call.talk(1.0, drop={10, 11, 30}, duplicate={20, 21}, reorder=[(40, 41), (45, 47)])
    await call.talk(0.2)
    stats = call.ari.rtp.jitter.stats
    assert stats.lost == 3 and stats.duplicates == 2
    row = await call.hang_up()
    # Losses are filled with silence, so the timeline keeps its length.
    assert 1150 <= row.duration_ms <= 1250
    assert call.session.stats.frames_stored == 60
    assert any("silence filled for lost RTP at 200+40 ms" in r.getMessage() for r in caplog.records)


async def test_rtp_from_strangers_and_garbage_is_dropped(pbx):
    fake, app = pbx
    call = await place(fake, app, EMERGENCY_LINE)
    await call.talk(0.5)
    await call.fake.inject_rtp(build_rtp(0, 1, 1, 99, b"\x00" * 160), from_stranger=True)
    await call.fake.inject_rtp(b"\x01\x02garbage")
    await until(lambda: call.ari.rtp.strangers == 1 and call.ari.rtp.malformed == 1, "the drops")
    await call.talk(0.5)
    row = await call.hang_up()
    assert row.status is RecordingStatus.COMPLETE and call.session.stats.frames_stored == 50


async def test_two_calls_are_kept_apart(pbx):
    fake, app = pbx
    a = await place(fake, app, EMERGENCY_LINE)
    b = await place(fake, app, EMERGENCY_LINE)
    assert a.ari.rtp.port != b.ari.rtp.port
    await a.talk(1.0)
    await b.talk(2.0)
    await a.fake.press("1")  # ignored on this line, and only seen by a
    await until(lambda: a.session.flow.ignored_events == 1, "the key")
    assert b.session.flow.ignored_events == 0
    rows = [await a.hang_up(), await b.hang_up()]
    assert rows[0].id != rows[1].id and rows[0].call_id != rows[1].call_id
    assert 900 <= rows[0].duration_ms <= 1100 and 1900 <= rows[1].duration_ms <= 2100


# -- Asterisk going away, and Asterisk saying no --------------------------------------------------
async def test_events_socket_dropped_and_restored_mid_call(pbx, monkeypatch):
    fake, app = pbx
    monkeypatch.setattr("ivr.platforms.asterisk.app.BACKOFF_START", 0.01)
    call = await place(fake, app, EMERGENCY_LINE)
    gone = await place(fake, app, EMERGENCY_LINE)
    await call.talk(1.0)
    await gone.talk(1.0)
    connections = app[ARI].connections
    fake.refuse_connections(True)
    await fake.drop_events_socket()
    await gone.fake.hangup()  # while we cannot hear it
    await call.talk(1.0)  # RTP still flows; the call goes on
    fake.refuse_connections(False)
    await until(lambda: app[ARI].connections > connections and app[ARI].connected, "reconnect")
    await until(lambda: gone.fake.channel_id not in app[ARI].calls, "the missed hang-up")
    assert gone.session.row.status is RecordingStatus.COMPLETE
    await call.talk(1.0)
    row = await call.hang_up()  # events flow again
    assert row.status is RecordingStatus.COMPLETE and row.duration_ms >= 2900


def call_row(app, channel_id: str):
    rows = [
        r
        for r in app[VAULT].catalog.query("SELECT * FROM calls")
        if r["platform_call_id"] == channel_id
    ]
    assert len(rows) == 1, rows
    return rows[0]


async def test_a_failed_set_up_hands_the_caller_back_and_says_why(pbx, caplog):
    fake, app = pbx
    caplog.set_level(logging.ERROR)
    fake.fail_next("POST", r"/channels/externalMedia", 500)
    broken = await fake.place_call(EMERGENCY_LINE, CALLER)
    await until(
        lambda: (
            app[ARI].counters.get("calls_setup_failed") and broken.channel_id not in app[ARI].calls
        ),
        "the set-up to fail",
    )
    caller = fake.channels[broken.channel_id]
    # Back in the dialplan after Stasis(), with IVR_ERROR for it to act on; not hung up by us
    # and not left in the app in silence.
    assert caller.vars["IVR_ERROR"] == "setup_failed" and not caller.destroyed
    row = call_row(app, broken.channel_id)
    assert row["outcome"] == "setup_failed" and row["ended_at"]
    assert row["end_reason"].startswith("set-up failed: POST /channels/externalMedia: 500")
    assert app[ARI].counters["calls_setup_failed"] == 1
    assert all(b.destroyed for b in fake.bridges.values())  # nothing of ours stays
    fine = await place(fake, app, EMERGENCY_LINE)
    await fine.talk(1.0)
    assert (await fine.hang_up()).status is RecordingStatus.COMPLETE


async def test_bridging_waits_for_the_media_channel_to_enter_stasis(pbx):
    """Real Asterisk answers POST /channels/externalMedia before the channel is in the app and
    refuses to bridge it until then (422): the call must wait for its StasisStart."""
    fake, app = pbx
    fake.media_stasis_delay = 0.3
    call = await place(fake, app, EMERGENCY_LINE)
    await call.talk(1.0)
    assert (await call.hang_up()).status is RecordingStatus.COMPLETE
    assert not [r for r in fake.requests if r.status == 422]
    media = next(r for r in fake.requests if r.path.endswith("/channels/externalMedia"))
    bridged = next(r for r in fake.requests if r.path.endswith("/addChannel"))
    assert bridged.at - media.at >= 0.3


async def test_a_media_channel_in_stasis_before_the_reply_is_bridged_as_well(pbx):
    """Now and then Asterisk 22 sends the external-media channel's StasisStart before its
    answer to POST /channels/externalMedia (seen in tests/asterisk/test_fake_contract.py under
    load): the call is set up all the same, the event not lost nor waited for in vain."""
    fake, app = pbx
    fake.media_stasis_before_reply = True
    call = await place(fake, app, EMERGENCY_LINE)
    await call.talk(1.0)
    assert (await call.hang_up()).status is RecordingStatus.COMPLETE
    assert not [r for r in fake.requests if r.status is not None and r.status >= 400]
    assert "calls_setup_failed" not in app[ARI].counters


async def test_a_media_channel_that_never_enters_stasis_fails_the_set_up(pbx, monkeypatch):
    import ivr.platforms.asterisk.call

    monkeypatch.setattr(ivr.platforms.asterisk.call, "MEDIA_STASIS_TIMEOUT", 0.2)
    fake, app = pbx
    fake.media_stasis_delay = None
    stuck = await fake.place_call(CONSENT_LINE, CALLER)
    await until(
        lambda: (
            app[ARI].counters.get("calls_setup_failed") and stuck.channel_id not in app[ARI].calls
        ),
        "the set-up to fail",
    )
    assert not fake.channels[stuck.channel_id].in_stasis  # handed back
    row = call_row(app, stuck.channel_id)
    assert row["outcome"] == "setup_failed"
    assert "did not enter the Stasis application within 0.2 s" in row["end_reason"]
    assert all(ch.destroyed for ch in fake.channels.values() if ch.rtp is not None)


async def test_a_caller_gone_during_set_up_is_a_hang_up_not_a_failure(pbx, monkeypatch):
    fake, app = pbx
    fake.media_stasis_delay = None  # set-up stalls until the caller gives up
    gone = await fake.place_call(CONSENT_LINE, CALLER)
    await fake.wait_for_request("POST", r"/channels/externalMedia")
    await gone.hangup()
    await until(lambda: gone.channel_id not in app[ARI].calls, "the call to end")
    row = call_row(app, gone.channel_id)
    assert row["outcome"] == "hung_up" and row["end_reason"].startswith("caller hung up")
    assert "calls_setup_failed" not in app[ARI].counters


async def test_unknown_events_and_channels_are_counted(pbx):
    _, app = pbx
    ari_app = app[ARI]
    ari_app._on_event_text('{"type": "SomethingNew", "application": "ivr"}')
    ari_app._on_event_text(
        '{"type": "ChannelDtmfReceived", "digit": "1", "channel": {"id": "nobody"}}'
    )
    ari_app._on_event_text("not json")
    assert ari_app.counters["events_other"] >= 1
    assert ari_app.counters["events_unknown_channel"] == 1
    assert ari_app.counters["events_bad"] == 1


async def test_unknown_line_is_hung_up(pbx):
    fake, app = pbx
    fake_call = await fake.place_call("999", CALLER)
    await until(lambda: fake.channels[fake_call.channel_id].destroyed, "hang-up")
    assert app[ARI].counters["calls_unknown_line"] == 1


async def test_line_chosen_by_stasis_argument_or_channel_variable(pbx):
    fake, app = pbx
    by_arg = await place(fake, app, "100", args=[NOTICE_LINE])
    by_var = await place(fake, app, "100", channel_vars={"IVR_LINE": EMERGENCY_LINE})
    assert by_arg.session.line.number == NOTICE_LINE
    assert by_var.session.line.number == EMERGENCY_LINE
    await by_arg.hang_up()
    await by_var.hang_up()


async def test_exhausted_port_range_refuses_only_the_extra_call(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    fake = FakeAsterisk(app="ivr", username="ivr", password="pw")
    await fake.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    config = load_config(
        config_file(tmp_path, fake.url, ports=f"{free}-{free}"), {"ARI_PASSWORD": "pw"}
    )
    app = create_app(config, tmp_path / "var", fsync=False)
    server = TestServer(app)
    await server.start_server()
    try:
        await fake.wait_connected()
        first = await place(fake, app, EMERGENCY_LINE)
        second = await fake.place_call(EMERGENCY_LINE, CALLER)
        await until(
            lambda: (
                app[ARI].counters.get("calls_setup_failed")
                and second.channel_id not in app[ARI].calls
            ),
            "the refusal",
        )
        assert app[ARI].counters["rtp_ports_exhausted"] == 1
        # Handed back to the dialplan (an overflow route can take it), with the reason kept.
        refused = fake.channels[second.channel_id]
        assert not refused.in_stasis and refused.vars["IVR_ERROR"] == "setup_failed"
        assert "no RTP port free" in call_row(app, second.channel_id)["end_reason"]
        await first.talk(1.0)
        assert (await first.hang_up()).status is RecordingStatus.COMPLETE
    finally:
        await server.close()
        await fake.stop()


async def test_simulate_platform_asterisk_against_the_service(tmp_path, monkeypatch):
    from ivr.harness.asterisk_sim import AsteriskCallOptions, simulate_asterisk_call

    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    monkeypatch.setattr("ivr.platforms.asterisk.app.BACKOFF_START", 0.01)
    monkeypatch.setattr("ivr.platforms.asterisk.app.BACKOFF_MAX", 0.05)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    example = Path(__file__).parent.parent / "examples" / "asterisk-demo.toml"
    text = example.read_text().replace("127.0.0.1:8088", f"127.0.0.1:{port}")
    text = text.replace('"40000-40999"', '"42200-42299"')
    (tmp_path / "ivr.toml").write_text(text)
    config = load_config(tmp_path / "ivr.toml", {"ARI_PASSWORD": "demo"})
    server = TestServer(create_app(config, tmp_path / "var", fsync=False))
    await server.start_server()
    try:
        result = await simulate_asterisk_call(
            AsteriskCallOptions(port=port, fast=True, presses=[(2.0, "1")], duration=2.0)
        )
    finally:
        await server.close()
    assert result.error is None, result.transcript
    assert result.decision == "accepted" and result.lawful_basis == "consent"
    assert result.recording_id.startswith("rec_")
    assert 2000 <= result.prompt_ms_received <= 4500
    assert any("agent connected" in e.text for e in result.transcript)


async def test_shutdown_finalises_calls_in_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    fake = FakeAsterisk(app="ivr", username="ivr", password="pw")
    await fake.start()
    config = load_config(config_file(tmp_path, fake.url), {"ARI_PASSWORD": "pw"})
    app = create_app(config, tmp_path / "var", fsync=False)
    server = TestServer(app)
    await server.start_server()
    try:
        await fake.wait_connected()
        call = await place(fake, app, EMERGENCY_LINE)
        await call.talk(1.0)
        await server.close()  # SIGTERM: calls end, recordings are finalised, the vault closes
    finally:
        await fake.stop()
    from storage.vault import Vault

    with Vault(tmp_path / "var", create=False) as vault:
        (row,) = vault.list()
    assert row.status is RecordingStatus.COMPLETE and row.duration_ms >= 900


async def test_a_restart_clears_only_this_instances_leftovers(tmp_path, monkeypatch):
    """What a killed process left (our bridge with a caller and our media channel, an open
    call row) is cleared at the next start; another instance's bridge and channels are not."""
    from ivr.platforms.asterisk import ari

    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    fake = FakeAsterisk(app="ivr", username="ivr", password="pw")
    await fake.start()
    try:
        config = load_config(config_file(tmp_path, fake.url), {"ARI_PASSWORD": "pw"})
        mine, theirs = ari.instance_tag("ivr"), ari.instance_tag("ivr-b")
        key = ari.new_call_key()
        # The previous process: a call row left open, its caller in our bridge with our media.
        from storage.vault import Vault

        orphan = await fake.place_call(CONSENT_LINE, CALLER)
        with Vault(tmp_path / "var", fsync=False) as vault:
            stale = vault.open_call(
                tenant="demo", platform="asterisk", platform_call_id=orphan.channel_id
            )
        other_caller = await fake.place_call(CONSENT_LINE, "+46709999999", app="ivr-b")
        async with ClientSession() as session:

            async def post(path: str, **params: str) -> int:
                async with session.post(fake.url + path, params=params, headers=AUTH) as r:
                    return r.status

            for owner, caller in ((mine, orphan), (theirs, other_caller)):
                bridge = ari.own_id(owner, key, ari.BRIDGE)
                media = ari.own_id(owner, key, ari.MEDIA)
                assert await post("/bridges", type="mixing", bridgeId=bridge) == 200
                app_name = "ivr" if owner == mine else "ivr-b"
                status = await post(
                    "/channels/externalMedia",
                    app=app_name,
                    channelId=media,
                    external_host="127.0.0.1:9",
                    format="ulaw",
                )
                assert status == 200
                await fake.wait_for(lambda m=media: fake.channels[m].in_stasis, 2.0, "media")
                ids = f"{caller.channel_id},{media}"
                assert await post(f"/bridges/{bridge}/addChannel", channel=ids) == 204
        app = create_app(config, tmp_path / "var", fsync=False)
        server = TestServer(app)
        await server.start_server()
        try:
            await fake.wait_connected()
            await until(lambda: app[ARI].counters.get("leftovers_cleared"), "the clean-up")
            await until(lambda: not fake.channels[orphan.channel_id].in_stasis, "hand-back")
            assert fake.channels[orphan.channel_id].vars["IVR_ERROR"] == "service_restarted"
            assert fake.bridges[ari.own_id(mine, key, ari.BRIDGE)].destroyed
            assert fake.channels[ari.own_id(mine, key, ari.MEDIA)].destroyed
            # Another instance's are untouched.
            assert not fake.bridges[ari.own_id(theirs, key, ari.BRIDGE)].destroyed
            assert not fake.channels[ari.own_id(theirs, key, ari.MEDIA)].destroyed
            assert fake.channels[other_caller.channel_id].in_stasis
            row = app[VAULT].catalog.call(stale)
            assert row["ended_at"] and row["outcome"] == "interrupted"
            assert row["end_reason"].startswith("the service stopped during the call")
        finally:
            await server.close()
    finally:
        await fake.stop()


async def test_a_second_registration_of_the_app_is_reported(pbx, caplog):
    fake, app = pbx
    async with ClientSession() as session:
        ws = await session.ws_connect(fake.events_url, headers=AUTH)
        try:
            await until(lambda: app[ARI].replaced, "ApplicationReplaced")
            assert app[ARI].counters["application_replaced"] == 1
            assert any("another connection registered" in r.getMessage() for r in caplog.records)
        finally:
            await ws.close()
