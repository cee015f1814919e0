"""PyTorch backend, one module per reason to change: the backend itself (backend), the libraries
its products go through (products) and the measurement that picks one (matmul_tuner), and the
CUDA-graph replay of its training step (cuda_graphs).

Imports in this package are absolute, so `import torch` is PyTorch, never this package."""

from backends.torch.backend import TorchBackend

__all__ = ["TorchBackend"]
