"""How speed and memory are measured: the timing protocol shared by search and bench, and
fresh child processes for figures a long-lived process would skew."""
