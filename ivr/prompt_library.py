"""The prompts each call plays: its line's own words (``ivr.wording``) spoken into the prompt
cache (``media.tts``), with the tenant's own recordings in front.

What a caller hears depends on the line and on the platform the call comes over (the withdraw
sentence names the channel that platform honours), so prompts are resolved per (line,
platform): ``plan`` says what each prompt of a call is (words, and whether it is the tenant's
recording), ``PromptLibrary.load`` makes them all playable at start-up, synthesising what the
cache lacks, so that a call never waits for speech and a bad prompt stops the start, not a call.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeVar

from ivr.capabilities import PLATFORMS
from ivr.config import Config, Line
from ivr.consent import PromptInfo
from ivr.wording import prompt_texts
from media.prompts import PROMPT_IDS, Prompt, load_prompt
from media.tts import INSTALL_HINT, PromptCache, SpeechError

# Where synthesised prompts are kept: env IVR_PROMPT_CACHE, else this folder of the data dir.
CACHE_ENV = "IVR_PROMPT_CACHE"
CACHE_DIR_NAME = "prompt-cache"

Origin = Literal["tenant", "cached", "new"]


def cache_dir(data_dir: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """The prompt cache of a service whose vault is in ``data_dir``."""
    chosen = environ.get(CACHE_ENV)
    return Path(chosen) if chosen else Path(data_dir) / CACHE_DIR_NAME


@dataclass(frozen=True, slots=True)
class PlannedPrompt:
    """One prompt of a call on a line and platform, before any audio exists."""

    line: str  # the line's number
    platform: str
    prompt_id: str
    language: str
    text: str  # the words the caller hears
    recording: Path | None  # the tenant's own recording; None: synthesised from ``text``


# Prompts listed in the order a caller meets them (the opening prompt first).
_FLOW_ORDER = {pid: n for n, pid in enumerate(PROMPT_IDS)}


def plan(config: Config, line: Line, platform: str) -> dict[str, PlannedPrompt]:
    """Every prompt a call to ``line`` over ``platform`` can play, by prompt id, in the order
    a caller meets them. Raises ``LookupError`` if the line is not served there."""
    if platform not in line.platforms or platform not in PLATFORMS:
        raise LookupError(
            f"line {line.number} is not served on {platform!r} (its platforms: "
            f"{', '.join(line.platforms)})"
        )
    tenant = config.tenants[line.tenant]
    texts = prompt_texts(line.terms(PLATFORMS[platform]))
    out = {}
    for prompt_id in sorted(texts, key=lambda pid: _FLOW_ORDER.get(pid, len(_FLOW_ORDER))):
        text = texts[prompt_id]
        own = tenant.prompt(line.language, prompt_id)
        out[prompt_id] = PlannedPrompt(
            line=line.number,
            platform=platform,
            prompt_id=prompt_id,
            language=line.language,
            text=own.text if own is not None else text,
            recording=own.file if own is not None else None,
        )
    return out


def plans(config: Config) -> Iterator[PlannedPrompt]:
    """Every prompt of every line on each of its platforms."""
    for line in config.lines.values():
        for platform in line.platforms:
            yield from plan(config, line, platform).values()


def missing(config: Config, cache: PromptCache) -> list[PlannedPrompt]:
    """The speech the configuration needs that the cache does not hold yet, once per distinct
    (language, words), with the first prompt that says them (no synthesis, no espeak-ng)."""
    found: dict[tuple[str, str], PlannedPrompt | None] = {}
    for p in plans(config):
        key = (p.language, p.text)
        if p.recording is None and key not in found:
            found[key] = p if cache.cached(*key) is None else None
    return [p for p in found.values() if p is not None]


def load_recordings(config: Config) -> dict[tuple[str, str, str], Prompt]:
    """Every tenant's own recordings, decoded and checked, by (tenant, language, prompt id):
    all of them, so that one no line plays yet is fixed before a line starts to play it.
    Raises ``PromptError`` naming the file."""
    return {
        (tenant.id, o.language, o.prompt_id): load_prompt(
            o.file, prompt_id=o.prompt_id, language=o.language, text=o.text
        )
        for tenant in config.tenants.values()
        for o in tenant.prompt_overrides
    }


@dataclass(frozen=True, slots=True)
class LoadedPrompt:
    """How one prompt of a (line, platform) was made ready: for ``ivr prompts build``."""

    planned: PlannedPrompt
    sha256: str
    duration_ms: int
    origin: Origin  # the tenant's recording, found in the cache, or synthesised now


_T = TypeVar("_T")


@dataclass(frozen=True)
class PromptLibrary:
    calls: Mapping[tuple[str, str], Mapping[str, Prompt]]  # (line number, platform) → prompts
    loaded: tuple[LoadedPrompt, ...] = ()
    # What a call's consent flow is told of each of its prompts, made once here and shared by
    # every call rather than built per call (a dictionary and a record per prompt).
    infos: Mapping[tuple[str, str], Mapping[str, PromptInfo]] = field(init=False)

    def __post_init__(self) -> None:
        infos = {key: MappingProxyType(prompt_infos(p)) for key, p in self.calls.items()}
        object.__setattr__(self, "infos", MappingProxyType(infos))

    @classmethod
    def load(
        cls,
        config: Config,
        cache_dir: Path,
        *,
        progress: Callable[[str], None] | None = None,
        cache: PromptCache | None = None,
    ) -> PromptLibrary:
        """Every prompt of every call decoded and checked now (tenant recordings) or taken from
        the cache, synthesising what it lacks. Blocking: the service runs it in a thread.
        ``progress`` hears one line per prompt synthesised. Raises ``PromptError`` for a bad
        tenant recording, ``SpeechError`` if a prompt must be synthesised and cannot be."""
        cache = cache or PromptCache(cache_dir)
        say = progress or (lambda _: None)
        recordings = load_recordings(config)
        wanted = list(plans(config))
        to_make: dict[tuple[str, str], str] = {}  # (language, words) → the first prompt id
        seen: set[tuple[str, str]] = set()
        for p in wanted:
            key = (p.language, p.text)
            if p.recording is None and key not in seen:
                seen.add(key)
                if cache.cached(*key) is None:
                    to_make[key] = p.prompt_id
        if to_make and cache.engine() is None:
            raise SpeechError(
                f"{len(to_make)} prompt(s) are not in the prompt cache at {cache.directory} "
                f"and {cache.espeak} is not installed; {INSTALL_HINT}"
            )
        if to_make:
            say(f"synthesising {len(to_make)} prompt(s) into {cache.directory}")
        audio: dict[tuple[str, str], Prompt] = {}
        for n, ((language, text), prompt_id) in enumerate(to_make.items(), 1):
            shown = text if len(text) <= 60 else text[:59] + "…"
            say(f"  [{n}/{len(to_make)}] {language} {prompt_id}: {shown}")
            audio[(language, text)], _ = cache.prompt(language, text, prompt_id=prompt_id)
        calls: dict[tuple[str, str], dict[str, Prompt]] = {}
        loaded = []
        for p in wanted:
            prompt: Prompt
            origin: Origin
            if p.recording is not None:
                tenant_id = config.lines[p.line].tenant
                prompt, origin = recordings[(tenant_id, p.language, p.prompt_id)], "tenant"
            else:
                key = (p.language, p.text)
                if key not in audio:
                    audio[key], _ = cache.prompt(p.language, p.text, prompt_id=p.prompt_id)
                prompt = replace(audio[key], id=p.prompt_id)
                origin = "new" if key in to_make else "cached"
            calls.setdefault((p.line, p.platform), {})[p.prompt_id] = prompt
            loaded.append(LoadedPrompt(p, prompt.sha256, prompt.duration_ms, origin))
        return cls(
            MappingProxyType({k: MappingProxyType(v) for k, v in calls.items()}), tuple(loaded)
        )

    def for_call(self, line: Line, platform: str) -> Mapping[str, Prompt]:
        """The prompts of a call to ``line`` over ``platform``, by prompt id (read-only: every
        such call shares them)."""
        return self._of_call(self.calls, line, platform)

    def infos_for_call(self, line: Line, platform: str) -> Mapping[str, PromptInfo]:
        """What the consent flow of such a call is told of its prompts (shared, read-only)."""
        return self._of_call(self.infos, line, platform)

    @staticmethod
    def _of_call(
        by_call: Mapping[tuple[str, str], Mapping[str, _T]], line: Line, platform: str
    ) -> Mapping[str, _T]:
        try:
            return by_call[(line.number, platform)]
        except KeyError:
            raise LookupError(
                f"no prompts for line {line.number} on {platform!r} (its platforms: "
                f"{', '.join(line.platforms)})"
            ) from None

    def texts(self, line: Line, platform: str) -> dict[str, str]:
        """The words of each prompt of such a call, as kept in its consent evidence."""
        return {pid: p.text for pid, p in self.for_call(line, platform).items()}


def prompt_infos(prompts: Mapping[str, Prompt]) -> dict[str, PromptInfo]:
    return {pid: PromptInfo(pid, p.text, p.sha256, p.duration_ms) for pid, p in prompts.items()}
