"""The hostile table of malformed artifacts: (name, how to break a good artifact folder, a substring of the
one-line message). Shared by tests/test_artifact_tamper.py (in-process) and tests/test_artifact_hostile.py
(through ad-run). ``restamp``: the mutation is written with a consistent spec hash, so it is the schema
or content check that must catch it; hand edits keep the recorded hash and must hit the spec check."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from anomedge.artifact import sha256_file, write_metadata


def load_raw(root: Path) -> dict[str, Any]:
    return json.loads((root / "metadata.json").read_text())


def rewrite(root: Path, change: Callable[[dict[str, Any]], None], restamp: bool = True) -> None:
    """Apply ``change`` to metadata.json; ``restamp`` recomputes spec_sha256 (as a careless tool would)."""
    raw = load_raw(root)
    change(raw)
    if restamp:
        write_metadata(root, raw)
    else:
        (root / "metadata.json").write_text(json.dumps(raw, indent=2))


def field(path: str, value: Any, restamp: bool = True) -> Callable[[Path], None]:
    """Set a dotted metadata path ('input.mean.0') to ``value``."""

    def mutate(root: Path) -> None:
        def change(raw):
            *parents, last = path.split(".")
            node = raw
            for key in parents:
                node = node[int(key)] if isinstance(node, list) else node[key]
            if isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
        rewrite(root, change, restamp)

    return mutate


def replace_file(name: str, data: bytes | np.ndarray, update_hash: bool = True,
                 restamp: bool = True) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / name
        path.unlink()
        if isinstance(data, np.ndarray):
            np.save(path, data, allow_pickle=data.dtype.hasobject)
        else:
            path.write_bytes(data)
        if update_hash:
            rewrite(root, lambda raw: raw["files"].__setitem__(name, sha256_file(path)), restamp)

    return mutate


def lying_npy(root: Path) -> None:
    """bank.npy whose header claims (10⁹, 4) float32 over 10 real rows (same header length); hashes updated."""
    path = root / "bank.npy"
    good = path.read_bytes()
    end = good.index(b"\n") + 1
    head = good[:end - 1].replace(b"(10, 4)", b"(1000000000, 4)")[:end - 1]  # drop as many padding spaces
    path.write_bytes(head + b"\n" + good[end:])
    rewrite(root, lambda raw: raw["files"].__setitem__("bank.npy", sha256_file(path)))


def symlink_outside(root: Path) -> None:
    outside = root.parent / "elsewhere.npy"
    os.replace(root / "bank.npy", outside)
    (root / "bank.npy").symlink_to(outside)


def raw_text(text: str | bytes) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / "metadata.json").write_bytes(text.encode() if isinstance(text, str) else text)

    return mutate


def deep_nesting(root: Path) -> None:
    text = (root / "metadata.json").read_text()
    (root / "metadata.json").write_text(text.replace('"model": {', '"model": {"x": ' + "[" * 100000 + "]" * 100000 + ",", 1))


def huge_metadata(root: Path) -> None:
    rewrite(root, lambda raw: raw["model"].__setitem__("padding", "x" * (2 << 20)))


def duplicate_keys(root: Path) -> None:
    text = (root / "metadata.json").read_text()
    (root / "metadata.json").write_text(text.replace('"detector":', '"detector": "padim", "detector":', 1))


def fifo_metadata(root: Path) -> None:
    (root / "metadata.json").unlink()
    os.mkfifo(root / "metadata.json")


def add_file_entry(name: str) -> Callable[[Path], None]:
    return lambda root: rewrite(root, lambda raw: raw["files"].__setitem__(name, "0" * 64))


def bank_swapped_hash_updated(root: Path) -> None:
    """Replace the bank, update its entry in 'files' but not the spec hash (a hand edit)."""
    replace_file("bank.npy", np.zeros((10, 4), np.float32), update_hash=True, restamp=False)(root)


def input_shape_inconsistent(root: Path) -> None:
    field("input.height", 64)(root)


def garbage_signature(root: Path) -> None:
    (root / "signature.json").write_text("{}")


CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("nan_mean", field("input.mean.0", float("nan")), "input.mean[0] is nan"),
    ("inf_std", field("input.std.0", float("inf")), "input.std[0] is inf"),
    ("zero_std", field("input.std.1", 0.0), "input.std[1] is 0.0"),
    ("height_string", field("input.height", "32"), "input.height is '32'"),
    ("height_huge", field("input.height", 100000), "input.height is 100000"),
    ("color_unknown", field("input.color", "CMYK"), "input.color is 'CMYK'"),
    ("interpolation_unknown", field("input.interpolation", "lanczos9"), "input.interpolation"),
    ("input_key_misspelt", field("input.maen", [0.5, 0.5, 0.5]), "input.maen is an unknown key"),
    ("k_zero", field("scoring.k", 0), "scoring.k is 0"),
    ("k_fractional", field("scoring.k", 1.5), "scoring.k is 1.5"),
    ("k_boolean", field("scoring.k", True), "scoring.k is True"),
    ("k_above_bank_rows", field("scoring.k", 11), "scoring.k is 11"),
    ("kind_unknown", field("scoring.kind", "telepathy"), "scoring.kind is 'telepathy'"),
    ("blur_sigma_huge", field("postprocess.blur_sigma", 1e9), "postprocess.blur_sigma is 1000000000.0"),
    ("blur_sigma_negative", field("postprocess.blur_sigma", -1.0), "postprocess.blur_sigma is -1.0"),
    ("reduction_unknown", field("postprocess.reduction", {"name": "median"}), "postprocess.reduction.name"),
    ("reduction_fraction_zero", field("postprocess.reduction.fraction", 0.0), "postprocess.reduction.fraction"),
    ("reduction_param_misspelt", field("postprocess.reduction.fracton", 0.1), "postprocess.reduction.fracton"),
    ("threshold_nan", field("thresholds.image", float("nan")), "thresholds.image is nan"),
    ("threshold_string", field("thresholds.image", "high"), "thresholds.image is 'high'"),
    ("outputs_names_empty", field("outputs.names", []), "outputs.names"),
    ("variant_unlisted", field("model.variants", {"fp16": "model.fp16.onnx"}), "model.variants.fp16"),
    ("placement_graph_without_model", field("scoring.placement", "graph"), "scoring.placement is 'graph'"),
    ("file_name_dotdot", add_file_entry("../../etc/passwd"), "files key is '../../etc/passwd'"),
    ("file_name_absolute", add_file_entry("/etc/passwd"), "files key is '/etc/passwd'"),
    ("file_symlink_outside", symlink_outside, "outside the artifact folder"),
    ("npy_lying_header", lying_npy, "header lies"),
    ("npy_object_array", replace_file("bank.npy", np.array([{"evil": 1}] * 4, dtype=object)), "not a plain .npy"),
    ("onnx_garbage", replace_file("model.onnx", bytes(range(256)) * 64), "not a valid ONNX model"),
    ("onnx_empty", replace_file("model.onnx", b""), "ONNX model"),
    ("input_size_vs_onnx", lambda root: rewrite(root, lambda raw: raw["input"].update(height=64, shape=["N", 3, 64, 32])), "input 'image' is declared ['N', 3, 32, 32]"),
    ("input_shape_vs_height", input_shape_inconsistent, "input.shape is ['N', 3, 32, 32], expected ['N', 3, 64, 32]"),
    ("bank_width_vs_graph", replace_file("bank.npy", np.zeros((10, 5), np.float32)), "bank width 5"),
    ("bank_rows_vs_metadata", field("scoring.bank_rows", 9), "10 rows, metadata scoring.bank_rows says 9"),
    ("json_deep_nesting", deep_nesting, "nested too deeply"),
    ("metadata_huge", huge_metadata, "at most 1048576 expected"),
    ("json_duplicate_keys", duplicate_keys, "duplicate key 'detector'"),
    ("json_invalid", raw_text('{"detector": '), "not valid JSON"),
    ("json_top_level_list", raw_text("[1, 2]"), "top level is list"),
    ("json_not_utf8", raw_text(b"\xff\xfe{}"), "not valid JSON"),
    ("metadata_fifo", fifo_metadata, "not a regular file"),
    ("schema_version_old", field("schema_version", 1), "schema_version 1"),
    ("spec_hash_missing", lambda root: rewrite(root, lambda raw: raw.pop("spec_sha256"), restamp=False),
     "block 'spec_sha256' is missing"),
    ("hand_edit_input_mean", field("input.mean.0", 0.4, restamp=False), "block 'input' changed since export"),
    ("hand_edit_scoring_k", field("scoring.k", 2, restamp=False), "block 'scoring' changed since export"),
    ("hand_edit_reduction", field("postprocess.reduction", {"name": "max"}, restamp=False),
     "block 'postprocess' changed since export"),
    ("bank_swapped_hash_updated", bank_swapped_hash_updated, "block 'files' changed since export"),
    ("bank_swapped", replace_file("bank.npy", np.zeros((10, 4), np.float32), update_hash=False),
     "bank.npy: sha256"),
    ("signature_garbage", garbage_signature, "not a valid ed25519 signature record"),
]
