"""DTM's deformable conv as GridSample + Conv: the same numbers as torchvision's op, no export needed."""

import pytest
import torch

from litv2cli.export import GridSampleDeformConv2d, with_gridsample_deform_convs
from litv2cli.models import create_model
from litv2cli.models.dtm import DeformConv2d
from tests.helpers.model_fixtures import learned_offsets, with_learned_offsets


@pytest.mark.parametrize(("height", "width"), [(8, 8), (14, 10), (7, 9), (2, 4)])
def test_gridsample_form_equals_torchvision_deform_conv(height, width):
    torch.manual_seed(height * 100 + width)
    deform = learned_offsets(DeformConv2d(16, 32), scale=1.5)
    x = torch.randn(3, 16, height, width)
    offsets = deform.conv_offset(x)
    # Some samples must fall outside the map, or the zero-padding rule is not tested.
    rows = torch.arange(offsets.shape[2]).view(1, 1, -1, 1) * 2 + offsets[:, 0::2]
    assert (rows < -1).any() or (rows > height).any()
    with torch.no_grad():
        expected, actual = deform(x), GridSampleDeformConv2d(deform)(x)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=2e-6), (actual - expected).abs().max()


def test_gridsample_form_replaces_every_dtm_and_keeps_outputs_and_weights():
    torch.manual_seed(0)
    model = with_learned_offsets(create_model("t", num_classes=10)).eval()
    converted = with_gridsample_deform_convs(model)
    assert not any(isinstance(m, DeformConv2d) for m in converted.modules())
    assert sum(isinstance(m, GridSampleDeformConv2d) for m in converted.modules()) == 3
    assert sum(isinstance(m, DeformConv2d) for m in model.modules()) == 3  # the original is untouched
    assert converted.state_dict().keys() == model.state_dict().keys()
    images = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        assert (converted(images) - model(images)).abs().max() < 1e-5


def test_gridsample_form_refuses_a_kernel_unlike_its_stride():
    with pytest.raises(ValueError, match="kernel equal to the stride"):
        GridSampleDeformConv2d(DeformConv2d(4, 8, kernel_size=3, stride=2))
