"""Every lawful basis on every platform, end to end: what the caller hears names the line's basis
and purpose and promises only the withdrawal channel that works on that platform.

Each call goes through the harness (the Twilio simulator, the fake Asterisk) against the real
service. The words come from the prompt cache, looked up by the SHA-256 the consent evidence
stores, and the audio of those words must be what the simulated caller actually received.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from ivr.config import load_config
from ivr.harness.asterisk_sim import AsteriskCallOptions, simulate_asterisk_call
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.policy import ALLOWED_MODES, WITHDRAWABLE, ConsentMode, LawfulBasis
from ivr.prompt_library import CACHE_ENV, PromptLibrary
from ivr.service import create_app
from media.tts import PromptCache
from storage.vault import Vault

# The sentence naming each basis (ivr/wording.py), as the caller hears it in English.
BASIS_SAYS = {
    LawfulBasis.CONSENT: "We record only with your consent.",
    LawfulBasis.CONTRACT: "to perform our agreement with you",
    LawfulBasis.LEGAL_OBLIGATION: "The law requires us to record it.",
    LawfulBasis.VITAL_INTERESTS: "to protect life and health",
    LawfulBasis.PUBLIC_TASK: "a task in the public interest",
    LawfulBasis.LEGITIMATE_INTERESTS: "based on our legitimate interests",
}
KEYS_PROMISE = "press star at any time to stop the recording"
AGENT_PROMISE = "tell the person you speak with"

CASES = [
    (basis, mode, n)
    for n, (basis, mode) in enumerate(
        ((b, m) for b, modes in ALLOWED_MODES.items() for m in modes), start=11
    )
]


def _number(n: int) -> str:
    return f"+155501000{n:02d}"


def _config(tmp_path: Path, ari_port: int) -> Path:
    lines = "".join(
        f'[[lines]]\nnumber = "{_number(n)}"\ntenant = "acme"\n'
        f'purpose = "Purpose number {n} of Acme"\nlawful_basis = "{basis.value}"\n'
        f'consent_mode = "{mode.value}"\nforward_to = "+15550100099"\n'
        for basis, mode, n in CASES
    )
    path = tmp_path / "ivr.toml"
    path.write_text(
        "[asterisk]\n"
        f'url = "http://127.0.0.1:{ari_port}/ari"\nusername = "ivr"\npassword_env = "ARI_PW"\n'
        'app = "ivr"\nrtp_ports = "42300-42399"\n'
        '[tenants.acme]\ndisplay_name = "Acme"\ndpo_contact = "dpo@acme.example"\n' + lines
    )
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def service(tmp_path, monkeypatch):
    monkeypatch.setenv("IVR_MASTER_KEY", "42" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "tok")
    monkeypatch.setattr("ivr.platforms.asterisk.app.BACKOFF_START", 0.01)
    monkeypatch.setattr("ivr.platforms.asterisk.app.BACKOFF_MAX", 0.05)
    port = _free_port()
    config = load_config(_config(tmp_path, port), {"ARI_PW": "pw", "TWILIO_AUTH_TOKEN": "tok"})
    server = TestServer(create_app(config, tmp_path / "var", fsync=False))
    await server.start_server()
    library = PromptLibrary.load(config, Path(os.environ[CACHE_ENV]))
    yield server, port, tmp_path / "var", config, library
    await server.close()


async def _place(
    platform: str, server: TestServer, port: int, number: str, mode: ConsentMode, accept_at: float
):
    # opt_in: accept once the question has been heard in full (a key during it cuts it short).
    presses = [(accept_at, "1")] if mode is ConsentMode.OPT_IN else []
    if platform == "twilio":
        url = str(server.make_url("")).rstrip("/")
        options = CallOptions(
            url=url, auth_token="tok", to=number, presses=presses, fast=True, keep_audio=True
        )
        return await simulate_call(options)
    return await simulate_asterisk_call(
        AsteriskCallOptions(port=port, password="pw", to=number, presses=presses, fast=True)
    )


@pytest.mark.parametrize("platform", ["twilio", "asterisk"])
@pytest.mark.parametrize(("basis", "mode", "n"), CASES, ids=[f"{b}-{m}" for b, m, _ in CASES])
async def test_the_caller_hears_the_lines_basis_purpose_and_a_channel_that_works(
    service, platform, basis, mode, n
):
    server, port, data_dir, config, library = service
    prompts = library.for_call(config.lines[_number(n)], platform)
    question = prompts.get("consent_request")
    accept_at = question.duration_ms / 1000 + 0.5 if question else 0.0
    result = await _place(platform, server, port, _number(n), mode, accept_at)
    assert result.error is None, result.transcript
    with Vault(data_dir, create=False) as vault:
        (row,) = vault.list()
    evidence = row.consent_evidence
    assert row.lawful_basis == basis.value and row.purpose == f"Purpose number {n} of Acme"
    if mode is ConsentMode.NONE:  # emergency line: nothing is said before recording
        assert evidence["prompt_id"] is None and evidence["prompts_played"] == []
        return
    cache = PromptCache(Path(os.environ[CACHE_ENV]))
    spoken = cache.spoken(evidence["prompt_sha256"])
    assert spoken is not None, "the evidence names audio the prompt cache does not hold"
    words = spoken.text
    assert words == evidence["prompt_text"]
    # The caller received exactly that audio.
    prompt, made = cache.prompt("en", words, prompt_id=evidence["prompt_id"])
    assert not made and prompt.sha256 == evidence["prompt_sha256"]
    assert prompt.ulaw in bytes(result.audio_heard)
    # It names this line's purpose and basis, and no other basis.
    assert f"Purpose number {n} of Acme" in words
    assert BASIS_SAYS[basis] in words
    assert not [b for b, said in BASIS_SAYS.items() if b is not basis and said in words]
    # It promises only the channel this platform honours after the call is forwarded.
    if not WITHDRAWABLE[basis]:
        assert KEYS_PROMISE not in words and AGENT_PROMISE not in words
    elif platform == "twilio":  # the one-way recording stream carries no keys
        assert AGENT_PROMISE in words and KEYS_PROMISE not in words
        assert evidence["keys"]["withdraw_via"] == "agent"
    else:
        assert KEYS_PROMISE in words and AGENT_PROMISE not in words
        assert evidence["keys"]["withdraw_via"] == "keys"
