"""``ivr ropa``: the Art. 30 records and the measures annex, from the live configuration."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ivr.calls import flow_policy
from ivr.capabilities import TWILIO
from ivr.cli import main
from ivr.config import DEMO_CONFIG, load_config
from ivr.consent import ConsentFlow
from ivr.gdpr import breach as breach_module
from ivr.gdpr.ropa import (
    DEFAULT_PROCESSOR_NAME,
    EVIDENCE_FIELDS,
    ProcessorInfo,
    UnknownTenant,
    build_ropa,
    render_markdown,
)
from ivr.prompt_library import PromptLibrary, prompt_infos
from storage.custody import generate_keypair, key_ref_of, public_b64

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ARTICLES = {
    "consent": "Art. 6(1)(a)",
    "contract": "Art. 6(1)(b)",
    "legal_obligation": "Art. 6(1)(c)",
    "vital_interests": "Art. 6(1)(d)",
    "public_task": "Art. 6(1)(e)",
    "legitimate_interests": "Art. 6(1)(f)",
}

# Tenant acme: public-key custody, a forwarded consent line and a message line (no forward_to).
# Tenant beta: local custody, two lines sharing one purpose and basis (one activity), a contract
# line; its own retention for contract.
ACME_LINES = ("+46850000001", "+46850000002")
BETA_LINES = ("+46850000011", "+46850000012", "+46850000013")
ACME_PURPOSES = ("Quality assurance of acme calls", "Acme voicemail for complaints")
BETA_PURPOSES = ("Beta public service requests", "Beta orders by phone")


def _write_custom(directory: Path, *, asterisk: bool = True) -> Path:
    _, public = generate_keypair()
    digests = [hashlib.sha256(f"token-{i}".encode()).hexdigest() for i in range(4)]
    text = f"""
[tenants.acme]
display_name = "Acme Insurance"
dpo_contact = "dpo@acme.example"
key_custody = "public_key"
public_key = "{public_b64(public)}"

[tenants.beta]
display_name = "Beta Municipality"
dpo_contact = "privacy@beta.example"
retention_days = {{ contract = 730 }}

[[lines]]
number = "{ACME_LINES[0]}"
tenant = "acme"
purpose = "{ACME_PURPOSES[0]}"
lawful_basis = "consent"
forward_to = "+46850000099"
retention_days = 45

[[lines]]
number = "{ACME_LINES[1]}"
tenant = "acme"
purpose = "{ACME_PURPOSES[1]}"
lawful_basis = "legitimate_interests"
max_recording_seconds = 120

[[lines]]
number = "{BETA_LINES[0]}"
tenant = "beta"
purpose = "{BETA_PURPOSES[0]}"
lawful_basis = "public_task"
consent_mode = "opt_out"
forward_to = "sip:desk@pbx.beta.example"

[[lines]]
number = "{BETA_LINES[1]}"
tenant = "beta"
purpose = "{BETA_PURPOSES[0]}"
lawful_basis = "public_task"
consent_mode = "notice"
language = "sv"
forward_to = "sip:desk@pbx.beta.example"
policy_id = "beta-public-sv"

[[lines]]
number = "{BETA_LINES[2]}"
tenant = "beta"
purpose = "{BETA_PURPOSES[1]}"
lawful_basis = "contract"
forward_to = "+46850000098"

[[api_tokens]]
tenant = "acme"
name = "alice"
role = "dpo"
token_sha256 = "{digests[0]}"

[[api_tokens]]
tenant = "acme"
name = "bob"
role = "supervisor"
token_sha256 = "{digests[1]}"

[[api_tokens]]
tenant = "beta"
name = "carol"
role = "admin"
token_sha256 = "{digests[2]}"

[[api_tokens]]
tenant = "beta"
name = "old"
role = "admin"
token_sha256 = "{digests[3]}"
expires = 2020-01-01
"""
    if asterisk:
        text += """
[asterisk]
url = "http://pbx.internal.example:8088/ari"
username = "ivr"
"""
    path = directory / "ivr.toml"
    path.write_text(text)
    return path


@pytest.fixture
def custom(tmp_path: Path) -> Path:
    return _write_custom(tmp_path)


def _build(path: Path | None, **kwargs):
    config = load_config(path, environ={})
    options = {"tenant": None, "data_dir": Path("var"), "now": NOW, "processor": ProcessorInfo()}
    options.update(kwargs)
    return config, build_ropa(config, **options)


def _controller(ropa: dict, tenant: str) -> dict:
    (found,) = [c for c in ropa["controllers"] if c["tenant"] == tenant]
    return found


def _recipients(controller: dict) -> str:
    return " ".join(f"{r['name']} {r['description']}" for r in controller["recipients"])


def _md_controller_sections(md: str) -> dict[str, str]:
    """Each controller's Art. 30(1) section of the Markdown, by tenant id."""
    part1 = md.split("## Part 1.", 1)[1].split("## Part 2.", 1)[0]
    sections = {}
    for chunk in re.split(r"\n(?=### 1\.\d+ )", part1)[1:]:
        tenant = re.match(r"### 1\.\d+ .*\(`([^`]+)`\)", chunk)[1]
        sections[tenant] = chunk
    return sections


def _md_annex(md: str) -> str:
    return md.split("## Annex.", 1)[1]


# -- the demo configuration ---------------------------------------------------------------------


def test_demo_has_every_art_30_1_element_per_line():
    config, ropa = _build(None)
    (controller,) = ropa["controllers"]
    tenant = config.tenants["demo"]
    assert controller["name"] == tenant.display_name
    assert controller["dpo_contact"] == tenant.dpo_contact
    # One activity per distinct (purpose, basis); every line is in exactly one.
    pairs = {(line.purpose, line.lawful_basis.value) for line in config.lines.values()}
    activities = controller["activities"]
    assert {(a["purpose"], a["lawful_basis"]["value"]) for a in activities} == pairs
    listed = [line["number"] for a in activities for line in a["lines"]]
    assert sorted(listed) == sorted(config.lines)
    for a in activities:
        basis = a["lawful_basis"]
        assert basis["article"] == ARTICLES[basis["value"]]
        assert a["data_subjects"] and a["personal_data"]
        for line in a["lines"]:
            configured = config.lines[line["number"]]
            assert a["retention"]["per_line"][line["number"]] == configured.retention_days
            assert line["policy_id"] == configured.policy_id
            assert line["consent_mode"] == configured.consent_mode.value
    consent = next(a for a in activities if a["lawful_basis"]["value"] == "consent")
    assert "DTMF" in " ".join(consent["lawful_basis"]["how"])
    assert "Art. 7(1)" in consent["lawful_basis"]["evidence"]
    objecting = next(a for a in activities if a["lawful_basis"]["value"] == "legitimate_interests")
    assert "Art. 21" in objecting["lawful_basis"]["objection"]
    # Twilio always, Asterisk not: the demo has no [asterisk] section.
    recipients = _recipients(controller)
    assert "Twilio" in recipients and "Asterisk" not in json.dumps(controller)
    assert controller["erasure"] and "crypto-shredding" in " ".join(controller["erasure"])
    # The message lines record the caller only; forwarded lines both sides and agents.
    message = next(a for a in activities if a["lines"][0]["number"] == "+15550100005")
    assert message["lines"][0]["recorded"] == "caller only"
    assert not any("agents" in s for s in message["data_subjects"])
    forwarded = next(a for a in activities if a["lines"][0]["number"] == "+15550100001")
    assert forwarded["lines"][0]["recorded"] == "caller and agent"
    assert any("agents" in s for s in forwarded["data_subjects"])


def test_demo_header_ties_the_document_to_the_file_and_data_dir(tmp_path):
    _, ropa = _build(None, data_dir=tmp_path / "vault")
    assert ropa["config"]["source"] == str(DEMO_CONFIG.resolve())
    assert ropa["config"]["sha256"] == hashlib.sha256(DEMO_CONFIG.read_bytes()).hexdigest()
    assert ropa["generated_at"] == "2026-11-28T12:00:00Z"
    assert ropa["storage"]["data_dir"] == str((tmp_path / "vault").resolve())
    location = next(s for s in ropa["annex"] if s["key"] == "storage_location")
    assert location["data_dir"] == str((tmp_path / "vault").resolve())
    assert str((tmp_path / "vault").resolve()) in " ".join(location["measures"])
    md = render_markdown(ropa)
    assert ropa["config"]["sha256"] in md and str((tmp_path / "vault").resolve()) in md


def test_evidence_fields_are_what_the_flow_writes(prompt_cache):
    config = load_config(None, environ={})
    line = config.lines["+15550100001"]
    prompts = PromptLibrary.load(config, prompt_cache).for_call(line, "twilio")
    flow = ConsentFlow(flow_policy(line, TWILIO), prompt_infos(prompts), NOW)
    assert tuple(flow.evidence()) == EVIDENCE_FIELDS


# -- a configuration with two controllers -------------------------------------------------------


def test_custom_config_art_30_1_per_controller(custom):
    config, ropa = _build(custom)
    acme, beta = _controller(ropa, "acme"), _controller(ropa, "beta")
    assert (acme["name"], acme["dpo_contact"]) == ("Acme Insurance", "dpo@acme.example")
    assert (beta["name"], beta["dpo_contact"]) == ("Beta Municipality", "privacy@beta.example")

    assert [a["purpose"] for a in acme["activities"]] == list(ACME_PURPOSES)
    # Two beta lines share purpose and basis: one activity listing both, with both modes.
    assert [a["purpose"] for a in beta["activities"]] == list(BETA_PURPOSES)
    public = beta["activities"][0]
    assert [line["number"] for line in public["lines"]] == list(BETA_LINES[:2])
    assert public["consent_modes"] == ["opt_out", "notice"]
    assert public["languages"] == ["en", "sv"]
    assert public["policies"] == ["beta-46850000011 v1", "beta-public-sv v1"]
    assert public["lawful_basis"]["article"] == "Art. 6(1)(e)"
    assert "Art. 21" in public["lawful_basis"]["objection"]

    # Retention per line: the line's own, the tenant's, the built-in default.
    retention = {
        n: d
        for c in (acme, beta)
        for a in c["activities"]
        for n, d in a["retention"]["per_line"].items()
    }
    assert retention == {n: line.retention_days for n, line in config.lines.items()}
    assert retention[ACME_LINES[0]] == 45 and retention[BETA_LINES[2]] == 730

    # The message line: caller only, no agents among the data subjects.
    voicemail = acme["activities"][1]
    assert voicemail["lines"][0]["forward_to"] is None
    assert voicemail["lines"][0]["recorded"] == "caller only"
    assert len(voicemail["data_subjects"]) == 1
    assert "caller only" in voicemail["personal_data"][0]
    assert any("agents" in s for s in acme["activities"][0]["data_subjects"])
    # Numbers are sealed to the public key for acme, encrypted locally for beta.
    assert "sealed to the controller's public key" in " ".join(voicemail["personal_data"])
    assert "public key" not in " ".join(beta["activities"][0]["personal_data"])


def test_recipients_follow_tokens_and_asterisk(custom, tmp_path):
    _, ropa = _build(custom)
    acme, beta = _controller(ropa, "acme"), _controller(ropa, "beta")
    acme_api = acme["recipients"][0]
    assert set(acme_api["roles"]) == {"dpo", "supervisor"}
    assert acme_api["roles"]["dpo"]["tokens"] == 1
    assert (
        "subject access export (Art. 15) and erasure (Art. 17)" in acme_api["roles"]["dpo"]["may"]
    )
    beta_api = beta["recipients"][0]
    assert set(beta_api["roles"]) == {"admin"}
    assert beta_api["roles"]["admin"] == {
        "tokens": 2,
        "expired": 1,
        "may": beta_api["roles"]["admin"]["may"],
    }
    for controller in (acme, beta):
        text = _recipients(controller)
        assert "Twilio" in text and "Asterisk" in text and "pbx.internal.example" in text
        assert "None by the service itself" in controller["transfers"]
        assert "Twilio" in controller["transfers"]
    assert "cannot decrypt" in _recipients(acme)
    assert "can decrypt" in _recipients(beta) and "cannot decrypt" not in _recipients(beta)

    # Without [asterisk], no Asterisk anywhere in the records.
    other = tmp_path / "no-asterisk"
    other.mkdir()
    _, plain = _build(_write_custom(other, asterisk=False))
    assert "Asterisk" not in json.dumps(plain["controllers"])
    assert "Asterisk" not in json.dumps(plain["processor"])
    assert "Twilio" in _recipients(_controller(plain, "acme"))


def test_processor_record(custom):
    _, ropa = _build(custom, processor=ProcessorInfo("Callhub AB", "privacy@callhub.example"))
    p = ropa["processor"]
    assert (p["name"], p["contact"], p["placeholder"]) == (
        "Callhub AB",
        "privacy@callhub.example",
        False,
    )
    assert [c["tenant"] for c in p["controllers"]] == ["acme", "beta"]
    assert {c["tenant"]: c["key_custody"] for c in p["controllers"]} == {
        "acme": "public_key",
        "beta": "local",
    }
    names = [c["name"] for c in p["categories_of_processing"]]
    for needed in ("recording", "storage", "retention", "erasure", "subject access export"):
        assert needed in names
    custody = next(c for c in p["categories_of_processing"] if c["name"] == "key custody")
    assert "beta (local custody)" in custody["description"]
    assert "public keys of acme" in custody["description"]
    assert "None by the service" in p["transfers"]
    assert "annex" in p["security_measures"]
    assert not ropa["warnings"]
    md = render_markdown(ropa)
    assert "| Processor | Callhub AB |" in md and "placeholder" not in md


def test_placeholder_processor_is_flagged(custom):
    _, ropa = _build(custom)
    assert ropa["processor"]["name"] == DEFAULT_PROCESSOR_NAME
    assert ropa["processor"]["placeholder"]
    assert any("--processor-name" in w for w in ropa["warnings"])
    assert "**Warning:** The processor's name and contact are placeholders" in render_markdown(ropa)


def test_a_controller_section_never_mentions_another_controllers_lines(custom):
    _, ropa = _build(custom)
    md = render_markdown(ropa)
    sections = _md_controller_sections(md)
    assert set(sections) == {"acme", "beta"}
    acme_json = json.dumps(_controller(ropa, "acme"))
    beta_json = json.dumps(_controller(ropa, "beta"))
    for own, other, own_json in (
        (ACME_LINES + ACME_PURPOSES, BETA_LINES + BETA_PURPOSES, acme_json),
        (BETA_LINES + BETA_PURPOSES, ACME_LINES + ACME_PURPOSES, beta_json),
    ):
        section = sections["acme" if own_json is acme_json else "beta"]
        for item in own:
            assert item in section and item in own_json
        for item in other:
            assert item not in section and item not in own_json
    assert "Beta" not in sections["acme"] and "Acme" not in sections["beta"]


def test_config_hash_matches_the_file(custom):
    _, ropa = _build(custom)
    assert ropa["config"]["source"] == str(custom.resolve())
    assert ropa["config"]["sha256"] == hashlib.sha256(custom.read_bytes()).hexdigest()


def test_markdown_and_json_agree(custom, capsys):
    assert main(["ropa", "--config", str(custom), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert main(["ropa", "--config", str(custom)]) == 0
    md = capsys.readouterr().out
    sections = _md_controller_sections(md)
    for controller in data["controllers"]:
        section = sections[controller["tenant"]]
        md_purposes = re.findall(r"^#### Activity 1\.\d+\.\d+: (.+)$", section, re.M)
        assert md_purposes == [a["purpose"] for a in controller["activities"]]
        md_retention = {
            n: int(d) for n, d in re.findall(r"^- `(\+\d+)`: (\d+) days from", section, re.M)
        }
        json_retention = {
            n: d for a in controller["activities"] for n, d in a["retention"]["per_line"].items()
        }
        assert md_retention == json_retention
        for a in controller["activities"]:
            assert f"**Lawful basis:** {a['lawful_basis']['article']} GDPR" in section
        assert controller["dpo_contact"] in section
    assert data["config"]["sha256"] in md
    assert [s["title"] for s in data["annex"]] == re.findall(r"^### A\.\d+ (.+)$", md, re.M)


def test_annex_names_public_key_custody_exactly_for_that_tenant(custom):
    config, ropa = _build(custom)
    encryption = next(s for s in ropa["annex"] if s["key"] == "encryption_at_rest")
    rows = {row["tenant"]: row for row in encryption["tenants"]}
    assert rows["acme"]["mode"] == "public_key" and not rows["acme"]["service_can_decrypt"]
    assert rows["acme"]["key_ref"] == key_ref_of(config.tenants["acme"].public_key)
    assert rows["beta"]["mode"] == "local" and rows["beta"]["service_can_decrypt"]
    assert "Public-key custody for acme:" in " ".join(encryption["measures"])

    annex = _md_annex(render_markdown(ropa))
    acme_rows = [ln for ln in annex.splitlines() if "`acme`" in ln]
    beta_rows = [ln for ln in annex.splitlines() if "`beta`" in ln]
    custody_acme = [ln for ln in acme_rows if "public key" in ln]
    assert len(custody_acme) == 1 and custody_acme[0].endswith("| no |")
    assert key_ref_of(config.tenants["acme"].public_key) in custody_acme[0]
    assert not any("public key" in ln for ln in beta_rows)
    assert any(ln.endswith("| yes |") for ln in beta_rows)
    mentions = [ln for ln in annex.splitlines() if re.search(r"public.key custody", ln, re.I)]
    assert mentions and all("acme" in ln and "beta" not in ln for ln in mentions)

    # The demo (local custody only) names no tenant under public-key custody.
    _, demo = _build(None)
    demo_annex = _md_annex(render_markdown(demo))
    assert not re.search(r"public.key custody for", demo_annex, re.I)


def test_annex_lists_roles_per_tenant(custom):
    _, ropa = _build(custom)
    access = next(s for s in ropa["annex"] if s["key"] == "access_control")
    # Only tokens still valid at generation time count.
    assert {r["tenant"]: r["roles"] for r in access["tenants"]} == {
        "acme": {"dpo": 1, "supervisor": 1},
        "beta": {"admin": 1},
    }


def test_the_breach_workflow_is_named_as_the_cli_offers_it(custom, capsys):
    _, ropa = _build(custom)
    section = next(s for s in ropa["annex"] if s["key"] == "breach_handling")
    assert section["commands"] == [f"ivr breach {c}" for c in breach_module.COMMANDS]
    assert "72-hour" in " ".join(section["measures"])
    # Every step named is a command that exists, and nothing else is one.
    for step in breach_module.COMMANDS:
        with pytest.raises(SystemExit) as done:
            main(["breach", step, "--help"])
        assert done.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["breach", "forget", "--help"])
    assert done.value.code == 2
    assert [s["id"] for s in ropa["annex"]] == [f"A.{i}" for i in range(1, len(ropa["annex"]) + 1)]


# -- the command --------------------------------------------------------------------------------


def test_tenant_filter(custom, capsys):
    assert main(["ropa", "--config", str(custom), "--tenant", "acme", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["tenant"] for c in data["controllers"]] == ["acme"]
    assert data["scope"] == {"tenant": "acme"}
    # A copy for one controller does not name the processor's other clients anywhere.
    assert [c["tenant"] for c in data["processor"]["controllers"]] == ["acme"]
    assert data["processor"]["other_controllers"] == 1
    for number in BETA_LINES:
        assert number not in json.dumps(data)
    assert "beta" not in json.dumps(data["processor"]) + json.dumps(data["annex"])

    assert main(["ropa", "--config", str(custom), "--tenant", "beta"]) == 0
    md = capsys.readouterr().out
    assert set(_md_controller_sections(md)) == {"beta"}


def test_unknown_tenant_is_a_clear_error(custom, capsys):
    assert main(["ropa", "--config", str(custom), "--tenant", "gamma"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no tenant 'gamma'" in captured.err and "acme, beta" in captured.err
    config = load_config(custom, environ={})
    with pytest.raises(UnknownTenant):
        build_ropa(config, tenant="gamma", data_dir=None, now=NOW, processor=ProcessorInfo())


def test_output_file_is_written_whole(custom, tmp_path, capsys):
    out = tmp_path / "annex.md"
    argv = ["ropa", "--config", str(custom), "-o", str(out), "--data-dir", str(tmp_path / "v")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "wrote" in captured.err and "processor" in captured.err.lower()
    text = out.read_text()
    assert text.startswith("# Records of processing activities (GDPR Art. 30)")
    assert str((tmp_path / "v").resolve()) in text
    assert not list(tmp_path.glob(".annex.md.*"))  # no temporary file left behind

    named = ["--processor-name", "Callhub AB", "--processor-contact", "privacy@callhub.example"]
    assert main([*argv, "--format", "json", *named]) == 0
    data = json.loads(out.read_text())
    assert data["processor"]["name"] == "Callhub AB" and not data["warnings"]
    assert "warning" not in capsys.readouterr().err

    assert main(["ropa", "--config", str(custom), "-o", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err


def test_a_broken_configuration_fails_cleanly(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[tenants.acme]\n")
    assert main(["ropa", "--config", str(bad)]) == 1
    assert "bad.toml: tenants.acme.display_name" in capsys.readouterr().err


def test_the_record_says_per_platform_how_a_caller_withdraws():
    config = load_config(None, environ={})
    ropa = build_ropa(config, tenant=None, data_dir=None, now=NOW, processor=ProcessorInfo())
    text = json.dumps(ropa)
    # Twilio carries no keys after the forward: the record must not promise the key there.
    assert "+15550100001 on twilio: no key reaches the service once the call is forwarded" in text
    assert "ask the agent" in text and "ivr calls withdraw" in text
    assert "+15550100001 on asterisk: the key * stops the recording for the rest of" in text
    assert "+15550100001 on twilio: the key" not in text
    lines = [
        line
        for c in ropa["controllers"]
        for a in c["activities"]
        for line in a["lines"]
        if line["number"] == "+15550100001"
    ]
    assert lines and lines[0]["withdraw_via"] == {"twilio": "agent", "asterisk": "keys"}


def test_the_annex_says_where_recordings_go_with_an_object_store(tmp_path):
    """With [storage] blob_url the record names the object store as where new audio goes,
    and no longer says that nothing leaves the data directory; without it, nothing changes."""
    config, local = _build(None)
    storage = " ".join(
        next(s for s in local["annex"] if s["key"] == "storage_location")["measures"]
    )
    assert "blobs/ (one encrypted file per recording)" in storage
    assert "object store" not in storage and "sends no recording anywhere else." in storage
    with_s3 = dataclasses.replace(config, blob_url="s3://recordings/ivr")
    ropa = build_ropa(
        with_s3, tenant=None, data_dir=Path("var"), now=NOW, processor=ProcessorInfo()
    )
    sections = {s["key"]: " ".join(s["measures"]) for s in ropa["annex"]}
    assert "S3-compatible object store s3://recordings/ivr" in sections["storage_location"]
    assert "no personal data in their names or metadata" in sections["storage_location"]
    assert "sends no recording anywhere else than that object store" in sections["storage_location"]
    assert "segment being filled" in sections["availability"]
    assert "s3://recordings/ivr" in render_markdown(ropa)
    assert "audio in the object store s3://recordings/ivr" in json.dumps(ropa["processor"])


# -- where the data is: the data directory, PostgreSQL, the key store ---------------------------

CATALOG_URL = "postgresql://ivr:secret-user@db.example.com:5432/ivr?sslmode=verify-full"
KEYRING_URL = "postgresql://ivr@keys.example.com/ivr_keys?sslmode=verify-full"


def _sections(config) -> dict[str, str]:
    ropa = build_ropa(config, tenant=None, data_dir=Path("var"), now=NOW, processor=ProcessorInfo())
    return {s["key"]: " ".join(s["measures"]) for s in ropa["annex"]} | {
        "transfers": " ".join(c["transfers"] for c in ropa["controllers"]),
        "processor": json.dumps(ropa["processor"]),
        "all": render_markdown(ropa),
    }


def test_the_record_says_sqlite_only_where_the_catalog_is_sqlite():
    config, _ = _build(None)
    local = _sections(config)
    assert "catalog.sqlite3 (calls, recordings with their wrapped keys" in local["storage_location"]
    assert "The catalog is SQLite in WAL mode" in local["availability"]
    assert (
        "All recordings, keys and records are stored in the data directory"
        in (local["storage_location"])
    )
    assert "PostgreSQL" not in local["all"] and "key store" not in local["all"]

    on_pg = _sections(dataclasses.replace(config, catalog_url=CATALOG_URL))
    # Named where it is, without the user name or the connection options.
    where = "postgresql://db.example.com:5432/ivr"
    assert f"the PostgreSQL database {where} ([storage] catalog_url)" in on_pg["storage_location"]
    assert "secret-user" not in on_pg["all"] and "sslmode" not in on_pg["all"]
    assert "SQLite" not in on_pg["all"] and "catalog.sqlite3" not in on_pg["all"]
    assert "All recordings, keys and records" not in on_pg["storage_location"]
    assert "The data directory" in on_pg["storage_location"]
    assert "keyring.json (controller keys" in on_pg["storage_location"]  # still there
    assert "The catalog is a PostgreSQL database" in on_pg["availability"]
    # What an erasure leaves in PostgreSQL's own files is said, and where it is documented.
    assert "write-ahead log" in on_pg["storage_limitation"]
    assert "docs/postgresql.md" in on_pg["storage_limitation"]
    # Transfers and the processor's record name the database, not just the data directory.
    assert f"the catalog database {where}" in on_pg["transfers"]
    assert f"in the catalog database {where} and the data directory" in on_pg["processor"]


def test_the_record_names_the_key_store_where_the_keyring_is_one():
    config, _ = _build(None)
    both = dataclasses.replace(
        config, catalog_url=CATALOG_URL, keyring_url=KEYRING_URL, blob_url="s3://rec/ivr"
    )
    s = _sections(both)
    keys = "postgresql://keys.example.com/ivr_keys"
    assert f"in the key store database {keys} ([storage] keyring_url)" in s["storage_location"]
    assert "keyring.json" not in s["all"] and "SQLite" not in s["all"]
    # With both databases and the object store, the data directory holds only older blobs.
    assert (
        "default ./var) holds the recordings made before the object store"
        in (s["storage_location"])
    )
    assert (
        "and the data directory, and of the recordings' audio in the object store"
        in (s["processor"])
    )
    # Backed up apart from the catalog: the rule names the key store, not the file.
    assert (
        "backed up apart from the key store database and the master key" in (s["storage_location"])
    )
    assert "one transaction under the key store's own lock" in s["availability"]
    assert "key store database's write-ahead log" in s["storage_limitation"]
    places = "the data directory, the catalog database postgresql://db.example.com:5432/ivr, "
    places += f"the key store database {keys} and the object store s3://rec/ivr"
    assert places in s["transfers"]
    # The key store alone, beside a SQLite catalog: both said as they are.
    alone = _sections(dataclasses.replace(config, keyring_url=KEYRING_URL))
    assert "catalog.sqlite3" in alone["storage_location"]
    assert "keyring.json" not in alone["all"]
    assert (
        "The catalog is SQLite in WAL mode; a change of the keyring is one transaction"
        in (alone["availability"])
    )


def test_urls_are_named_without_credentials():
    from ivr.gdpr.ropa_places import redact_url

    assert redact_url("postgresql://u:p@h:5433/db?sslmode=require") == "postgresql://h:5433/db"
    assert redact_url("postgres://u@[::1]/db") == "postgres://[::1]/db"
