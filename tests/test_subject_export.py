"""The subject access export (Art. 15): every call and recording of a number, and the
Art. 15(1)(a)-(h) information, derived from the configuration and the data, in the caller's
language; sealed controllers held, not failed; the zip private."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ivr.cli import main
from ivr.config import Config, load_config
from ivr.gdpr import subject
from ivr.gdpr.access import Processor, basis_article, build_report, gather
from ivr.gdpr.access_text import LANGUAGES, SENTENCES
from ivr.gdpr.ropa import BASIS_ARTICLES
from ivr.policy import LawfulBasis
from storage import lifecycle
from storage.custody import write_keypair
from storage.files import parse_utc
from storage.vault import Vault

MASTER = bytes(range(32))
CALLER = "+46701234567"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW = "2026-03-02T00:00:00.000000Z"

LINES = {
    # number: (tenant, lawful basis, language, extra TOML)
    "+46850000001": ("acme", "consent", "en", ""),
    "+46850000002": ("acme", "legitimate_interests", "sv", ""),
    "+46850000003": ("acme", "legal_obligation", "en", ""),
    "+46850000004": ("acme", "contract", "en", ""),
    "+46850000009": ("globex", "consent", "en", ""),
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def config_text(
    *,
    acme_retention: str = "",
    call_record_days: int | None = None,
    asterisk: bool = False,
    acme_custody: bytes | None = None,
    keys: str = "",
) -> str:
    out = []
    if keys:
        out.append(f"[keys]\n{keys}\n")
    if call_record_days is not None:
        out.append(f"[retention]\ncall_record_days = {call_record_days}\n")
    if asterisk:
        out.append('[asterisk]\nurl = "http://pbx.acme.example:8088/ari"\nusername = "ivr"\n')
    out.append('[tenants.acme]\ndisplay_name = "Acme AB"\ndpo_contact = "dpo@acme.example"\n')
    if acme_retention:
        out.append(f"retention_days = {{ {acme_retention} }}\n")
    if acme_custody is not None:
        key = base64.b64encode(acme_custody).decode()
        out.append(f'key_custody = "public_key"\npublic_key = "{key}"\n')
    out.append(
        '[tenants.globex]\ndisplay_name = "Globex"\ndpo_contact = "privacy@globex.example"\n'
    )
    for number, (tenant, basis, language, extra) in LINES.items():
        out.append(
            f'[[lines]]\nnumber = "{number}"\ntenant = "{tenant}"\npurpose = "quality assurance"\n'
            f'lawful_basis = "{basis}"\nlanguage = "{language}"\n{extra}'
        )
    return "".join(out)


def load(tmp_path: Path, name: str = "ivr.toml", **kwargs: Any) -> Config:
    path = tmp_path / name
    path.write_text(config_text(**kwargs))
    return load_config(path)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def vault(tmp_path: Path, clock: Clock) -> Any:
    v = Vault(tmp_path / "var", master_key=MASTER, clock=clock, fsync=False)
    yield v
    v.close()


def call(
    vault: Vault,
    config: Config,
    number: str,
    *,
    platform: str = "twilio",
    outcome: str = "declined",
    end_reason: str = "caller hung up",
    caller: str = CALLER,
) -> str:
    line = config.lines[number]
    call_id = vault.open_call(
        tenant=line.tenant,
        platform=platform,
        platform_call_id=f"{platform}-{os.urandom(4).hex()}",
        line=line.policy_id,
        caller=caller,
    )
    vault.catalog.update_call(call_id, ended_at=NOW, outcome=outcome, end_reason=end_reason)
    return call_id


def recorded(
    vault: Vault,
    config: Config,
    number: str,
    *,
    platform: str = "twilio",
    days: int = 90,
    language: str | None = None,
) -> Any:
    line = config.lines[number]
    call_id = call(vault, config, number, platform=platform, outcome="accepted")
    rec = vault.start_recording(
        tenant=line.tenant,
        call_id=call_id,
        lawful_basis=line.lawful_basis.value,
        purpose=line.purpose,
        policy_id=line.policy_id,
        policy_version=line.policy_version,
        consent_evidence={"decision": "accepted", "language": language or line.language},
        retention_until=vault.clock() + timedelta(days=days),
        tracks=("caller",),
    )
    for i in range(50):
        rec.append(0, i * 20, bytes([i % 256]) * 160)
    return rec.close()


def export(
    vault: Vault, config: Config, out: Path, tenants: tuple[str, ...] = ("acme",), **kwargs: Any
) -> subject.ExportResult:
    return subject.export(
        vault,
        CALLER,
        list(tenants),
        out,
        actor="dpo",
        reason="Art. 15 request",
        config=config,
        now=NOW,
        **kwargs,
    )


def read(out: Path) -> tuple[dict[str, Any], str, str, set[str]]:
    with zipfile.ZipFile(out) as zf:
        return (
            json.loads(zf.read("summary.json")),
            zf.read("summary.html").decode(),
            zf.read("summary.txt").decode(),
            set(zf.namelist()),
        )


def statements(summary: dict[str, Any], tenant: str = "acme") -> dict[str, list[dict[str, Any]]]:
    (controller,) = [c for c in summary["controllers"] if c["tenant"] == tenant]
    out: dict[str, list[dict[str, Any]]] = {}
    for s in [*controller["statements"], *summary["statements"]]:
        out.setdefault(s["kind"], []).append(s)
    return out


# -- calls without a recording --------------------------------------------------------------------
def test_calls_without_a_recording_are_in_the_export(tmp_path, vault):
    config = load(tmp_path)
    declined = call(vault, config, "+46850000001", outcome="declined", end_reason="caller hung up")
    result = export(vault, config, tmp_path / "out.zip", language="en")
    summary, page, text, names = read(result.path)
    (entry,) = summary["calls"]
    assert entry["call_id"] == declined and entry["recordings"] == []
    assert entry["outcome"] == "declined" and entry["end_reason"] == "caller hung up"
    assert entry["line_numbers"] == ["+46850000001"] and entry["platform"] == "twilio"
    assert entry["platform_call_id"] == vault.catalog.call(declined)["platform_call_id"]
    assert entry["started_at"] == "2026-03-01T12:00:00.000000Z"
    assert "you declined recording" in page and "caller hung up" in page
    assert "2026-03-01 12:00 UTC" in text and "+46850000001" in text
    assert not any(n.startswith("recordings/") for n in names)
    assert result.as_dict()["calls_without_recording"] == 1


def test_the_date_a_number_leaves_a_call_record_is_the_sweeps_own(tmp_path, vault, clock):
    config = load(tmp_path, call_record_days=7)
    bare = call(vault, config, "+46850000001")
    long = recorded(vault, config, "+46850000001", days=20)
    held = recorded(vault, config, "+46850000001", days=3)
    lifecycle.set_hold(vault, held.id, reason="complaint 12", actor="dpo")
    summary, *_ = read(export(vault, config, tmp_path / "out.zip").path)
    by_id = {c["call_id"]: c for c in summary["calls"]}
    assert by_id[bare]["number_removed_after"] == "2026-03-08T12:00:00.000000Z"
    assert by_id[bare]["number_kept_because"] == "call_record_days"
    assert by_id[long.call_id]["number_removed_after"] == long.retention_until
    assert by_id[long.call_id]["number_kept_because"] == "recording_kept"
    assert by_id[held.call_id]["number_removed_after"] is None
    assert by_id[held.call_id]["number_kept_because"] == "legal_hold"
    # The sweep agrees: a second before the stated date the number is there, after it gone.
    for call_id in (bare, long.call_id):
        when = parse_utc(by_id[call_id]["number_removed_after"])
        clock.now = when - timedelta(seconds=1)
        lifecycle.sweep(vault, now=clock.now, dry_run=False, actor="t", call_record_days=7)
        assert vault.caller_of(call_id) == CALLER
        clock.now = when + timedelta(seconds=1)
        lifecycle.sweep(vault, now=clock.now, dry_run=False, actor="t", call_record_days=7)
        assert vault.caller_of(call_id) is None
    assert vault.caller_of(held.call_id) == CALLER


# -- Art. 15(1)(a)-(h), from the configuration ----------------------------------------------------
def test_every_article_15_item_is_there_and_comes_from_the_configuration(tmp_path, vault):
    config = load(tmp_path)
    recorded(vault, config, "+46850000001")
    call(vault, config, "+46850000001", platform="asterisk")
    summary, _, text, _ = read(export(vault, config, tmp_path / "a.zip", language="en").path)
    said = statements(summary)
    for kind in (
        "purpose",  # (a)
        "purpose.call_record",
        "category.number",  # (b)
        "category.call_metadata",
        "category.voice",
        "category.consent_evidence",
        "recipient.controller",  # (c)
        "recipient.processor.keys",
        "recipient.twilio",
        "recipient.asterisk",
        "transfer.twilio",  # 15(2)
        "retention.line.default",  # (d)
        "retention.recording",
        "retention.call_record",
        "right.rectification",  # (e)
        "right.erasure",
        "right.restriction",
        "right.contact",
        "complaint",  # (f)
        "source.call",  # (g)
        "automated.none",  # (h)
    ):
        assert kind in said, kind
    assert said["purpose"][0]["facts"] == {
        "purposes": ["quality assurance"],
        "lawful_basis": "consent",
        "basis_article": "Art. 6(1)(a)",
    }
    assert "kept 90 days from the start of the recording (the service's default" in text
    assert "more than 30 days old" in text
    assert "Acme AB, the controller" in text and "dpo@acme.example" in text
    assert "Asterisk telephone exchange that connected 1" in text  # no [asterisk]: no host
    assert "The operator of this recording service, the processor" in text
    assert "the service's configuration sets no date for that" in text  # no [keys] schedule

    # Another configuration, another text: the controller's own period, a shorter call record,
    # the PBX's host, a named processor.
    changed = load(
        tmp_path,
        "changed.toml",
        acme_retention="consent = 45",
        call_record_days=7,
        asterisk=True,
        keys="rotate_every_days = 30\nretire_after_days = 60",
    )
    result = export(
        vault,
        changed,
        tmp_path / "b.zip",
        language="en",
        processor=Processor("Callcentre Ltd", "ops@cc.example"),
    )
    summary, _, text, _ = read(result.path)
    said = statements(summary)
    assert said["retention.line.controller"][0]["facts"]["days"] == 45
    assert "kept 45 days from the start of the recording (the controller's period" in text
    assert "more than 7 days old" in text and "more than 30 days" not in text
    assert "Asterisk telephone exchange at pbx.acme.example" in text
    assert "Callcentre Ltd (ops@cc.example), the processor" in text
    assert "backups become unreadable at the latest 90 days after an erasure" in text


def test_rights_follow_the_lawful_basis(tmp_path, vault):
    config = load(tmp_path)
    recorded(vault, config, "+46850000001")  # consent
    said = statements(read(export(vault, config, tmp_path / "c.zip").path)[0])
    assert "right.withdraw_consent" in said and "right.portability" in said
    assert "right.objection" not in said and "right.erasure.limited" not in said
    assert "recipient.twilio" in said and "recipient.asterisk" not in said  # only who carried

    other = Vault(tmp_path / "var2", master_key=MASTER, clock=vault.clock, fsync=False)
    with other:
        recorded(other, config, "+46850000002")  # legitimate interests (opt-out)
        recorded(other, config, "+46850000003")  # legal obligation
        contract = recorded(other, config, "+46850000004")
        summary, _, text, _ = read(export(other, config, tmp_path / "d.zip", language="en").path)
    said = statements(summary)
    assert "right.withdraw_consent" not in said
    (portability,) = said["right.portability"]  # the contract recording's only
    assert portability["facts"] == {"recordings": [contract.id], "lawful_bases": ["contract"]}
    (objection,) = said["right.objection"]
    assert objection["facts"]["lawful_bases"] == ["legitimate_interests"]
    assert objection["facts"]["decline_keys"] == [{"line": "+46850000002", "key": "9"}]
    assert said["right.erasure.limited"][0]["facts"]["lawful_bases"] == ["legal_obligation"]
    assert "pressing 9 (on +46850000002)" in text


def test_a_controller_the_configuration_does_not_describe_is_a_gap_not_a_guess(tmp_path, vault):
    config = load(tmp_path)
    vault.open_call(tenant="initech", platform="twilio", line="initech-1", caller=CALLER)
    result = export(vault, config, tmp_path / "g.zip", tenants=("initech",), language="en")
    summary, _, text, _ = read(result.path)
    said = statements(summary, "initech")
    assert "gap.controller_not_configured" in said
    assert "recipient.controller" not in said and "recipient.processor" in said
    assert not any(k.startswith("retention.line") for k in said)
    assert "does not describe the controller 'initech'" in text
    assert [g["kind"] for g in result.as_dict()["gaps"]] == ["gap.controller_not_configured"]


# -- language -------------------------------------------------------------------------------------
def test_summary_in_swedish_from_the_line_called_when_nothing_was_recorded(tmp_path, vault):
    config = load(tmp_path)
    call(vault, config, "+46850000002", outcome="objected")  # a Swedish line
    result = export(vault, config, tmp_path / "sv.zip")
    summary, page, text, _ = read(result.path)
    assert (summary["language"], summary["language_from"]) == ("sv", "line")
    assert 'lang="sv"' in page and "Dina uppgifter" in page
    assert "du invände: inte inspelat" in text
    assert "Du kan klaga hos en tillsynsmyndighet" in text
    assert "berättigat intresse" in text and "art. 6.1 f" in text
    assert "invända medan meddelandet spelas genom att trycka 9 (på +46850000002)" in text


def test_summary_language_is_what_the_caller_heard_or_what_was_asked_for(tmp_path, vault):
    config = load(tmp_path)
    recorded(vault, config, "+46850000001", language="sv")  # an English line, heard in Swedish
    assert read(export(vault, config, tmp_path / "a.zip").path)[0]["language_from"] == (
        "consent_evidence"
    )
    summary, page, _, _ = read(export(vault, config, tmp_path / "b.zip", language="en").path)
    assert summary["language"] == "en" and "Your data" in page
    with pytest.raises(subject.SubjectError, match="'de'"):
        export(vault, config, tmp_path / "c.zip", language="de")


def test_every_statement_has_a_sentence_in_every_language(tmp_path, vault):
    assert set(LANGUAGES) >= {"en", "sv"}
    kinds = set(SENTENCES["en"])
    for lang in LANGUAGES:
        assert set(SENTENCES[lang]) == kinds, lang
    # Every kind a rich export produces is rendered, in each language, without a KeyError.
    config = load(tmp_path, asterisk=True)
    recorded(vault, config, "+46850000001", platform="asterisk")
    recorded(vault, config, "+46850000002")
    held = recorded(vault, config, "+46850000003")
    lifecycle.set_hold(vault, held.id, reason="audit", actor="dpo")
    call(vault, config, "+46850000001", platform="other-pbx")
    for lang in LANGUAGES:
        summary, *_ = read(export(vault, config, tmp_path / f"{lang}.zip", language=lang).path)
        said = statements(summary)
        assert set(said) <= kinds
        assert said["right.erasure.legal_hold"][0]["facts"] == {"recordings": [held.id]}
        assert said["recipient.platform"][0]["facts"] == {"calls": 1, "platform": "other-pbx"}


# -- sealed controllers ---------------------------------------------------------------------------
def test_a_sealed_controller_without_its_key_is_held_sealed_and_the_rest_exported(tmp_path, clock):
    private, _, public = write_keypair(tmp_path / "keys")
    config = load(tmp_path, acme_custody=public)
    with Vault(
        tmp_path / "var", master_key=MASTER, clock=clock, fsync=False, public_keys={"acme": public}
    ) as v:
        sealed = recorded(v, config, "+46850000001")
        local = recorded(v, config, "+46850000009")  # globex: local keys
        result = export(v, config, tmp_path / "out.zip", tenants=("acme", "globex"), language="en")
        summary, page, text, names = read(result.path)
        assert result.sealed == [(sealed.id, sealed.key_ref)]
        assert f"recordings/{local.id}.wav" in names and f"recordings/{sealed.id}.wav" not in names
        with zipfile.ZipFile(result.path) as zf:
            meta = json.loads(zf.read(f"recordings/{sealed.id}.json"))
        assert meta["audio"] == "held_sealed" and meta["audio_file"] is None
        # What can be said without the key is said.
        assert meta["started_at"] == sealed.started_at and meta["duration_ms"] == 1000
        assert (
            meta["lawful_basis"] == "consent" and meta["retention_until"] == sealed.retention_until
        )
        assert "1 recording(s) are held sealed" in text and "held, sealed" in page
        assert "recipient.processor.sealed" in statements(summary)
        assert "cannot decrypt them" in text
        event = next(e for e in v.catalog.audit_events() if e.action == "subject.exported")
        assert event.detail["held_sealed"] == [sealed.id]
        # With the controller's private key the audio is there too.
        from storage.custody import load_private_key

        again = export(
            v,
            config,
            tmp_path / "key.zip",
            tenants=("acme", "globex"),
            private_key=load_private_key(private),
        )
        assert again.sealed == [] and f"recordings/{sealed.id}.wav" in read(again.path)[3]


def test_cli_export_of_a_sealed_controller_succeeds_and_says_what_is_held(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    _, _, public = write_keypair(tmp_path / "keys")
    config = load(tmp_path, acme_custody=public)
    data = tmp_path / "var"
    with Vault(data, fsync=False, public_keys={"acme": public}) as v:
        row = recorded(v, config, "+46850000001")
        call(v, config, "+46850000001")
    out = tmp_path / "export.zip"
    args = ["subject", "export", "--data-dir", str(data), "--phone", CALLER, "-o", str(out)]
    args += ["--config", str(tmp_path / "ivr.toml"), "--json"]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["held_sealed"] == [{"id": row.id, "key_ref": row.key_ref}]
    assert report["calls"] == 2 and report["calls_without_recording"] == 1
    assert report["recordings"] == 1 and report["audio_included"] == []
    assert report["language"] == "en" and report["gaps"] == []


# -- files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_the_zip_is_0600_and_a_folder_made_for_it_0700(tmp_path, vault, umask):
    config = load(tmp_path)
    recorded(vault, config, "+46850000001")
    old = os.umask(umask)
    try:
        result = export(vault, config, tmp_path / "new" / "deeper" / "out.zip")
    finally:
        os.umask(old)
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    for folder in (tmp_path / "new", tmp_path / "new" / "deeper"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [p.name for p in result.path.parent.iterdir()] == ["out.zip"]  # no staging left


# -- accountability -------------------------------------------------------------------------------
def test_earlier_requests_and_accesses_are_listed(tmp_path, vault):
    config = load(tmp_path)
    row = recorded(vault, config, "+46850000001")
    vault.audit(
        actor="supervisor",
        action="recording.played",
        tenant="acme",
        target=row.id,
        detail={"reason": "complaint"},
    )
    export(vault, config, tmp_path / "first.zip")
    summary, _, text, _ = read(export(vault, config, tmp_path / "second.zip").path)
    (earlier,) = summary["earlier_requests"]
    assert (earlier["action"], earlier["reason"]) == ("subject.exported", "Art. 15 request")
    (meta,) = summary["recordings"]
    assert [(e["actor"], e["reason"]) for e in meta["access_log"]] == [("supervisor", "complaint")]
    assert "category.access_log" in statements(summary) and "supervisor" in text


def test_report_is_pure_over_what_was_gathered(tmp_path, vault):
    """build_report reads nothing itself: the same data and configuration give the same text."""
    config = load(tmp_path)
    recorded(vault, config, "+46850000001")
    gathered = gather(vault, CALLER, ["acme"], subject.subject_digest(CALLER))
    kwargs: dict[str, Any] = {
        "phone": CALLER,
        "now": NOW,
        "language": None,
        "languages": LANGUAGES,
        "private_key_ref": None,
        "processor": Processor(),
    }
    assert build_report(gathered, config, **kwargs) == build_report(gathered, config, **kwargs)


# -- the admin API --------------------------------------------------------------------------------
def api_service(tmp_path: Path, monkeypatch: Any, **config: Any) -> tuple[Config, Any]:
    """The configuration (``config_text(**config)`` and a DPO token, ``acme-dpo``) and the
    service's app on it, not yet started."""
    from ivr.api import token_digest
    from ivr.service import create_app

    monkeypatch.setenv("IVR_MASTER_KEY", base64.b64encode(MASTER).decode())
    path = tmp_path / "ivr.toml"
    path.write_text(
        config_text(**config)
        + '[[api_tokens]]\ntenant = "acme"\nname = "t"\nrole = "dpo"\n'
        + f'token_sha256 = "{token_digest("acme-dpo")}"\n'
    )
    loaded = load_config(path)
    return loaded, create_app(loaded, tmp_path / "var", fsync=False)


async def test_api_export_states_the_configuration_and_holds_sealed_recordings(
    tmp_path, monkeypatch
):
    import aiohttp
    from aiohttp.test_utils import TestServer

    from ivr.service import VAULT

    _, _, public = write_keypair(tmp_path / "keys")
    config, app = api_service(tmp_path, monkeypatch, acme_custody=public)
    server = TestServer(app)
    await server.start_server()
    try:
        row = recorded(app[VAULT], config, "+46850000001")
        async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:
            resp = await session.post(
                "/api/v1/subject/export",
                json={"phone": CALLER, "reason": "Art. 15", "language": "sv"},
                headers={"Authorization": "Bearer acme-dpo"},
            )
            assert resp.status == 200
            body = await resp.read()
    finally:
        await server.close()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        summary = json.loads(zf.read("summary.json"))
        assert f"recordings/{row.id}.wav" not in zf.namelist()
    assert [r["audio"] for r in summary["recordings"]] == ["held_sealed"]
    assert "retention.line.default" in statements(summary)
    assert statements(summary)["recipient.controller"][0]["facts"]["dpo_contact"] == (
        "dpo@acme.example"
    )


# Paths this process opened for writing, or made, while ``_WATCHING`` holds a list; an audit
# hook cannot be removed, so the hook is installed once and does nothing outside that test.
_WATCHING: list[list[str]] = []


def _watch_writes(event: str, args: tuple[Any, ...]) -> None:
    if not _WATCHING:
        return
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        )
        if writing:
            _WATCHING[-1].append(os.fsdecode(args[0]))
    elif event in ("os.mkdir", "os.rename", "os.replace"):
        _WATCHING[-1].append(os.fsdecode(args[0]))


async def test_api_export_never_writes_the_zip_to_disk(tmp_path, monkeypatch):
    """The export holds recordings in clear: built for the API, it stays in memory. Everything
    the request wrote or made on disk is the vault's own (its audit entries), nothing in a
    temporary folder, which a crash would leave behind in clear."""
    import sys

    import aiohttp
    from aiohttp.test_utils import TestServer

    from ivr.service import VAULT

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # wherever tempfile would look
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)
    config, app = api_service(tmp_path, monkeypatch)
    server = TestServer(app)
    await server.start_server()
    sys.addaudithook(_watch_writes)
    written: list[str] = []
    try:
        row = recorded(app[VAULT], config, "+46850000001")
        async with aiohttp.ClientSession(base_url=str(server.make_url(""))) as session:
            _WATCHING.append(written)
            try:
                resp = await session.post(
                    "/api/v1/subject/export",
                    json={"phone": CALLER, "reason": "Art. 15"},
                    headers={"Authorization": "Bearer acme-dpo"},
                )
                body = await resp.read()
            finally:
                _WATCHING.remove(written)
            assert resp.status == 200, body
    finally:
        await server.close()
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert f"recordings/{row.id}.wav" in zf.namelist()  # audio in clear: the case that matters
    var = str(tmp_path / "var") + os.sep
    assert [p for p in written if not p.startswith(var)] == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_basis_articles_agree_with_the_records_of_processing():
    for basis in LawfulBasis:
        assert basis_article(basis) == BASIS_ARTICLES[basis][0]
