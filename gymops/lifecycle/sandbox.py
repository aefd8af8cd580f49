"""A sandbox for measuring a candidate ONNX model: onnxruntime in a separate child process.

The performance gate never touches the production Triton server. The child is its own process
(and session, so a timeout kills it and anything it started), runs only numpy and onnxruntime,
and reports latency over N sequential single-image requests, throughput over a fixed duration
with a few concurrent callers, and its own peak resident memory (VmHWM).

This file is also the child's program (``python sandbox.py spec.json``): the top level imports
only the standard library so the child starts fast and imports nothing of the project.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SandboxReport:
    ok: bool
    stage: str  # "done", or where it failed: "start", "load", "run", "timeout"
    error: str | None = None
    figures: dict = field(default_factory=dict)
    output_tail: str = ""
    wall_s: float = 0.0


def run_sandbox(onnx_path, inputs, requests: int = 1000, warmup: int = 10, throughput_seconds: float = 2.0,
                concurrency: int = 2, threads: int = 2, timeout_s: float = 300.0) -> SandboxReport:
    """Measure ``onnx_path`` on ``inputs`` (a float32 array (N, ...); request i sends inputs[i % N]
    with a batch dimension of 1) in a child process. Never raises for a bad model: the report says
    at which stage it failed and why."""
    import numpy as np

    inputs = np.ascontiguousarray(inputs)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gymops-sandbox-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "inputs.npy", inputs)
        spec = dict(model=str(Path(onnx_path).resolve()), inputs=str(tmp / "inputs.npy"), result=str(tmp / "result.json"),
                    requests=int(requests), warmup=int(warmup), throughput_seconds=float(throughput_seconds),
                    concurrency=int(concurrency), threads=int(threads))
        (tmp / "spec.json").write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "CUDA_"))}
        env.update(OMP_NUM_THREADS=str(threads), ORT_DISABLE_TELEMETRY="1", PYTHONDONTWRITEBYTECODE="1",
                   CUDA_VISIBLE_DEVICES="")
        try:  # -P: the script's folder (gymops/) must not shadow top-level modules in the child
            proc = subprocess.Popen([sys.executable, "-P", str(Path(__file__).resolve()), str(tmp / "spec.json")],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=tmp, env=env, start_new_session=True)
        except OSError as exc:
            return SandboxReport(False, "start", f"cannot start the sandbox process: {exc}")
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, _ = proc.communicate()
            return SandboxReport(False, "timeout", f"the sandbox did not finish within {timeout_s:g} s",
                                 output_tail=_tail(out), wall_s=time.monotonic() - started)
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        wall = time.monotonic() - started
        result_path = tmp / "result.json"
        if not result_path.exists():
            return SandboxReport(False, "start", f"the sandbox exited with status {proc.returncode} "
                                 "without a result", output_tail=_tail(out), wall_s=wall)
        result = json.loads(result_path.read_text())
        return SandboxReport(result["ok"], result["stage"], result.get("error"), result.get("figures", {}),
                             _tail(out), wall)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the child and whatever it started
    except (ProcessLookupError, PermissionError):
        pass


def _tail(out: bytes | None, n: int = 2000) -> str:
    return (out or b"").decode("utf-8", errors="replace")[-n:]


# -- the child ----------------------------------------------------------------------------------
def _status_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    result_path = Path(spec["result"])

    def finish(ok: bool, stage: str, error: str | None = None, figures: dict | None = None) -> int:
        result_path.write_text(json.dumps({"ok": ok, "stage": stage, "error": error, "figures": figures or {}}))
        return 0 if ok else 1

    import threading

    import numpy as np
    import onnxruntime as ort

    inputs = np.load(spec["inputs"])
    baseline = (_status_kb("VmRSS") or 0) / 1024
    t0 = time.perf_counter()
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
    except Exception as exc:  # noqa: BLE001 - reported to the parent, whatever it is
        return finish(False, "load", f"the model cannot be loaded: {type(exc).__name__}: {exc}")
    load_ms = (time.perf_counter() - t0) * 1000
    n = len(inputs)
    feeds = [{name: inputs[i:i + 1]} for i in range(n)]
    try:
        first = session.run(None, feeds[0])
        out = np.asarray(first[0])
        if not np.all(np.isfinite(out)):
            return finish(False, "run", f"the model's output is not finite for input 0: {out.ravel()[:8].tolist()}")
        for i in range(max(0, spec["warmup"] - 1)):
            session.run(None, feeds[(i + 1) % n])
        latencies = np.empty(spec["requests"], dtype=np.float64)
        for i in range(spec["requests"]):
            t = time.perf_counter()
            session.run(None, feeds[i % n])
            latencies[i] = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001
        return finish(False, "run", f"inference failed: {type(exc).__name__}: {exc}")

    counts = [0] * spec["concurrency"]
    errors: list[str] = []
    barrier = threading.Barrier(spec["concurrency"] + 1)
    stop = threading.Event()

    def caller(k: int) -> None:
        barrier.wait()
        i = k
        try:
            while not stop.is_set():
                session.run(None, feeds[i % n])
                counts[k] += 1
                i += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{type(exc).__name__}: {exc}")

    callers = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(spec["concurrency"])]
    for t in callers:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    time.sleep(spec["throughput_seconds"])
    stop.set()
    for t in callers:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        return finish(False, "run", f"inference failed under concurrency: {errors[0]}")
    ms = latencies * 1000
    peak = _peak_mb()
    return finish(True, "done", figures={
        "requests": int(spec["requests"]),
        "mean_latency_ms": round(float(ms.mean()), 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "throughput_rps": round(sum(counts) / elapsed, 1),
        "throughput_concurrency": int(spec["concurrency"]),
        "throughput_seconds": round(elapsed, 2),
        "peak_memory_mb": round(peak, 1),
        "model_memory_mb": round(peak - baseline, 1),
        "load_ms": round(load_ms, 1),
        "threads": int(spec["threads"]),
        "output_shape": list(out.shape),
    })


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
