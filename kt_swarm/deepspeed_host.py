"""A participant hosted by a DeepSpeed engine (participants.N.deepspeed): ZeRO stages 0-3, bf16, offload.

Each DeepSpeed participant lives in its own Ray actor with its own torch.distributed process group (gloo on
the CPU, nccl on a GPU; its own free port, so several on one node never collide). kt_swarm owns what the
swarm decides and fills it in: the batch sizes, the optimizer (a torch optimizer from the participant's lr
and weight decay: DeepSpeed then compiles nothing of its own), the learning rate's schedule (set on the
optimizer's groups each step), gradient clipping off unless the config sets it (DeepSpeed would clip at
1.0 with a client optimizer), steps_per_print off. What DeepSpeed decides stays its own: partitioning,
gradient reduction, mixed precision.

The participant's model object is the engine's module: forward passes call it directly (ZeRO-3's hooks
gather partitioned weights on the way). These helpers are all the rest of kt_swarm sees of DeepSpeed.
"""
from __future__ import annotations

import contextlib
import os
import socket

import torch
from torch import nn

from kt_swarm.errors import UserError, first_line


def ds_config(user: dict, batch_size: int, ranks: int = 1) -> dict:
    """The user's DeepSpeed config with what the swarm owns filled in (config.py has refused contradictions)."""
    return {**user, "train_batch_size": batch_size, "train_micro_batch_size_per_gpu": batch_size // ranks,
            "gradient_accumulation_steps": 1, "steps_per_print": 2**31 - 1,
            "gradient_clipping": user.get("gradient_clipping", 0.0)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(device: torch.device, rank: int = 0, world: int = 1, address: str = "127.0.0.1", port: int | None = None) -> None:
    """This process's torch.distributed group, through DeepSpeed (which reads these variables)."""
    import deepspeed

    if torch.distributed.is_initialized():
        return
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR=address,
                      MASTER_PORT=str(port or free_port()))
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)


def wrap(name: str, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict):
    """deepspeed.initialize with a torch optimizer; returns the engine (its .optimizer steps)."""
    import deepspeed

    try:
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    except Exception as e:  # DeepSpeed's own config checks (unknown keys, bad values) and the like
        raise UserError(f"participant '{name}': DeepSpeed refused its config: {first_line(e)}") from None
    return engine


def stage(engine) -> int:
    return engine.zero_optimization_stage()


@contextlib.contextmanager
def gathered(engine, modify: bool = False):
    """The whole weights in place for the duration (ZeRO-3 partitions them; other stages hold them whole)."""
    if stage(engine) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=0 if modify else None):
            yield
    else:
        yield


def weights(engine) -> dict[str, torch.Tensor]:
    with gathered(engine):
        return {k: v.detach().to("cpu", copy=True) for k, v in engine.module.state_dict().items()}


def load_weights(engine, state: dict[str, torch.Tensor]) -> None:
    """Weights into the module, and into ZeRO's own float32 master copy, which the next step would write back."""
    with gathered(engine, modify=True):
        engine.module.load_state_dict(state)
    if stage(engine) > 0:
        engine.optimizer.refresh_fp32_params()


def optimizer_state(engine) -> dict:
    """The optimizer's state as tensors and plain values (a checkpoint loads with weights_only), not yet
    copied: ZeRO's partitions and moments included; what is DeepSpeed's own objects (the loss scaler,
    unused without fp16; the parameter-slice map universal checkpoints use) left out, since the live
    optimizer has them (load_optimizer_state)."""
    return {k: v for k, v in engine.optimizer.state_dict().items() if _plain(v)}


def _plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, torch.Tensor) or type(value) in (bool, int, float, str)  # not IntEnums


def load_optimizer_state(engine, state: dict) -> None:
    if stage(engine) == 0:
        engine.optimizer.load_state_dict(state)
        return
    full = engine.optimizer.state_dict()  # what was left out (DeepSpeed's objects) comes from the live optimizer
    # ZeRO reads its own rank's entry of a list of every rank's states; each rank holds only its own.
    mine = [{**full, **state}] * torch.distributed.get_world_size()
    engine.optimizer.load_state_dict(mine, load_optimizer_states=True)
