"""The service with ``[storage] blob_url``: a simulated Twilio call is recorded into the bucket."""

from __future__ import annotations

import dataclasses

from ivr.config import load_config
from ivr.harness.twilio_sim import CallOptions, simulate_call
from ivr.service import VAULT
from storage.s3blobs import S3BlobStore
from tests.conftest import demo_service

CONSENT_LINE = "+15550100001"


async def test_a_call_is_recorded_into_the_object_store(
    tmp_path, monkeypatch, weed, bucket, s3_env
):
    config = dataclasses.replace(load_config(None), blob_url=f"s3://{bucket}/calls")
    async with demo_service(tmp_path / "var", monkeypatch, config) as (app, url, _):
        result = await simulate_call(
            CallOptions(url=url, to=CONSENT_LINE, fast=True, presses=[(3.0, "1")], duration=4.0)
        )
        assert result.error is None, result.transcript
        assert result.recording_status == "complete"
        vault = app[VAULT]
        assert isinstance(vault.blobs, S3BlobStore)
        row = vault.get(result.recording_id)
        segments = vault.segments(row.id)
        assert row.blob_path.startswith("s3:") and segments
        listed = weed.client().list_objects_v2(Bucket=bucket)["Contents"]
        assert sorted(o["Key"] for o in listed) == [s.key for s in segments]
        with vault.open_reader(row.id) as reader:
            tracks = {f.track for f in reader.frames()}
        assert tracks == {0, 1}
