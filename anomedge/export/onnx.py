"""Torch module → one self-contained ``.onnx`` file (weights inside, dynamic batch)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch

from ..artifact import InputSpec
from ..errors import InputError

OPSET = 18


def export_onnx(module: torch.nn.Module, spec: InputSpec, path: Path, output_names: Sequence[str]) -> Path:
    """Export ``module`` (eval) for input (N,3,H,W) named ``spec.name``; N dynamic if ``spec.dynamic_batch``.

    torch 2.9+ exports with dynamo and writes weights to a side ``.data`` file unless
    ``external_data=False``: small edge models stay one file.
    """
    module = module.eval()
    # A batch of 2, not 1: torch.export specialises size-1 dimensions, and a graph that guards on its
    # batch (timm's ViTs expand the class token to it) would then come out fixed at batch 1.
    example = torch.zeros(2 if spec.dynamic_batch else 1, 3, spec.height, spec.width)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=256)}} if spec.dynamic_batch else None
    arg_name = next(iter(_forward_arg_names(module)))
    if dynamic is not None:
        dynamic = {arg_name: dynamic["x"]}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[spec.name], output_names=list(output_names),
                          dynamic_shapes=dynamic, dynamo=True, external_data=False, opset_version=OPSET,
                          verbose=False)
    if spec.dynamic_batch:
        check_dynamic_batch(path)
    return Path(path)


def check_dynamic_batch(path: Path) -> None:
    """Guard: the exporter falls back quietly when torch.export fails, and the fallback
    can fix the batch at the example's size; refuse such a file rather than ship it."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    fixed = [v.name for v in [*graph.input, *graph.output] if v.type.tensor_type.shape.dim
             and v.type.tensor_type.shape.dim[0].HasField("dim_value")]
    if fixed:
        raise InputError(f"{path}: the exported graph fixes the batch of {', '.join(fixed)}; the module's "
                         "forward must not depend on the batch size (export with dynamic_batch=False for batch 1)")


def _forward_arg_names(module: torch.nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(module.forward).parameters]
