"""The two libraries PyTorch's products can go through on a CPU, behind one interface: MKL (or
cuBLAS on a GPU) and oneDNN. The fast training step calls them; matmul_tuner picks one.

The step hands its layers' weights augmented with their bias as a last row, and each layer's
input with a column of ones: one product then computes a layer's output with its bias, and
one its weight and bias gradients (or SGD's update of both), with no pass of their own."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bench.core.types import Product


def _linear(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's a @ w.T + bias, on plain (strided) tensors."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(a, w, bias, "none", [], "")
    return out


class MklProducts:
    """PyTorch's own products: MKL's sgemm on x86 CPUs, cuBLAS on GPUs. SGD's update folds
    into the weight-gradient product (W.addmm_(h.T, d, alpha=-lr)) and the input gradient's
    scale into its alpha: no pass of their own."""

    name = "mkl"

    def layer(self, h: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # `out` may be a strided view (a layer's columns beside its ones): sgemm writes it
        # in place through its leading dimension.
        return torch.mm(h, w, out=out)

    def input_grad(
        self, delta: torch.Tensor, w: torch.Tensor, alpha: float, out: torch.Tensor
    ) -> torch.Tensor:
        # Into `out` itself, beta=0: no allocation, and no copy of a broadcast zero into the
        # output before the sgemm (~10 us a product here).
        return torch.addmm(out, delta, w.T, beta=0.0, alpha=alpha, out=out)

    def weight_grad(self, out: torch.Tensor, h: torch.Tensor, delta: torch.Tensor) -> None:
        torch.addmm(out, h.T, delta, beta=0.0, out=out)

    def sgd(self, w: torch.Tensor, h: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        w.addmm_(h.T, delta, alpha=-lr)

    def square(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.mm(a, b)

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.mm(a, b)


class OneDnnProducts:
    """The same products through the oneDNN that PyTorch bundles (TensorFlow's CPU library).
    MKL takes slower code paths on non-Intel CPUs, while oneDNN picks its kernels by the
    instruction set: on a 2-core AVX-512 AMD EPYC, a 100x784 by 784x256 product ran at 404
    GFLOP/s here against MKL's 191. Its linear has no alpha or output argument: the input
    gradient is scaled, and a layer's output copied into place, by a pass of their own."""

    name = "onednn"

    def layer(self, h: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.copy_(_linear(h, w.T, None))

    def input_grad(
        self, delta: torch.Tensor, w: torch.Tensor, alpha: float, out: torch.Tensor
    ) -> torch.Tensor:
        product = _linear(delta, w, None)  # a tensor of its own: `out` is not needed
        return product if alpha == 1.0 else product.mul_(alpha)

    def weight_grad(self, out: torch.Tensor, h: torch.Tensor, delta: torch.Tensor) -> None:
        out.copy_(_linear(h.T, delta.T, None))

    def sgd(self, w: torch.Tensor, h: torch.Tensor, delta: torch.Tensor, lr: float) -> None:
        w.sub_(_linear(h.T, delta.T, None), alpha=lr)

    def square(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _linear(a, b, None)  # a @ b.T: the same FLOPs as a @ b

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _linear(a, b.T, None)  # as the step's layers pass their weights


Products = MklProducts | OneDnnProducts


def stored_operands(
    products: Sequence[Product], device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random operands of each product, stored as the step stores them: an operand the step
    reads transposed is a transposed view, as there."""
    generator = torch.Generator(device=device).manual_seed(1)
    pairs = []
    for product in products:
        a, b = (torch.rand(shape, device=device, generator=generator) for shape in product.stored)
        pairs.append(
            (a.T if product.transposed == "a" else a, b.T if product.transposed == "b" else b)
        )
    return pairs


def products_round(
    mm: Products, pairs: list[tuple[torch.Tensor, torch.Tensor]]
) -> Callable[[], None]:
    """One step's products through one library, one after another."""

    def one_round() -> None:
        for a, b in pairs:
            mm.product(a, b)

    return one_round
