""".ci/gpu-check, the one script a session lent a GPU runs: here on the CPU with the tiny shape, its reports
and summary as they would come back from the GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "gpu-check"


def test_the_gpu_check_reports_decode_against_the_devices_memory(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "DEVICE": "cpu", "SHAPE": "tiny", "RUNS": "1", "COMPILE": ""}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this interpreter as python3
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["bf16 on cpu", "int4 on cpu"]
    for mode in ("none", "int4"):
        report = json.loads((tmp_path / f"bench-{mode}.json").read_text())
        assert report["setup"]["device"] == "cpu" and report["machine"]["read_gbps"] > 0
        assert report["results"]["decode_tok_s"]["sc2"] > 0
        assert f"of {report['machine']['read_gbps']} GB/s read" in lines[mode == "int4"]
