"""bench/routing.py's BLS router, without a server: its files and its routing against a fake
triton_python_backend_utils (the real run is `python -m bench.routing`)."""
import asyncio
import importlib.util
import json
import sys
import types

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from bench import routing
from gymops.serving.control import template_config
from gymops.settings import PROJECT_ROOT


def _fake_pb_utils(calls: list):
    pb = types.ModuleType("triton_python_backend_utils")

    class TritonError(Exception):
        def __init__(self, message, code=None):
            super().__init__(message)
            self.message = message

    class Answer:
        def __init__(self, version, fail):
            self.version, self.fail = version, fail

        def has_error(self):
            return self.fail

        def error(self):
            return TritonError(f"v{self.version} failed")

        def output_tensors(self):
            return [("model_version", self.version)]

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs, model_version=-1):
            self.model_name, self.version, self.inputs = model_name, model_version, inputs
            self.outputs = requested_output_names

        async def async_exec(self):
            calls.append((self.model_name, self.version, self.inputs[0], tuple(self.outputs)))
            return Answer(self.version, self.inputs[0] == "bad")

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    pb.TritonError, pb.InferenceRequest, pb.InferenceResponse = TritonError, InferenceRequest, InferenceResponse
    pb.get_input_tensor_by_name = lambda request, name: request[name]
    return pb


def test_router_files_and_routing(tmp_path, monkeypatch):
    template = template_config(PROJECT_ROOT / "triton_models", "laundry")
    config = routing.router_config(template, stable=1, candidate=2, fraction=0.1)
    folder = routing.write_router(tmp_path, config)
    parsed = json_format.MessageToDict(text_format.Parse((folder / "config.pbtxt").read_text(),
                                                         model_config_pb2.ModelConfig()),
                                       preserving_proto_field_name=True)
    # the laundry interface, batching and instances; its own name and parameters
    for key in ("input", "output", "max_batch_size", "dynamic_batching", "instance_group", "backend"):
        assert parsed.get(key) == template.get(key), key
    assert parsed["name"] == routing.ROUTER
    assert {k: v["string_value"] for k, v in parsed["parameters"].items()} == {
        "target_model": "laundry", "stable_version": "1", "candidate_version": "2", "canary_fraction": "0.1"}

    calls: list = []
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils(calls))
    spec = importlib.util.spec_from_file_location("_bench_router_under_test", folder / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(parsed)})
    model.rng.seed(0)

    requests = [{"photo": f"p{i}"} for i in range(2000)] + [{"photo": "bad"}]
    responses = asyncio.run(model.execute(requests))
    assert len(responses) == len(requests) == len(calls)
    assert {c[0] for c in calls} == {"laundry"} and {c[3] for c in calls} == {("label", "probabilities", "model_version")}
    assert [c[2] for c in calls] == [r["photo"] for r in requests]  # each request forwarded as it came, in order
    candidate = sum(c[1] == 2 for c in calls)
    assert {c[1] for c in calls} == {1, 2} and 140 < candidate < 260  # ~10 % of 2001
    for call, response in zip(calls[:-1], responses[:-1]):  # the answering version's own answer
        assert response.error is None and response.output_tensors == [("model_version", call[1])]
    assert responses[-1].error is not None and responses[-1].output_tensors == []  # its own failure only
