"""Recordings exported as vCons: structure, the lawful-basis hash (JCS), the audio, the CLI.

The export is read back with the `vcon` package from PyPI (its own parser and validator), and
every hash is recomputed here without ivr.gdpr.vcon's helpers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import struct
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivr.cli import main
from ivr.gdpr.recording_files import export_wav
from ivr.gdpr.vcon import (
    build_vcon,
    canonical_json,
    export_vcon,
    lawful_basis_hash,
    wav_path_for,
)
from storage.catalog import RecordingRow, UnknownRecording
from storage.custody import PrivateKeyNeeded, generate_keypair
from storage.lifecycle import erase
from storage.vault import NotReadable, Vault

with warnings.catch_warnings():
    # vcon imports authlib.jose, deprecated; authlib's own "always" filter must be overridden.
    from authlib.deprecate import AuthlibDeprecationWarning

    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    import vcon

CALLER = "+46701234567"
KEY_HEX = "11" * 32
NOW = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
EVIDENCE = {
    "policy_id": "acme-consent",
    "policy_version": 3,
    "lawful_basis": "consent",
    "consent_mode": "opt_in",
    "purpose": "quality",
    "language": "sv-SE",
    "prompt_id": "consent_request",
    "prompt_text": "Samtalet kan spelas in för kvalitet – tryck 1 för ja, 2 för nej.",
    "prompt_sha256": "ab" * 32,
    "prompt_started_at": "2026-03-04T05:00:01.000000Z",
    "prompt_ended_at": "2026-03-04T05:00:05.500000Z",
    "prompt_played_in_full": False,
    "keys": {"accept": "1", "decline": "2", "withdraw": "9"},
    "key_pressed": "1",
    "key_pressed_at": "2026-03-04T05:00:04.250000Z",
    "decision": "accepted",
    "decided_at": "2026-03-04T05:00:04.250000Z",
    "recording_started_at": "2026-03-04T05:00:04.300000Z",
    "recording_stopped_at": None,
    "withdrawn_at": None,
}


def frame(i: int, track: int) -> bytes:
    return bytes((i * 7 + track * 101 + k) % 256 for k in range(160))


def record(
    vault: Vault,
    *,
    caller: str | None = CALLER,
    evidence: dict[str, Any] | None = EVIDENCE,
    tracks: tuple[str, ...] = ("caller", "agent"),
    basis: str = "consent",
    tenant: str = "acme",
) -> RecordingRow:
    call = vault.open_call(tenant=tenant, platform="test", platform_call_id="CA1", caller=caller)
    rec = vault.start_recording(
        tenant=tenant,
        call_id=call,
        lawful_basis=basis,
        purpose="quality",
        policy_id="acme-consent" if evidence else None,
        policy_version=3 if evidence else None,
        consent_evidence=evidence,
        tracks=tracks,
        retention_until=datetime(2026, 9, 1, tzinfo=UTC),
    )
    for i in range(100):  # 2 s
        for t in range(len(tracks)):
            rec.append(t, i * 20, frame(i, t))
    return rec.close()


@pytest.fixture
def vault(tmp_path: Path):
    v = Vault(tmp_path / "data", master_key=os.urandom(32), fsync=False)
    yield v
    v.close()


def unb64url(text: str) -> bytes:
    assert "=" not in text, "the draft's base64url has no padding"
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def wav_of(vault: Vault, rid: str, tmp_path: Path) -> bytes:
    out = tmp_path / "reference-export.wav"
    export_wav(vault, rid, out, actor="test", reason="comparison")
    return out.read_bytes()


def jcs_for_our_types(value: Any) -> str:
    """For str/int/bool/None/list/dict with BMP keys this *is* JCS: sorted keys, no spaces,
    only the escapes JSON needs, and integers print as digits."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def exported_events(vault: Vault, fmt: str) -> list[Any]:
    return [
        e
        for e in vault.catalog.audit_events()
        if e.action == "recording.exported" and e.detail.get("format") == fmt
    ]


# -- JCS (RFC 8785) ------------------------------------------------------------------------------
def test_jcs_rfc8785_section_3_2_2_example() -> None:
    source = r"""{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"""
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonical_json(json.loads(source)) == expected


def test_jcs_sorts_keys_by_utf16_code_units() -> None:
    # RFC 8785 section 3.2.3: U+1F600 (surrogates D83D DE00) sorts before U+FB33.
    source = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    names = [v for _, v in json.loads(canonical_json(source), object_pairs_hook=list)]
    assert names == [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ]
    assert canonical_json(source).startswith('{"\\r":"Carriage Return","1":"One","\u0080":')


@pytest.mark.parametrize(
    ("ieee", "text"),
    [  # RFC 8785 appendix B
        ("0000000000000000", "0"),
        ("8000000000000000", "0"),
        ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"),
        ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("ffefffffffffffff", "-1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"),
        ("c340000000000000", "-9007199254740992"),
        ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"),
        ("44b52d02c7e14af6", "1e+23"),
        ("44b52d02c7e14af7", "1.0000000000000001e+23"),
        ("444b1ae4d6e2ef4e", "999999999999999700000"),
        ("444b1ae4d6e2ef4f", "999999999999999900000"),
        ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
        ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"),
        ("41b3de4355555554", "333333333.33333325"),
        ("41b3de4355555555", "333333333.3333333"),
        ("41b3de4355555556", "333333333.3333334"),
        ("41b3de4355555557", "333333333.33333343"),
        ("becbf647612f3696", "-0.0000033333333333333333"),
        ("43143ff3c1cb0959", "1424953923781206.2"),
    ],
)
def test_jcs_numbers_rfc8785_appendix_b(ieee: str, text: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(ieee))
    assert canonical_json(value) == text


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), -float("inf"), 2**53 + 1, "\ud800", {"k\udfff": 1}],
)
def test_jcs_rejects_what_i_json_forbids(bad: Any) -> None:
    with pytest.raises(ValueError):
        canonical_json(bad)


def test_jcs_rejects_non_json_types() -> None:
    with pytest.raises(TypeError):
        canonical_json({"when": datetime.now(UTC)})
    with pytest.raises(TypeError):
        canonical_json({1: "integer key"})


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(max_codepoint=0xD7FF)), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(_json_values)
def test_jcs_agrees_with_sorted_compact_json_for_our_value_types(value: Any) -> None:
    assert canonical_json(value) == jcs_for_our_types(value)


# -- the export ----------------------------------------------------------------------------------
def test_inline_vcon_loads_in_the_vcon_package(vault: Vault, tmp_path: Path) -> None:
    row = record(vault)
    out = tmp_path / "call.json"
    doc = export_vcon(vault, row.id, out, actor="test:alice", reason="subject access request")
    text = out.read_text(encoding="utf-8")
    assert json.loads(text) == doc
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    v = vcon.Vcon.build_from_json(text)
    assert v.is_valid() == (True, [])
    assert v.vcon == "0.4.0"
    assert v.uuid == str(uuid.UUID(v.uuid)) and uuid.UUID(v.uuid).version == 5
    assert v.subject == f"call recording {row.id}"
    assert v.vcon_dict["extensions"] == ["lawful_basis"]
    caller, tenant = v.parties
    assert (caller.tel, caller.role) == (CALLER, "customer")
    assert (tenant.name, tenant.role) == ("acme", "agent")

    (dialog,) = v.dialog
    assert dialog["type"] == "recording"
    assert dialog["start"] == row.started_at
    assert dialog["duration"] == 2.0 and isinstance(dialog["duration"], float)
    assert dialog["parties"] == [0, 1]  # channel 0 the caller, channel 1 the agent
    assert dialog["mediatype"] == dialog["mimetype"] == "audio/x-wav"
    assert dialog["filename"] == f"{row.id}.wav"
    assert dialog["application"] == "test"
    assert dialog["encoding"] == "base64url"
    assert "url" not in dialog and "content_hash" not in dialog
    assert unb64url(dialog["body"]) == wav_of(vault, row.id, tmp_path)

    basis = v.find_attachment_by_type("lawful_basis")
    assert basis["purpose"] == "lawful_basis" and basis["encoding"] == "json"
    assert (basis["party"], basis["dialog"], basis["start"]) == (0, 0, EVIDENCE["decided_at"])
    body = basis["body"]
    assert body["lawful_basis"] == "consent"
    assert body["expiration"] == "2026-09-01T00:00:00.000000Z"
    assert body["purpose_grants"] == [
        {"purpose": "quality", "granted": True, "granted_at": EVIDENCE["decided_at"]}
    ]
    (proof,) = body["proof_mechanisms"]
    assert proof["proof_type"] == "verbal_confirmation"
    assert proof["timestamp"] == EVIDENCE["key_pressed_at"]
    assert proof["proof_data"] == {
        "method": "dtmf",
        "decision": "accepted",
        "key_pressed": "1",
        "prompt_id": "consent_request",
        "prompt_text": EVIDENCE["prompt_text"],
        "prompt_sha256": EVIDENCE["prompt_sha256"],
        "prompt_started_at": EVIDENCE["prompt_started_at"],
        "policy_id": "acme-consent",
        "policy_version": 3,
        "language": "sv-SE",
    }
    # The content hash, recomputed independently of ivr.gdpr.vcon.
    ch = body["content_hash"]
    assert (ch["algorithm"], ch["canonicalization"]) == ("sha-256", "jcs")
    unhashed = {k: v for k, v in body.items() if k != "content_hash"}
    canonical = jcs_for_our_types(unhashed)
    assert canonical == canonical_json(unhashed)
    assert ch["value"] == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert lawful_basis_hash(body) == ch["value"]
    # ... and it catches a change to the lawful basis.
    assert lawful_basis_hash({**body, "expiration": None}) != ch["value"]

    evidence = v.find_attachment_by_type("consent_evidence")
    assert evidence["encoding"] == "json" and evidence["body"] == EVIDENCE

    (event,) = exported_events(vault, "vcon")
    assert (event.actor, event.tenant, event.target) == ("test:alice", "acme", row.id)
    assert event.detail == {"format": "vcon", "reason": "subject access request"}


def test_reference_vcon_points_at_the_wav_beside_it(vault: Vault, tmp_path: Path) -> None:
    row = record(vault)
    out = tmp_path / "exports" / "call 1.json"
    out.parent.mkdir()
    doc = export_vcon(vault, row.id, out, actor="test", reason="archive", inline=False)
    wav = out.with_name("call 1.wav")
    assert wav_path_for(out) == wav
    assert sorted(p.name for p in out.parent.iterdir()) == ["call 1.json", "call 1.wav"]
    assert stat.S_IMODE(wav.stat().st_mode) == 0o600
    data = wav.read_bytes()
    assert data == wav_of(vault, row.id, tmp_path)

    v = vcon.Vcon.build_from_json(out.read_text(encoding="utf-8"))
    assert v.is_valid() == (True, [])
    (dialog,) = v.dialog
    assert "body" not in dialog and "encoding" not in dialog
    assert dialog["url"] == "call%201.wav" and dialog["filename"] == "call 1.wav"
    expected = base64.urlsafe_b64encode(hashlib.sha512(data).digest()).rstrip(b"=").decode()
    assert dialog["content_hash"] == f"sha512-{expected}"
    assert doc["uuid"] == v.uuid
    assert len(exported_events(vault, "vcon")) == 1

    # With a base URL the reference is absolute.
    doc = export_vcon(
        vault,
        row.id,
        out,
        actor="test",
        reason="archive",
        inline=False,
        base_url="https://files.example.com/exports/",
    )
    assert doc["dialog"][0]["url"] == "https://files.example.com/exports/call%201.wav"


def test_same_recording_same_uuid_and_build_is_deterministic(vault: Vault) -> None:
    row = record(vault)
    first = build_vcon(vault, row.id, now=NOW)
    assert first == build_vcon(vault, row.id, now=NOW)
    assert first["created_at"] == "2026-03-04T05:06:07.890123Z"
    other = record(vault)
    assert build_vcon(vault, other.id, now=NOW)["uuid"] != first["uuid"]
    ref = build_vcon(vault, row.id, inline=False, reference_url="https://x.example/a.wav", now=NOW)
    assert ref["uuid"] == first["uuid"]
    assert ref["dialog"][0]["url"] == "https://x.example/a.wav"
    assert ref["dialog"][0]["content_hash"].startswith("sha512-")
    with pytest.raises(ValueError, match="reference URL"):
        build_vcon(vault, row.id, reference_url="https://x.example/a.wav", now=NOW)


def test_mono_import_without_caller_or_evidence(vault: Vault, tmp_path: Path) -> None:
    row = record(vault, caller=None, evidence=None, tracks=("caller",), basis="contract")
    doc = build_vcon(vault, row.id, now=NOW)
    assert vcon.Vcon(json.loads(json.dumps(doc))).is_valid() == (True, [])
    assert doc["parties"][0] == {"role": "customer"}  # no number known: no tel
    assert doc["dialog"][0]["parties"] == [0]
    assert unb64url(doc["dialog"][0]["body"]) == wav_of(vault, row.id, tmp_path)
    (basis,) = doc["attachments"]  # no consent_evidence attachment
    body = basis["body"]
    assert body["lawful_basis"] == "contract"
    assert body["purpose_grants"] == [
        {"purpose": "quality", "granted": True, "granted_at": row.started_at}
    ]
    assert body["proof_mechanisms"] == []
    assert (
        body["content_hash"]["value"]
        == hashlib.sha256(
            jcs_for_our_types({k: v for k, v in body.items() if k != "content_hash"}).encode()
        ).hexdigest()
    )


@pytest.mark.parametrize(
    ("decision", "granted", "proof_type"),
    [
        ("objected", False, "verbal_confirmation"),
        ("not_objected", True, "external_system"),
        ("notified", True, "external_system"),
    ],
)
def test_grant_and_proof_type_follow_the_decision(
    vault: Vault, decision: str, granted: bool, proof_type: str
) -> None:
    pressed = decision == "objected"
    evidence = {
        **EVIDENCE,
        "decision": decision,
        "key_pressed": "9" if pressed else None,
        "key_pressed_at": EVIDENCE["key_pressed_at"] if pressed else None,
    }
    body = build_vcon(vault, record(vault, evidence=evidence).id, now=NOW)["attachments"][0]["body"]
    assert body["purpose_grants"][0]["granted"] is granted
    (proof,) = body["proof_mechanisms"]
    assert proof["proof_type"] == proof_type
    assert proof["timestamp"] == EVIDENCE["decided_at"]
    assert ("method" in proof["proof_data"]) is pressed


def test_unknown_and_erased_recordings_fail_clearly(vault: Vault, tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    with pytest.raises(UnknownRecording, match="no recording with id 'rec_nope'"):
        export_vcon(vault, "rec_nope", out, actor="test", reason="r")
    row = record(vault)
    erase(vault, row.id, reason="retention ended", actor="test")
    with pytest.raises(NotReadable, match=f"recording {row.id} is erased"):
        export_vcon(vault, row.id, out, actor="test", reason="r", inline=False)
    with pytest.raises(NotReadable, match="erased"):
        build_vcon(vault, row.id, now=NOW)
    assert list(tmp_path.iterdir()) == [tmp_path / "data"]
    assert exported_events(vault, "vcon") == []


def test_bad_output_names_and_options(vault: Vault, tmp_path: Path) -> None:
    row = record(vault)
    with pytest.raises(ValueError, match=r"cannot be a \.wav"):
        export_vcon(vault, row.id, tmp_path / "x.wav", actor="t", reason="r", inline=False)
    with pytest.raises(ValueError, match="base URL"):
        export_vcon(vault, row.id, tmp_path / "x.json", actor="t", reason="r", base_url="https://x")
    assert wav_path_for(tmp_path / "export") == tmp_path / "export.wav"
    assert exported_events(vault, "vcon") == []


def test_sealed_recording_needs_the_private_key(tmp_path: Path) -> None:
    private, public = generate_keypair()
    with Vault(
        tmp_path / "data", master_key=os.urandom(32), fsync=False, public_keys={"acme": public}
    ) as sealed:
        row = record(sealed)
        with pytest.raises(PrivateKeyNeeded, match="give --private-key"):
            build_vcon(sealed, row.id, now=NOW)
        doc = build_vcon(sealed, row.id, private_key=private, now=NOW)
        assert doc["parties"][0]["tel"] == CALLER


# -- the command line ----------------------------------------------------------------------------
def test_cli_exports_vcon_and_keeps_wav_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IVR_MASTER_KEY", KEY_HEX)
    monkeypatch.delenv("IVR_DATA_DIR", raising=False)
    data = tmp_path / "var"
    with Vault(data, master_key=bytes.fromhex(KEY_HEX), fsync=False) as v:
        rid = record(v).id

    def run(*argv: str | Path) -> tuple[int, str, str]:
        code = main(["recordings", "export", rid, "--data-dir", str(data), *map(str, argv)])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("-o", tmp_path / "plain.wav", "--json")
    assert code == 0, err
    assert json.loads(out)["channels"] == 2
    assert (tmp_path / "plain.wav").read_bytes()[:4] == b"RIFF"

    code, out, err = run("-o", tmp_path / "in.json", "--format", "vcon", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["format"] == "vcon" and report["audio"] == "inline"
    doc = json.loads((tmp_path / "in.json").read_text(encoding="utf-8"))
    assert doc["dialog"][0]["encoding"] == "base64url"

    code, out, err = run("-o", tmp_path / "ref.json", "--format", "vcon", "--reference")
    assert code == 0, err
    assert "ref.wav" in out
    assert json.loads((tmp_path / "ref.json").read_text())["dialog"][0]["url"] == "ref.wav"
    assert (tmp_path / "ref.wav").read_bytes() == (tmp_path / "plain.wav").read_bytes()

    code, _, err = run("-o", tmp_path / "x.wav", "--reference")
    assert code == 1 and "--format vcon" in err
    with pytest.raises(SystemExit) as usage:  # argparse: the two are exclusive
        run("-o", tmp_path / "y.json", "--format", "vcon", "--inline", "--reference")
    assert usage.value.code == 2
    assert "not allowed with argument --inline" in capsys.readouterr().err
    code, _, err = run("-o", tmp_path / "z.wav", "--format", "vcon", "--reference")
    assert code == 1 and "cannot be a .wav" in err

    with Vault(data, master_key=bytes.fromhex(KEY_HEX), fsync=False) as v:
        assert len(exported_events(v, "vcon")) == 2
        assert len(exported_events(v, "wav")) == 1


def test_expiration_is_null_without_retention(vault: Vault) -> None:
    rec = vault.start_recording(tenant="acme", lawful_basis="vital_interests", purpose="safety")
    rec.append(0, 0, frame(0, 0))
    row = rec.close()
    body = build_vcon(vault, row.id, now=NOW + timedelta(days=1))["attachments"][0]["body"]
    assert body["expiration"] is None and body["lawful_basis"] == "vital_interests"
    assert '"expiration":null' in canonical_json(body)
