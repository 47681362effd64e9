"""Data categories and actions: the units of sealing, policy and breach severity (DESIGN §4)."""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    IDENTITY = "identity"   # names, birth date, sex, birth place, NIR, INS
    CONTACT = "contact"     # address, phone, e-mail
    COVERAGE = "coverage"   # AMO / AMC insurers and member numbers
    CLINICAL = "clinical"   # orders, specimens, results, blood group, notes, prescriber
    ACCOUNT = "account"     # portal login, password hash, MFA secret


PATIENT_CATEGORIES: tuple[Category, ...] = (
    Category.IDENTITY, Category.CONTACT, Category.COVERAGE, Category.CLINICAL,
)


class Action(StrEnum):
    READ = "read"
    SEARCH = "search"
    WRITE = "write"
    VALIDATE = "validate"
    EXPORT = "export"
    ERASE = "erase"
