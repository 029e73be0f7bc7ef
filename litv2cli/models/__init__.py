"""The LITv2 model layer: variants, backbone, HiLo attention, FLOP counting, safe loading.

    from litv2cli.models import create_model, count_flops
    model = create_model("s")                    # LITv2-S, official key names
    count_flops(model, (224, 224))               # 3_734_... MACs, as the paper counts them

Importing this package registers `litv2_t`, `litv2_s`, `litv2_m`, `litv2_b` with timm.
"""

from litv2cli.weights.safe import load_checkpoint_state_dict
from litv2cli.models.flops import count_flops, count_params
from litv2cli.models.hilo import HiLo
from litv2cli.models.hilo_reference import HiLoReference
from litv2cli.models.litv2 import ATTENTIONS, VARIANTS, LITv2, VariantSpec, create_model, variant_spec
from litv2cli.models.summary import describe
from litv2cli.models import attentions as _compared_attentions  # noqa: F401  registers msa, sra, w_msa, t_msa

__all__ = [
    "ATTENTIONS", "VARIANTS", "HiLo", "HiLoReference", "LITv2", "VariantSpec", "count_flops", "count_params",
    "create_model", "describe", "load_checkpoint_state_dict", "variant_spec",
]
