"""``ivr recordings import``: the caller's number, found again by subject requests and breach
counts, and the evidence a consent-basis import must carry."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from ivr.cli import main

KEY = base64.b64encode(bytes(range(32))).decode()
CALLER = "+46701234567"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IVR_MASTER_KEY", KEY)
    monkeypatch.delenv("IVR_DATA_DIR", raising=False)
    monkeypatch.delenv("IVR_CONFIG", raising=False)


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "call.wav"
    t = np.arange(8000) / 8000
    sf.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "var"


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def imp(data: Path, wav: Path, *extra: str, basis: str = "contract") -> list[str | Path]:
    return [
        *("recordings", "import", wav, "--data-dir", data, "--tenant", "demo"),
        *("--lawful-basis", basis, "--purpose", "quality", *extra),
    ]


def recordings(data: Path) -> int:
    if not (data / "catalog.sqlite3").exists():
        return 0
    db = sqlite3.connect(data / "catalog.sqlite3")
    try:
        count: int = db.execute("SELECT COUNT(*) FROM recordings").fetchone()[0]
        return count
    finally:
        db.close()


def audit_entry(capsys: pytest.CaptureFixture[str], data: Path, action: str) -> dict[str, Any]:
    entries = run_json(capsys, "audit", "show", "--data-dir", data)
    found = [e for e in entries if e["action"] == action]
    assert len(found) == 1, entries
    entry: dict[str, Any] = found[0]
    return entry


# -- the caller ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "given", [("+46 70-123 45 67",), ("0046701234567",), ("070-123 45 67", "--region", "SE")]
)
def test_an_imported_callers_recording_is_found_exported_and_erased(
    given: tuple[str, ...],
    data: Path,
    wav: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caller = ["--caller", given[0], *given[1:]]
    row = run_json(capsys, *imp(data, wav, *caller))
    other = run_json(capsys, *imp(data, wav, "--caller", "+46701234568"))
    out = tmp_path / "access.zip"
    code, _, err = run(
        capsys, "subject", "export", "--phone", CALLER, "-o", out, "--data-dir", data
    )
    assert code == 0, err
    names = "\n".join(zipfile.ZipFile(out).namelist())
    assert row["id"] in names and other["id"] not in names

    erase = ["subject", "erase", "--phone", "070 123 45 67", "--region", "SE"]
    code, _, err = run(capsys, *erase, "--reason", "Art. 17", "--data-dir", data)
    assert code == 0, err
    assert run_json(capsys, "recordings", "show", row["id"], "--data-dir", data)["status"] == (
        "erased"
    )
    shown = run_json(capsys, "recordings", "show", other["id"], "--data-dir", data)
    assert shown["status"] == "complete"


def test_breach_counts_imported_callers(
    data: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for number in (CALLER, CALLER, "+46701234568"):
        run_json(capsys, *imp(data, wav, "--caller", number))
    run_json(capsys, *imp(data, wav))  # no caller: a record, not a subject
    argv = ["breach", "open", "--detected-at", "2026-11-28T08:00:00Z", "--description", "lost"]
    b = run_json(capsys, *argv, "--scope", "tenant:demo", "--keys-safe", "--data-dir", data)
    demo = b["assessment"]["controllers"]["demo"]
    # Callers known by number (a call without one may be counted apart, as unknown).
    assert demo.get("subjects_by_number", demo["subjects"]) == 2
    assert len(demo["recordings"]) == 4


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (("+4670",), "not a possible phone number"),
        (("not a number",), "is not a phone number"),
        (("070-123 45 67",), "give --region"),
        (("070-123 45 67", "--region", "XX"), "is not a phone number"),
    ],
)
def test_a_bad_caller_number_is_refused_before_anything_is_stored(
    given: tuple[str, ...],
    says: str,
    data: Path,
    wav: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, *imp(data, wav, "--caller", *given))
    assert code == 1
    assert err.startswith("ivr: error: --caller: ") and says in err, err
    assert recordings(data) == 0


def test_region_without_caller_is_refused(
    data: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *imp(data, wav, "--region", "SE"))
    assert code == 1 and "--region is for --caller" in err
    assert recordings(data) == 0


# -- the evidence -------------------------------------------------------------------------------
def test_consent_without_evidence_is_refused(
    data: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *imp(data, wav, basis="consent"))
    assert code == 1 and out == ""
    assert "lawful basis consent needs the evidence" in err
    for option in ("--evidence", "--evidence-file", "--no-evidence-reason"):
        assert option in err
    assert recordings(data) == 0


@pytest.mark.parametrize("empty", ["--evidence", "--no-evidence-reason"])
def test_empty_evidence_is_refused(
    empty: str, data: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *imp(data, wav, empty, "  ", basis="consent"))
    assert code == 1 and "is empty" in err
    assert recordings(data) == 0


def test_evidence_options_exclude_each_other(
    data: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in imp(data, wav, "--evidence", "a", "--no-evidence-reason", "b")])
    assert exc.value.code == 2
    capsys.readouterr()


def test_a_no_evidence_reason_is_kept_and_audited(
    data: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reason = "recorded in 2019 under the old system; its consent log was lost"
    row = run_json(capsys, *imp(data, wav, "--no-evidence-reason", reason, basis="consent"))
    evidence = run_json(capsys, "recordings", "show", row["id"], "--data-dir", data)[
        "consent_evidence"
    ]
    assert evidence["origin"] == "import" and evidence["no_evidence_reason"] == reason
    assert evidence["evidence"] is None and evidence["lawful_basis"] == "consent"
    assert evidence["audio_file"] == "call.wav"
    detail = audit_entry(capsys, data, "recording.imported")["detail"]
    assert detail["evidence"] == "none" and detail["no_evidence_reason"] == reason


def test_evidence_text_and_file_are_kept(
    data: Path, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "Consent given orally to agent 12 at 10:02; ticket 4711."
    row = run_json(capsys, *imp(data, wav, "--evidence", text, basis="consent"))
    shown = run_json(capsys, "recordings", "show", row["id"], "--data-dir", data)
    assert shown["consent_evidence"]["evidence"] == text
    assert shown["consent_evidence"]["evidence_file"] is None
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert shown["consent_evidence"]["evidence_sha256"] == digest
    detail = audit_entry(capsys, data, "recording.imported")["detail"]
    assert detail["evidence"] == "text" and detail["evidence_sha256"] == digest
    assert text not in json.dumps(detail)  # the audit log names it, it does not copy it

    note = tmp_path / "consent-form.txt"
    note.write_text("Signed form, scanned copy kept by the controller.\n", encoding="utf-8")
    row = run_json(capsys, *imp(data, wav, "--evidence-file", str(note), basis="consent"))
    shown = run_json(capsys, "recordings", "show", row["id"], "--data-dir", data)
    assert shown["consent_evidence"]["evidence"] == note.read_text(encoding="utf-8")
    assert shown["consent_evidence"]["evidence_file"] == "consent-form.txt"


def test_a_bad_evidence_file_is_refused(
    data: Path, wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "scan.pdf"
    binary.write_bytes(b"%PDF-1.4\n\xff\xfe\x00")
    big = tmp_path / "big.txt"
    big.write_text("x" * (64 * 1024 + 1))
    for path, says in ((binary, "not UTF-8 text"), (big, "at most 65536"), (tmp_path / "no", "")):
        code, _, err = run(capsys, *imp(data, wav, "--evidence-file", str(path), basis="consent"))
        assert code == 1 and says in err, err
    assert recordings(data) == 0


def test_other_bases_need_no_evidence_but_keep_what_is_given(
    data: Path, wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = run_json(capsys, *imp(data, wav, basis="legitimate_interests"))
    assert row["consent_evidence"] is None
    detail = audit_entry(capsys, data, "recording.imported")["detail"]
    assert detail["evidence"] == "none given"
    row = run_json(capsys, *imp(data, wav, "--evidence", "notice read out by the agent"))
    assert row["consent_evidence"]["evidence"] == "notice read out by the agent"
