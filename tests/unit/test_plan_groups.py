"""Which component each file of a model directory lands in by default, for the
layouts real models ship in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from secpack.errors import SecpackError
from secpack.format.manifest import COMPONENT_NAME_RE
from secpack.package.plan import InputFile, assign_components

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "keys-example"


def _groups(paths: list[str], root: str = "model", **kw: object) -> dict[str, list[str]]:
    files = [InputFile(p, 1, 0o644) for p in paths]
    got = assign_components(files, kw.get("overrides", ()), root)  # type: ignore[arg-type]
    return {name: sorted(f.path for f in fs) for name, fs in got.items()}


def test_a_sharded_transformers_model() -> None:
    assert _groups(
        [
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "README.md",
        ]
    ) == {
        "config": ["config.json", "generation_config.json"],
        "weights": [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ],
        "tokenizer": ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"],
        "files": ["README.md"],
    }


def test_a_ctranslate2_conversion_keeps_its_vocabulary_with_the_tokenizer() -> None:
    groups = _groups(["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"])
    assert groups["tokenizer"] == ["tokenizer.json", "vocabulary.txt"]
    assert groups["files"] == ["model.bin"]  # not safetensors: sealed as an opaque file


def test_a_spacy_pipeline_keeps_its_config_and_tokenizer_apart() -> None:
    groups = _groups(
        [
            "config.cfg",
            "meta.json",
            "tokenizer",
            "ner/model",
            "ner/cfg",
            "vocab/strings.json",
            "vocab/vectors",
        ]
    )
    assert groups["config"] == ["config.cfg"]
    assert groups["tokenizer"] == ["tokenizer"]
    assert groups["files"] == [
        "meta.json",
        "ner/cfg",
        "ner/model",
        "vocab/strings.json",
        "vocab/vectors",
    ]


def test_an_adapter_in_a_subdirectory_and_an_input_that_is_an_adapter() -> None:
    base = _groups(
        [
            "config.json",
            "model.safetensors",
            "lora-a/adapter_config.json",
            "lora-a/adapter_model.safetensors",
        ]
    )
    assert base["adapter:lora-a"] == [
        "lora-a/adapter_config.json",
        "lora-a/adapter_model.safetensors",
    ]
    assert base["weights"] == ["model.safetensors"]

    alone = _groups(
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "tokenizer.json",
            "README.md",
        ],
        root="my lora",
    )
    assert alone == {
        "adapter:my-lora": ["adapter_config.json", "adapter_model.safetensors"],
        "tokenizer": ["tokenizer.json"],
        "files": ["README.md"],
    }
    # Without the marker, adapter_* names are nothing special.
    assert _groups(["adapter_model.safetensors"]) == {"weights": ["adapter_model.safetensors"]}


def test_adapter_names_stay_unique_and_leave_room_for_a_variant() -> None:
    # The root and a subdirectory would both be adapter:lora: the root's files keep
    # their usual components.
    clash = _groups(
        [
            "adapter_config.json",
            "adapter_model.safetensors",
            "lora/adapter_config.json",
            "lora/adapter_model.safetensors",
        ],
        root="lora",
    )
    assert clash == {
        "config": ["adapter_config.json"],
        "weights": ["adapter_model.safetensors"],
        "adapter:lora": ["lora/adapter_config.json", "lora/adapter_model.safetensors"],
    }
    # Two adapter directories of one name: each its own component, named by its path.
    twins = _groups(
        [
            "a/lora/adapter_config.json",
            "a/lora/adapter_model.safetensors",
            "b/lora/adapter_config.json",
            "b/lora/adapter_model.safetensors",
            "a-lora/adapter_config.json",  # what a/lora's path becomes
        ]
    )
    assert sorted(twins) == ["adapter:a-lora", "adapter:a-lora-2", "adapter:b-lora"]
    assert twins["adapter:b-lora"] == [
        "b/lora/adapter_config.json",
        "b/lora/adapter_model.safetensors",
    ]
    long = _groups(["adapter_config.json", "adapter_model.safetensors"], root="x" * 80 + "-")
    (name,) = long
    assert COMPONENT_NAME_RE.fullmatch(name + ".int8"), name


def test_overrides_come_first_and_must_match() -> None:
    groups = _groups(
        ["adapter_config.json", "adapter_model.safetensors"],
        overrides=[("weights", "adapter_model.*")],
    )
    assert groups == {
        "adapter:model": ["adapter_config.json"],
        "weights": ["adapter_model.safetensors"],
    }
    with pytest.raises(SecpackError) as err:
        _groups(["config.json"], overrides=[("extra", "*.bin")])
    assert err.value.code == "input.invalid"


def test_a_sealed_adapter_directory_loads_as_its_adapter_component(tmp_path: Path) -> None:
    import secpack
    from secpack.api.keyfiles import load_signing_key
    from secpack.api.seal import seal

    root = tmp_path / "my-lora"
    root.mkdir()
    rng = np.random.default_rng(5)
    weights = {
        "base_model.model.q_proj.lora_A.weight": rng.standard_normal((8, 64)).astype(np.float32),
        "base_model.model.q_proj.lora_B.weight": rng.standard_normal((64, 8)).astype(np.float32),
    }
    save_file(weights, str(root / "adapter_model.safetensors"))
    (root / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    out = tmp_path / "lora.spk"
    seal(
        str(root),
        str(out),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    package = secpack.open_package(out, trust=[KEYS / "signing-ed25519.key.pub"])
    try:
        kinds = {c.name: c.kind for c in package.components}
        assert kinds == {"adapter:my-lora": "adapter"}
        loaded = package.state_dict("adapter:my-lora")
        assert sorted(loaded) == sorted(weights)
        for name, array in weights.items():
            assert np.array_equal(loaded[name], array)
    finally:
        package.close()


def _named(paths: dict[str, set[str]], **kw: object) -> dict[str, list[str]]:
    """_groups with each safetensors file's tensor names given."""
    files = [InputFile(p, 1, 0o644) for p in paths]
    got = assign_components(
        files,
        kw.get("overrides", ()),  # type: ignore[arg-type]
        "model",
        lambda f: frozenset(paths[f.path]),
    )
    return {name: sorted(f.path for f in fs) for name, fs in got.items()}


def test_two_precisions_of_one_model_side_by_side_get_components_of_their_own() -> None:
    names = {"encoder.w", "encoder.b"}
    groups = _named(
        {
            "config.json": set(),
            "model.safetensors": names,
            "model.fp16.safetensors": names,
            "model.int8.safetensors": names | {"encoder.w_scale"},
        }
    )
    assert groups == {
        "config": ["config.json"],
        "weights": ["model.safetensors"],
        "weights-model-fp16": ["model.fp16.safetensors"],
        "weights-model-int8": ["model.int8.safetensors"],
    }


def test_a_pipelines_parts_get_components_named_after_their_folders() -> None:
    unet = {"conv_in.weight", "conv_out.weight"}
    groups = _named(
        {
            "model_index.json": set(),
            "unet/config.json": set(),
            "unet/diffusion_pytorch_model.safetensors": unet,
            "unet/diffusion_pytorch_model.fp16.safetensors": unet,
            "vae/diffusion_pytorch_model.safetensors": {"conv_in.weight", "decoder.w"},
            "text_encoder/model-00001-of-00002.safetensors": {"embed", "conv_in.weight"},
            "text_encoder/model-00002-of-00002.safetensors": {"layer.0"},
            "text_encoder/model.safetensors.index.json": set(),
        }
    )
    for name in groups:
        assert COMPONENT_NAME_RE.fullmatch(name) and not name.endswith((".fp16", ".int8"))
    assert {k: v for k, v in groups.items() if k.startswith("weights")} == {
        "weights-text-encoder": [
            "text_encoder/model-00001-of-00002.safetensors",
            "text_encoder/model-00002-of-00002.safetensors",
            "text_encoder/model.safetensors.index.json",
        ],
        "weights-unet-diffusion-pytorch-model": ["unet/diffusion_pytorch_model.safetensors"],
        "weights-unet-diffusion-pytorch-model-fp16": [
            "unet/diffusion_pytorch_model.fp16.safetensors"
        ],
        "weights-vae": ["vae/diffusion_pytorch_model.safetensors"],
    }


def test_checkpoints_that_share_one_folder_are_named_by_their_files_alone() -> None:
    # Three checkpoints of the same tensors in one folder (PyPI chess-cv's
    # weights/*.safetensors): the folder tells none apart, so it is left out.
    groups = _named(
        {
            "weights/arrows.safetensors": {"a"},
            "weights/pieces.safetensors": {"a"},
            "weights/snap.safetensors": {"a"},
            "config.json": set(),
        }
    )
    assert {k: v for k, v in groups.items() if k.startswith("weights")} == {
        "weights-arrows": ["weights/arrows.safetensors"],
        "weights-pieces": ["weights/pieces.safetensors"],
        "weights-snap": ["weights/snap.safetensors"],
    }


def test_folder_names_a_component_cannot_hold_leave_one_dash_per_gap() -> None:
    # Three checkpoints of the same tensors, two in folders of spaces, accents and
    # kanji: what a name cannot hold becomes one dash, and names that come out
    # alike are numbered.
    groups = _named(
        {
            "model.safetensors": {"a"},
            "sub dir/ñested/深い/model.safetensors": {"a"},
            "sub dir/ñested/浅い/model.safetensors": {"a"},
        }
    )
    assert set(groups) == {"weights", "weights-sub-dir-ested", "weights-sub-dir-ested-2"}
    for name in groups:
        assert COMPONENT_NAME_RE.fullmatch(name) and "--" not in name


def test_weights_without_a_shared_name_stay_together_and_rules_are_kept() -> None:
    files = {
        "model-00001-of-00002.safetensors": {"a"},
        "model-00002-of-00002.safetensors": {"b"},
        "extra/head.safetensors": {"c"},
    }
    assert list(_named(files)) == ["weights"]
    # Files a --component rule placed are not split: the seal then refuses them
    # with advice (below), as it always did.
    clash = {"model.safetensors": {"a"}, "model.fp16.safetensors": {"a"}}
    assert _named(clash, overrides=[("weights", "*.safetensors")]) == {
        "weights": ["model.fp16.safetensors", "model.safetensors"]
    }


def test_a_model_with_two_precisions_seals_and_loads_each(tmp_path: Path) -> None:
    import secpack
    from secpack.api.keyfiles import load_signing_key
    from secpack.api.seal import seal

    root = tmp_path / "m"
    root.mkdir()
    rng = np.random.default_rng(6)
    full = {"w": rng.standard_normal((32, 16)).astype(np.float32)}
    half = {"w": full["w"].astype(np.float16)}
    save_file(full, str(root / "model.safetensors"))
    save_file(half, str(root / "model.fp16.safetensors"))
    key = load_signing_key(str(KEYS / "signing-ed25519.key"))
    with pytest.raises(SecpackError) as err:
        seal(
            str(root),
            str(tmp_path / "refused.spk"),
            encrypt=False,
            sign_keys=[key],
            components=[("weights", "*.safetensors")],
        )
    assert err.value.code == "input.safetensors"
    assert not (tmp_path / "refused.spk").exists()
    out = tmp_path / "m.spk"
    seal(str(root), str(out), encrypt=False, sign_keys=[key], variants=["int8"])
    with secpack.open_package(out, trust=[KEYS / "signing-ed25519.key.pub"]) as package:
        assert sorted(c.name for c in package.components) == [
            "weights",
            "weights-model-fp16",
            "weights-model-fp16.int8",
            "weights.int8",
        ]
        assert np.array_equal(package.state_dict("weights")["w"], full["w"])
        assert np.array_equal(package.tensor("w", "weights"), full["w"])
        # Two checkpoints hold a "w": which one is the caller's to say.
        for prefer in (None, ["int8", "exact"]):
            with pytest.raises(SecpackError) as err:
                package.tensor("w", prefer=prefer)
            assert err.value.code == "component.unknown"
            assert "'weights'" in err.value.detail and "'weights-model-fp16'" in err.value.detail
        assert np.array_equal(package.state_dict("weights-model-fp16")["w"], half["w"])
        assert package.variants("weights-model-fp16") == ["exact", "int8"]
        q = package.tensor("w", "weights-model-fp16", prefer=["int8"])
        assert q.dtype == np.float32 and np.abs(q - full["w"]).max() < 0.05


def test_inspect_keeps_its_columns_for_long_component_names(tmp_path: Path) -> None:
    from helpers import ok

    from secpack.api.keyfiles import load_signing_key
    from secpack.api.seal import seal

    root = tmp_path / "m"
    lora = root / "a-rather-long-adapter-directory-name-from-a-training-run"
    lora.mkdir(parents=True)
    w = np.ones((4, 4), np.float32)
    save_file({"w": w}, str(root / "model.safetensors"))
    save_file({"a": w}, str(lora / "adapter_model.safetensors"))
    (lora / "adapter_config.json").write_text("{}")
    out = tmp_path / "m.spk"
    seal(
        str(root),
        str(out),
        encrypt=False,
        sign_keys=[load_signing_key(str(KEYS / "signing-ed25519.key"))],
    )
    text = ok("inspect", out).stdout
    rows = text.split("  components:\n", 1)[1].splitlines()
    assert len(rows) == 2 and len({row.index(" -> ") for row in rows}) == 1, text
