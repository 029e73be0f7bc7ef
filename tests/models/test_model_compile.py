"""`torch.compile` sees the whole forward as one graph: no graph breaks, padding path included."""

import torch

from litv2cli.models import create_model


def test_compiled_forward_has_no_graph_breaks():
    torch._dynamo.reset()
    # Window 3 on a 4x6 stage-3 map and window 2 on 2x3 at stage 4: both HiLo branches, padded.
    model = create_model("t", num_classes=10, alpha=0.5, local_ws=(0, 0, 3, 2)).eval()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 96))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
