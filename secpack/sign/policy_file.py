"""Trust policies as TOML files (schema in docs/POLICY.md).

Reading the files a policy names is the caller's job, through the ``read_key`` and
``resolve`` callbacks. The one look of its own at the file system is whether a
``trusted_root`` is a file, so that a misspelt one fails when the policy loads; it
is parsed (which imports sigstore) only when a keyless signature is checked.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from secpack.errors import PolicyError
from secpack.format.limits import DEFAULT_LIMITS, Limits
from secpack.recipes.keys import SIGNING_ALGS, SigningPublicKey, key_id
from secpack.sign.keyless import SigstoreSigner
from secpack.sign.policy import Policy, parse_duration, signing_key

__all__ = ["policy_from_toml"]


def policy_from_toml(
    text: str, read_key: Callable[[str], bytes], resolve: Callable[[str], str], name: str
) -> Policy:
    """Parse a policy; key files are read with ``read_key`` and other paths (the
    trusted root, the state directory) made absolute with ``resolve``, both relative to the policy file."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError("policy.invalid", f"{name}: {exc}") from None
    except RecursionError:  # nesting past the parser's stack
        raise PolicyError("policy.invalid", f"{name}: nested too deeply") from None
    return _from_doc(doc, read_key, resolve, name)


def _sigstore_signer(entry: Any, where: str) -> SigstoreSigner:
    if not isinstance(entry, dict):
        raise PolicyError("policy.invalid", f"{where}: expected a table")
    _check_keys(entry, {"identity", "issuer", "repository", "workflow", "ref"}, where)
    for required in ("identity", "issuer"):
        if not isinstance(entry.get(required), str) or not entry[required]:
            raise PolicyError("policy.invalid", f"{where}: {required} is required")
    for optional in ("repository", "workflow", "ref"):
        if optional in entry and not isinstance(entry[optional], str):
            raise PolicyError("policy.invalid", f"{where}: {optional} must be a string")
    return SigstoreSigner(
        identity=entry["identity"],
        issuer=entry["issuer"],
        repository=entry.get("repository"),
        workflow=entry.get("workflow"),
        ref=entry.get("ref"),
    )


def _expect(doc: dict[str, Any], key: str, typ: type, where: str) -> Any:
    """``doc[key]``, refused unless of type ``typ``; ``where`` is "FILE: table"."""
    value = doc[key]
    if typ is int and type(value) is not int:  # not true, not 1.0
        raise PolicyError("policy.invalid", f"{where}.{key} must be an integer")
    if not isinstance(value, typ):
        raise PolicyError("policy.invalid", f"{where}.{key} must be {_TOML_TYPES[typ]}")
    return value


def _path(value: str, name: str) -> str:
    """A path the policy names: empty, or with a NUL byte (which no file name
    holds, and which os.open refuses in its own words), it is refused here."""
    if not value or "\0" in value:
        raise PolicyError("policy.invalid", f"{name}: {value!r} is not a file path")
    return value


# What a TOML author calls each type _expect asks for.
_TOML_TYPES = {list: "an array", str: "a string", bool: "true or false", int: "an integer"}


def _check_keys(doc: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(doc) - allowed
    if unknown:
        raise PolicyError("policy.invalid", f"{where}: unknown setting(s) {sorted(unknown)}")


def _from_doc(
    doc: dict[str, Any], read_key: Callable[[str], bytes], resolve: Callable[[str], str], name: str
) -> Policy:
    _check_keys(doc, {"version", "trust", "freshness", "components", "rollback", "limits"}, name)
    if type(doc.get("version")) is not int or doc["version"] != 1:  # not true, not 1.0
        raise PolicyError("policy.invalid", f"{name}: version must be 1")
    trust = doc.get("trust")
    if not isinstance(trust, dict):
        raise PolicyError("policy.invalid", f"{name}: missing [trust] table")
    _check_keys(
        trust, {"keys", "threshold", "algorithms", "sigstore", "trusted_root"}, f"{name} [trust]"
    )
    paths = _expect(trust, "keys", list, f"{name}: trust") if "keys" in trust else []
    keys: dict[bytes, SigningPublicKey] = {}
    for path in paths:
        if not isinstance(path, str) or not path or "\0" in path:
            raise PolicyError("policy.invalid", f"{name}: trust.keys entries are file paths")
        key = signing_key(read_key(path), path)
        keys[key_id(key)] = key
    kwargs: dict[str, Any] = {"keys": keys, "name": name}
    if "sigstore" in trust:
        kwargs["sigstore"] = tuple(
            _sigstore_signer(entry, f"{name} [[trust.sigstore]]")
            for entry in _expect(trust, "sigstore", list, f"{name}: trust")
        )
    if "trusted_root" in trust:
        root = resolve(_path(_expect(trust, "trusted_root", str, f"{name}: trust"), name))
        # Checked here, not only when a keyless signature is met: a policy with a
        # misspelt root would otherwise load, and fail on the first such package.
        # (Parsing it imports sigstore, which a key-only verify never needs.)
        if not os.path.isfile(root):
            raise PolicyError("policy.invalid", f"{name}: trust.trusted_root {root} is not a file")
        kwargs["trusted_root"] = root
    if "threshold" in trust:
        kwargs["threshold"] = _expect(trust, "threshold", int, f"{name}: trust")
    if "algorithms" in trust:
        algs = _expect(trust, "algorithms", list, f"{name}: trust")
        if not algs or any(a not in SIGNING_ALGS for a in algs):
            raise PolicyError("policy.invalid", f"{name}: algorithms must be among {SIGNING_ALGS}")
        kwargs["algorithms"] = frozenset(algs)
    fresh = doc.get("freshness", {})
    if not isinstance(fresh, dict):
        raise PolicyError("policy.invalid", f"{name}: [freshness] must be a table")
    _check_keys(fresh, {"require_expires", "max_age", "max_clock_skew"}, f"{name} [freshness]")
    if "require_expires" in fresh:
        kwargs["require_expires"] = _expect(fresh, "require_expires", bool, f"{name}: freshness")
    for setting in ("max_age", "max_clock_skew"):
        if setting in fresh:
            try:
                kwargs[setting] = parse_duration(_expect(fresh, setting, str, f"{name}: freshness"))
            except ValueError as exc:
                raise PolicyError("policy.invalid", f"{name}: freshness.{setting}: {exc}") from None
    comps = doc.get("components", {})
    if not isinstance(comps, dict):
        raise PolicyError("policy.invalid", f"{name}: [components] must be a table")
    _check_keys(comps, {"required"}, f"{name} [components]")
    if "required" in comps:
        req = _expect(comps, "required", list, f"{name}: components")
        if not all(isinstance(c, str) and c for c in req):
            raise PolicyError("policy.invalid", f"{name}: components.required must list names")
        kwargs["required_components"] = tuple(req)
    rollback = doc.get("rollback", {})
    if not isinstance(rollback, dict):
        raise PolicyError("policy.invalid", f"{name}: [rollback] must be a table")
    _check_keys(rollback, {"protect", "state_dir"}, f"{name} [rollback]")
    if "protect" in rollback:
        kwargs["rollback"] = _expect(rollback, "protect", bool, f"{name}: rollback")
    # Empty: the default state directory, as it always meant.
    if rollback.get("state_dir", "") != "":
        state_dir = _path(_expect(rollback, "state_dir", str, f"{name}: rollback"), name)
        # Relative to the policy file, like its keys and trusted root: the same
        # policy must name the same state whatever directory a verb runs in.
        kwargs["state_dir"] = resolve(state_dir)
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
        ceiling = _LIMIT_CEILINGS.get(key, _LIMIT_CEILING)
        if value > ceiling:
            # Loaded, a larger one failed every package later, in a decoder's words.
            raise PolicyError("policy.invalid", f"{name}: limits.{key} must be at most {ceiling}")
    return replace(DEFAULT_LIMITS, **table)


# TOML's own largest integer (it has 64-bit signed integers), the natural way to
# write "no limit"; tomllib takes larger ones, and past 2^64 cbor2 failed every
# package with OverflowError (max_cbor_depth).
_LIMIT_CEILING = 2**63 - 1
_LIMIT_CEILINGS = {
    # numpy makes no array of more dimensions (2.x: "maximum supported dimension
    # for an ndarray is currently 64"), so the loader could serve no such tensor.
    "max_tensor_ndim": 64,
}
