"""Which blind indexes a patient gets, and how a search value becomes a digest."""

from __future__ import annotations

from datetime import date

from labvault.crypto import blind_index as bi
from labvault.domain.patient import PatientRecord


def index_values(rec: PatientRecord) -> list[tuple[str, str]]:
    """(kind, normalised value) pairs for one patient."""
    out: list[tuple[str, str]] = []
    if rec.nir:
        out.append((bi.NIR, bi.normalise_nir(rec.nir)))
    if rec.ins and rec.ins != rec.nir:
        out.append((bi.NIR, bi.normalise_nir(rec.ins)))
    if rec.email:
        out.append((bi.EMAIL, bi.normalise_email(rec.email)))
    if rec.phone:
        out.append((bi.PHONE, bi.normalise_phone(rec.phone)))
    first = rec.first_names[0]
    out.append((bi.NAME_DOB, bi.normalise_name_dob(rec.birth_name, first, rec.birth_date)))
    if rec.used_name and bi.fold_name(rec.used_name) != bi.fold_name(rec.birth_name):
        out.append((bi.NAME_DOB, bi.normalise_name_dob(rec.used_name, first, rec.birth_date)))
    if rec.external_id:
        out.append((bi.EXTERNAL_ID, rec.external_id))
    # a merged duplicate's external ids find the record kept, as its own does
    out.extend((bi.EXTERNAL_ID, former) for former in rec.former_ids)
    return out


def digests(index_key: bytes | bi.Indexer,
            values: list[tuple[str, str]]) -> list[tuple[str, bytes]]:
    ix = index_key if isinstance(index_key, bi.Indexer) else bi.Indexer(index_key)
    return list(zip((kind for kind, _ in values), ix.digest_many(values), strict=True))


def search_value(kind: str, raw: str | tuple[str, str, date]) -> str:
    """Normalise a search term exactly as the stored value was normalised."""
    from labvault.domain import validation as v
    if kind == bi.NIR:
        assert isinstance(raw, str)
        return bi.normalise_nir(v.nir(raw, "nir"))
    if kind == bi.EMAIL:
        assert isinstance(raw, str)
        return bi.normalise_email(v.email(raw, "email"))
    if kind == bi.PHONE:
        assert isinstance(raw, str)
        return bi.normalise_phone(v.phone(raw, "phone"))
    if kind == bi.NAME_DOB:
        assert isinstance(raw, tuple)
        return bi.normalise_name_dob(*raw)
    raise ValueError(kind)
