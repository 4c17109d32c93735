"""Train one cell from a YAML config: ``python -m segtricks.train --config FILE [--set key=value ...]``.

Resumes from ``<output_dir>/last.pt`` when the folder holds an unfinished training of the same config.
The arguments and the config are checked before torch and timm are imported.
"""
from __future__ import annotations

import argparse
import sys
from typing import List

from segtricks import errors
from segtricks.config.schema import load_config
from segtricks.config.vocabulary import VALIDATION_METRIC


@errors.command
def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=errors.prog("segtricks.train"), description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path), repeatable")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, flags=args.set)
    from segtricks.engine.training import Training  # torch, timm: only for a valid config

    training = Training(cfg)
    status = training.run()
    history = training.history()
    print(f"weights: {training.cfg.backbone.name} ({status.weights_id})")
    print(f"best checkpoint: {training.best_path} (epoch {status.best_epoch + 1})")
    if history and VALIDATION_METRIC in history[-1]:
        best = max(h[VALIDATION_METRIC] for h in history)
        print(f"validation IoU: best {best:.3f}, last {history[-1][VALIDATION_METRIC]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
