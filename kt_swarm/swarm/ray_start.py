"""Starting Ray: join a cluster, or start a private instance bound to loopback.

A run without an address must not open servers on the machine's network interfaces, nor phone home: the
private instance keeps every server on 127.0.0.1, without a dashboard or usage statistics.
"""
from __future__ import annotations

import logging
import os

import ray

from kt_swarm.errors import UserError, first_line


def _verbose() -> bool:
    return logging.getLogger("kt_swarm").isEnabledFor(logging.DEBUG)


def start_private_ray(**kwargs) -> None:
    """A Ray instance for this machine alone: every server on 127.0.0.1, no dashboard, no usage stats."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray turns 127.0.0.1 into the machine's network address and binds its servers (GCS, raylet,
    # workers, agents, metrics) to all interfaces, unless told the instance is machine-local: its
    # switch for laptops, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. The servers started below read the
    # variable; this process read it at import (the constant). Both are put back once they run: a
    # later `ray start --address` from this environment must still be able to join a real cluster.
    from ray._private import ray_constants

    old = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    # Ray 2.60 turns token authentication on for a new local instance (a token is made in
    # ~/.ray/auth_token if missing) and warns about it on every start; keep it on, without the warning.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
                 **kwargs)
    finally:
        if old[0] is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = old[0]
        ray_constants.ENABLE_RAY_CLUSTER = old[1]


def init_ray(address: str | None) -> bool:
    """Join `address` (or $RAY_ADDRESS); without one, start a private instance (start_private_ray).
    Returns True when we started it (and so must stop it)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    # Actors' own output (their progress bars too) stays in Ray's session logs unless --verbose: the
    # driver speaks for them, one line per failure.
    if address:
        try:
            ray.init(address=address, configure_logging=False, log_to_driver=_verbose())
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot join the Ray cluster at '{address}': {first_line(e)}") from None
        return False
    start_private_ray(log_to_driver=_verbose())
    return True
