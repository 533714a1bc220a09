"""What a model sees in a clip: its embedding, and its Monte Carlo dropout passes.

The embedding is the input of the model's output layer, i.e. the activations of the last hidden
layer (srkw_cnn: the 256 units after its Dense 256 and ReLU; a registered torch model: whatever
feeds its last `nn.Linear`). The output layer is found by running the model once and noting the last
module with weights of its own that ran, so the same code works for bridged Keras models and
researchers' torch modules without knowing their layout; an ONNX model runs as one module, so there
it is the last graph node that reads a weight (`OnnxModule.weighted_nodes`).

Monte Carlo dropout (Gal & Ghahramani, 2016) keeps the model in eval mode (BatchNorm uses its
moving statistics) and switches only its dropout layers to training, then scores each batch
`passes` times under a seeded torch generator, so the same seed gives the same passes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from scoring.device import pick_device
from scoring.errors import ScoringError
from scoring.tensors import check_input_size, to_batch
from scoring.torch_scoring import probability_of_class_1


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """torch's dropout modules and the bridge's converted Keras Dropout/SpatialDropout/GaussianDropout layers."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) or "Dropout" in type(m).__name__]


def _has_own_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


class ModelProbe:
    """Embeddings, P(class 1) and MC dropout passes of one model on one device."""

    def __init__(self, model: nn.Module, device=None, batch_size: int = 32):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self._head: nn.Module | None = None

    def check_size(self, rows: int, cols: int) -> None:
        check_input_size(self.model, rows, cols)

    def _find_head(self, x: torch.Tensor):
        """The output layer: a torch module, or (OnnxModule, node name) for an ONNX graph."""
        graphs = [m for m in self.model.modules() if hasattr(m, "register_node_input_hook")]
        if graphs:
            nodes = graphs[-1].weighted_nodes()
            if not nodes:
                raise ScoringError("the model has no layer with weights: it has no embedding")
            return graphs[-1], nodes[-1]
        ran: list[nn.Module] = []
        hooks = [m.register_forward_pre_hook(lambda module, args: ran.append(module))
                 for m in self.model.modules() if _has_own_tensors(m)]
        try:
            with torch.inference_mode():
                self.model(x[:1])
        finally:
            for hook in hooks:
                hook.remove()
        if not ran:
            raise ScoringError("the model has no layer with weights: it has no embedding")
        return ran[-1]

    def embed(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 (n, d), P(class 1) float64 (n,)) of uint8 images (n, rows, cols, 3), eval mode."""
        x = to_batch(pixels, self.device)
        if self._head is None:
            self._head = self._find_head(x)
        captured = []
        if isinstance(self._head, tuple):
            graph, node = self._head
            hook = graph.register_node_input_hook(node, lambda args: captured.append(args[0]))
        else:
            hook = self._head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            with torch.inference_mode():
                p = probability_of_class_1(self.model(x))
        finally:
            hook.remove()
        embedding = captured[-1].flatten(1).float().cpu().numpy()
        return embedding, p.double().cpu().numpy()

    def mc_passes(self, pixels: np.ndarray, passes: int, seed: int) -> np.ndarray:
        """P(class 1) of each image in each of `passes` dropout passes, float64 (passes, n).

        ScoringError when the model has no dropout layer (an ONNX export, for one, has none left)."""
        layers = dropout_layers(self.model)
        if not layers:
            raise ScoringError("the model has no dropout layers: Monte Carlo strategies (bald, "
                                "variation_ratio) need them (an ONNX export keeps none; use the .h5 or .pt)")
        x = to_batch(pixels, self.device)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        out = np.empty((passes, len(pixels)))
        try:
            for layer in layers:
                layer.train()
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(seed)
                for t in range(passes):
                    out[t] = probability_of_class_1(self.model(x)).double().cpu().numpy()
        finally:
            self.model.eval()
        return out
