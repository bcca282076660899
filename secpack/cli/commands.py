"""The verbs. Each parses its options, calls the library, and renders the report."""

import contextlib
import os
from typing import Annotated, Any

import typer

from secpack.cli import (
    LESS_READ,
    LESS_SEAL,
    DowngradeOpt,
    JsonOpt,
    PassEnvOpt,
    PolicyOpt,
    QuietOpt,
    ThreadsOpt,
    TrustedRootOpt,
    TrustOpt,
    _run,
    app,
    keygen_app,
)

__all__: list[str] = []


def _pair(text: str, what: str) -> tuple[str | None, str]:
    """'NAME=VALUE' -> (NAME, VALUE); a bare VALUE -> (None, VALUE)."""
    name, sep, value = text.partition("=")
    if not sep:
        return None, text
    if not name or not value:
        raise ValueError(f"{what} {text!r}: expected NAME=VALUE")
    return name, value


def _hex(kid: bytes) -> str:
    return "sha256:" + kid.hex()


def _signer_json(signer: Any) -> dict[str, Any]:
    out = {"key_id": _hex(signer.key_id), "alg": signer.alg}
    if signer.identity:
        out["identity"] = signer.identity
    return out


@app.command(
    epilog="Example: secpack seal ./model -o model.spk --sign-key release.key --recipient prod.pub"
)
def seal(
    source: Annotated[
        str, typer.Argument(metavar="SOURCE", help="Model directory (or one file) to seal.")
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="FILE", help="Package to write.")
    ],
    sign_key: Annotated[
        list[str] | None,
        typer.Option("--sign-key", metavar="KEY", help="Signing key (repeatable)."),
    ] = None,
    recipient: Annotated[
        list[str] | None,
        typer.Option(
            "--recipient",
            metavar="[COMPONENT=]PUB",
            help="X25519 public key that may open the package, or only COMPONENT (repeatable).",
        ),
    ] = None,
    no_encrypt: Annotated[
        bool, typer.Option("--no-encrypt", help="Sign and compress only (reproducible).")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME", help="Package name (default: made from the input's own name)."
        ),
    ] = None,
    version: Annotated[
        int, typer.Option("--version", metavar="N", help="Package version, a positive integer.")
    ] = 1,
    expires: Annotated[
        str | None,
        typer.Option(metavar="WHEN", help="Expiry: ISO-8601 time or a duration such as 90d."),
    ] = None,
    component: Annotated[
        list[str] | None,
        typer.Option("--component", metavar="NAME=GLOB", help="Put matching files in NAME."),
    ] = None,
    level: Annotated[
        str,
        typer.Option(
            metavar="fast|balanced|max",
            help="Compression profile: fast (bg planes, quickest to seal), balanced (bgx planes, "
            "smaller), max (the smaller of both per segment, zstd -19 elsewhere).",
        ),
    ] = "balanced",
    segment_mib: Annotated[
        int | None,
        typer.Option(
            "--segment-size",
            metavar="MIB",
            help="Segment size in MiB (1-16). Default 4; with --level max, 16 for files "
            "that are not safetensors and hold no float arrays; file runs up to 16. "
            "Given, it bounds all of them.",
        ),
    ] = None,
    threads: ThreadsOpt = 0,
    passphrase_env: PassEnvOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    model_signing: Annotated[
        bool,
        typer.Option(
            "--model-signing",
            help="Also sign the plaintext files for model_signing (ECDSA --sign-key).",
        ),
    ] = False,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            "--variant",
            metavar="fp16|bf16|int8",
            help="Add a lossy precision variant of the weights (repeatable).",
        ),
    ] = None,
    variants_only: Annotated[
        bool, typer.Option("--variants-only", help="Leave the exact weights out.")
    ] = False,
    follow_symlinks: Annotated[
        bool,
        typer.Option(
            "--follow-symlinks",
            help="Seal what links to files point to, under the links' names "
            "(a Hugging Face cache snapshot). Links to directories stay refused.",
        ),
    ] = False,
    no_file_runs: Annotated[
        bool,
        typer.Option(
            "--no-file-runs",
            help="Keep every file in segments of its own, even where small files "
            "side by side share content (by default they share one segment).",
        ),
    ] = False,
    require_model_signing: Annotated[
        str | None,
        typer.Option(
            "--require-model-signing",
            metavar="PUB",
            help="Refuse a source whose model.sig does not verify with PUB.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Seal a model directory into one signed, encrypted, compressed package."""

    def action() -> None:
        from secpack.api.keyfiles import load_recipient, load_signing_key, passphrase_from_env
        from secpack.api.seal import seal as do_seal
        from secpack.cli.render import (
            human_ratio,
            human_size,
            out,
            printable,
            progress_for,
            write_err,
        )
        from secpack.package.plan import MAX_SEGMENT, MIN_SEGMENT

        # Checked before any key is read, so that a usage mistake is reported as
        # one; and in the option's own unit, where the library's bound is in bytes.
        if segment_mib is not None and not MIN_SEGMENT >> 20 <= segment_mib <= MAX_SEGMENT >> 20:
            raise ValueError(
                f"--segment-size must be from {MIN_SEGMENT >> 20} to {MAX_SEGMENT >> 20} "
                f"(MiB), not {segment_mib}"
            )

        passphrase = passphrase_from_env(passphrase_env)
        keys = [load_signing_key(p, passphrase) for p in sign_key or []]
        recips = []
        for text in recipient or []:
            scope, path = _pair(text, "--recipient")
            recips.append((scope, load_recipient(path)))
        overrides = []
        for text in component or []:
            comp, glob = _pair(text, "--component")
            if comp is None:
                raise ValueError(f"--component {text!r}: expected NAME=GLOB")
            overrides.append((comp, glob))
        required = None
        if require_model_signing:
            from secpack.api.keyfiles import load_ec_public

            required = load_ec_public(require_model_signing)
        size_hint = _tree_size(source, follow_symlinks)
        _tune_memory(size_hint)
        bar = progress_for(quiet, as_json, size_hint)
        try:
            report = do_seal(
                source,
                output,
                sign_keys=keys,
                recipients=recips,
                encrypt=not no_encrypt,
                name=name,
                version=version,
                expires=expires,
                components=overrides,
                segment_size=None if segment_mib is None else segment_mib << 20,
                model_signing=model_signing,
                require_model_signing=required,
                variants=variant or (),
                variants_only=variants_only,
                follow_symlinks=follow_symlinks,
                file_runs=not no_file_runs,
                level=level,
                threads=threads,
                overwrite=force,
                progress=bar,
            )
        finally:
            bar.stop()
        m = report.manifest
        plain = m.plain_size
        if not quiet and not as_json:
            for note in report.notes:
                write_err(f"note: {printable(note)}\n")
        lines = [
            f"sealed {m.name} v{m.version} -> {report.path}",
            f"  components: {', '.join(c.name for c in m.components)}",
            f"  size: {human_size(plain)} -> {human_size(report.package_size)}"
            f"  ratio {human_ratio(report.package_size, plain)}",
            "  encryption: "
            + ("none (--no-encrypt)" if no_encrypt else "AES-256-GCM per component"),
            f"  signatures: {len(report.signers)}"
            + ("" if report.signers else "  (unsigned: add one with `secpack sign`)"),
            f"  manifest: sha256:{report.manifest_digest.hex()}",
            f"  {plain / max(report.seconds, 1e-9) / 1e6:.0f} MB/s in {report.seconds:.2f} s",
        ]
        out(
            {
                "package": report.path,
                "name": m.name,
                "version": m.version,
                "components": [c.name for c in m.components],
                "original_bytes": plain,
                "package_bytes": report.package_size,
                "ratio": report.package_size / plain if plain else None,
                "encrypted": not no_encrypt,
                "signers": [_hex(k) for k in report.signers],
                "notes": list(report.notes),
                "manifest_digest": "sha256:" + report.manifest_digest.hex(),
                "seconds": report.seconds,
            },
            as_json,
            lines,
            quiet,
        )

    _run(as_json, action, LESS_SEAL)


def _tune_memory(size: int) -> None:
    # Large jobs reuse freed segment buffers (see keep_freed_memory); small ones skip
    # the ctypes import.
    if size >= 64 << 20:
        from secpack.api.common import keep_freed_memory

        keep_freed_memory()


def _tree_size(path: str, follow: bool = False) -> int:
    """The input's size, for the progress bar and the memory budget: a guess (the
    seal's own scan is what counts), so unreadable entries are skipped."""
    size = os.stat if follow else os.lstat
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path, followlinks=False):
        for f in files:
            with contextlib.suppress(OSError):
                total += size(os.path.join(root, f)).st_size
    return total


@app.command(epilog="Example: secpack verify model.spk --trust release.pub")
def verify(
    package: Annotated[str, typer.Argument(metavar="PACKAGE", help="Package to verify.")],
    trust: TrustOpt = None,
    policy: PolicyOpt = None,
    trusted_root: TrustedRootOpt = None,
    component: Annotated[
        list[str] | None,
        typer.Option("--component", metavar="NAME", help="Check only these components."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Require this package name.")
    ] = None,
    allow_downgrade: DowngradeOpt = False,
    threads: ThreadsOpt = 0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check signatures, freshness and every stored byte. Needs no secret key."""

    def action() -> None:
        from secpack.api.keyfiles import resolve_policy
        from secpack.api.verify import verify as do_verify
        from secpack.cli.render import human_size, human_time, out, progress_for

        pol = resolve_policy(trust or [], policy, trusted_root)
        size_hint = os.path.getsize(package) if os.path.isfile(package) else 0
        _tune_memory(size_hint)
        bar = progress_for(quiet, as_json, size_hint)
        try:
            report = do_verify(
                package,
                pol,
                components=component,
                threads=threads,
                progress=bar,
                expected_name=name,
                allow_downgrade=allow_downgrade,
            )
        finally:
            bar.stop()
        m = report.manifest
        signers = [s.identity or f"{_hex(s.key_id)} ({s.alg})" for s in report.signers]
        lines = [
            f"OK {m.name} v{m.version}: {len(report.signers)} trusted signature(s), "
            f"{len(m.components)} component(s), {human_size(report.package_size)} verified",
            *[f"  signer {s}" for s in signers],
            f"  created {human_time(m.created)}, expires {human_time(m.expires)}",
            f"  manifest sha256:{report.manifest_digest.hex()}",
        ]
        out(
            {
                "package": report.path,
                "name": m.name,
                "version": m.version,
                "created": m.created,
                "expires": m.expires,
                "components": [c.name for c in m.components],
                "signers": [_signer_json(s) for s in report.signers],
                "manifest_digest": "sha256:" + report.manifest_digest.hex(),
                "seconds": report.seconds,
            },
            as_json,
            lines,
            quiet,
        )

    _run(as_json, action, LESS_READ)


@app.command(
    "open",
    epilog="Example: secpack open model.spk -o ./model --identity prod.key --trust release.pub",
)
def open_(
    package: Annotated[str, typer.Argument(metavar="PACKAGE", help="Package to open.")],
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="DIR", help="Directory to create.")
    ],
    identity: Annotated[
        list[str] | None,
        typer.Option("--identity", metavar="KEY", help="X25519 private key (repeatable)."),
    ] = None,
    trust: TrustOpt = None,
    policy: PolicyOpt = None,
    trusted_root: TrustedRootOpt = None,
    component: Annotated[
        list[str] | None,
        typer.Option("--component", metavar="NAME", help="Open only these components."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Require this package name.")
    ] = None,
    allow_downgrade: DowngradeOpt = False,
    emit_model_signing: Annotated[
        bool,
        typer.Option(
            "--emit-model-signing",
            help="Also write the seal-time model.sig (model_signing verify key).",
        ),
    ] = False,
    variant: Annotated[
        str | None,
        typer.Option(
            "--variant",
            metavar="fp16|bf16|int8",
            help="Write this precision variant's files in place of the exact ones they"
            " replace (variants/V/PATH to PATH).",
        ),
    ] = None,
    threads: ThreadsOpt = 0,
    passphrase_env: PassEnvOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Verify, decrypt and write the original files, byte for byte, into a new directory."""

    def action() -> None:
        from secpack.api.extract import extract
        from secpack.api.keyfiles import load_identity, passphrase_from_env, resolve_policy
        from secpack.cli.render import human_size, out, progress_for

        pol = resolve_policy(trust or [], policy)
        passphrase = passphrase_from_env(passphrase_env)
        ids = [load_identity(p, passphrase) for p in identity or []]
        size_hint = os.path.getsize(package) if os.path.isfile(package) else 0
        _tune_memory(size_hint)
        bar = progress_for(quiet, as_json, size_hint)
        try:
            report = extract(
                package,
                output,
                identities=ids,
                policy=pol,
                components=component,
                threads=threads,
                progress=bar,
                expected_name=name,
                allow_downgrade=allow_downgrade,
                emit_model_signing=emit_model_signing,
                variant=variant,
            )
        finally:
            bar.stop()
        m = report.manifest
        lines = [
            f"opened {m.name} v{m.version} -> {report.output}",
            f"  {report.files} file(s), {human_size(report.bytes_written)} from "
            f"{', '.join(report.components)}",
            f"  signed by {', '.join(s.identity or _hex(s.key_id) for s in report.signers)}",
            f"  {report.bytes_written / max(report.seconds, 1e-9) / 1e6:.0f} MB/s "
            f"in {report.seconds:.2f} s",
        ]
        out(
            {
                "package": report.path,
                "output": report.output,
                "name": m.name,
                "version": m.version,
                "components": list(report.components),
                "files": report.files,
                "bytes": report.bytes_written,
                "signers": [_signer_json(s) for s in report.signers],
                "manifest_digest": "sha256:" + report.manifest_digest.hex(),
                "seconds": report.seconds,
            },
            as_json,
            lines,
            quiet,
        )

    _run(as_json, action, LESS_READ)


@app.command(epilog="Example: secpack inspect model.spk --identity prod.key --trust release.pub")
def inspect(
    package: Annotated[str, typer.Argument(metavar="PACKAGE", help="Package to describe.")],
    identity: Annotated[
        list[str] | None,
        typer.Option("--identity", metavar="KEY", help="Also list files and tensors (repeatable)."),
    ] = None,
    trust: TrustOpt = None,
    policy: PolicyOpt = None,
    passphrase_env: PassEnvOpt = None,
    allow_downgrade: DowngradeOpt = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what a package holds, without executing or (by default) decrypting anything."""

    def action() -> None:
        from secpack.api.inspect import inspect as do_inspect
        from secpack.api.keyfiles import load_identity, passphrase_from_env, resolve_policy
        from secpack.cli.inspect_view import render_inspect

        pol = None
        if trust or policy or identity or os.environ.get("SECPACK_POLICY"):
            pol = resolve_policy(trust or [], policy)
        passphrase = passphrase_from_env(passphrase_env)
        ids = [load_identity(p, passphrase) for p in identity or []]
        report = do_inspect(package, policy=pol, identities=ids, allow_downgrade=allow_downgrade)
        render_inspect(report, as_json, quiet)

    _run(as_json, action)


def _keygen(
    kind: str,
    output: str,
    alg: str,
    passphrase_env: str | None,
    force: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    def action() -> None:
        from secpack.api.keyfiles import keygen, passphrase_from_env
        from secpack.cli.render import out
        from secpack.recipes.keys import key_id, load_public_pem

        pub = keygen(kind, output, alg, passphrase_from_env(passphrase_env), force)
        kid = _hex(key_id(load_public_pem(pub, output + ".pub")))
        out(
            {"private_key": output, "public_key": output + ".pub", "key_id": kid, "kind": kind},
            as_json,
            [f"wrote {output} (private, 0600) and {output}.pub", f"  key id {kid}"],
            quiet,
        )

    _run(as_json, action)


@keygen_app.command("signing", epilog="Example: secpack keygen signing -o release.key")
def keygen_signing(
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="PATH", help="Private key path.")
    ],
    alg: Annotated[
        str, typer.Option(metavar="ALG", help="ed25519, ecdsa-p256 or ecdsa-p384.")
    ] = "ed25519",
    passphrase_env: PassEnvOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Create a signing key pair."""
    _keygen("signing", output, alg, passphrase_env, force, as_json, quiet)


@keygen_app.command("recipient", epilog="Example: secpack keygen recipient -o prod.key")
def keygen_recipient(
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="PATH", help="Private key path.")
    ],
    passphrase_env: PassEnvOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Create an X25519 recipient key pair (the identity that opens packages)."""
    _keygen("recipient", output, "x25519", passphrase_env, force, as_json, quiet)
