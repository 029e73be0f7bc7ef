"""Whether the model is being captured into a graph rather than run eagerly.

Fast paths built on eager-only tricks step aside while a graph is captured, so the graph holds
plain ops: HiLo's in-place GEMMs into one shared buffer are left out under torch.compile too
(`capturing`); the DTM's gather is fine for torch.compile but not for export, where ONNX must
see torchvision's deformable conv to write DeformConv (`exporting`).
"""

from __future__ import annotations

import torch


def exporting() -> bool:
    """torch.export / ONNX export or jit tracing is recording the forward."""
    is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.5
    return is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def capturing() -> bool:
    """`exporting()`, or torch.compile tracing the forward."""
    return torch.compiler.is_compiling() or exporting()
