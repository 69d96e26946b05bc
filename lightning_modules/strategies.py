"""Training strategies usable from YAML."""

from __future__ import annotations

from datetime import timedelta

from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.constants import default_pg_timeout


class FSDP2Strategy(ModelParallelStrategy):
    """Pure FSDP2: Lightning's ``ModelParallelStrategy`` with every process in one data-parallel (sharding)
    group and no tensor parallelism, whatever the number of nodes and devices (``ModelParallelStrategy``'s
    own ``"auto"`` sizes would put the devices of a node in a tensor-parallel group).

    The policy is sharded in the module's ``configure_model`` (decoder layers, then the root). By default
    checkpoints are written as one full file, readable by later stages and by any other strategy.

    Args:
        save_distributed_checkpoint: write one shard per rank (a folder) instead of one full checkpoint file.
        process_group_backend: ``torch.distributed`` backend (None = ``nccl`` on GPUs, ``gloo`` on CPUs).
        timeout: how long collectives wait for the other ranks before failing.
    """

    def __init__(self, save_distributed_checkpoint: bool = False, process_group_backend: str | None = None,
                 timeout: timedelta | None = default_pg_timeout) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()
