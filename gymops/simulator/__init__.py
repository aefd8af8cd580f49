"""Simulator of the Helper and Auth services: linen and face photos, and the events that carry them."""
from gymops.simulator.traffic import AiVerdict, TrafficConfig, generate, write_jsonl

__all__ = ["AiVerdict", "TrafficConfig", "generate", "write_jsonl"]
