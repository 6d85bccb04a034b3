"""ARI wire format: events parsed strictly, REST calls built exactly."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.platforms.asterisk import ari


def channel(**kw) -> dict:
    base = {
        "id": "1700000000.1",
        "name": "PJSIP/trunk-00000001",
        "state": "Ring",
        "caller": {"name": "", "number": "+46701234567"},
        "dialplan": {"context": "from-external", "exten": "+46850000001", "priority": 1},
    }
    return base | kw


def event(kind: str, **kw) -> str:
    return json.dumps({"type": kind, "application": "ivr", "timestamp": "x"} | kw)


def test_events():
    start = ari.parse_event(event("StasisStart", args=["+4685"], channel=channel()))
    assert isinstance(start, ari.StasisStart) and start.args == ("+4685",)
    assert start.channel.exten == "+46850000001" and not start.channel.ours
    dtmf = ari.parse_event(
        event("ChannelDtmfReceived", digit="#", duration_ms=90, channel=channel())
    )
    assert dtmf == ari.DtmfReceived(ari.Channel.from_json(channel()), "#", 90)
    gone = ari.parse_event(
        event("ChannelDestroyed", cause=16, cause_txt="Normal", channel=channel())
    )
    assert isinstance(gone, ari.ChannelDestroyed) and gone.cause == 16
    other = ari.parse_event(event("ChannelVarset", channel=channel()))
    assert other == ari.UnknownEvent("ChannelVarset", "1700000000.1")


def test_own_channels_are_recognised():
    assert ari.Channel.from_json(channel(id="ivr-media-1")).ours
    assert ari.Channel.from_json(channel(name="UnicastRTP/127.0.0.1:40000-0000001")).ours
    assert ari.Channel.from_json(channel(name="Snoop/123-0001")).ours


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        "[]",
        json.dumps({"no": "type"}),
        event("StasisStart", channel={"name": "x"}),
        event("StasisStart", args="x", channel=channel()),
        event("ChannelDtmfReceived", digit="x", channel=channel()),
        "x" * (ari.MAX_EVENT_BYTES + 1),
    ],
)
def test_bad_events(text):
    with pytest.raises(ari.AriEventError):
        ari.parse_event(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_event_parser_only_raises_its_own_error(text):
    with contextlib.suppress(ari.AriEventError):
        ari.parse_event(text)


def test_requests():
    media = ari.external_media("ivr", "ivr-media-1", "10.0.0.9", 40000)
    assert media.path == "/channels/externalMedia"
    assert media.query["external_host"] == "10.0.0.9:40000" and media.query["format"] == "ulaw"
    assert ari.external_media("ivr", "m", "::1", 4).query["external_host"] == "[::1]:4"
    assert ari.add_to_bridge("b", ["a", "c"]).query == {"channel": "a,c"}
    assert ari.create_bridge("b").query["type"] == "mixing"
    assert ari.hang_up("c").method == "DELETE"
    assert (
        ari.originate("ivr", "ivr-agent-1", "PJSIP/1@t", "+1", 30).query["endpoint"] == "PJSIP/1@t"
    )
    vars_ = {"UNICASTRTP_LOCAL_ADDRESS": "10.0.0.5", "UNICASTRTP_LOCAL_PORT": "17000"}
    assert ari.rtp_peer({"channelvars": vars_}) == ("10.0.0.5", 17000)
    for bad in ({}, {"channelvars": {}}, {"channelvars": {"UNICASTRTP_LOCAL_PORT": "x"}}):
        with pytest.raises(ari.AriEventError):
            ari.rtp_peer(bad)


def test_own_ids_are_fixed_length_and_name_their_instance():
    instance = ari.instance_tag("ivr")
    assert instance == ari.instance_tag("ivr") != ari.instance_tag("ivr-b")
    keys = {ari.new_call_key() for _ in range(1000)}
    assert len(keys) == 1000
    ids = [ari.own_id(instance, k, kind) for k in keys for kind in (ari.BRIDGE, ari.MEDIA)]
    # No id is a prefix of another (Asterisk refuses a new channel id that prefixes a live one).
    assert len({len(i) for i in ids}) == 1 and len(set(ids)) == len(ids)
    parsed = ari.parse_own_id(ids[0])
    assert parsed is not None and parsed.instance == instance and parsed.kind in "bm"
    for other in (
        "1700000000.1",
        "ivr-media-1",
        f"ivr-{instance}-{'0' * 16}-x",
        f"ivr-{instance}-{'0' * 15}-m",
        f"ivr-{instance.upper()}-{'0' * 16}-m",
        f"ivr-{instance}-{'0' * 16}-m-extra",
    ):
        assert ari.parse_own_id(other) is None, other


def test_listings_and_application_replaced():
    assert ari.bridges_from_json(
        [{"id": "b1", "channels": ["c1", 2, "c2"]}, {"id": 3}, "junk", {"id": "b2"}]
    ) == [ari.BridgeInfo("b1", ("c1", "c2")), ari.BridgeInfo("b2", ())]
    assert ari.channel_ids_from_json([{"id": "c1"}, {"name": "x"}, []]) == ["c1"]
    for bad in ({}, "x", None):
        with pytest.raises(ari.AriEventError):
            ari.bridges_from_json(bad)
        with pytest.raises(ari.AriEventError):
            ari.channel_ids_from_json(bad)
    assert ari.parse_event(event("ApplicationReplaced")) == ari.ApplicationReplaced("ivr")
    assert ari.continue_in_dialplan("c1") == ari.Request("POST", "/channels/c1/continue")


def test_leftovers_are_only_this_instances_and_only_dead_calls():
    mine, theirs = ari.instance_tag("ivr"), ari.instance_tag("ivr-b")
    live, dead = ari.new_call_key(), ari.new_call_key()

    def own(instance: str, key: str, kind: str) -> str:
        return ari.own_id(instance, key, kind)

    bridges = [
        ari.BridgeInfo(own(mine, dead, ari.BRIDGE), ("caller-1", own(mine, dead, ari.MEDIA))),
        ari.BridgeInfo(own(mine, live, ari.BRIDGE), ("caller-2", own(mine, live, ari.MEDIA))),
        ari.BridgeInfo(own(theirs, dead, ari.BRIDGE), ("caller-3", own(theirs, dead, ari.MEDIA))),
        ari.BridgeInfo("someone-elses", ("caller-4",)),
    ]
    channels = [
        "caller-1",
        "caller-2",
        own(mine, dead, ari.MEDIA),
        own(mine, dead, ari.AGENT),
        own(mine, live, ari.MEDIA),
        own(theirs, dead, ari.MEDIA),
    ]
    found = ari.find_leftovers(mine, {live}, bridges, channels)
    assert found.bridges == (own(mine, dead, ari.BRIDGE),)
    assert set(found.channels) == {own(mine, dead, ari.MEDIA), own(mine, dead, ari.AGENT)}
    assert found.callers == {"caller-1"}


def test_what_the_pbx_is_told_and_where_the_line_is_named():
    decided = ari.outcome_variables("accepted", "consent", "", told={})
    assert decided == {"IVR_CONSENT_DECISION": "accepted", "IVR_LAWFUL_BASIS": "consent"}
    # Once told, a variable is not set again; a new value (the recording's id) is.
    assert ari.outcome_variables("accepted", "consent", "", told=decided) == {}
    assert ari.outcome_variables("accepted", "consent", "r1", told=decided) == {
        "IVR_RECORDING_ID": "r1"
    }
    assert ari.outcome_variables(
        "accepted", "consent", "r2", told=decided | {"IVR_RECORDING_ID": "r1"}
    ) == {"IVR_RECORDING_ID": "r2"}
    chan = ari.Channel.from_json(
        {"id": "c", "dialplan": {"exten": "+4685"}, "channelvars": {"IVR_LINE": "+4686"}}
    )
    asked: list[str] = []

    def lookup(number: str) -> str | None:
        asked.append(number)
        return f"line {number}" if number in ("+4687", "+4686", "+4685") else None

    assert ari.line_for(chan, ("+4687",), lookup) == "line +4687" and asked == ["+4687"]
    asked.clear()
    assert ari.line_for(chan, ("+4600",), lookup) == "line +4686"
    assert asked == ["+4600", "+4686"]  # in order, stopping at the first line found
    assert ari.line_for(chan, (), lookup) == "line +4686"
    assert ari.line_for(chan, (), lambda number: None) is None
    bare = ari.Channel.from_json({"id": "c"})
    asked.clear()
    assert ari.line_for(bare, ("",), lookup) is None and asked == []  # nothing named: not asked


def test_end_reasons():
    chan = ari.Channel.from_json(channel())
    destroyed = ari.ChannelDestroyed(chan, 16, "Normal Clearing")
    requested = ari.HangupRequest(chan, 17)
    left = ari.StasisEnd(chan)
    assert ari.caller_end(destroyed) == "caller hung up (Normal Clearing)"
    assert ari.caller_end(ari.ChannelDestroyed(chan, 16, "")) == "caller hung up (cause 16)"
    assert ari.caller_end(requested) == "caller hung up (cause 17)"
    assert ari.caller_end(ari.HangupRequest(chan, None)) == "caller hung up"
    assert ari.caller_end(left) == "caller left the Stasis application"
    assert ari.own_channel_end(left, agent=False, answered=False) == "media channel ended"
    assert (
        ari.own_channel_end(destroyed, agent=False, answered=True)
        == "media channel ended (Normal Clearing)"
    )
    assert ari.own_channel_end(requested, agent=True, answered=True) == "agent hung up (cause 17)"
    assert ari.own_channel_end(left, agent=True, answered=False) == "agent did not answer"


def test_rest_responses():
    assert ari.response_json(b'{"id": "c"}') == {"id": "c"}
    assert ari.response_json(b"") is None
    assert ari.response_json(b"  ") is None
    assert ari.response_json(b"<html>") is None
    assert ari.response_json(b"\xff\xfe\x00") is None
    assert ari.error_message(b'{"message": "Channel not found"}') == "Channel not found"
    assert ari.error_message(b'{"error": "x"}') == '{"error": "x"}'
    assert ari.error_message(b"[1]") == "[1]"
    assert ari.error_message(b"x" * 300) == "x" * 200
    assert ari.error_message(b"bad \xff") == "bad \ufffd"
