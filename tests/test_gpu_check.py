"""benchmarks/gpu_check.py --tiny: the first-day GPU check runs on the CPU and every check passes."""

import subprocess
import sys

from conftest import REPO


def test_gpu_check_tiny_passes_every_check_on_the_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--work",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for check in ("throughput", "memory", "syncs", "resume", "stage 4"):
        assert f"PASS {check}:" in proc.stdout, proc.stdout
    assert "5/5 checks passed" in proc.stdout
    assert "augmentation 0" in proc.stdout and "b/a = " in proc.stdout
