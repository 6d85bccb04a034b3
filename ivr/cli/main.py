"""The ``ivr`` command line. Exit codes: 0 success, 1 failure, 2 usage error."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict

from ivr import __version__
from ivr.cli.common import CONFIG_ENV, CommandFailed
from ivr.cli.common import actor as _actor
from ivr.cli.common import emit as _emit
from ivr.cli.common import open_vault as _open_vault
from ivr.config import ConfigError
from media.prompts import PromptError
from media.tts import SpeechError
from media.wavfile import UnsupportedAudio
from storage.catalog import CatalogError, RecordingStatus
from storage.format import FormatError
from storage.keys import KeyCustodyError
from storage.keystore import KeyStoreUnavailable
from storage.vault import VaultError

DATA_DIR_ENV = "IVR_DATA_DIR"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

# Failures an operator can act on: reported in one line, never as a traceback.
EXPECTED_ERRORS = (
    ConfigError,
    PromptError,
    SpeechError,
    VaultError,
    CatalogError,
    KeyCustodyError,
    KeyStoreUnavailable,
    FormatError,
    UnsupportedAudio,
    OSError,
    ValueError,
)


def _fmt_duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


# -- recordings -----------------------------------------------------------------------------------
def cmd_recordings_list(args: argparse.Namespace) -> int:
    with _open_vault(args) as vault:
        rows = vault.list(
            tenant=args.tenant,
            status=RecordingStatus(args.status) if args.status else None,
            limit=args.limit,
        )

    def table() -> str:
        if not rows:
            return "no recordings"
        head = f"{'ID':<24} {'TENANT':<12} {'STATUS':<10} {'BASIS':<20} {'LENGTH':>8}  STARTED"
        lines = [head]
        for r in rows:
            lines.append(
                f"{r.id:<24} {r.tenant:<12} {r.status.value:<10} {r.lawful_basis:<20} "
                f"{_fmt_duration(r.duration_ms):>8}  {r.started_at}"
            )
        return "\n".join(lines)

    _emit(args, [r.public() for r in rows], table)
    return EXIT_OK


def cmd_recordings_show(args: argparse.Namespace) -> int:
    with _open_vault(args) as vault:
        row = vault.get(args.id)
    data = row.public()

    def text() -> str:
        lines = []
        for key, value in data.items():
            if isinstance(value, dict | list):
                value = json.dumps(value, sort_keys=True)
            lines.append(f"{key:<18} {'-' if value is None else value}")
        return "\n".join(lines)

    _emit(args, data, text)
    return EXIT_OK


def cmd_recordings_export(args: argparse.Namespace) -> int:
    from ivr.gdpr.recording_files import export_wav

    out = Path(args.output)
    if out.is_dir():
        raise CommandFailed(f"{out} is a directory; give a file name for the WAV")
    private_key = None
    if args.private_key:
        from storage.custody import load_private_key

        private_key = load_private_key(Path(args.private_key))
    if args.format == "vcon":
        return _export_vcon(args, out, private_key)
    if args.reference or args.base_url:
        raise CommandFailed("--reference and --base-url are for --format vcon")
    with _open_vault(args) as vault:
        result = export_wav(
            vault, args.id, out, actor=_actor(), reason=args.reason, private_key=private_key
        )
    _emit(
        args,
        {
            "recording_id": result.recording_id,
            "output": str(result.path),
            "channels": result.channels,
            "sample_rate": result.sample_rate,
            "duration_ms": result.duration_ms,
        },
        lambda: (
            f"exported {result.recording_id} to {result.path} ({result.channels} channel(s), "
            f"{result.sample_rate} Hz, {_fmt_duration(result.duration_ms)})"
        ),
    )
    return EXIT_OK


def _export_vcon(args: argparse.Namespace, out: Path, private_key: Any) -> int:
    from ivr.gdpr.vcon import export_vcon, wav_path_for

    wav = wav_path_for(out) if args.reference else None
    with _open_vault(args) as vault:
        doc = export_vcon(
            vault,
            args.id,
            out,
            actor=_actor(),
            reason=args.reason,
            inline=not args.reference,
            base_url=args.base_url,
            private_key=private_key,
        )
    audio = str(wav) if wav else "inline"
    _emit(
        args,
        {"recording_id": args.id, "output": str(out), "format": "vcon", "audio": audio},
        lambda: f"exported {args.id} to {out} (vCon {doc['uuid']}, audio {audio})",
    )
    return EXIT_OK


# -- keys -----------------------------------------------------------------------------------------
class _KeyEntry(TypedDict):
    """One line of `ivr keys list`: a local key version, or a tenant's public key."""

    tenant: str
    custody: str
    version: int | None
    key_ref: str
    current: bool
    fingerprint: str
    created_at: str | None


def cmd_keys_list(args: argparse.Namespace) -> int:
    from storage.custody import key_ref_of
    from storage.keys import fingerprint

    with _open_vault(args) as vault:
        keys = vault.keyring.list(args.tenant)
        public = vault.keyring.public_keys()
    data: list[_KeyEntry] = [
        {
            "tenant": k.tenant,
            "custody": "public_key" if k.tenant in public else "local",
            "version": k.version,
            "key_ref": k.key_ref,
            # What new recordings use: a public-key tenant's local versions are only for the
            # recordings made before it changed custody.
            "current": k.current and k.tenant not in public,
            "fingerprint": k.fingerprint,
            "created_at": k.created_at,
        }
        for k in keys
    ]
    data += [
        {
            "tenant": tenant,
            "custody": "public_key",
            "version": None,
            "key_ref": key_ref_of(key),
            "current": True,
            "fingerprint": fingerprint(key),
            "created_at": None,
        }
        for tenant, key in public.items()
        if args.tenant is None or tenant == args.tenant
    ]
    data.sort(key=lambda k: (k["tenant"], k["version"] is None, k["version"] or 0))

    def table() -> str:
        if not data:
            return "no keys yet (a tenant's first key is made with its first recording)"
        lines = [
            f"{'TENANT':<16} {'CUSTODY':<10}  {'KEY':<24}  {'CURRENT':<7}  "
            f"{'FINGERPRINT':<16}  CREATED"
        ]
        for k in data:
            lines.append(
                f"{k['tenant']:<16} {k['custody']:<10}  {k['key_ref']:<24}  "
                f"{'yes' if k['current'] else '':<7}  {k['fingerprint']:<16}  "
                f"{k['created_at'] or '-'}"
            )
        return "\n".join(lines)

    _emit(args, data, table)
    return EXIT_OK


def _rewrap_summary(report: Any) -> str:
    text = (
        f"re-wrapped {report.recordings} recording key(s) and {report.callers} caller "
        f"number(s) under {report.target}"
    )
    if report.without_key:
        text += f"; {report.without_key} recording(s) have no key left (erased or discarded)"
    for ref, count in sorted(report.not_opened.items()):
        text += f"; {count} recording(s) under {ref} left as they are"
    return text


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from storage.custody import rewrap_local

    report = None
    with _open_vault(args) as vault:
        info = vault.keyring.rotate(args.tenant)
        vault.audit(
            actor=_actor(),
            action="key.rotated",
            tenant=args.tenant,
            target=info.key_ref,
            detail={"version": info.version, "fingerprint": info.fingerprint},
        )
        if args.rewrap:
            report = rewrap_local(vault, args.tenant, actor=_actor())
    data: dict[str, Any] = {
        "tenant": info.tenant,
        "version": info.version,
        "fingerprint": info.fingerprint,
    }
    if report is not None:
        data["rewrapped"] = report.as_dict()
    _emit(
        args,
        data,
        lambda: (
            f"tenant {info.tenant}: new recordings now use key version {info.version} "
            f"({info.fingerprint}); "
            + (_rewrap_summary(report) if report else "older recordings keep their version")
        ),
    )
    return EXIT_OK


def cmd_keys_rewrap(args: argparse.Namespace) -> int:
    from ivr.config import load_config
    from storage.custody import load_private_key, rewrap_to_public

    config = load_config(Path(args.config))
    tenant = config.tenants.get(args.tenant)
    if tenant is None:
        raise CommandFailed(f"no tenant {args.tenant!r} in {args.config}")
    if tenant.public_key is None:
        raise CommandFailed(
            f"tenant {args.tenant} is under local key custody in {args.config}; "
            f"`ivr keys rotate --tenant {args.tenant} --rewrap` re-wraps local keys"
        )
    private_key = load_private_key(Path(args.private_key)) if args.private_key else None
    with _open_vault(args) as vault:
        report = rewrap_to_public(
            vault, args.tenant, tenant.public_key, private_key=private_key, actor=_actor()
        )
    _emit(args, report.as_dict(), lambda: f"tenant {args.tenant}: {_rewrap_summary(report)}")
    if report.not_opened:
        print(
            f"ivr: warning: {sum(report.not_opened.values())} recording(s) are sealed to a key "
            "this command could not open; give its private key with --private-key",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from storage.custody import key_ref_of, public_b64, write_keypair
    from storage.keys import KEYRING_FILE
    from storage.vault import CATALOG_FILE

    out = Path(args.out)
    for directory in (out.absolute(), *out.absolute().parents):
        if (directory / CATALOG_FILE).exists() or (directory / KEYRING_FILE).exists():
            raise CommandFailed(
                f"{out} is inside the vault at {directory}: the private key must be kept where "
                "the service cannot read it"
            )
    private, public_file, public = write_keypair(out)
    data = {
        "private_key_file": str(private),
        "public_key_file": str(public_file),
        "public_key": public_b64(public),
        "key_ref": key_ref_of(public),
    }
    _emit(
        args,
        data,
        lambda: (
            f"wrote {private} (the private key, mode 0600: keep it with the controller, off the "
            f"service host) and {public_file}\n"
            f"key {data['key_ref']}; in the tenant's configuration:\n"
            f'  key_custody = "public_key"\n'
            f'  public_key = "{data["public_key"]}"'
        ),
    )
    return EXIT_OK


# -- config -------------------------------------------------------------------------------------
def cmd_config_check(args: argparse.Namespace) -> int:
    from ivr.config import load_config
    from ivr.prompt_library import cache_dir, load_recordings, missing
    from media.tts import PromptCache

    config = load_config(Path(args.config) if args.config else None)
    load_recordings(config)  # every tenant prompt decoded and checked
    # Synthesised prompts are made at start (or by `ivr prompts build`), which needs espeak-ng;
    # the check needs neither, and only says what the cache still lacks.
    cache = PromptCache(cache_dir(Path(args.data_dir)))
    to_make = missing(config, cache)
    lines = [
        {
            "number": line.number,
            "tenant": line.tenant,
            "lawful_basis": line.lawful_basis.value,
            "consent_mode": line.consent_mode.value,
            "language": line.language,
            "retention_days": line.retention_days,
            "forward_to": line.forward_to,
            "policy": f"{line.policy_id} v{line.policy_version}",
        }
        for line in config.lines.values()
    ]

    def text() -> str:
        out = [f"{config.source or 'embedded demo'}: OK, {len(lines)} line(s)"]
        out += [
            f"  {x['number']:<16} {x['tenant']:<12} {x['lawful_basis']:<20} "
            f"{x['consent_mode']:<8} {x['language']}  keep {x['retention_days']} d  "
            f"-> {x['forward_to'] or '(message line)'}"
            for x in lines
        ]
        if to_make:
            out.append(
                f"prompts: {len(to_make)} not yet synthesised in {cache.directory} (made at "
                "start, or now with `ivr prompts build`, both need espeak-ng)"
            )
        out += [f"warning: {w}" for w in config.warnings]
        return "\n".join(out)

    data = {
        "ok": True,
        "lines": lines,
        "warnings": list(config.warnings),
        "prompt_cache": str(cache.directory),
        "prompts_not_cached": len(to_make),
    }
    _emit(args, data, text)
    return EXIT_OK


# -- serve ----------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from ivr.config import load_config
    from ivr.workers import Worker

    config = load_config(Path(args.config) if args.config else None)  # checked before workers
    from ivr.serving import loop_factory

    try:
        loop_factory(args.loop)
    except ValueError as exc:
        print(f"ivr: error: --loop: {exc}", file=sys.stderr)
        return EXIT_USAGE
    worker = Worker()
    if args.worker_index is not None or args.supervisor_fd is not None:  # started by _supervise
        if args.worker_index is None or args.supervisor_fd is None:
            print("ivr: error: --worker-index and --supervisor-fd go together", file=sys.stderr)
            return EXIT_USAGE
        try:
            worker = Worker(args.worker_index, args.workers)
        except ValueError as exc:
            print(f"ivr: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    elif args.workers > 1:
        return _supervise(args)
    from ivr.service import serve  # not in the supervisor, which stays small

    serve(
        config=config,
        data_dir=Path(args.data_dir),
        host=args.host,
        port=args.port,
        json_logs=args.json_logs,
        worker=worker,
        supervisor_fd=args.supervisor_fd,
        event_loop=args.loop,
    )
    return EXIT_OK


def _supervise(args: argparse.Namespace) -> int:
    """``--workers N`` (N > 1): this process supervises N workers on one port and never opens
    the vault (ivr/workers.py)."""
    from ivr.workers import reserve_port, supervise

    log = logging.getLogger("ivr.workers")
    if args.json_logs:
        from ivr.service import JsonLogFormatter

        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLogFormatter())
        logging.getLogger().handlers[:] = [handler]
    try:
        port, held = reserve_port(args.host, args.port)
    except OSError as exc:
        raise CommandFailed(f"cannot use {args.host}:{args.port}: {exc.strerror or exc}") from None
    base = [sys.executable, "-m", "ivr", *(["-v"] if args.verbose else []), "serve"]
    base += ["--data-dir", args.data_dir, "--host", args.host, "--port", str(port)]
    base += ["--workers", str(args.workers), "--loop", args.loop]
    if args.config:
        base += ["--config", str(Path(args.config).resolve())]
    if args.json_logs:
        base.append("--json-logs")

    def command(index: int, fd: int) -> list[str]:
        return [*base, "--worker-index", str(index), "--supervisor-fd", str(fd)]

    def ready() -> None:
        log.info("listening on http://%s:%d (%d workers)", args.host, port, args.workers)

    log.info("supervisor (pid %d) starting %d workers", os.getpid(), args.workers)
    try:
        return supervise(command, args.workers, on_ready=ready)
    finally:
        for sock in held:
            sock.close()


def _workers(text: str) -> int:
    from ivr.workers import parse_workers

    try:
        return parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0..65535, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of days ≥ 1, got {text!r}")
    return int(text)


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_DIR_ENV, "./var"),
        help=f"where the vault lives (env {DATA_DIR_ENV}; default ./var)",
    )
    data_out = argparse.ArgumentParser(add_help=False)
    data_out.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(
        prog="ivr",
        description="GDPR consent and encrypted call recording for telephony.",
        epilog="Exit codes: 0 success, 1 failure, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"ivr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = top.add_parser("serve", parents=[common], help="run the service")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (8080)")
    serve.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"configuration file (env {CONFIG_ENV}; default: the embedded demo)",
    )
    serve.add_argument("--json-logs", action="store_true", help="log one JSON object per line")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="worker processes sharing the port: a number, or 'auto' for the usable cores (1; "
        "docs/operations.md, Workers)",
    )
    serve.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),  # ivr/serving.py EVENT_LOOPS
        default="auto",
        help="event loop: uvloop where installed (pip install 'ivr[fast]'), else asyncio (auto)",
    )
    # Set by the supervisor on the workers it starts (ivr/workers.py), not by people.
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--supervisor-fd", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    # Where the vault's stores are when they are not all in the data directory ([storage]: a
    # PostgreSQL catalog and key store, an object store), for the commands that read recordings.
    stores = argparse.ArgumentParser(add_help=False)
    stores.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"configuration file, for its [storage] catalog, key store and object store "
        f"(env {CONFIG_ENV}; default: all in the data directory)",
    )

    recs = top.add_parser("recordings", help="list, show, import and export recordings")
    rsub = recs.add_subparsers(dest="action", required=True, metavar="ACTION")

    from ivr.cli.imports import add_parser as add_import_parser

    add_import_parser(rsub, common, data_out)

    lst = rsub.add_parser("list", parents=[common, data_out, stores], help="list recordings")
    lst.add_argument("--tenant", help="only this tenant's")
    lst.add_argument("--status", choices=[s.value for s in RecordingStatus])
    lst.add_argument("--limit", type=_positive_int, help="at most this many (oldest first)")
    lst.set_defaults(func=cmd_recordings_list)

    show = rsub.add_parser(
        "show", parents=[common, data_out, stores], help="one recording's record"
    )
    show.add_argument("id")
    show.set_defaults(func=cmd_recordings_show)

    exp = rsub.add_parser(
        "export", parents=[common, data_out, stores], help="decrypt a recording to WAV (audited)"
    )
    exp.add_argument("id")
    exp.add_argument("-o", "--output", required=True, help="file to write (WAV, or vCon JSON)")
    exp.add_argument(
        "--format", choices=("wav", "vcon"), default="wav", help="WAV, or vCon (docs/vcon.md)"
    )
    audio = exp.add_mutually_exclusive_group()
    audio.add_argument(
        "--inline",
        dest="reference",
        action="store_false",
        default=False,
        help="vCon: the audio inside the JSON (default)",
    )
    audio.add_argument(
        "--reference", action="store_true", help="vCon: the audio in a WAV beside it, by URL"
    )
    exp.add_argument("--base-url", help="vCon --reference: URL the WAV is published under")
    exp.add_argument("--reason", default="export by operator", help="recorded in the audit log")
    exp.add_argument(
        "--private-key",
        metavar="FILE",
        help="the tenant's X25519 private key (PEM), for a recording sealed to its public key",
    )
    exp.set_defaults(func=cmd_recordings_export)

    from ivr.cli.breach import add_parsers as add_breach_parsers
    from ivr.cli.lifecycle import add_parsers as add_lifecycle_parsers

    add_lifecycle_parsers(top, rsub, common, data_out)
    add_breach_parsers(top, common, data_out)

    from ivr.cli.vault import add_parsers as add_vault_parsers

    add_vault_parsers(top, common, data_out)

    cfg = top.add_parser("config", help="check a configuration file")
    csub = cfg.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = csub.add_parser(
        "check", parents=[common, data_out], help="validate the file and every prompt it names"
    )
    check.add_argument(
        "config", nargs="?", default=os.environ.get(CONFIG_ENV), help="file (default: the demo)"
    )
    check.set_defaults(func=cmd_config_check)

    from ivr.cli.calls import add_parsers as add_calls_parsers
    from ivr.cli.prompts import add_parsers as add_prompts_parsers
    from ivr.cli.ropa import add_parser as add_ropa_parser

    add_prompts_parsers(top, common)
    add_calls_parsers(top, data_out)
    add_ropa_parser(top, common)

    from ivr.cli.loadtest import add_loadtest_parser
    from ivr.cli.simulate import add_simulate_parser

    add_simulate_parser(top)
    add_loadtest_parser(top)

    from ivr.cli.cluster import add_parsers as add_cluster_parsers

    add_cluster_parsers(top)

    keys = top.add_parser("keys", help="tenant keys: versions, rotation, public-key custody")
    ksub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    klist = ksub.add_parser(
        "list", parents=[common, data_out], help="list key versions and custody per tenant"
    )
    klist.add_argument("--tenant")
    klist.set_defaults(func=cmd_keys_list)
    rot = ksub.add_parser(
        "rotate", parents=[common, data_out], help="new key version for new recordings"
    )
    rot.add_argument("--tenant", required=True)
    rot.add_argument(
        "--rewrap",
        action="store_true",
        help="also re-wrap every existing local data key under the new version",
    )
    rot.set_defaults(func=cmd_keys_rotate)
    rew = ksub.add_parser(
        "rewrap",
        parents=[common, data_out],
        help="re-seal a public-key tenant's data keys to its configured public key",
    )
    rew.add_argument("--tenant", required=True)
    rew.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        required=not os.environ.get(CONFIG_ENV),
        help=f"configuration naming the tenant's current public key (env {CONFIG_ENV})",
    )
    rew.add_argument(
        "--private-key",
        metavar="FILE",
        help="private key of the previous public key (local keys need none)",
    )
    rew.set_defaults(func=cmd_keys_rewrap)
    from ivr.cli.keys import add_retire_parser

    add_retire_parser(ksub, common, data_out)
    gen = ksub.add_parser(
        "generate", parents=[data_out], help="make an X25519 key pair for public-key custody"
    )
    gen.add_argument(
        "--out", required=True, metavar="DIR", help="directory for private.pem and public.pem"
    )
    gen.set_defaults(func=cmd_keys_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        command: Callable[[argparse.Namespace], int] = args.func
        return command(args)
    except CommandFailed as exc:
        print(f"ivr: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except EXPECTED_ERRORS as exc:
        print(f"ivr: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # The PostgreSQL driver's errors (a server gone away, a refused login) are an
        # operator's to act on too; its module is imported only with a postgresql:// URL.
        if not type(exc).__module__.startswith("psycopg"):
            raise
        print(f"ivr: error: PostgreSQL: {' '.join(str(exc).split()) or exc!r}", file=sys.stderr)
        return EXIT_FAILURE
