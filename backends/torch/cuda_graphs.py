"""--cuda-graphs: the fast training step captured once in a CUDA graph, then replayed."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.types import Device


def check_cuda_graphs(options: Options, device: Device) -> None:
    """--cuda-graphs replays the fast float32 step on a GPU; say why anything else is refused."""
    if not options.cuda_graphs:
        return
    if options.dtype == "float64":
        # The fused Adam kernel reads a captured lr_t from a float32 tensor, while the eager
        # step hands it a double: the graph would round lr_t where the eager step does not.
        raise BenchError("--cuda-graphs trains in float32 only; drop --dtype float64")
    if device != "gpu" or options.parity:
        raise BenchError("--cuda-graphs: PyTorch on a GPU, outside parity mode, only")


# A step as GraphedStep captures it: (inputs, labels, dropout masks, lr) -> loss.
FastStep = Callable[
    [torch.Tensor, torch.Tensor, list[torch.Tensor] | None, float | torch.Tensor], torch.Tensor
]


class GraphedStep:
    """CUDA graphs (--cuda-graphs): the fast training step captured once, then replayed.

    A step is ~40 small kernels; on a GPU their launches, not the arithmetic, bound this
    model, and a replay submits them all at once. The first steps run eagerly on a side
    stream (capture needs warmed-up cuBLAS handles and allocator pools); the next is captured
    and every later step replays it, reading its batch and Adam's lr_t from static tensors.
    """

    WARMUP_STEPS = 3

    def __init__(
        self,
        step: FastStep,
        draw: Callable[[], list[torch.Tensor]] | None,  # one step's own dropout masks
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        batch: int,
        generator: torch.Generator | None,  # the dropout RNG, advanced by each replay
        adam: bool,
    ) -> None:
        device = train_x.device
        self._step, self._draw, self._train_x, self._train_y = step, draw, train_x, train_y
        self._batch = torch.zeros(batch, dtype=torch.int64, device=device)
        self._x = torch.empty((batch, train_x.shape[1]), dtype=train_x.dtype, device=device)
        self._y = torch.empty(batch, dtype=train_y.dtype, device=device)
        self._adam = adam
        self.lr_t = torch.zeros((), dtype=torch.float32, device=device)
        self._lr = 0.0  # SGD's rate, the same every step: a constant of the captured graph
        self._generator = generator
        self._warmup_left = self.WARMUP_STEPS
        self._graph: torch.cuda.CUDAGraph | None = None
        self._loss = torch.empty(())
        self._side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]

    def step(self, batch: torch.Tensor, lr: float) -> torch.Tensor:
        """One training step on these sample indices; its loss (on the device)."""
        self._batch.copy_(batch)
        if self._adam:
            self.lr_t.fill_(lr)
        else:
            self._lr = lr
        if self._warmup_left:
            self._warmup_left -= 1
            self._side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side):
                loss = self._run()
            torch.cuda.current_stream().wait_stream(self._side)
            return loss
        if self._graph is None:  # capture records the step without running it
            self._graph = torch.cuda.CUDAGraph()
            if self._generator is not None:
                self._graph.register_generator_state(self._generator)
            with torch.cuda.graph(self._graph):
                self._loss = self._run()
        self._graph.replay()
        return self._loss

    def _run(self) -> torch.Tensor:
        torch.index_select(self._train_x, 0, self._batch, out=self._x)
        torch.index_select(self._train_y, 0, self._batch, out=self._y)
        masks = None if self._draw is None else self._draw()
        # Adam's fused kernel reads lr_t from the static tensor that each replay refills.
        return self._step(self._x, self._y, masks, self.lr_t if self._adam else self._lr)


def graphed(work: Callable[[], None]) -> Callable[[], None]:
    """`work` (kernels on the current GPU, no host syncs) captured once in a CUDA graph: its
    replay, which launches them all at once, as a graphed step's replay does."""
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # capture needs warmed-up cuBLAS handles and pools
        for _ in range(GraphedStep.WARMUP_STEPS):
            work()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        work()
    return graph.replay
