"""``/metrics``: the Prometheus text format, parsed by prometheus-client's own parser, carrying
what /healthz shows plus set-up latency, frames lost, vault write errors and refused requests."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ivr.config import load_config
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.metrics import METRICS
from ivr.service import create_app

CONSENT_LINE = "+15550100001"


async def scrape(url: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    return {
        family.name: {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for sample in family.samples
        }
        for family in text_string_to_metric_families(text)
    }


def value(families, family: str, sample: str | None = None, **labels: str) -> float:
    return families[family][(sample or family, tuple(sorted(labels.items())))]


async def test_metrics_carry_the_health_counters_latency_losses_and_refusals(service):
    _, url = service
    result = await simulate_call(
        CallOptions(url=url, to=CONSENT_LINE, fast=True, presses=[(3.0, "1")], duration=2.0)
    )
    assert result.error is None and result.decision == "accepted"
    async with aiohttp.ClientSession() as s:
        (await s.get(url + "/api/v1/recordings")).release()  # no token
        (await s.get(url + "/api/v1/recordings", headers={"Authorization": "Bearer x"})).release()
        (await s.post(url + "/twilio/voice", data={"CallSid": "CA1"})).release()  # unsigned
    m = await scrape(url)

    # Call set-up latency: one call, from the webhook to the caller hearing us.
    assert (
        value(m, "ivr_call_setup_seconds", "ivr_call_setup_seconds_count", platform="twilio") == 1
    )
    assert value(m, "ivr_call_setup_seconds", "ivr_call_setup_seconds_sum", platform="twilio") > 0
    assert (
        value(
            m,
            "ivr_calls_finished",
            "ivr_calls_finished_total",
            platform="twilio",
            outcome="accepted",
        )
        == 1
    )
    assert value(m, "ivr_frames_stored", "ivr_frames_stored_total", platform="twilio") > 0
    assert value(m, "ivr_frames_lost", "ivr_frames_lost_total", platform="twilio") == 0
    assert value(m, "ivr_vault_write_errors", "ivr_vault_write_errors_total") == 0
    assert value(m, "ivr_recordings_closed", "ivr_recordings_closed_total", status="complete") == 1
    # What /healthz shows.
    assert value(m, "ivr_calls_in_progress", platform="twilio") == 0
    assert value(m, "ivr_open_recordings") == 0 and value(m, "ivr_recordings_in_progress") == 0
    assert value(m, "ivr_accepting_calls") == 1
    assert value(m, "ivr_twilio_calls", "ivr_twilio_calls_total") == 1
    assert value(m, "ivr_twilio_webhooks_forbidden", "ivr_twilio_webhooks_forbidden_total") == 1
    assert value(m, "ivr_breaches_pressing", urgency="overdue") == 0
    assert "process_cpu_seconds" in m and "ivr_build_info" in m
    assert value(m, "ivr_catalog_ok") == 1
    for loop in ("audit_heads", "api_refusals", "retention_sweeper", "call_expiry"):
        assert value(m, "ivr_loop_ok", loop=loop) == 1
        assert value(m, "ivr_loop_failures", "ivr_loop_failures_total", loop=loop) == 0
    # Refused requests, by surface and reason.
    refused = "ivr_requests_refused_total"
    assert value(m, "ivr_requests_refused", refused, surface="api", reason="unknown token") == 1
    assert (
        value(
            m, "ivr_requests_refused", refused, surface="api", reason="a bearer token is required"
        )
        == 1
    )
    assert (
        value(m, "ivr_requests_refused", refused, surface="twilio_webhook", reason="bad signature")
        == 1
    )
    # The audit head as published at start.
    assert value(m, "ivr_audit_entries") >= value(m, "ivr_audit_head_published_entry") > 0
    assert value(m, "ivr_audit_head_published_timestamp_seconds") > 0
    assert value(m, "ivr_audit_head_publish_errors", "ivr_audit_head_publish_errors_total") == 0


async def test_a_vault_write_error_and_lost_frames_are_counted(service):
    from ivr.calls.session import CallStats

    app, url = service

    class FakeCall:
        platform = "asterisk"
        outcome = "accepted"

        class session:  # stands in for a CallSession
            setup_seconds = 0.4
            stats = CallStats(frames_stored=10, frames_lost=3, vault_errors=2)

    app[METRICS].began(FakeCall())
    app[METRICS].finished(FakeCall(), None)
    m = await scrape(url)
    assert value(m, "ivr_frames_lost", "ivr_frames_lost_total", platform="asterisk") == 3
    assert value(m, "ivr_vault_write_errors", "ivr_vault_write_errors_total") == 2
    bucket = "ivr_call_setup_seconds_bucket"
    assert value(m, "ivr_call_setup_seconds", bucket, platform="asterisk", le="0.5") == 1
    assert value(m, "ivr_call_setup_seconds", bucket, platform="asterisk", le="0.25") == 0


def test_each_app_has_its_own_registry(tmp_path):
    first = create_app(load_config(None), tmp_path / "a")
    second = create_app(load_config(None), tmp_path / "b")
    assert first[METRICS].registry is not second[METRICS].registry
