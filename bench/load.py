"""Serving figures of a model behind the real Triton server: start time, load and swap times,
latency of one photo over HTTP and gRPC, requests/s with concurrent clients, failures during swaps,
server memory. The functions take a running server's addresses, so a performance gate can reuse them.

    python -m bench.load                 # a tiny conv net: the serving overhead alone
    python -m bench.load --lite0         # EfficientNet-Lite0 + a 2-class head (real size)
    python -m bench.load --onnx a.onnx --onnx b.onnx --out figures.json
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from gymops.serving.client import LaundryClient

MODEL = "laundry"


def sample_photo(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A JPEG with photo-like content (gradients plus noise) of the given size."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)], axis=-1)
    img = np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _summary(latencies: list[float]) -> dict:
    s = sorted(latencies)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1e3  # noqa: E731
    return {"n": len(s), "mean_ms": statistics.fmean(s) * 1e3, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
            "max_ms": s[-1] * 1e3}


def latency(url: str, protocol: str, photo: bytes, n: int = 200, warmup: int = 10) -> dict:
    """One client, one photo per request, back to back: latency of a single request."""
    with LaundryClient(url, protocol, retries=0) as client:
        for _ in range(warmup):
            client.classify(photo)
        times = []
        for _ in range(n):
            started = time.perf_counter()
            client.classify(photo)
            times.append(time.perf_counter() - started)
    return _summary(times)


class Load:
    """Client threads sending one photo per request back to back until stopped; every outcome is
    recorded as (sent, answered, protocol, model_version or 'ERROR ...')."""

    def __init__(self, urls: dict[str, str], photo: bytes, protocols=("http", "grpc", "http", "grpc")):
        self.urls, self.photo, self.protocols = urls, photo, protocols
        self.records: list[tuple[float, float, str, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(p,), daemon=True) for p in protocols]

    def _run(self, protocol: str) -> None:
        with LaundryClient(self.urls[protocol], protocol, retries=0, timeout=30) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    outcome = client.classify(self.photo).model_version
                except Exception as exc:  # noqa: BLE001 -- counted as a failed request
                    outcome = f"ERROR {exc}"
                with self._lock:
                    self.records.append((sent, time.monotonic(), protocol, outcome))

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def summary(self) -> dict:
        records = list(self.records)
        if not records:
            return {"requests": 0}
        span = max(r[1] for r in records) - min(r[0] for r in records)
        failed = [r for r in records if r[3].startswith("ERROR")]
        return {"clients": len(self.protocols), "requests": len(records), "seconds": span,
                "requests_per_s": len(records) / span, "failed": len(failed),
                "failures": [r[3] for r in failed[:5]], **_summary([r[1] - r[0] for r in records])}


def throughput(urls: dict[str, str], photo: bytes, seconds: float = 10.0,
               protocols=("http", "grpc", "http", "grpc")) -> dict:
    with Load(urls, photo, protocols) as load:
        time.sleep(seconds)
    return load.summary()


def export_tiny(path: Path, seed: int = 0) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2), nn.Softmax(dim=1)).eval()
    return _export(net, path)


def export_lite0(path: Path, seed: int = 0) -> Path:
    """EfficientNet-Lite0 (ImageNet weights from the pinned package) with a random 2-class head."""
    import torch
    from torch import nn

    from gymops.ml.backbones import build_backbone

    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = build_backbone("efficientnet_lite0"), nn.Linear(1280, 2)

        def forward(self, x):
            return torch.softmax(self.head(self.backbone.features(x)), dim=1)

    return _export(Net().eval(), path)


def _export(net, path: Path) -> Path:
    import torch

    torch.onnx.export(net, torch.zeros(1, 3, 224, 224), str(path), input_names=["image"],
                      output_names=["probabilities"], opset_version=17, dynamo=False,
                      dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}})
    return path


def run(onnx_files: list[Path], n: int = 200, seconds: float = 10.0, swaps: int = 4,
        photo: bytes | None = None, parameters: dict[str, str] | None = None) -> dict:
    """A throwaway repository and server on free ports; figures for the given ONNX files (the first
    two are swapped under load)."""
    import socket
    import shutil

    from gymops.settings import PROJECT_ROOT, load_settings
    from gymops.serving.control import ModelControl, pinned_config, template_config, write_version
    from gymops.serving.server import TritonServer

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    photo = photo or sample_photo()
    figures: dict = {"photo_bytes": len(photo)}
    with tempfile.TemporaryDirectory(prefix="gymops-serving-bench-") as tmp:
        repo = Path(tmp) / "repo"
        (repo / MODEL).mkdir(parents=True)
        for name in ("config.pbtxt", "model.py"):
            shutil.copyfile(PROJECT_ROOT / "triton_models" / MODEL / name, repo / MODEL / name)
        for v, onnx in enumerate(onnx_files, 1):
            write_version(repo, MODEL, v, onnx, {"version": f"1.{v - 1}.0"})
        ss = load_settings().serving.replace(repository=repo, http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port())
        server = TritonServer.from_settings(ss, home=Path(tmp) / "triton").start()
        figures["start_s"] = server.start_seconds
        figures["rss_idle_mib"] = server.memory()["rss_bytes"] / 2**20
        try:
            with ModelControl.for_server(server) as control:
                config = {v: pinned_config(template_config(repo, MODEL), MODEL, v, parameters)
                          for v in range(1, len(onnx_files) + 1)}
                figures["load_s"] = control.load_version(MODEL, 1, config[1])
                urls = {"http": server.http_url, "grpc": server.grpc_url}
                figures["latency_http"] = latency(server.http_url, "http", photo, n)
                figures["latency_grpc"] = latency(server.grpc_url, "grpc", photo, n)
                figures["throughput_4_clients"] = throughput(urls, photo, seconds)
                figures["throughput_4_grpc_clients"] = throughput(urls, photo, seconds, ("grpc",) * 4)
                mem = server.memory()
                figures["rss_loaded_mib"], figures["pss_loaded_mib"] = mem["rss_bytes"] / 2**20, mem["pss_bytes"] / 2**20
                if len(onnx_files) > 1:
                    results = []
                    with Load(urls, photo) as load:
                        time.sleep(1.0)
                        for i in range(swaps):
                            v = 2 if i % 2 == 0 else 1
                            results.append(control.swap(MODEL, v, config[v]))
                            time.sleep(1.0)
                    figures["swaps_under_load"] = {
                        "swaps": len(results), "load_call_s": [r.load_seconds for r in results],
                        "swap_total_s": [r.total_seconds for r in results], **load.summary()}
                started = time.monotonic()
                control.unload(MODEL)
                figures["unload_s"] = time.monotonic() - started
        finally:
            started = time.monotonic()
            server.stop()
            figures["stop_s"] = time.monotonic() - started
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", action="append", type=Path, help="ONNX files (versions 1, 2, ...)")
    parser.add_argument("--lite0", action="store_true", help="export EfficientNet-Lite0 models to serve")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--swaps", type=int, default=4)
    parser.add_argument("--intra-op-threads", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = args.onnx or [(export_lite0 if args.lite0 else export_tiny)(Path(tmp) / f"m{i}.onnx", seed=i)
                              for i in (1, 2)]
        params = {"intra_op_threads": args.intra_op_threads} if args.intra_op_threads else None
        figures = run(files, args.requests, args.seconds, args.swaps, parameters=params)
    text = json.dumps(figures, indent=2, default=float)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
