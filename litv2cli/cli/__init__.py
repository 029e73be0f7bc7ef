"""The `litv2` command line: one module per command group, composed in `main`."""
