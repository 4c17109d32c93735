"""Peak memory of one training step, and what autograd saves for backward, as tables.

    python benchmarks/memory.py              # paper config: ViT-S/8 random-init, 320², batch 8; tricks none, crop
    python benchmarks/memory.py --tiny       # demo_vit4, 56², batch 2: CI keeps it working
    python benchmarks/memory.py --one crop   # one variant in this process, e.g. under /usr/bin/time -v

Each variant runs in its own process (peaks are per process), one step of ``benchmarks/core.py``'s
``train_step_fn`` (``--steps`` more if asked). Peak: on CPU the resident-set high-water mark
(VmHWM, reset just before the step, so the table's "before step" is the built model and the
peak includes it); on CUDA ``max_memory_allocated``. The breakdown sums the bytes of every tensor
autograd saves for backward (``saved_tensors_hooks``; a storage saved by several ops counts once),
by phase — each model call in ``loss_terms`` (1: the batch, 2: the crops of the crop trick) and
the losses after it — and by head module; "held at backward" is what is still alive when backward
starts (a graph dropped before then, e.g. one no loss reaches, is saved but not held).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn

from segtricks.runtime.device import BF16, FP32, Precision, precision_of
from core import train_step_fn
from segtricks.models.model import SegmentationModel

PHASES = ("main", "crop")  # the model calls of loss_terms, in order (a third call would be "call 3")
MIB = 2 ** 20  # /usr/bin/time -v reports KiB: its maximum resident set / 1024 is the peak here


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


class SavedTensorProfile:
    """Attributes every tensor autograd saves to (phase, module); see the module docstring."""

    def __init__(self) -> None:
        self.calls = 0  # SegmentationModel calls started so far
        self.in_model = False
        self.stack: List[str] = []
        self.names: Dict[int, str] = {}
        self.lists: set = set()  # names of the ModuleLists, whose children are reported one by one
        self.entries: List[dict] = []
        self.by_storage: Dict[int, dict] = {}
        self.held: Optional[Dict[int, bool]] = None  # entry index → alive, taken at backward's start
        self.forward_peak: Optional[int] = None  # the peak reached before backward, in bytes
        self.read_peak = lambda: 0

    def phase(self) -> str:
        label = PHASES[self.calls - 1] if 0 < self.calls <= len(PHASES) else f"call {self.calls}"
        return f"{label} forward" if self.in_model else f"{label} losses"

    def pre_hook(self, module: nn.Module, _args) -> None:
        if isinstance(module, SegmentationModel):
            self.calls += 1
            self.in_model = True
            self.names = {id(m): name for name, m in module.named_modules()}
            self.lists = {name for name, m in module.named_modules() if isinstance(m, nn.ModuleList)}
        name = self.names.get(id(module))
        if self.in_model and name is not None:
            self.stack.append(name)

    def post_hook(self, module: nn.Module, _args, _out) -> None:
        if self.in_model and id(module) in self.names:
            self.stack.pop()
        if isinstance(module, SegmentationModel):
            self.in_model = False

    def group(self) -> str:
        """The head's child module (with the ModuleList index) the saving op runs in; 'head' for the
        head's own ops (sigmoids, an activation applied functionally)."""
        for name in self.stack:
            parts = name.split(".")
            if len(parts) >= 2 and parts[0] == "head":
                return ".".join(parts[:3] if ".".join(parts[:2]) in self.lists and len(parts) > 2 else parts[:2])
        return "head" if self.stack and self.stack[-1].startswith("head") else "model"

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        # detached: the tensor itself would hold its grad_fn, which holds it (a cycle that keeps a
        # dropped graph alive until the garbage collector runs); autograd re-attaches it on unpack
        t = t.detach()
        storage = t.untyped_storage()
        entry = self.by_storage.get(storage.data_ptr())
        if entry is None or not any(r() is not None for r in entry["refs"]):  # a new storage
            where = self.group() if self.in_model else "losses"
            entry = {"phase": self.phase(), "module": where, "bytes": storage.nbytes(), "refs": []}
            self.entries.append(entry)
            self.by_storage[storage.data_ptr()] = entry
        entry["refs"].append(weakref.ref(t))
        return t

    def unpack(self, t: torch.Tensor) -> torch.Tensor:
        if self.held is None:  # the first unpack is backward's start
            self.held = {i: any(r() is not None for r in e["refs"]) for i, e in enumerate(self.entries)}
            self.forward_peak = self.read_peak()
        return t

    def rows(self) -> List[dict]:
        out: Dict[tuple, dict] = {}
        for i, e in enumerate(self.entries):
            row = out.setdefault((e["phase"], e["module"]), {"phase": e["phase"], "module": e["module"],
                                                              "saved": 0, "held": 0})
            row["saved"] += e["bytes"]
            row["held"] += e["bytes"] if self.held and self.held[i] else 0
        return list(out.values())


def measure(tricks: List[str], backbone: str, size: int, batch: int, steps: int, device: torch.device,
            breakdown: bool, precision: Optional[Precision] = None) -> dict:
    """Peak memory of ``steps`` training steps in this process (+ the saved-tensor rows)."""
    step = train_step_fn(tricks, device, precision, backbone=backbone, size=size, batch=batch)
    cuda = device.type == "cuda"
    profile = SavedTensorProfile()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        profile.read_peak = lambda: torch.cuda.max_memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = rss_kib("VmRSS") * 1024
        profile.read_peak = lambda: rss_kib("VmHWM") * 1024
    for i in range(steps):
        if breakdown and i == 0:
            handles = [nn.modules.module.register_module_forward_pre_hook(profile.pre_hook),
                       nn.modules.module.register_module_forward_hook(profile.post_hook)]
            with torch.autograd.graph.saved_tensors_hooks(profile.pack, profile.unpack):
                step()
            for h in handles:
                h.remove()
        else:
            step()
    peak = torch.cuda.max_memory_allocated(device) if cuda else rss_kib("VmHWM") * 1024
    return {"tricks": tricks, "before": before, "peak": peak, "forward_peak": profile.forward_peak,
            "rows": profile.rows() if breakdown else []}


def print_tables(results: List[dict], device: torch.device, title: str) -> None:
    kind = "max_memory_allocated" if device.type == "cuda" else "resident set (VmHWM)"
    print(f"\n{title}, device {device}, torch {torch.__version__}; peak = {kind}\n")
    print("| tricks | before step (MiB) | peak (MiB) | step adds (MiB) | peak before backward (MiB) "
          "| saved for backward (MiB) | held at backward (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        saved = sum(x["saved"] for x in r["rows"]) / MIB
        held = sum(x["held"] for x in r["rows"]) / MIB
        forward = "—" if r["forward_peak"] is None else f"{r['forward_peak'] / MIB:.0f}"
        print(f"| {'+'.join(r['tricks']) or 'none'} | {r['before'] / MIB:.0f} | {r['peak'] / MIB:.0f} | "
              f"{(r['peak'] - r['before']) / MIB:.0f} | {forward} | {saved:.0f} | {held:.0f} |")
    for r in results:
        if not r["rows"]:
            continue
        print(f"\nsaved tensors, tricks {'+'.join(r['tricks']) or 'none'}:\n")
        print("| phase | module | saved (MiB) | held at backward (MiB) |")
        print("|---|---|---:|---:|")
        for x in r["rows"]:
            print(f"| {x['phase']} | {x['module']} | {x['saved'] / MIB:.1f} | {x['held'] / MIB:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="demo_vit4, 56², batch 2 (overrides the sizes)")
    ap.add_argument("--backbone", default="dino_vits8")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variants", default="none,crop",
                    help="comma-separated trick sets, each '+'-joined ('none': no trick), e.g. none,crop")
    ap.add_argument("--steps", type=int, default=1, help="training steps per variant (the first is profiled)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--autocast", choices=("on", "off"),
                    help="bf16 autocast on, or off (fp32) (default: the device's precision rule, "
                         "segtricks.runtime.device.precision_of); on CPU it shows the bf16 activations' bytes, slowly")
    ap.add_argument("--no-breakdown", action="store_true", help="peaks only, no saved-tensor hooks")
    ap.add_argument("--one", metavar="TRICKS", help="measure only this variant, in this process")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a child's result, one line
    args = ap.parse_args()
    if args.tiny:
        args.backbone, args.size, args.batch = "demo_vit4", 56, 2
    device = torch.device(args.device)
    precision = precision_of(device) if args.autocast is None else BF16 if args.autocast == "on" else FP32
    title = (f"one training step, {args.backbone} random-init, {args.size}², batch {args.batch}, "
             f"{precision.name}")

    def tricks_of(variant: str) -> List[str]:
        return [] if variant == "none" else variant.split("+")

    if args.one is not None:
        result = measure(tricks_of(args.one), args.backbone, args.size, args.batch, args.steps, device,
                         not args.no_breakdown, precision)
        if args.json:
            print(json.dumps(result))
        else:
            print_tables([result], device, title)
        return
    results = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--one", variant, "--json", "--backbone", args.backbone,
               "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
               "--device", args.device] + (["--no-breakdown"] if args.no_breakdown else []) + (
                   ["--autocast", args.autocast] if args.autocast else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"error: variant {variant!r} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print_tables(results, device, title)


if __name__ == "__main__":
    main()
