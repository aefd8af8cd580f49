"""Serving: NVIDIA Triton (the binary of the nvidia-pytriton wheel) in explicit model-control mode.

- server.TritonServer: start/stop by PID, health, memory of the server and its backend stubs.
- control.ModelControl: load/unload/swap over gRPC with the deployer's token;
  control.write_version: atomic version folders (model.onnx, metadata.json, model.py).
- client.LaundryClient: classify photos over gRPC or HTTP; .ai_verdict plugs into the simulator.
- gymops.settings.ServingSettings: ports, repository, deploy token (GYMOPS_TRITON_*, GYMOPS_DEPLOY_TOKEN).
- stubenv: the numpy 1.x the Triton 2.51 Python-backend stub needs (it corrupts tensors under numpy 2).

The public model name is "laundry"; clients never name a version and read the version that served
them from the model_version output. How canary/shadow routing can sit behind the same name later is
written down in control.py's docstring. No Dagster here: assets/resources wire these in.
"""
