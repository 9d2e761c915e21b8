"""`fcn-jax train --config experiments/X.py --workdir runs/x [--config.key=value ...]`."""

from __future__ import annotations

import argparse
import sys

HELP = "Train an FCN from an experiment config."
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="experiment file (get_config()), e.g. experiments/camvid_fcn8s.py"
    )
    parser.add_argument("--workdir", required=True, help="run directory; an existing one is resumed")
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
    from fcn_jax import train

    try:
        config = config_lib.apply_overrides(config_lib.load_config(args.config), args.overrides)
    except (FileNotFoundError, ValueError) as e:
        print(f"fcn-jax train: {e}", file=sys.stderr)
        return 2
    if args.num_processes > 1:
        if not args.coordinator:
            print("fcn-jax train: --num-processes > 1 needs --coordinator HOST:PORT", file=sys.stderr)
            return 2
        train.initialize_distributed(args.coordinator, args.num_processes, args.process_id, args.init_timeout)
    try:
        train.train_and_evaluate(config, args.workdir)
    except train.NonFiniteLoss as e:
        print(f"fcn-jax train: {e}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as e:  # bad config values, missing or bad data (DataError)
        print(f"fcn-jax train: {e}", file=sys.stderr)
        return 2
    return 0
