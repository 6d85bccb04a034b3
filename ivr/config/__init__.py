"""The configuration file: tenants, lines and each line's consent policy (docs/configuration.md).

- :mod:`ivr.config.model`: what a loaded configuration is (frozen values, defaults, limits),
  and which TOML key sets each field;
- :mod:`ivr.config.keys`: how those declarations become the key lists the loader accepts;
- :mod:`ivr.config.checks`: checking one value, and :class:`ConfigError`;
- :mod:`ivr.config.reader`: reading tables while collecting every problem;
- :mod:`ivr.config.lines`: the ``[[lines]]`` rules;
- :mod:`ivr.config.load`: :func:`load_config`, the file and environment in, a Config out.

Everything the rest of the service uses is imported from here.
"""

from ivr.config.checks import ConfigError
from ivr.config.load import DEMO_CONFIG, DEMO_TWILIO_AUTH_TOKEN, load_config
from ivr.config.model import (
    API_ROLES,
    DEFAULT_AUTH_TOKEN_ENV,
    PROMPT_IDS,
    PROMPT_LANGUAGES,
    ApiTokenConfig,
    AsteriskSettings,
    Config,
    Limits,
    Line,
    PromptOverride,
    Tenant,
    normalise_number,
)

__all__ = [
    "API_ROLES",
    "DEFAULT_AUTH_TOKEN_ENV",
    "DEMO_CONFIG",
    "DEMO_TWILIO_AUTH_TOKEN",
    "PROMPT_IDS",
    "PROMPT_LANGUAGES",
    "ApiTokenConfig",
    "AsteriskSettings",
    "Config",
    "ConfigError",
    "Limits",
    "Line",
    "PromptOverride",
    "Tenant",
    "load_config",
    "normalise_number",
]
