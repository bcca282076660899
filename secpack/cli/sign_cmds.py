"""Signature verbs: ``sign``, ``signatures``, ``unsign``, ``trust update`` and ``ci sign``."""

import datetime as dt
import os
from typing import Annotated

import typer

from secpack.cli import (
    JsonOpt,
    PassEnvOpt,
    PolicyOpt,
    QuietOpt,
    TrustedRootOpt,
    TrustOpt,
    _run,
    app,
)

__all__: list[str] = []

trust_app = typer.Typer(
    help="Manage sigstore trust material.", no_args_is_help=True, rich_markup_mode=None
)
ci_app = typer.Typer(help="Steps for CI pipelines.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(trust_app, name="trust")
app.add_typer(ci_app, name="ci")

TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--identity-token",
        metavar="JWT",
        help="OIDC identity token for keyless signing (default $SIGSTORE_ID_TOKEN, "
        "then the CI's ambient credential).",
    ),
]
TrustConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--trust-config",
        metavar="FILE",
        help="sigstore ClientTrustConfig of a private instance (default: public).",
    ),
]
ExportOpt = Annotated[
    bool,
    typer.Option(
        "--export-bundle/--no-export-bundle",
        help="Also write the bundle to PACKAGE.sigstore.json.",
    ),
]


def _time(ts: int | None) -> str:
    if ts is None:
        return "-"
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        # Any signer (trusted or not) may record any time: past year 9999, the number.
        return str(ts)


def _export(path: str, bundle: bytes | None, enabled: bool) -> str | None:
    if not enabled or bundle is None:
        return None
    from secpack.transport.files import write_public

    target = path + ".sigstore.json"
    write_public(target, bundle, overwrite=True)
    return target


@app.command(
    epilog="Examples: secpack sign model.spk --key qa.key | "
    "secpack sign model.spk --sigstore --export-bundle"
)
def sign(
    package: Annotated[str, typer.Argument(metavar="PACKAGE", help="Package to sign.")],
    key: Annotated[
        str | None, typer.Option("--key", metavar="KEY", help="Signing private key.")
    ] = None,
    sigstore: Annotated[
        bool, typer.Option("--sigstore", help="Sign keyless with sigstore.")
    ] = False,
    identity_token: TokenOpt = None,
    trust_config: TrustConfigOpt = None,
    export_bundle: ExportOpt = False,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write a signed copy instead."),
    ] = None,
    passphrase_env: PassEnvOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Add a signature. Only the signature section changes; signed bytes and blobs stay."""

    def action() -> None:
        from secpack.api.signing import add_keyless_signature, add_signature
        from secpack.cli.render import out

        if (key is None) == (not sigstore):
            raise ValueError("give exactly one of --key KEY or --sigstore")
        if sigstore:
            report = add_keyless_signature(
                package,
                token=identity_token,
                trust_config=trust_config,
                output=output,
                interactive=not as_json,
            )
        else:
            from secpack.api.keyfiles import load_signing_key, passphrase_from_env

            assert key is not None
            report = add_signature(
                package, load_signing_key(key, passphrase_from_env(passphrase_env)), output
            )
        exported = _export(report.path, report.bundle, export_bundle)
        signer = report.identity or "sha256:" + report.key_id.hex()
        verb = "signed" if report.added else "already signed by"
        lines = [f"{verb} {signer}: {report.path} ({report.signatures} signature(s))"]
        if exported:
            lines.append(f"  bundle written to {exported}")
        out(
            {
                "package": report.path,
                "signer": signer,
                "key_id": "sha256:" + report.key_id.hex(),
                "added": report.added,
                "signatures": report.signatures,
                "bundle": exported,
            },
            as_json,
            lines,
            quiet,
        )

    _run(as_json, action)


@app.command(epilog="Example: secpack signatures model.spk --policy prod.toml")
def signatures(
    package: Annotated[str, typer.Argument(metavar="PACKAGE", help="Package to list.")],
    trust: TrustOpt = None,
    policy: PolicyOpt = None,
    trusted_root: TrustedRootOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """List the signatures: signer, algorithm, time, and whether the policy trusts each."""

    def action() -> None:
        from secpack.api.keyfiles import resolve_policy
        from secpack.api.signing import list_signatures
        from secpack.cli.render import out

        pol = None
        if trust or policy or trusted_root or os.environ.get("SECPACK_POLICY"):
            pol = resolve_policy(trust or [], policy, trusted_root)
        listing = list_signatures(package, pol)
        mark = {None: "", True: "trusted", False: "not trusted"}
        lines = [
            f"{s.index:>3} {s.type:<16} {s.alg or '?':<11} {_time(s.signed_at):<20} "
            f"{mark[s.trusted]:<12} {s.signer}"
            for s in listing
        ] or ["(unsigned)"]
        out(
            {
                "signatures": [
                    {
                        "index": s.index,
                        "type": s.type,
                        "alg": s.alg,
                        "signer": s.signer,
                        "key_id": None if s.key_id is None else "sha256:" + s.key_id.hex(),
                        "signed_at": s.signed_at,
                        "trusted": s.trusted,
                    }
                    for s in listing
                ]
            },
            as_json,
            lines,
            quiet,
        )

    _run(as_json, action)


@app.command(epilog="Example: secpack unsign model.spk --key-id sha256:1f2e3d4c")
def unsign(
    package: Annotated[str, typer.Argument(metavar="PACKAGE", help="Package to change.")],
    key_id: Annotated[
        str | None,
        typer.Option("--key-id", metavar="ID", help="Key id (or at least 8 hex digits of it)."),
    ] = None,
    malformed: Annotated[
        bool,
        typer.Option(
            "--malformed",
            help="Remove every entry that cannot be parsed (`signatures` lists them).",
        ),
    ] = False,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write the result to a copy instead."),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Remove a signature (--key-id), or the entries no reader can parse (--malformed).
    Only the signature section changes."""

    def action() -> None:
        from secpack.api.signing import remove_signature
        from secpack.cli.render import out

        removed = remove_signature(package, key_id, output, malformed=malformed)
        what = f"signature(s) by {key_id}" if key_id is not None else "malformed entries"
        out(
            {"package": output or package, "removed": removed},
            as_json,
            [f"removed {removed} {what} from {output or package}"],
            quiet,
        )

    _run(as_json, action)


@trust_app.command("update", epilog="Example: secpack trust update -o trusted_root.json")
def trust_update(
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="FILE", help="Where to write the trusted root.")
    ],
    staging: Annotated[bool, typer.Option("--staging", help="The staging instance.")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fetch the current sigstore trusted root through TUF (the only network refresh)."""

    def action() -> None:
        from secpack.cli.render import out
        from secpack.errors import SecpackError
        from secpack.transport.files import write_public

        try:
            from sigstore.models import ClientTrustConfig

            config = ClientTrustConfig.staging() if staging else ClientTrustConfig.production()
            data = config.trusted_root._inner.to_json()  # sigstore 4.x keeps the model inside
        except Exception as exc:  # TUF and network failures share no base class
            raise SecpackError(
                "sigstore.failed", f"trusted root refresh: {type(exc).__name__}: {exc}"
            ) from None
        write_public(output, data.encode(), overwrite=True)
        out({"trusted_root": output}, as_json, [f"wrote {output}"], quiet)

    _run(as_json, action)


@ci_app.command(
    "sign", epilog="Example (GitHub Actions, id-token: write): secpack ci sign model.spk"
)
def ci_sign(
    package: Annotated[str, typer.Argument(metavar="PACKAGE", help="Package to sign.")],
    trust_config: TrustConfigOpt = None,
    identity_token: TokenOpt = None,
    export_bundle: ExportOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Sign keyless with the CI job's identity and print one line for the job log."""

    def action() -> None:
        from secpack.api.signing import add_keyless_signature
        from secpack.cli.render import out

        report = add_keyless_signature(
            package, token=identity_token, trust_config=trust_config, interactive=False
        )
        exported = _export(report.path, report.bundle, export_bundle)
        run = os.environ.get("GITHUB_RUN_ID") or os.environ.get("CI_PIPELINE_ID")
        line = (
            f"secpack: signed {report.path} keyless as {report.identity} "
            f"(run {run or '-'}, {report.signatures} signature(s)"
            + (f", bundle {exported}" if exported else "")
            + ")"
        )
        out(
            {
                "package": report.path,
                "signer": report.identity,
                "key_id": "sha256:" + report.key_id.hex(),
                "added": report.added,
                "signatures": report.signatures,
                "bundle": exported,
                "run": run,
            },
            as_json,
            [line],
            False,
        )

    _run(as_json, action)
