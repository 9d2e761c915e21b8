"""`fcn-jax train --config experiments/X.py --workdir runs/x [--config.key=value ...]`."""

from __future__ import annotations

import argparse
import signal
import sys

HELP = "Train an FCN from an experiment config."
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="experiment file (get_config()), e.g. experiments/camvid_fcn8s.py"
    )
    parser.add_argument("--workdir", required=True, help="run directory; an existing one is resumed")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="move a run already in --workdir aside to WORKDIR.old-<time> (nothing is deleted) "
        "and start a new one there",
    )
    dist = parser.add_argument_group(
        "several processes (hosts); also read from JAX's own environment detection"
    )
    dist.add_argument("--coordinator", default="", help="host:port of process 0")
    dist.add_argument("--num-processes", type=int, default=1)
    dist.add_argument("--process-id", type=int, default=0)
    dist.add_argument(
        "--init-timeout", type=int, default=120, help="seconds to wait for all processes to join"
    )
    parser.epilog = "Any config key can be overridden: --config.train.steps=200 --config.model.variant=32s"


def run(args: argparse.Namespace) -> int:
    from fcn_jax import config as config_lib
    from fcn_jax import run as run_lib
    from fcn_jax import train

    def fail(message: str, code: int = 2) -> int:
        print(f"fcn-jax train: {message}", file=sys.stderr)
        return code

    try:
        config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    except (OSError, ValueError) as e:
        return fail(str(e))
    except Exception as e:  # the experiment file is user code: any error in it is bad input
        return fail(f"--config {args.config}: {type(e).__name__}: {e}")
    if args.num_processes > 1:
        if not args.coordinator:
            return fail("--num-processes > 1 needs --coordinator HOST:PORT")
        train.initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.init_timeout)
    try:
        train.train_and_evaluate(config, args.workdir, restart=args.restart)
    except train.NonFiniteLoss as e:
        return fail(str(e), 3)
    except train.Interrupted as e:
        print(f"fcn-jax train: {e}; run the same command to continue", file=sys.stderr)
        return e.exit_code
    except train.StoppedAtOnce as e:
        saved = run_lib.Run(args.workdir).steps(run_lib.LATEST)
        resume = f"continues from step {saved[-1]}" if saved else "starts again (no checkpoint was saved yet)"
        name = signal.Signals(e.signum).name
        return fail(
            f"stopped at once by a second signal ({name}), without saving; the same command {resume}",
            e.exit_code,
        )
    except (OSError, ValueError) as e:  # bad config values, run dir, missing or bad data (DataError)
        return fail(str(e))
    return 0
