"""Every command refuses each wrong input it can be given with one line on stderr and exit code 2,
no traceback, and nothing written; an existing run is never overwritten.

One table: each command's valid arguments, then, per wrong input, what is added to them (a repeated
option replaces the earlier value). Placeholders: {data} an ImageFolder, {empty} one whose class_1
has no image, {missing} a path that does not exist, {ckpt} a LITv2-T checkpoint, {recipe} a recipe
with an unknown key, {out} a fresh output path, {blocked} a path under a regular file (unwritable
even for root, for whom a read-only directory is writable).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

from tests.helpers.data_fixtures import make_image_folder
from litv2cli.cli.main import main
from litv2cli.models import create_model

COMMANDS = {
    "info": ["info", "--variant", "t", "--res", "32"],
    "pretrain": ["pretrain", "--variant", "t", "--res", "32", "--batch-size", "2", "--max-steps", "1", "--data",
                 "{data}", "--output", "{out}", "--workers", "0", "--no-progress", "--log-with", "none"],
    "finetune": ["finetune", "--from", "{ckpt}", "--res", "32", "--batch-size", "2", "--max-steps", "1", "--data",
                 "{data}", "--output", "{out}", "--workers", "0", "--no-progress", "--log-with", "none"],
    "eval": ["eval", "--checkpoint", "{ckpt}", "--data", "{data}", "--res", "32", "--workers", "0"],
    "search": ["search", "--variant", "t", "--res", "64", "--alpha", "0.5", "--window", "2", "--batch-size", "2",
               "--warmup", "1", "--repeats", "2", "--objective", "throughput", "--output", "{out}",
               "--recipes-dir", "{out}/recipes"],
    "bench model": ["bench", "model", "--models", "litv2_t", "--res", "32", "--batch-size", "1", "--warmup", "0",
                    "--repeats", "1", "--no-memory"],
    "bench attention": ["bench", "attention", "--attentions", "hilo", "--variant", "t", "--res", "32",
                        "--batch-size", "1", "--warmup", "0", "--repeats", "1", "--no-memory"],
    "export": ["export", "--variant", "t", "--res", "32", "--output", "{out}.onnx"],
}

SEARCH_WITH_DATA = ["--objective", "throughput,top1", "--proxy-batch-size", "2", "--proxy-batches", "1"]


def case(command: str, wrong: str, extra: list[str], fragment: str):
    """One row: `fragment` must appear in the error line."""
    return pytest.param(command, extra, fragment, id=f"{command}: {wrong}")

CASES = [
    *[case(command, "unknown variant", ["--variant", "x"], "unknown") for command in
      ("info", "pretrain", "finetune", "eval", "search", "bench attention", "export")],
    case("bench model", "unknown variant", ["--models", "litv2_x"], "unknown model"),
    *[case(command, "alpha 1.5", ["--alpha", "1.5"], "--alpha") for command in ("info", "pretrain", "search")],
    *[case(command, "window 0", ["--window", "0"], "--window") for command in ("info", "pretrain", "search")],
    *[case(command, "res 225", ["--res", "225"], "multiple") for command in
      ("info", "pretrain", "finetune", "eval", "search", "bench model", "bench attention", "export")],
    *[case(command, "missing data dir", ["--data", "{missing}"], "no such file or directory") for command in
      ("pretrain", "finetune", "eval")],
    case("search", "missing data dir", [*SEARCH_WITH_DATA, "--data", "{missing}"], "no such file"),
    *[case(command, "empty class folder", ["--data", "{empty}"], "class_1 hold no images") for command in
      ("pretrain", "finetune", "eval")],
    case("search", "empty class folder", [*SEARCH_WITH_DATA, "--data", "{empty}"], "class_1 hold no images"),
    *[case(command, "unwritable output dir", ["--output", "{blocked}"], "{blocked}") for command in
      ("pretrain", "finetune")],
    case("export", "unwritable output dir", ["--output", "{blocked}.onnx"], "{blocked}"),
    case("search", "unwritable output dir", ["--output", "{blocked}"], "{blocked}"),
    case("search", "unwritable recipes dir", ["--recipes-dir", "{blocked}"], "--recipes-dir {blocked}"),
    *[case(command, "unwritable output dir", ["--output", "{blocked}"], "{blocked}")
      for command in ("bench model", "bench attention")],
    *[case(command, "unknown recipe key", ["--recipe", "{recipe}"], "unknown recipe key 'not_a_key'")
      for command in ("pretrain", "finetune")],
    case("pretrain", "batch larger than the data", ["--batch-size", "64"], "fewer than one step"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("inputs")
    data = make_image_folder(root / "data", num_classes=2, per_class=4, size=32)
    empty = Path(shutil.copytree(data, root / "empty"))
    for image in (empty / "train" / "class_1").iterdir():
        image.unlink()
    checkpoint = root / "litv2-t.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("t", num_classes=2).state_dict().items()}, str(checkpoint))
    recipe = root / "unknown-key.yaml"
    recipe.write_text("variant: t\nnot_a_key: 1\n")
    return {"data": str(data), "empty": str(empty), "missing": str(root / "no-such-dir"), "ckpt": str(checkpoint),
            "recipe": str(recipe)}


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root`: file contents, None for directories."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(("command", "extra", "fragment"), CASES)
def test_wrong_input_is_one_line_exit_2_and_writes_nothing(command, extra, fragment, inputs, tmp_path, monkeypatch,
                                                           capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "file.txt").write_text("a regular file\n")
    values = {**inputs, "out": str(work / "out"), "blocked": str(work / "file.txt" / "out")}
    argv = [arg.format(**values) for arg in [*COMMANDS[command], *extra]]
    monkeypatch.chdir(work)  # default output locations (runs/, bench-results/) would show up here too
    before = snapshot(work)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("litv2: error:"), err
    assert "Traceback" not in err and fragment.format(**values) in lines[0]
    assert snapshot(work) == before


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The files a finished run leaves (made directly: only their presence and bytes matter here)."""
    run = tmp_path_factory.mktemp("existing") / "run"
    (run / "checkpoints" / "step-00000001").mkdir(parents=True)
    (run / "checkpoints" / "step-00000001" / "train_state.json").write_text('{"epoch": 1, "step": 1}')
    (run / "checkpoints" / "step-00000001" / "model.safetensors").write_bytes(b"weights of step 1")
    (run / "model.safetensors").write_bytes(b"final weights")
    (run / "config.yaml").write_text("variant: t\n")
    (run / "run.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.3}\n')
    return run


@pytest.mark.parametrize("left", ["finished", "killed before its first checkpoint"])
def test_an_existing_run_is_refused_without_resume_and_left_byte_identical(left, finished_run, inputs, tmp_path,
                                                                           capsys):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    if left != "finished":
        shutil.rmtree(run / "checkpoints")
        (run / "model.safetensors").unlink()
    before = snapshot(run)
    for command in ("pretrain", "finetune"):
        argv = [arg.format(**inputs, out=str(run)) for arg in COMMANDS[command]]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("litv2: error:") and len(err.strip().splitlines()) == 1
        assert "already holds a run" in err and "--resume" in err
        assert snapshot(run) == before


def test_ctrl_c_inside_a_command_is_one_line_and_exit_130(monkeypatch, capsys):
    """typer turns Ctrl-C into a silent Exit(130); the user still gets told why the command stopped."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("litv2cli.models.describe", interrupted)
    assert main(["info", "--variant", "t"]) == 130
    assert capsys.readouterr().err.strip() == "litv2: interrupted"
