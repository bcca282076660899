"""Reader limits. They are configuration (a trust policy may tighten or loosen
them); the defaults are chosen so that any real model fits with room to spare
while a hostile package cannot make the reader allocate or loop without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB


@dataclass(frozen=True)
class Limits:
    # The manifest of a 1 TiB model with 4 MiB segments is about 40 MiB of CBOR in
    # the worst case; 64 MiB leaves headroom yet bounds what is read before signatures.
    max_manifest_bytes: int = 64 * MiB
    # The blob index is one small integer per blob, plus zero padding the writer uses
    # to reserve room for the manifest (at most a few bytes per segment).
    max_index_bytes: int = 16 * MiB
    # A signature section holds COSE_Sign1 items (~200 B) or sigstore bundles (~10 KiB).
    max_signature_bytes: int = 4 * MiB
    max_signatures: int = 64
    # Nesting in our schemas is at most 6 deep; 16 rejects stack-exhaustion games early.
    max_cbor_depth: int = 16
    # A segment record is ~40 CBOR items (a 4-plane fp32 codec record included), so
    # 2 M items is ~50 k segments: 200 GiB at 4 MiB segments, 800 GiB at 16 MiB. All
    # of a manifest is read before its signature can be checked: an unsigned one
    # near this cap (150 000 raw segments, 1.65 M items, 11 MB) costs `secpack
    # verify` about 2.3 s of CPU before it is refused, most of it cbor2's decoding and
    # the schema check (the strict scan, in C, takes milliseconds of it).
    max_cbor_items: int = 2_000_000
    max_components: int = 1024
    max_recipients: int = 64
    max_segments: int = 1_000_000
    max_blobs: int = 1_000_000
    max_files: int = 100_000
    # Directories that `open` creates (and seal's input may have): only files are
    # listed, each up to 64 levels deep, so a package of a few hundred KB could
    # otherwise make `open` create 6.3 million. Real models have far fewer than
    # files. Readers that create none (verify, the loader) do not check it.
    max_dirs: int = 100_000
    max_tensors: int = 1_000_000
    max_tensor_ndim: int = 32
    # Safetensors' own reader caps the JSON header at 100 MB; ours is tighter.
    max_safetensors_header: int = 64 * MiB
    max_path_bytes: int = 4096
    max_total_plain: int = 4 * TiB
    max_component_plain: int = 4 * TiB
    # Largest plaintext/stored ratio of one segment. A constant 16 MiB segment stores
    # one element plus a tag (~2^20 : 1); anything beyond that is not a real model.
    max_expansion: int = 1 << 20
    # Largest segment plaintext the reader accepts; writers default to 4 MiB.
    max_segment_bytes: int = 16 * MiB
    # zstd window cap: secpack writers never need more than the segment size.
    max_zstd_window: int = 16 * MiB


DEFAULT_LIMITS = Limits()
