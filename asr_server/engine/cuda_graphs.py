"""CUDA graphs of the decoder pass, one per bucket of rows, replayed on the static cache (CUDA only).

An eager pass of large-v3 launches about 1,300 kernels, and at batch 1 the GPU
waits on Python between them. A graph captures the pass's kernels once and
replays them with one launch. It needs every shape and address fixed: the
cache is static (kv_cache.py), the feed is padded to the bucket's rows, the
padded rows write only into the cache's scratch slot, and attention reads
every slot to the whole context, masked (``forward.static_pass``). Each
bucket's inputs are one int64 tensor in the layout of pass_plan's feed;
a pass copies its plan's feed there (one copy on the device) and replays.

Buckets are powers of two up to the most rows the loop can run at once; a
pass is padded to the smallest that holds it. Each graph is checked against
the eager pass on the same inputs when it is captured: if the two disagree,
or capture fails, graphs are turned off and the loop runs eagerly, with a
warning in the log (``ASR_CUDA_GRAPHS=0`` turns them off from the start).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from asr_server.engine import forward
from asr_server.engine.kv_cache import Caches
from asr_server.engine.pass_plan import Plan, feed_of, feed_size

log = logging.getLogger(__name__)


def buckets(most_rows: int) -> tuple[int, ...]:
    """Powers of two below ``most_rows``, and ``most_rows`` itself."""
    sizes, size = [], 1
    while size < most_rows:
        sizes.append(size)
        size *= 2
    return (*sizes, most_rows)


@dataclass(frozen=True)
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: Tensor  # the feed's storage for this bucket (pass_plan.feed_of)
    logits: Tensor  # (bucket, vocabulary): what a replay writes


class GraphedPasses:
    """The captured passes of one static cache; only the worker thread uses it."""

    def __init__(self, caches: Caches) -> None:
        if caches.device.type != "cuda" or not caches.batched or caches.scratch_slot is None:
            raise ValueError("CUDA graphs need a CUDA cache with batched attention and a scratch slot")
        self.caches = caches
        self.buckets = buckets(caches.slots * caches.rows)
        self.graphs: dict[int, _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle()  # one pool: the graphs never run at once
        self.enabled = True

    def bucket(self, rows: int) -> int | None:
        """The rows a pass of ``rows`` rows is padded to, or None: run it eagerly."""
        if not self.enabled:
            return None
        return next((size for size in self.buckets if size >= rows), None)

    def capture_all(self) -> None:
        """Capture every bucket now (at warm-up), so no request waits for a capture."""
        with torch.inference_mode():  # as the loop runs: no autograd bookkeeping in the graphs
            for size in self.buckets:
                if not self.enabled:
                    return
                self._graph(size)

    def run(self, plan: Plan) -> Tensor:
        """The pass of a plan padded to a bucket: its rows' logits, a view into the graph's output
        (valid until the next replay). Eager, on the same padded feed, if the capture failed."""
        graph = self._graph(plan.feed.rows)
        if graph is None:
            logits = forward.static_pass(self.caches, plan.feed)
        else:
            graph.inputs.copy_(plan.static, non_blocking=True)
            graph.graph.replay()
            logits = graph.logits
        forward.passed(self.caches, plan)
        return logits[: plan.rows]

    def _graph(self, size: int) -> _Graph | None:
        if size not in self.graphs and self.enabled:
            captured = self._capture(size)
            if captured is None:
                return None
            self.graphs[size] = captured
        return self.graphs.get(size)

    def _capture(self, size: int) -> _Graph | None:
        caches = self.caches
        inputs = torch.zeros(feed_size(size, caches.all_slots), dtype=torch.long, device=caches.device)
        feed = feed_of(inputs, size)
        spare = torch.arange(size, device=caches.device)
        feed.tokens.copy_(spare % 1000)  # real tokens, each row its own place in the scratch slot
        feed.slot_of_row.fill_(caches.scratch_slot or 0)
        feed.row_in_slot.copy_(spare % caches.rows)
        feed.position.copy_(spare % caches.n_ctx)
        feed.slot_ends.fill_(1)
        feed.slot_ends[caches.scratch_slot or 0] = caches.n_ctx
        side = torch.cuda.Stream(caches.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(caches.device))
        with torch.cuda.stream(side):  # the kernels' first runs (cuBLAS's workspaces) outside the capture
            for _ in range(2):
                forward.static_pass(caches, feed)
        torch.cuda.current_stream(caches.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                logits = forward.static_pass(caches, feed)
            graph.replay()
            eager = forward.static_pass(caches, feed)
            # padded rows beyond the scratch slot's own share its rows: compare those that do not
            distinct = min(size, caches.rows)
            error = float((logits[:distinct] - eager[:distinct]).abs().max())
            if not error <= 1e-2 * float(eager[:distinct].abs().max()):
                raise RuntimeError(f"the replayed pass differs from the eager one by {error:.3g}")
        except Exception as exc:  # any capture problem: eager passes still serve
            self.enabled = False
            log.warning("CUDA graphs are off (the decoder runs eagerly): capture of the %d-row pass "
                        "failed: %s", size, exc)
            return None
        log.info("CUDA graph of the %d-row decoder pass captured", size)
        return _Graph(graph, inputs, logits)
