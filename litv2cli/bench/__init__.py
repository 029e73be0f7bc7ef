"""Benchmarks of the paper's speed and memory comparisons, measured on the device at hand.

- `models`: Table 1, LITv2 against the peers timm ships (`litv2 bench model`).
- `attention`: Figure 3, HiLo against MSA, SRA, W-MSA and T-MSA inside one backbone
  across resolutions (`litv2 bench attention`).
- `protocol` (settings and the protocol line), `measuring` (interleaved throughput, memory
  with out-of-memory and time budgets as outcomes), `report` (tables, CSV, JSON, plots).
"""

from litv2cli.bench.attention import AttentionRow, run_attention_bench
from litv2cli.bench.models import ModelRow, run_model_bench
from litv2cli.bench.protocol import BenchSettings, default_settings

__all__ = ["AttentionRow", "BenchSettings", "ModelRow", "default_settings", "run_attention_bench", "run_model_bench"]
