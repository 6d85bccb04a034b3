"""The lawful basis lives with the policy (ivr.policy); storage keeps only the names it accepts."""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import pytest

from ivr.policy import (
    ALLOWED_MODES,
    DEFAULT_RETENTION_DAYS,
    DISCARD_ON_WITHDRAW_DEFAULT,
    WITHDRAWABLE,
    LawfulBasis,
)
from storage.catalog import LAWFUL_BASES, MIGRATIONS

ROOT = Path(__file__).parent.parent
# The CHECK clause every existing catalog carries in its schema (migration 1): it must keep
# accepting exactly these values, in this text, so no migration is needed.
HISTORICAL_CHECK = (
    "lawful_basis TEXT NOT NULL CHECK (lawful_basis IN ('consent', 'contract', "
    "'legal_obligation', 'vital_interests', 'public_task', 'legitimate_interests'))"
)


def test_storage_accepts_exactly_the_policy_bases():
    assert tuple(basis.value for basis in LawfulBasis) == LAWFUL_BASES


def test_every_policy_table_covers_every_basis():
    for table in (ALLOWED_MODES, DEFAULT_RETENTION_DAYS, DISCARD_ON_WITHDRAW_DEFAULT, WITHDRAWABLE):
        assert set(table) == set(LawfulBasis)


def test_the_catalog_check_constraint_is_unchanged():
    schema = " ".join(MIGRATIONS[0].split())
    assert HISTORICAL_CHECK in schema


def test_the_check_constraint_accepts_every_basis_and_nothing_else():
    db = sqlite3.connect(":memory:")
    db.execute(f"CREATE TABLE t ({HISTORICAL_CHECK})")
    for basis in LawfulBasis:
        db.execute("INSERT INTO t VALUES (?)", (basis.value,))
    for wrong in ("because", "Consent", "legitimate_interest", ""):
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO t VALUES (?)", (wrong,))


def test_a_stored_basis_reads_back_as_the_policy_basis(tmp_path):
    from storage.errors import VaultError
    from storage.vault import Vault

    with Vault(tmp_path, master_key=b"k" * 32, fsync=False) as vault:
        for basis in LawfulBasis:
            rec = vault.start_recording(tenant="acme", lawful_basis=basis, purpose="q")
            rec.close()
            stored = vault.get(rec.id).lawful_basis
            assert stored == basis.value and LawfulBasis(stored) is basis
            assert DEFAULT_RETENTION_DAYS[LawfulBasis(stored)] == DEFAULT_RETENTION_DAYS[basis]
        with pytest.raises(VaultError, match="unknown lawful basis 'because'"):
            vault.start_recording(tenant="acme", lawful_basis="because", purpose="q")


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "package,forbidden", [("storage", {"ivr", "media"}), ("media", {"ivr", "storage"})]
)
def test_storage_and_media_import_neither_ivr_nor_each_other(package, forbidden):
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & forbidden)
        for path in sorted((ROOT / package).rglob("*.py"))
        if _imported_packages(path) & forbidden
    }
    assert offenders == {}


def test_only_the_policy_defines_lawful_basis():
    definitions = [
        str(path.relative_to(ROOT))
        for folder in ("ivr", "storage", "media")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if re.search(r"^class LawfulBasis\b", path.read_text(), re.MULTILINE)
    ]
    assert definitions == ["ivr/policy.py"]
