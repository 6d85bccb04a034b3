"""The prompts each line plays: the built-in set, with a tenant's own recordings in front."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ivr.config import Config
from ivr.consent import PromptInfo
from media.prompts import BUILTIN_SOUNDS, Prompt, load_manifest, load_prompt


@dataclass(frozen=True)
class PromptLibrary:
    builtin: Mapping[tuple[str, str], Prompt]
    overrides: Mapping[tuple[str, str, str], Prompt]  # (tenant, language, prompt id)

    @classmethod
    def load(cls, config: Config, sounds_dir: Path = BUILTIN_SOUNDS) -> PromptLibrary:
        """Every prompt decoded and checked now, so a bad file stops start-up, not a call."""
        overrides = {}
        for tenant in config.tenants.values():
            for o in tenant.prompt_overrides:
                overrides[(tenant.id, o.language, o.prompt_id)] = load_prompt(
                    o.file, prompt_id=o.prompt_id, language=o.language, text=o.text
                )
        return cls(load_manifest(sounds_dir), overrides)

    def get(self, tenant: str, language: str, prompt_id: str) -> Prompt:
        found = self.overrides.get((tenant, language, prompt_id))
        return found if found is not None else self.builtin[(language, prompt_id)]

    def for_line(self, tenant: str, language: str) -> dict[str, Prompt]:
        ids = {pid for (_lang, pid) in self.builtin}
        return {pid: self.get(tenant, language, pid) for pid in ids}


def prompt_infos(prompts: Mapping[str, Prompt]) -> dict[str, PromptInfo]:
    return {pid: PromptInfo(pid, p.text, p.sha256, p.duration_ms) for pid, p in prompts.items()}
