"""Train one cell from a YAML config: ``python -m segtricks.train --config FILE [--set key=value ...]``.

Resumes from ``<output_dir>/last.pt`` when the folder holds an unfinished training of the same config.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List

import yaml

from segtricks.config import ConfigError, load_config
from segtricks.trainer import train


def parse_overrides(pairs: List[str]) -> Dict[str, object]:
    """``["optim.lr=1e-3", "tricks=[crop,gf]"]`` → {"optim.lr": 0.001, "tricks": ["crop", "gf"]}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set optim.lr=1e-3")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path), repeatable")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, parse_overrides(args.set))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = train(cfg)
    last = result.history[-1] if result.history else {}
    print(f"weights: {cfg.backbone.name} ({result.weights_id})")
    print(f"best checkpoint: {result.best_checkpoint} (epoch {result.best_epoch + 1})")
    if "val/iou" in last:
        best = max(h["val/iou"] for h in result.history)
        print(f"validation IoU: best {best:.3f}, last {last['val/iou']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
