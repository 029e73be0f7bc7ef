"""litv2cli: train, fine-tune, search and benchmark LITv2 (HiLo attention).

Importing the package registers `litv2_t`, `litv2_s`, `litv2_m` and `litv2_b` with timm.
"""

__version__ = "0.1.0"

from litv2cli import models as _models  # noqa: F401,E402  (registers the timm models)
