"""`litv2 search`: hardware-aware search over HiLo's alpha and window size, with Optuna.

One concept per module: `space` (the points), `proxies` (zero-cost scores), `evaluate` (one
point measured), `train_proxy` (one point trained briefly), `storage` (which storage, opened
how, its password masked), `study` (the worker loop), `pareto` (front, pick rule, tables,
plot), `recipes` (the written recipe), and `runner`, which ties them into `run_search`.
The package imports nothing itself, so `litv2 search` checks its options before torch loads.
"""
