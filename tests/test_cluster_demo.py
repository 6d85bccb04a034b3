"""``ivr cluster demo``'s parts that need no server (ivr/cluster_demo/demo.py, haproxy.py); the
demo itself runs in tests/cluster/test_demo.py."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ivr.cli import main
from ivr.cluster_demo import demo, haproxy
from ivr.config import load_config

LB = "http://127.0.0.1:18080"
CATALOG = "postgresql://ivr@127.0.0.1:5433/ivr_catalog"
KEYS = "postgresql://ivr@127.0.0.1:5433/ivr_keys"


def test_a_nodes_configuration_is_the_demos_behind_the_load_balancer(tmp_path: Path) -> None:
    path = tmp_path / "node1.toml"
    path.write_text(demo.node_config(LB, CATALOG, KEYS, "s3://ivr-recordings/demo"))
    config = load_config(path, environ={"TWILIO_AUTH_TOKEN": "t"})
    embedded = load_config(None, environ={})
    assert config.public_url == LB
    assert (config.catalog_url, config.keyring_url, config.blob_url) == (
        CATALOG,
        KEYS,
        "s3://ivr-recordings/demo",
    )
    assert config.lines.keys() == embedded.lines.keys()
    assert config.tenants.keys() == embedded.tenants.keys()


def test_the_env_file_quotes_what_a_shell_reads_back() -> None:
    values = {"A": "plain", "B": "with space and 'quote'", "C": "$(not run)"}
    text = demo.env_file_text(values)
    read = {}
    for line in text.splitlines()[1:]:
        name, _, value = line.removeprefix("export ").partition("=")
        (read[name],) = shlex.split(value)
    assert read == values


def test_the_demo_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    cluster = demo.Demo(tmp_path)
    with pytest.raises(RuntimeError, match="is not empty"), cluster:
        pass
    assert cluster.postgres is None and cluster.nodes == []  # nothing started
    assert [p.name for p in tmp_path.iterdir()] == ["something"]  # nothing written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "expected a number of nodes 1..9, got '0'"),
        (["--nodes", "10"], "expected a number of nodes 1..9, got '10'"),
        (["--port", "70000"], "expected a port number 0..65535, got '70000'"),
    ],
)
def test_bad_arguments_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["cluster", "demo", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_haproxy_backends_are_checked() -> None:
    with pytest.raises(ValueError, match="not a plain name"):
        haproxy.Backend("node 1", "127.0.0.1", 8081)
    with pytest.raises(ValueError, match=r"port 0 is not 1\.\.65535"):
        haproxy.Backend("node1", "127.0.0.1", 0)
    with pytest.raises(ValueError, match="at least one backend"):
        haproxy.config_text("127.0.0.1", 8080, [], run_as=None)
    text = haproxy.config_text(
        "127.0.0.1", 8080, [haproxy.Backend("node1", "127.0.0.1", 8081)], run_as=None
    )
    assert "\n    user " not in text  # not root: HAProxy runs as whoever starts it
    assert "    server node1 127.0.0.1:8081\n" in text
