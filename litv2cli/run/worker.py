"""One worker process of a run: `python -m litv2cli.run.worker DIR/run.json` (started by the launcher)."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from litv2cli.errors import UserError
from litv2cli.train.spec import RunSpec


def run_spec(spec: RunSpec) -> int:
    """Run a spec in this process; any failure becomes one line naming the rank, and an exit
    code: 2 for what the user can fix, 3 for a non-finite loss, 4 for a checkpoint that cannot be
    written, 1 for anything else (its traceback goes to a file the line names)."""
    from litv2cli.train import loop
    from litv2cli.run.launch import report_error

    finished = False
    try:
        if spec.task == "eval":
            from litv2cli.run.evaluation import run_evaluation

            run_evaluation(spec)
        else:
            loop.train(spec)
        finished = True
    except (UserError, loop.ResumeMismatch) as exc:
        report_error(str(exc), 2)
        return 2
    except loop.NonFiniteLoss as exc:
        report_error(str(exc), 3)
        return 3
    except loop.CheckpointWriteError as exc:
        report_error(str(exc), 4)
        return 4
    except Exception as exc:  # a defect, or a peer that died: one line here, the traceback in a file
        report_error(f"{exc.__class__.__name__}: {_first_line(exc)}", 1, exc)
        return 1
    finally:
        _leave_process_group(wait=finished)
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _leave_process_group(*, wait: bool) -> None:
    """Leave the process group before the interpreter exits: left to exit, gloo's connection
    threads can abort a rank ("terminate called without an active exception") while its peer is
    still closing. The barrier lets every rank finish first; after an error nobody waits."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*OMP_NUM_THREADS.*")
    # DDP's layout check on the depthwise-conv grads of size-1 dims: a false alarm, no copy is made.
    warnings.filterwarnings("ignore", message=".*Grad strides do not match bucket view strides.*")
    if len(argv) != 1:
        print("usage: python -m litv2cli.run.worker RUN_DIR/run.json", file=sys.stderr)
        return 2
    return run_spec(RunSpec.load(Path(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
