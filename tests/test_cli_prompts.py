"""``ivr prompts show`` and ``ivr prompts build``, and what ``ivr config check`` says of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ivr.cli import main
from media.tts import PromptCache

CONSENT_LINE = "+15550100001"  # consent, opt_in, forwarded: agent on Twilio, keys on Asterisk
OBJECTION_LINE = "+15550100002"  # legitimate interests, opt_out, forwarded
REPORT_LINE = "+15550100006"  # legitimate interests, opt_out, Swedish, no agent


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch):
    monkeypatch.delenv("IVR_CONFIG", raising=False)


def show(capsys, *args: str) -> dict:
    assert main(["prompts", "show", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_show_a_consent_line_names_its_purpose_basis_keys_and_withdraw_channel(capsys):
    out = show(capsys, "--line", CONSENT_LINE)
    assert (out["lawful_basis"], out["consent_mode"]) == ("consent", "opt_in")
    assert set(out["platforms"]) == {"twilio", "asterisk"}
    for platform, withdraw in (("twilio", "agent"), ("asterisk", "keys")):
        got = out["platforms"][platform]
        assert got["withdraw"] == withdraw
        prompts = {p["prompt_id"]: p for p in got["prompts"]}
        assert got["prompts"][0]["prompt_id"] == "consent_request"  # heard first, shown first
        assert "objection_notice" not in prompts and "notice_only" not in prompts
        ask = prompts["consent_request"]
        assert ask["source"] == "synthesised"
        text = ask["text"]
        assert "for this purpose: Improving our customer service and training our staff." in text
        assert "We record only with your consent." in text
        assert "Press 1 to allow the recording, or 9 to continue without it." in text
        assert "What was recorded will then be deleted." in text
    twilio = out["platforms"]["twilio"]["prompts"][0]["text"]
    asterisk = out["platforms"]["asterisk"]["prompts"][0]["text"]
    assert "tell the person you speak with" in twilio and "star" not in twilio
    assert "press star at any time to stop the recording" in asterisk


def test_show_a_legitimate_interests_line(capsys):
    out = show(capsys, "--line", "+1 555 0100 002", "--platform", "asterisk")
    assert out["line"] == OBJECTION_LINE and list(out["platforms"]) == ["asterisk"]
    (first, *_) = out["platforms"]["asterisk"]["prompts"]
    assert first["prompt_id"] == "objection_notice"
    text = first["text"]
    assert text.startswith(
        "This call is recorded, for this purpose: Keeping a record of complaints so we can "
        "investigate them."
    )
    assert "We record it based on our legitimate interests." in text
    assert "To object, press 9 now." in text
    assert "consent" not in text


def test_show_in_swedish(capsys):
    out = show(capsys, "--line", REPORT_LINE, "--platform", "twilio")
    text = out["platforms"]["twilio"]["prompts"][0]["text"]
    assert "med stöd av vårt berättigade intresse" in text and "Tryck 9 nu" in text
    # No agent: the caller stays on the two-way stream, so the key works on Twilio too.
    assert out["platforms"]["twilio"]["withdraw"] == "keys" and "stjärna" in text


def test_show_as_text(capsys):
    assert main(["prompts", "show", "--line", CONSENT_LINE, "--platform", "twilio"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"line {CONSENT_LINE}: tenant demo, consent, opt_in, en\n")
    assert "purpose: Improving our customer service and training our staff" in out
    assert "on twilio (withdraw: agent):" in out and "on asterisk" not in out
    assert "consent_request    We would like to record this call" in out


def test_show_refuses_an_unknown_line(capsys):
    assert main(["prompts", "show", "--line", "+15559999999"]) == 1
    assert "no line '+15559999999'" in capsys.readouterr().err


def _config(directory: Path, *, platforms: str = '["twilio", "asterisk"]', own: str = "") -> Path:
    path = directory / "ivr.toml"
    path.write_text(
        '[tenants.acme]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n'
        + own
        + '[[lines]]\nnumber = "+46850000001"\ntenant = "acme"\n'
        'purpose = "Checking what was agreed on the phone"\nlawful_basis = "contract"\n'
        f'forward_to = "+46850000099"\nplatforms = {platforms}\n'
    )
    return path


def test_show_a_line_served_on_one_platform_only(tmp_path, capsys):
    cfg = _config(tmp_path, platforms='["asterisk"]')
    out = show(capsys, "--config", str(cfg), "--line", "+46850000001")
    assert list(out["platforms"]) == ["asterisk"]
    text = out["platforms"]["asterisk"]["prompts"][0]["text"]
    assert "We need the recording to perform our agreement with you." in text
    assert main(["prompts", "show", "--config", str(cfg), "--line", "+46850000001",
                 "--platform", "twilio"]) == 1  # fmt: skip
    assert "not served on twilio" in capsys.readouterr().err


def test_show_marks_the_tenants_own_recording(tmp_path, capsys):
    t = np.arange(8000) / 8000
    sf.write(tmp_path / "started.wav", 0.4 * np.sin(2 * np.pi * 500 * t), 8000)
    own = (
        "[tenants.acme.prompts.en.recording_started]\n"
        'file = "started.wav"\ntext = "Acme records this call from now on."\n'
    )
    cfg = _config(tmp_path, own=own)
    out = show(capsys, "--config", str(cfg), "--line", "+46850000001", "--platform", "asterisk")
    prompts = {p["prompt_id"]: p for p in out["platforms"]["asterisk"]["prompts"]}
    ours = prompts["recording_started"]
    assert ours["source"] == "tenant_recording" and ours["file"] == str(tmp_path / "started.wav")
    assert ours["text"] == "Acme records this call from now on."
    assert prompts["notice_only"]["source"] == "synthesised"
    main(["prompts", "show", "--config", str(cfg), "--line", "+46850000001"])
    text = capsys.readouterr().out
    assert "Acme records this call from now on." in text
    assert f"[the tenant's recording {tmp_path / 'started.wav'}; its declared words]" in text


def test_build_json_then_everything_is_cached(tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["prompts", "build", "--cache", str(cache), "--json"]) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out)
    assert "synthesising" in captured.err and "[1/" in captured.err  # progress on stderr
    assert first["cache"] == str(cache) and first["synthesised"] > 0
    rows = first["prompts"]
    assert {r["origin"] for r in rows} == {"new"}
    keys = {(r["line"], r["platform"], r["prompt_id"]) for r in rows}
    assert (CONSENT_LINE, "twilio", "consent_request") in keys
    assert (OBJECTION_LINE, "asterisk", "objection_notice") in keys
    assert (CONSENT_LINE, "twilio", "objection_notice") not in keys
    assert len(keys) == len(rows)
    index = PromptCache(cache)
    for r in rows:
        spoken = index.spoken(r["sha256"])
        assert spoken is not None and spoken.language == r["language"]
        assert (cache / "v1" / "audio" / f"{r['sha256']}.wav").is_file()
    assert first["synthesised"] == len({r["sha256"] for r in rows})

    assert main(["prompts", "build", "--cache", str(cache), "--json"]) == 0
    captured = capsys.readouterr()
    second = json.loads(captured.out)
    assert second["synthesised"] == 0 and "synthesising" not in captured.err
    assert {r["origin"] for r in second["prompts"]} == {"cached"}
    assert [r["sha256"] for r in second["prompts"]] == [r["sha256"] for r in rows]
    # show now gives each synthesised prompt's audio hash: what the evidence will name.
    out = show(capsys, "--cache", str(cache), "--line", CONSENT_LINE, "--platform", "twilio")
    shown = {p["prompt_id"]: p["sha256"] for p in out["platforms"]["twilio"]["prompts"]}
    built = {
        r["prompt_id"]: r["sha256"]
        for r in rows
        if (r["line"], r["platform"]) == (CONSENT_LINE, "twilio")
    }
    assert shown == built


def test_build_without_espeak_ng_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["prompts", "build", "--cache", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ivr: error: 20 prompt(s) are not in the prompt cache")
    assert "espeak-ng is not installed" in err and "apt-get install -y espeak-ng" in err
    assert err.count("\n") == 1  # one line, no progress for work that cannot start


def test_config_check_says_what_the_cache_lacks_without_needing_espeak_ng(
    tmp_path, capsys, monkeypatch
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("IVR_PROMPT_CACHE", str(cache))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no espeak-ng
    assert main(["config", "check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_cache"] == str(cache) and out["prompts_not_cached"] > 0
    assert main(["config", "check"]) == 0
    assert "not yet synthesised" in capsys.readouterr().out
    monkeypatch.undo()
    monkeypatch.delenv("IVR_CONFIG", raising=False)
    assert main(["prompts", "build", "--cache", str(cache)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("IVR_PROMPT_CACHE", str(cache))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["config", "check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompts_not_cached"] == 0


def test_the_cache_defaults_to_the_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IVR_PROMPT_CACHE")
    data = tmp_path / "var"
    assert main(["prompts", "build", "--data-dir", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == str(data / "prompt-cache")
    assert (data / "prompt-cache" / "v1" / "audio").is_dir()
