"""`litv2 info`: the numbers, the table, the JSON, and one-line errors with exit code 2."""

import json
import shutil
import subprocess
import sys

import pytest

from litv2cli.cli.main import main


def run_json(capsys, *args):
    assert main(["info", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_reports_litv2_s_params_and_flops(capsys):
    report = run_json(capsys, "--variant", "s")
    assert report["params_m"] == pytest.approx(27.84, abs=0.01)
    assert report["gflops"] == pytest.approx(3.734, abs=0.001)
    assert [s["channels"] for s in report["stages"]] == [96, 192, 384, 768]


def test_json_follows_resolution_alpha_and_window(capsys):
    report = run_json(capsys, "--variant", "b", "--res", "384")
    assert report["gflops"] == pytest.approx(39.709, abs=0.001)
    report = run_json(capsys, "--variant", "s", "--alpha", "0", "--res", "800x1280", "--window", "0,0,4,2")
    assert report["local_ws"] == [0, 0, 4, 2]
    assert [s["resolution"] for s in report["stages"]] == [[200, 320], [100, 160], [50, 80], [25, 40]]
    assert [(s["hifi_heads"], s["lofi_heads"]) for s in report["stages"][2:]] == [(12, 0), (24, 0)]


def test_all_lists_every_variant(capsys):
    reports = run_json(capsys, "--variant", "all")
    assert list(reports) == ["t", "s", "m", "b"]
    assert reports["m"]["gflops"] == pytest.approx(7.479, abs=0.001)


def test_table_shows_params_flops_and_head_split(capsys):
    assert main(["info", "--variant", "s"]) == 0
    out = capsys.readouterr().out
    assert "27.84 M params" in out and "3.734 GFLOPs" in out
    assert "2/10" in out and "0/24" in out and "14x14" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--variant", "x"], "unknown variant"),
    (["--alpha", "1.5"], "--alpha"),
    (["--window", "0"], "--window"),
    (["--res", "100"], "multiples of 32"),
    (["--res", "big"], "--res"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, args, message):
    assert main(["info", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_installed_console_script_prints_json():
    exe = shutil.which("litv2") or str(__import__("pathlib").Path(sys.executable).parent / "litv2")
    result = subprocess.run([exe, "info", "--json", "--variant", "t", "--res", "32"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["variant"] == "t" and report["stages"][3]["resolution"] == [1, 1]
    assert report["params_m"] > 0 and report["gflops"] >= 0
