"""A Ray actor that owns an object in the store, for tests of what is lost with an owner (importable by Ray
workers through PYTHONPATH)."""
import ray
import torch


class Holder:
    def hold(self) -> list:
        return [ray.put(torch.zeros(100_000))]  # owned by this actor: lost with it
