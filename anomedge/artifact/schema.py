"""The metadata schema: typed blocks, the field checks run at every load, and the spec hash.

Contract vs mutable (docs/artifact.md):
- ``thresholds`` is the only block meant to be edited after export (by ``ad-calibrate`` or by hand);
  it is schema-checked (finite numbers) but not hashed, so re-calibrating never needs a re-export.
- Every other top-level block — detector, input, outputs, scoring, postprocess, model, files,
  versions, created, schema_version and any block a newer writer adds — is the *contract*. Each is
  hashed (sha256 of its canonical JSON: sorted keys, no spaces) into ``spec_sha256`` = {block: hex}.
  Tools that legitimately extend an artifact (``ad-quantize`` variants, TensorRT / OpenVINO builds,
  the graph placement) change it only through ``Artifact.edit``, which re-hashes; a hand edit of a
  contract block is refused at load naming the block.

``check_metadata(raw)`` raises ``SchemaError`` (an ArtifactError) with one line: the field's path,
what it holds, what was expected and how to fix it. Unknown keys are refused where anomedge
interprets a block field by field (``input``, ``postprocess.reduction``), because a misspelt key
there would silently fall back to a default; elsewhere (detector-specific ``model`` / ``scoring`` /
``outputs`` keys, new top-level blocks) they are accepted: they are covered by the spec hash, so only
a writing tool can have put them there.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArtifactError

SCHEMA_VERSION = 2  # 2: spec_sha256 (v1 artifacts carry no spec hash: re-export them)
METADATA = "metadata.json"
SIGNATURE = "signature.json"
MUTABLE_BLOCKS = ("thresholds",)
MAX_METADATA_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_SIDE = 8192  # input height / width, output dims
MAX_SIGMA = 64.0  # blur / map sigma in pixels: the kernel has 8σ+1 taps
MAX_K = 1024
MAX_ROWS = 1 << 30
MAX_FILES = 256
MAX_DRIFT_SAMPLE = 1000  # thresholds.drift.scores (runtime.drift keeps at most 500)

COLORS = ("RGB", "BGR", "GRAY")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
KINDS = ("knn", "mahalanobis", "reconstruction", "ensemble")
MEMBER_KINDS = ("knn", "mahalanobis")  # what an ensemble member may be
MAX_MEMBERS = 8
MEMBER_PREFIX = re.compile(r"m[0-9]_")
PLACEMENTS = ("host", "graph")
BANK_DTYPES = ("float32", "float16")
OPENVINO_PRECISIONS = ("fp32", "fp16")
TILE_BLENDS, TILE_MODES = ("linear", "max"), ("shared",)
# reduction name → {parameter: (low, high)} (low exclusive); scoring.postprocess.REDUCTIONS implements them.
REDUCTIONS: dict[str, dict[str, tuple[float, float]]] = {
    "max": {}, "mean": {}, "top_fraction_mean": {"fraction": (0.0, 1.0)},
}
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
HEX64 = re.compile(r"[0-9a-f]{64}")
REQUIRED_BLOCKS = ("detector", "input", "outputs", "scoring", "postprocess", "model", "files", "schema_version",
                   "spec_sha256")
FIX = "re-export the artifact with ad-export"


class SchemaError(ArtifactError):
    """A metadata field has the wrong type or an out-of-range value (message: path, got, expected, fix)."""


@dataclass(frozen=True)
class InputSpec:
    """How a frame becomes the model input: BGR/GRAY uint8 → RGB float → resize → (x/255−mean)/std."""

    name: str
    height: int
    width: int
    color: str = "RGB"  # channel order the model expects: RGB | BGR | GRAY
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    dynamic_batch: bool = True

    @property
    def shape(self) -> tuple[str | int, int, int, int]:
        return ("N" if self.dynamic_batch else 1, 3, self.height, self.width)


@dataclass(frozen=True)
class Metadata:
    """Parsed ``metadata.json``. ``scoring``/``postprocess``/``thresholds``/``model`` stay plain dicts:
    their keys depend on the detector and are documented where they are read. ``spec_sha256`` is
    {block: sha256 of its canonical JSON} for every block but ``thresholds`` (see ``spec_digests``)."""

    detector: str
    input: InputSpec
    outputs: dict[str, Any]
    scoring: dict[str, Any]
    postprocess: dict[str, Any]
    model: dict[str, Any]
    thresholds: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    spec_sha256: dict[str, str] = field(default_factory=dict)
    tiling: dict[str, Any] | None = None  # runtime.tiling: a tiled artifact (absent: whole frames resized)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if d["tiling"] is None:
            del d["tiling"]
        d["input"] = {k: getattr(self.input, k) for k in self.input.__dataclass_fields__}
        d["input"]["shape"] = list(self.input.shape)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Metadata":
        """Build from a dict that passed ``check_metadata`` (unknown top-level blocks are not kept here;
        they stay in metadata.json and in the spec hash)."""
        try:
            inp = dict(d["input"])
            inp.pop("shape", None)
            inp["mean"], inp["std"] = tuple(inp["mean"]), tuple(inp["std"])
            fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "input"}
            return cls(input=InputSpec(**inp), **fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"metadata.json is malformed ({exc!r}); {FIX}") from exc

    @property
    def digest(self) -> str:
        """sha256 over the per-block spec hashes: the identity of everything but the thresholds."""
        return hashlib.sha256(canonical(self.spec_sha256)).hexdigest()


def canonical(value: Any) -> bytes:
    """The bytes a block is hashed by: JSON with sorted keys, no whitespace, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def spec_digests(raw: dict[str, Any]) -> dict[str, str]:
    """{block: sha256 hex of its canonical JSON} for every top-level block except the mutable ones
    and ``spec_sha256`` itself."""
    skip = {*MUTABLE_BLOCKS, "spec_sha256"}
    return {k: hashlib.sha256(canonical(v)).hexdigest() for k, v in sorted(raw.items()) if k not in skip}


def check_spec(raw: dict[str, Any]) -> None:
    """Refuse a contract block whose hash differs from the recorded one, naming the block."""
    recorded, actual = raw["spec_sha256"], spec_digests(raw)
    for block in sorted(set(recorded) | set(actual)):
        if block not in actual:
            raise ArtifactError(f"block '{block}' was removed after export (its hash is recorded in "
                                "spec_sha256); only 'thresholds' may be edited: restore metadata.json or re-export")
        if block not in recorded:
            raise ArtifactError(f"block '{block}' was added after export (not in spec_sha256); "
                                "only 'thresholds' may be edited: remove it or re-export")
        if recorded[block] != actual[block]:
            raise ArtifactError(f"block '{block}' changed since export (sha256 {actual[block][:12]}… ≠ "
                                f"recorded {recorded[block][:12]}…); only 'thresholds' may be edited by hand: "
                                "restore metadata.json, change it with the anomedge tools, or re-export")


# --- field checks -------------------------------------------------------------------------------------------

def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _fail(path: str, value: Any, expected: str, fix: str = FIX) -> None:
    raise SchemaError(f"{path} is {_show(value)}, expected {expected}; {fix}")


def _dict(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(path, value, "an object")
    return value


def _list(value: Any, path: str, length: int | None = None, max_len: int = 64) -> list[Any]:
    if not isinstance(value, list) or (length is not None and len(value) != length) or len(value) > max_len:
        _fail(path, value, f"a list of {length}" if length is not None else f"a list of at most {max_len}")
    return value


def _str(value: Any, path: str, choices: tuple[str, ...] | None = None, max_len: int = 256) -> str:
    if choices is not None and value not in choices:
        _fail(path, value, f"one of {', '.join(choices)}")
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        _fail(path, value, f"a string of 1 to {max_len} characters")
    return value


def _int(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(path, value, f"an integer in [{low}, {high}]")
    return value


def _num(value: Any, path: str, low: float, high: float, low_open: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
          and (low < value if low_open else low <= value) and value <= high)
    if not ok:
        _fail(path, value, f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}]")
    return float(value)


def _opt_num(value: Any, path: str, fix: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
        _fail(path, value, "a finite number or null", fix)


def _known_keys(block: dict[str, Any], path: str, known: set[str]) -> None:
    unknown = sorted(set(block) - known)
    if unknown:
        raise SchemaError(f"{path}.{unknown[0]} is an unknown key (known: {', '.join(sorted(known))}); a misspelt key "
                          f"would silently fall back to a default: correct it or {FIX}")


def file_name(name: Any, path: str) -> str:
    """A listed file name: one plain name inside the folder (no '/', no '..', no absolute path)."""
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or name in (METADATA, SIGNATURE) \
            or set(name) == {"."}:
        _fail(path, name, "a plain file name inside the artifact folder ([A-Za-z0-9_.-], no '/' or '..', "
              f"not {METADATA} / {SIGNATURE})")
    return name


def _ref(value: Any, path: str, files: dict[str, str]) -> None:
    file_name(value, path)
    if value not in files:
        _fail(path, value, "a file listed in 'files'")


def _needs(files: dict[str, str], name: str, kind: str) -> None:
    if name not in files:
        _fail("files", sorted(files), f"a list with {name} (scoring.kind {kind} reads it)")


def _check_input(inp: dict[str, Any]) -> None:
    known = {"name", "height", "width", "color", "interpolation", "mean", "std", "dynamic_batch", "shape"}
    _known_keys(inp, "input", known)
    _str(inp.get("name"), "input.name")
    for side in ("height", "width"):
        _int(inp.get(side), f"input.{side}", 1, MAX_SIDE)
    _str(inp.get("color", "RGB"), "input.color", COLORS)
    _str(inp.get("interpolation", "bilinear"), "input.interpolation", INTERPOLATIONS)
    for key, low, low_open in (("mean", -1e3, False), ("std", 1e-6, False)):
        values = _list(inp.get(key, [0.5] * 3), f"input.{key}", 3)
        for i, v in enumerate(values):
            _num(v, f"input.{key}[{i}]", low, 1e3, low_open)
    batch = inp.get("dynamic_batch", True)
    if not isinstance(batch, bool):
        _fail("input.dynamic_batch", batch, "true or false")
    if "shape" in inp:
        want = ["N" if batch else 1, 3, inp["height"], inp["width"]]
        if inp["shape"] != want:
            _fail("input.shape", inp["shape"], f"{want} (from dynamic_batch, height, width)")


def _check_outputs(outputs: dict[str, Any]) -> None:
    names = _list(outputs.get("names"), "outputs.names", max_len=16)
    if not names or len(set(map(str, names))) != len(names):
        _fail("outputs.names", names, "1 to 16 distinct output names")
    for i, name in enumerate(names):
        _str(name, f"outputs.names[{i}]")
    for key, block in outputs.items():
        if key == "names":
            continue
        block = _dict(block, f"outputs.{key}")
        if "shape" in block:
            for i, dim in enumerate(_list(block["shape"], f"outputs.{key}.shape", max_len=8)):
                if not isinstance(dim, str):
                    _int(dim, f"outputs.{key}.shape[{i}]", 1, 1 << 24)
        if "stride" in block:
            _int(block["stride"], f"outputs.{key}.stride", 1, MAX_SIDE)


def _check_scoring(scoring: dict[str, Any], files: dict[str, str]) -> None:
    kind = _str(scoring.get("kind"), "scoring.kind", KINDS)
    placement = _str(scoring.get("placement", "host"), "scoring.placement", PLACEMENTS)
    for key in ("graph_model", "graph_head"):
        if key in scoring:
            _ref(scoring[key], f"scoring.{key}", files)
    if placement == "graph" and "graph_model" not in scoring:
        _fail("scoring.placement", placement, "host (no scoring.graph_model is recorded)",
              "add the graph placement with ad-export … --placement graph")
    for backend, value in _dict(scoring.get("placement_by_backend", {}), "scoring.placement_by_backend").items():
        _str(value, f"scoring.placement_by_backend.{backend}", PLACEMENTS)
    if "kernel" in scoring:
        _str(scoring["kernel"], "scoring.kernel", max_len=64)
    if kind == "knn":
        rows = _int(scoring.get("bank_rows", MAX_ROWS), "scoring.bank_rows", 1, MAX_ROWS)
        _int(scoring.get("k", 1), "scoring.k", 1, min(MAX_K, rows))
        _str(scoring.get("bank_dtype", "float32"), "scoring.bank_dtype", BANK_DTYPES)
        _needs(files, "bank.npy", kind)
    elif kind == "mahalanobis":
        for key in ("positions", "channels"):
            if key in scoring:
                _int(scoring[key], f"scoring.{key}", 1, 1 << 20)
        if "ridge" in scoring:
            _num(scoring["ridge"], "scoring.ridge", 0.0, 1e6)
        for name in ("mean.npy", "factor.npy"):
            _needs(files, name, kind)
    elif kind == "ensemble":
        _check_ensemble(scoring, files)
    else:
        _num(scoring.get("map_sigma", 0.0), "scoring.map_sigma", 0.0, MAX_SIGMA)


def _check_ensemble(scoring: dict[str, Any], files: dict[str, str]) -> None:
    """``scoring.members``: 1..8 host heads (knn / mahalanobis) with prefixed files, their own postprocess
    and finite normalisation constants (``scoring.ensemble``)."""
    _str(scoring.get("rule", "mean"), "scoring.rule", ("mean",))
    _str(scoring.get("normalisation"), "scoring.normalisation", ("zscore", "robust"))
    members = _list(scoring.get("members"), "scoring.members", max_len=MAX_MEMBERS)
    if not members:
        _fail("scoring.members", members, f"1 to {MAX_MEMBERS} members")
    seen = set()
    for i, member in enumerate(members):
        where = f"scoring.members[{i}]"
        member = _dict(member, where)
        prefix = _str(member.get("prefix"), f"{where}.prefix")
        if not MEMBER_PREFIX.fullmatch(prefix) or prefix in seen:
            _fail(f"{where}.prefix", prefix, "a distinct prefix m0_ … m7_")
        seen.add(prefix)
        _str(member.get("output"), f"{where}.output")
        _str(member.get("name"), f"{where}.name")
        inner = _dict(member.get("scoring"), f"{where}.scoring")
        _str(inner.get("kind"), f"{where}.scoring.kind", MEMBER_KINDS)
        own = {name[len(prefix):]: digest for name, digest in files.items() if name.startswith(prefix)}
        _check_scoring(inner, own)
        _check_postprocess(_dict(member.get("postprocess"), f"{where}.postprocess"), files)
        norm = _dict(member.get("norm"), f"{where}.norm")
        for part in ("score", "map"):
            block = _dict(norm.get(part), f"{where}.norm.{part}")
            _num(block.get("loc"), f"{where}.norm.{part}.loc", -1e12, 1e12)
            _num(block.get("scale"), f"{where}.norm.{part}.scale", 0.0, 1e12, low_open=True)


def _check_postprocess(post: dict[str, Any], files: dict[str, str]) -> None:
    _num(post.get("blur_sigma"), "postprocess.blur_sigma", 0.0, MAX_SIGMA)
    if "ignore_mask" in post:  # (H,W) uint8 at model resolution: scoring.mask
        _ref(post["ignore_mask"], "postprocess.ignore_mask", files)
    reduction = _dict(post.get("reduction"), "postprocess.reduction")
    name = _str(reduction.get("name"), "postprocess.reduction.name", tuple(REDUCTIONS))
    params = REDUCTIONS[name]
    _known_keys(reduction, "postprocess.reduction", {"name", *params})
    for key, (low, high) in params.items():
        if key in reduction:
            _num(reduction[key], f"postprocess.reduction.{key}", low, high, low_open=True)


def _check_model(model: dict[str, Any], files: dict[str, str]) -> None:
    variants = _dict(model.get("variants", {}), "model.variants")
    for precision, name in variants.items():
        _str(precision, f"model.variants key {precision!r}", max_len=16)
        _ref(name, f"model.variants.{precision}", files)
    if "weights" in model:
        _ref(model["weights"], "model.weights", files)
    if "engine" in model:
        engine = _dict(model["engine"], "model.engine")
        _ref(engine.get("file"), "model.engine.file", files)
        _ref(engine.get("onnx"), "model.engine.onnx", files)
        for i, b in enumerate(_list(engine.get("batch", [1, 1, 1]), "model.engine.batch", 3)):
            _int(b, f"model.engine.batch[{i}]", 1, 4096)
    if "openvino" in model:
        ov = _dict(model["openvino"], "model.openvino")
        _ref(ov.get("file"), "model.openvino.file", files)
        _str(ov.get("precision", "fp32"), "model.openvino.precision", OPENVINO_PRECISIONS)


def _check_tiling(tiling: dict[str, Any]) -> None:
    """The ``tiling`` block (runtime.tiling.TilingSpec): tile / overlap pixels, blend, mode."""
    _int(tiling.get("tile"), "tiling.tile", 16, MAX_SIDE)
    _int(tiling.get("overlap", 0), "tiling.overlap", 0, tiling["tile"] // 2)
    _str(tiling.get("blend", "linear"), "tiling.blend", TILE_BLENDS)
    _str(tiling.get("mode", "shared"), "tiling.mode", TILE_MODES)


def check_thresholds(thresholds: Any) -> None:
    """The editable block: numbers the decision uses must be finite (or null: uncalibrated)."""
    fix = "run ad-calibrate again or correct the thresholds block"
    block = _dict(thresholds, "thresholds")
    for key in ("image", "pixel"):
        _opt_num(block.get(key), f"thresholds.{key}", fix)
    for sub in ("normalization", "good_scores"):
        if block.get(sub) is not None:
            for key, value in _dict(block[sub], f"thresholds.{sub}").items():
                _opt_num(value, f"thresholds.{sub}.{key}", fix)
    if block.get("drift") is not None:  # runtime.drift: good-score sample + input-statistic bands
        drift = _dict(block["drift"], "thresholds.drift")
        for i, value in enumerate(_list(drift.get("scores", []), "thresholds.drift.scores", max_len=MAX_DRIFT_SAMPLE)):
            _num(value, f"thresholds.drift.scores[{i}]", -1e30, 1e30)
        for name, stat in _dict(drift.get("inputs", {}), "thresholds.drift.inputs").items():
            stat = _dict(stat, f"thresholds.drift.inputs.{name}")
            _num(stat.get("median"), f"thresholds.drift.inputs.{name}.median", -1e30, 1e30)
            for i, v in enumerate(_list(stat.get("band"), f"thresholds.drift.inputs.{name}.band", 2)):
                _num(v, f"thresholds.drift.inputs.{name}.band[{i}]", -1e30, 1e30)


def _check_files(files: dict[str, Any]) -> None:
    if not files or len(files) > MAX_FILES:
        _fail("files", f"{len(files)} entries", f"1 to {MAX_FILES} listed files")
    if "model.onnx" not in files:
        _fail("files", sorted(files), "a list that includes model.onnx")
    for name, digest in files.items():
        file_name(name, "files key")
        if not isinstance(digest, str) or not HEX64.fullmatch(digest):
            _fail(f"files['{name}']", digest, "a lowercase 64-digit sha256 hex digest")


def check_metadata(raw: Any) -> None:
    """Type- and range-check every field anomedge reads; raise SchemaError naming the first bad one.
    ``schema_version`` is checked by the caller (its message says which anomedge reads which version)."""
    raw = _dict(raw, "the top level")
    for block in REQUIRED_BLOCKS:
        if block not in raw:
            raise SchemaError(f"block '{block}' is missing; {FIX}")
    files = _dict(raw["files"], "files")
    _check_files(files)
    spec = _dict(raw["spec_sha256"], "spec_sha256")
    for block, digest in spec.items():
        if not isinstance(digest, str) or not HEX64.fullmatch(digest):
            _fail(f"spec_sha256.{block}", digest, "a lowercase 64-digit sha256 hex digest")
    _str(raw["detector"], "detector", max_len=64)
    _check_input(_dict(raw["input"], "input"))
    _check_outputs(_dict(raw["outputs"], "outputs"))
    _check_scoring(_dict(raw["scoring"], "scoring"), files)
    _check_postprocess(_dict(raw["postprocess"], "postprocess"), files)
    _check_model(_dict(raw["model"], "model"), files)
    check_thresholds(raw.get("thresholds", {}))
    if "tiling" in raw:
        _check_tiling(_dict(raw["tiling"], "tiling"))
    for key, value in _dict(raw.get("versions", {}), "versions").items():
        _str(value, f"versions.{key}", max_len=128)
    if "created" in raw and not isinstance(raw["created"], str):
        _fail("created", raw["created"], "an ISO 8601 date string")


def parse_json(text: bytes, where: str) -> dict[str, Any]:
    """Parse metadata.json bytes: UTF-8 JSON object, no duplicate keys, at most MAX_DEPTH deep."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"duplicate key {dup!r}")
        return dict(pairs)

    try:
        raw = json.loads(text.decode("utf-8"), object_pairs_hook=no_duplicates)
    except RecursionError:
        raise ArtifactError(f"{where}: JSON nested too deeply (more than {MAX_DEPTH} levels); {FIX}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{where}: not valid JSON ({str(exc).splitlines()[0]}); {FIX}") from None
    stack, depth = [(raw, 1)], 0
    while stack:
        value, level = stack.pop()
        depth = max(depth, level)
        if depth > MAX_DEPTH:
            raise ArtifactError(f"{where}: JSON nested too deeply (more than {MAX_DEPTH} levels); {FIX}")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    if not isinstance(raw, dict):
        raise ArtifactError(f"{where}: top level is {type(raw).__name__}, expected a JSON object; {FIX}")
    return raw
