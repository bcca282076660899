"""Trust policies: who may sign, how many must, and what else a package must meet.

A policy is a TOML document (schema in docs/POLICY.md). It is parsed into a
frozen :class:`Policy`; reading the files it names is the caller's job, through
the ``read_key`` callback, so this module does no I/O of its own.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from secpack.errors import IntegrityError, PolicyError, SignatureError
from secpack.format.limits import DEFAULT_LIMITS, Limits
from secpack.format.sections import SIG_TYPE_COSE_SIGN1, SignatureEntry
from secpack.recipes import signing
from secpack.recipes.keys import (
    SIGNING_ALGS,
    SigningPublicKey,
    key_id,
    load_public_pem,
    signing_alg_of,
)
from secpack.sign import cose

__all__ = ["Policy", "Signer", "evaluate_signatures", "parse_duration", "policy_from_keys"]

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """'90d', '12h', '30m', '2w', '45s' -> seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration like 90d, 12h, 30m, 2w")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


@dataclass(frozen=True)
class Signer:
    """A signature that verified against a trusted key."""

    key_id: bytes
    alg: str


@dataclass(frozen=True)
class Policy:
    keys: dict[bytes, SigningPublicKey]
    threshold: int = 1
    algorithms: frozenset[str] = frozenset(SIGNING_ALGS)
    require_expires: bool = False
    max_age: int | None = None  # seconds since `created`
    # Accept `created` at most this far in the future (clock skew between machines).
    max_clock_skew: int = 300
    required_components: tuple[str, ...] = ()
    # Refuse a version lower than one already seen from the same signer (fresh.rollback).
    rollback: bool = True
    state_dir: str | None = None  # None: secpack.transport.state.default_state_dir()
    limits: Limits = field(default=DEFAULT_LIMITS)
    name: str = "<command line>"

    def __post_init__(self) -> None:
        if not self.keys:
            raise PolicyError("policy.invalid", f"{self.name}: no trusted signers")
        if not 1 <= self.threshold <= len(self.keys):
            raise PolicyError(
                "policy.invalid",
                f"{self.name}: threshold {self.threshold} with {len(self.keys)} trusted key(s)",
            )

    @classmethod
    def from_toml(cls, text: str, read_key: Callable[[str], bytes], name: str) -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError("policy.invalid", f"{name}: {exc}") from None
        return _from_doc(doc, read_key, name)


def policy_from_keys(pems: Iterable[tuple[str, bytes]], threshold: int = 1) -> Policy:
    """A policy that trusts exactly the given public keys (``--trust``)."""
    keys = {}
    for what, pem in pems:
        key = _signing_key(pem, what)
        keys[key_id(key)] = key
    return Policy(keys=keys, threshold=threshold)


def _signing_key(pem: bytes, what: str) -> SigningPublicKey:
    key = load_public_pem(pem, what)
    if not isinstance(key, SigningPublicKey):
        raise PolicyError("policy.invalid", f"{what}: not a signing public key")
    return key


def _expect(doc: dict[str, Any], key: str, typ: type, where: str) -> Any:
    value = doc[key]
    if typ is int and type(value) is not int:
        raise PolicyError("policy.invalid", f"{where}.{key} must be an integer")
    if not isinstance(value, typ):
        raise PolicyError("policy.invalid", f"{where}.{key} must be {typ.__name__}")
    return value


def _check_keys(doc: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(doc) - allowed
    if unknown:
        raise PolicyError("policy.invalid", f"{where}: unknown setting(s) {sorted(unknown)}")


def _from_doc(doc: dict[str, Any], read_key: Callable[[str], bytes], name: str) -> Policy:
    _check_keys(doc, {"version", "trust", "freshness", "components", "rollback", "limits"}, name)
    if doc.get("version") != 1:
        raise PolicyError("policy.invalid", f"{name}: version must be 1")
    trust = doc.get("trust")
    if not isinstance(trust, dict):
        raise PolicyError("policy.invalid", f"{name}: missing [trust] table")
    _check_keys(trust, {"keys", "threshold", "algorithms"}, f"{name} [trust]")
    paths = _expect(trust, "keys", list, "trust") if "keys" in trust else []
    keys: dict[bytes, SigningPublicKey] = {}
    for path in paths:
        if not isinstance(path, str):
            raise PolicyError("policy.invalid", f"{name}: trust.keys entries are file paths")
        key = _signing_key(read_key(path), path)
        keys[key_id(key)] = key
    kwargs: dict[str, Any] = {"keys": keys, "name": name}
    if "threshold" in trust:
        kwargs["threshold"] = _expect(trust, "threshold", int, "trust")
    if "algorithms" in trust:
        algs = _expect(trust, "algorithms", list, "trust")
        if not algs or any(a not in SIGNING_ALGS for a in algs):
            raise PolicyError("policy.invalid", f"{name}: algorithms must be among {SIGNING_ALGS}")
        kwargs["algorithms"] = frozenset(algs)
    fresh = doc.get("freshness", {})
    if not isinstance(fresh, dict):
        raise PolicyError("policy.invalid", f"{name}: [freshness] must be a table")
    _check_keys(fresh, {"require_expires", "max_age", "max_clock_skew"}, f"{name} [freshness]")
    if "require_expires" in fresh:
        kwargs["require_expires"] = _expect(fresh, "require_expires", bool, "freshness")
    for setting in ("max_age", "max_clock_skew"):
        if setting in fresh:
            try:
                kwargs[setting] = parse_duration(_expect(fresh, setting, str, "freshness"))
            except ValueError as exc:
                raise PolicyError("policy.invalid", f"{name}: freshness.{setting}: {exc}") from None
    comps = doc.get("components", {})
    if not isinstance(comps, dict):
        raise PolicyError("policy.invalid", f"{name}: [components] must be a table")
    _check_keys(comps, {"required"}, f"{name} [components]")
    if "required" in comps:
        req = _expect(comps, "required", list, "components")
        kwargs["required_components"] = tuple(str(c) for c in req)
    rollback = doc.get("rollback", {})
    if not isinstance(rollback, dict):
        raise PolicyError("policy.invalid", f"{name}: [rollback] must be a table")
    _check_keys(rollback, {"protect", "state_dir"}, f"{name} [rollback]")
    if "protect" in rollback:
        kwargs["rollback"] = _expect(rollback, "protect", bool, "rollback")
    if "state_dir" in rollback:
        kwargs["state_dir"] = _expect(rollback, "state_dir", str, "rollback")
    kwargs["limits"] = _limits(doc.get("limits", {}), name)
    return Policy(**kwargs)


def _limits(table: Any, name: str) -> Limits:
    if not isinstance(table, dict):
        raise PolicyError("policy.invalid", f"{name}: [limits] must be a table")
    known = {f.name for f in fields(Limits)}
    _check_keys(table, known, f"{name} [limits]")
    for key, value in table.items():
        if type(value) is not int or value <= 0:
            raise PolicyError("policy.invalid", f"{name}: limits.{key} must be a positive integer")
    return replace(DEFAULT_LIMITS, **table)


def evaluate_signatures(
    manifest: bytes, entries: Sequence[SignatureEntry], policy: Policy
) -> list[Signer]:
    """Check every signature that names a trusted key; enforce the threshold.

    Raises ``sig.missing``, ``sig.malformed``, ``sig.untrusted``, ``sig.threshold``,
    or ``integrity`` when a trusted key's signature does not verify.
    """
    if not entries:
        raise SignatureError("sig.missing", "the package is unsigned")
    verified: dict[bytes, Signer] = {}
    for entry in entries:
        if entry.type != SIG_TYPE_COSE_SIGN1:
            continue  # a kind this reader cannot check never counts toward the threshold
        sig = cose.parse_sign1(entry.data)
        key = policy.keys.get(sig.kid)
        if key is None:
            continue
        alg = signing_alg_of(key)
        if signing.COSE_ALGS.get(sig.alg) != alg:
            raise SignatureError("sig.malformed", "signature algorithm does not match the key")
        if alg not in policy.algorithms:
            continue
        if not cose.verify_sign1(sig, key, manifest):
            raise IntegrityError("a trusted key's signature does not verify")
        # Keyed by key id: the same key signing twice still counts once.
        verified[sig.kid] = Signer(sig.kid, alg)
    if not verified:
        raise SignatureError("sig.untrusted", "no signature from a trusted key")
    if len(verified) < policy.threshold:
        raise SignatureError(
            "sig.threshold",
            f"{len(verified)} distinct trusted signature(s), policy needs {policy.threshold}",
        )
    return list(verified.values())
