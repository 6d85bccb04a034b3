"""``ivr prompts``: what callers hear on each line, and the speech made of it ahead of calls.

``ivr prompts show --line N`` prints, per platform the line is served on, every prompt's exact
words (the tenant's own recordings: their declared words, marked as such); it needs neither
espeak-ng nor the cache, and says for each synthesised prompt whether the cache holds it yet.
``ivr prompts build`` synthesises everything the configuration needs into the cache, which the
service would otherwise do at start.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from ivr.capabilities import PLATFORMS
from ivr.cli.common import CONFIG_ENV, EXIT_OK, CommandFailed, emit
from ivr.config import Config, Line, load_config
from ivr.prompt_library import CACHE_ENV, PlannedPrompt, PromptLibrary, cache_dir, plan
from media.tts import PromptCache, SpeechError

ORIGINS = ("new", "cached", "tenant")


def add_parsers(top: Any, common: argparse.ArgumentParser) -> None:
    """``ivr prompts build|show``: registered beside ``ivr config``."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        help=f"configuration file (env {CONFIG_ENV}; default: the embedded demo)",
    )
    options.add_argument(
        "--cache",
        metavar="DIR",
        help=f"the prompt cache (env {CACHE_ENV}; default: prompt-cache in the data dir)",
    )
    options.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = top.add_parser("prompts", help="what callers hear on each line; synthesise the prompts")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser(
        "build",
        parents=[common, options],
        help="synthesise every prompt the configuration needs into the cache (espeak-ng)",
    )
    build.set_defaults(func=cmd_build)
    show = sub.add_parser(
        "show",
        parents=[common, options],
        help="the exact words a caller of a line hears, per platform",
    )
    show.add_argument("--line", required=True, metavar="NUMBER", help="the dialled number")
    show.add_argument(
        "--platform", choices=tuple(PLATFORMS), help="only this platform (default: the line's)"
    )
    show.set_defaults(func=cmd_show)


def _config(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config) if args.config else None)


def _cache(args: argparse.Namespace) -> PromptCache:
    return PromptCache(Path(args.cache) if args.cache else cache_dir(Path(args.data_dir)))


# -- build ----------------------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> int:
    config = _config(args)
    cache = _cache(args)
    try:
        library = PromptLibrary.load(
            config,
            cache.directory,
            cache=cache,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except SpeechError as exc:
        raise CommandFailed(str(exc)) from exc
    rows = [
        {
            "line": x.planned.line,
            "platform": x.planned.platform,
            "prompt_id": x.planned.prompt_id,
            "language": x.planned.language,
            "sha256": x.sha256,
            "duration_ms": x.duration_ms,
            "origin": x.origin,
        }
        for x in library.loaded
    ]
    # Counted as distinct audio: many lines share words ("That key is not valid.").
    audio = {o: len({r["sha256"] for r in rows if r["origin"] == o}) for o in ORIGINS}

    def text() -> str:
        return (
            f"{len(rows)} prompt(s) of {len(config.lines)} line(s) ready, "
            f"{sum(audio.values())} distinct audio: {audio['new']} synthesised now, "
            f"{audio['cached']} already in {cache.directory}, {audio['tenant']} tenant "
            "recording(s)"
        )

    data = {"cache": str(cache.directory), "synthesised": audio["new"], "prompts": rows}
    emit(args, data, text)
    return EXIT_OK


# -- show -----------------------------------------------------------------------------------------
def cmd_show(args: argparse.Namespace) -> int:
    config = _config(args)
    line = config.line_for(args.line)
    if line is None:
        raise CommandFailed(
            f"no line {args.line!r} in {config.source or 'the embedded demo'} (lines: "
            f"{', '.join(config.lines)})"
        )
    platforms = [args.platform] if args.platform else list(line.platforms)
    if args.platform and args.platform not in line.platforms:
        raise CommandFailed(
            f"line {line.number} is not served on {args.platform} (its platforms: "
            f"{', '.join(line.platforms)})"
        )
    cache = _cache(args)
    shown = {
        platform: [_shown(p, cache) for p in plan(config, line, platform).values()]
        for platform in platforms
    }
    data = {
        "line": line.number,
        "tenant": line.tenant,
        "purpose": line.purpose,
        "lawful_basis": line.lawful_basis.value,
        "consent_mode": line.consent_mode.value,
        "language": line.language,
        "platforms": {
            platform: {
                "withdraw": line.withdraw_channel(PLATFORMS[platform]).value,
                "prompts": prompts,
            }
            for platform, prompts in shown.items()
        },
    }
    emit(args, data, lambda: _show_text(line, data))
    return EXIT_OK


def _shown(p: PlannedPrompt, cache: PromptCache) -> dict[str, Any]:
    if p.recording is not None:
        return {
            "prompt_id": p.prompt_id,
            "text": p.text,
            "source": "tenant_recording",
            "file": str(p.recording),
            "sha256": None,  # known once decoded: `ivr prompts build`
        }
    spoken = cache.cached(p.language, p.text)
    return {
        "prompt_id": p.prompt_id,
        "text": p.text,
        "source": "synthesised",
        "sha256": spoken.sha256 if spoken else None,  # None: not in the cache yet
    }


def _show_text(line: Line, data: dict[str, Any]) -> str:
    out = [
        f"line {line.number}: tenant {line.tenant}, {line.lawful_basis.value}, "
        f"{line.consent_mode.value}, {line.language}",
        f"purpose: {line.purpose}",
    ]
    width = max(
        (len(p["prompt_id"]) for x in data["platforms"].values() for p in x["prompts"]), default=0
    )
    for platform, x in data["platforms"].items():
        out.append("")
        out.append(f"on {platform} (withdraw: {x['withdraw']}):")
        for p in x["prompts"]:
            if p["source"] == "tenant_recording":
                note = f"  [the tenant's recording {p['file']}; its declared words]"
            elif p["sha256"] is None:
                note = "  [not yet synthesised: ivr prompts build]"
            else:
                note = ""
            lines = textwrap.wrap(p["text"], 96 - width) or [""]
            out.append(f"  {p['prompt_id']:<{width}}  {lines[0]}")
            out += [f"  {'':<{width}}  {rest}" for rest in lines[1:]]
            if note:
                out.append(f"  {'':<{width}}{note}")
    return "\n".join(out)
