"""The benchmark scripts keep working (their figures are read by people, not asserted here)."""
import subprocess
import sys

import pytest

from helpers import REPO


pytestmark = pytest.mark.slow  # each test runs a benchmark script end to end (training steps, evaluations)


def test_gpu_benchmark_runs_at_tiny_sizes_and_prints_every_row():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--tiny"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("train step, demo_vit4 64², batch 2, crop + GF: fp32 |", "evaluation: prediction",
                "GF, batch 4 of 64² masks", "BF, one 64² mask", "data loader:", "projected 30-epoch DUTS-TR"):
        assert row in out.stdout, row


def test_evaluation_cache_benchmark_runs_and_prints_every_row():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "evaluation_cache.py"), "--rounds", "1",
                          "--images", "8"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("| no cache", "| masks cached (a GF cell)", "| keys cached (another training)"):
        assert row in out.stdout, row


def test_memory_benchmark_runs_at_tiny_sizes_and_breaks_the_peak_down():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory.py"), "--tiny"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("| none |", "| crop |", "| crop forward | head.proj |", "| main forward | head.fine |"):
        assert row in out.stdout, row



def test_backbones_benchmark_runs_at_tiny_sizes_and_prints_every_backbone():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "backbones.py"), "--tiny", "--rounds", "1",
                          "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for row in ("| dino_vits8 | 56² | 7² | 1 |", "| dinov2_vits14 | 56² | 4² | 1 |", "| dinov2_vits14_reg | 56² |",
                "| dinov3_vits16 | 64² | 4² | 1 |"):
        assert row in out.stdout, row
