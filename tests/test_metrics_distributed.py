"""DepthMetrics all-reduces its state: two gloo processes agree with one process on all data."""
import math
import os
import socket
import sys
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastmde
from fastmde.engine.protocols import PROTOCOLS
from fastmde.reference.depth_metrics import METRIC_NAMES, depth_metrics_reference


def _data():
    g = torch.Generator().manual_seed(7)
    pred = torch.rand(5, 1, 8, 9, generator=g, dtype=torch.float64) * 4 + 0.5
    target = torch.rand(5, 1, 8, 9, generator=g, dtype=torch.float64) * 4 + 0.5
    target[2] = 0.0
    return pred, target


def _worker(rank, world, port, out_path):
    os.environ["FASTMDE_QUIET"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        pred, target = _data()
        shard = slice(0, 2) if rank == 0 else slice(2, 5)  # uneven shards
        results = {}
        for aggregate in ("per_image", "pooled"):
            acc = fastmde.nn.DepthMetrics(aggregate=aggregate)
            acc.update(pred[shard], target[shard])
            results[aggregate] = {k: v.item() for k, v in acc.compute().items()}
        acc = PROTOCOLS["hu"].metrics()           # a per-metric aggregation (sqrt of mean MSE)
        acc.update(pred[shard], target[shard], mask=target[shard] > 0)
        results["hu"] = {k: v.item() for k, v in acc.compute().items()}
        # nothing scored on any rank (millimetres with max_depth=10): NaN and count 0 everywhere
        acc = fastmde.nn.DepthMetrics(max_depth=10.0)
        acc.update(pred[shard], target[shard] * 1000.0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results["empty"] = {k: v.item() for k, v in acc.compute().items()}
        results["empty_warned"] = any("millimetres" in str(w.message) for w in caught)
        # nothing scored on rank 0 only: the result is rank 1's
        acc = fastmde.nn.DepthMetrics()
        acc.update(pred[shard], torch.zeros_like(target[shard]) if rank == 0 else target[shard])
        results["rank0_empty"] = {k: v.item() for k, v in acc.compute().items()}
        torch.save(results, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def _worker_exiting_at_once(rank, world, port, out_path):
    """``_worker``, then leave without the interpreter's teardown: torch 2.13 sometimes aborts a
    gloo rank there ("terminate called without an active exception"), after the results are
    written and the group destroyed (about 1 run in 12 on a 2-core VM), which is not what this
    test is about. An exception still fails the run: it propagates before the exit."""
    _worker(rank, world, port, out_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_reduce_to_the_single_process_result(tmp_path):
    out = str(tmp_path / "metrics")
    mp.spawn(_worker_exiting_at_once, args=(2, _free_port(), out), nprocs=2, join=True)
    pred, target = _data()
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}")
        for aggregate in ("per_image", "pooled"):
            expected = depth_metrics_reference(pred[:, 0], target[:, 0], aggregate=aggregate)
            for k, v in expected.items():
                assert abs(got[aggregate][k] - v.item()) < 1e-12, (rank, aggregate, k)
        assert got["per_image"]["count"] == 4.0
        expected = fastmde.depth_metrics(pred, target, mask=target > 0, **PROTOCOLS["hu"].metric_options())
        for k, v in expected.items():
            assert abs(got["hu"][k] - v.item()) < 1e-12, (rank, "hu", k)
        assert got["empty"]["count"] == 0 and all(math.isnan(got["empty"][k]) for k in METRIC_NAMES)
        assert got["empty_warned"]
        expected = depth_metrics_reference(pred[2:5, 0], target[2:5, 0])
        for k, v in expected.items():
            assert abs(got["rank0_empty"][k] - v.item()) < 1e-12, (rank, "rank0_empty", k)
