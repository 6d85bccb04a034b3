"""``ivr config check``: the demo passes; broken files and unplayable prompts fail with reasons."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from ivr.cli import main


def test_demo_configuration_checks_out(capsys):
    assert main(["config", "check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and len(out["lines"]) == 6
    assert {x["consent_mode"] for x in out["lines"]} == {"opt_in", "opt_out", "notice", "none"}


def test_every_problem_is_named(tmp_path, capsys):
    bad = tmp_path / "ivr.toml"
    bad.write_text(
        '[tenants.acme]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n'
        '[[lines]]\nnumber = "+46850000001"\ntenant = "acme"\npurpose = "quality"\n'
        'lawful_basis = "consent"\nconsent_mode = "opt_out"\n'
    )
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "ivr.toml: lines[0].consent_mode:" in err and "opt-in" in err


def test_a_silent_tenant_prompt_is_refused(tmp_path, capsys):
    sf.write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.int16), 8000)
    cfg = tmp_path / "ivr.toml"
    cfg.write_text(
        '[tenants.acme]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n'
        '[tenants.acme.prompts.en.recording_started]\nfile = "silent.wav"\ntext = "Hello"\n'
        '[[lines]]\nnumber = "+46850000001"\ntenant = "acme"\npurpose = "quality"\n'
        'lawful_basis = "consent"\n'
    )
    assert main(["config", "check", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "silent.wav" in err
