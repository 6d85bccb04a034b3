"""The GDPR lawful bases, and which consent modes each admits (DESIGN.md: lawful basis → call flow).

- ``opt_in``: the caller is asked and recording starts only after the accept key; silence or the
  decline key is a refusal (Art. 7, Recital 32). The only mode for ``consent``.
- ``opt_out``: the caller is told the purpose and may object with one key (Art. 21); recording
  starts when the notice ends without objection. Required for ``legitimate_interests``; allowed
  for ``public_task``, where Art. 21 gives the same right to object.
- ``notice``: the caller is told that and why the call is recorded; no refusal key.
- ``none``: nothing is said and recording starts at once; only for ``vital_interests``
  (emergency lines), where a notice can cost time that matters.
"""

from __future__ import annotations

from enum import StrEnum


class LawfulBasis(StrEnum):
    """GDPR Art. 6(1) (a)–(f), in the vocabulary of draft-howe-vcon-lawful-basis.

    The meaning lives here, with the tables below; the catalog stores a basis as a validated
    name only (storage.catalog.LAWFUL_BASES, kept equal to this by tests/test_lawful_basis.py).
    """

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    VITAL_INTERESTS = "vital_interests"
    PUBLIC_TASK = "public_task"
    LEGITIMATE_INTERESTS = "legitimate_interests"


class ConsentMode(StrEnum):
    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"
    NOTICE = "notice"
    NONE = "none"


ALLOWED_MODES: dict[LawfulBasis, tuple[ConsentMode, ...]] = {
    LawfulBasis.CONSENT: (ConsentMode.OPT_IN,),
    LawfulBasis.LEGITIMATE_INTERESTS: (ConsentMode.OPT_OUT,),
    LawfulBasis.PUBLIC_TASK: (ConsentMode.NOTICE, ConsentMode.OPT_OUT),
    LawfulBasis.CONTRACT: (ConsentMode.NOTICE,),
    LawfulBasis.LEGAL_OBLIGATION: (ConsentMode.NOTICE,),
    LawfulBasis.VITAL_INTERESTS: (ConsentMode.NOTICE, ConsentMode.NONE),
}

# The first allowed mode is the default.
DEFAULT_MODE = {basis: modes[0] for basis, modes in ALLOWED_MODES.items()}

# Withdrawal discards what was recorded by default where the basis gives the caller that right
# (Art. 7(3) and 17(1)(b) for consent, Art. 21 and 17(1)(c) for an objection).
DISCARD_ON_WITHDRAW_DEFAULT = {
    basis: basis in (LawfulBasis.CONSENT, LawfulBasis.LEGITIMATE_INTERESTS, LawfulBasis.PUBLIC_TASK)
    for basis in LawfulBasis
}

# Whether the caller may stop the recording mid-call with the withdraw key.
WITHDRAWABLE = {
    basis: basis in (LawfulBasis.CONSENT, LawfulBasis.LEGITIMATE_INTERESTS, LawfulBasis.PUBLIC_TASK)
    for basis in LawfulBasis
}

# Storage limitation (Art. 5(1)(e)): how long a recording is kept when neither the tenant nor the
# line says otherwise. Deliberately short; a tenant with a legal duty to keep longer (e.g. MiFID II
# order recordings: 5 years) sets its own.
DEFAULT_RETENTION_DAYS: dict[LawfulBasis, int] = {
    LawfulBasis.CONSENT: 90,
    LawfulBasis.LEGITIMATE_INTERESTS: 90,
    LawfulBasis.CONTRACT: 365,
    LawfulBasis.LEGAL_OBLIGATION: 1825,
    LawfulBasis.PUBLIC_TASK: 365,
    LawfulBasis.VITAL_INTERESTS: 30,
}


def mode_error(basis: LawfulBasis, mode: ConsentMode) -> str | None:
    """Why ``mode`` cannot serve ``basis``, or None when it can."""
    allowed = ALLOWED_MODES[basis]
    if mode in allowed:
        return None
    names = " or ".join(m.value for m in allowed)
    if basis is LawfulBasis.CONSENT:
        return (
            f"lawful basis 'consent' needs an explicit opt-in; consent_mode '{mode.value}' would "
            "imply consent from silence or inactivity, which GDPR does not accept (Recital 32)"
        )
    return f"lawful basis '{basis.value}' takes consent_mode {names}, not '{mode.value}'"
