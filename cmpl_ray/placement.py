"""Where a run's small actors live on a cluster of several nodes.

The driver's bookkeeping actors (the epoch clock, the attempt counter, the progress board) hold no CPU, so Ray
may put them on any node, a trainer node included; when that node is lost they die with it and the run cannot
resume, although its workers can. They are pinned to the driver's own node: if that node is lost, the driver is
lost with it anyway (tests/e2e/test_multinode_e2e.py loses a trainer node mid-run)."""

from __future__ import annotations

from typing import Any


def node_label() -> str:
    """This process's Ray node as ``<ip>/<first 8 hex of the node id>`` (several raylets may share an IP)."""
    import ray

    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"


def start_on_driver_node(actor_body: type, *args: Any) -> Any:
    """A 0-CPU actor of ``actor_body`` on the caller's node (the driver's), owned by the caller."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(actor_body).options(scheduling_strategy=here).remote(*args)
