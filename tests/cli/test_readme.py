"""The README's two commands stay true: CI runs the test command verbatim, and the main job names
things that exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith(("#", "set ", "cd "))]
    test_command = next(block for block in _bash_blocks(readme) if "pytest" in block)
    # Besides the command: scripts of .ci/ only (the PostgreSQL binaries before, the others after).
    assert test_command in ci_lines
    others = [line for line in ci_lines if line != test_command]
    assert all(re.fullmatch(r"bash \.ci/[\w-]+( *#.*)?", line) for line in others), others
    assert all((REPO / line.split()[1]).is_file() for line in others)


def test_the_main_job_command_uses_a_shipped_recipe_and_the_embedded_data():
    readme = (REPO / "README.md").read_text()
    main_job = _bash_blocks(readme)[0]
    assert main_job.startswith("python3 -m venv .venv") and "pip install torch==2.14.1 torchvision==0.29.1" in main_job
    recipe = re.search(r"--recipe (\S+)", main_job).group(1)
    assert (REPO / recipe).is_file() and "--data demo" in main_job
