"""Keras model_config (Sequential, Functional, nested) → a torch graph of converted layers.

Every spelling from Keras 2.0 to Keras 3 is first normalised into `ModelSpec` (layers, their calls
and the tensors each call reads), so the module that runs it does not care which Keras wrote it.
A nested model is a layer whose spec is itself a `ModelSpec`; a layer called twice (shared
weights) has two calls. Unsupported layers are collected over the whole tree and reported at once,
before any weight is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ConversionError
from .layers import CONVERTERS, ConvertContext, KerasLayer, LayerWeights, SavedWeight, converter, supported_layers  # noqa: F401
from .layout import to_internal, to_keras
from .recurrent import (MASK_MERGING, MASK_PASSING, TimeDistributedLayer, masked_global_average,  # registers its converters
                        wrapped_layer)
from .tf_ops import CALL_NODES, OP_LAYER_CLASSES, call_tensor_refs, unsupported_function  # registers TFOpLambda
from . import attention  # noqa: F401  (registers its converters)

MODEL_CLASSES = {"Sequential", "Model", "Functional"}


@dataclass(frozen=True)
class TensorRef:
    layer: str
    call: int = 0
    index: int = 0


@dataclass
class LayerSpec:
    name: str
    class_name: str
    config: dict
    calls: list[list[TensorRef]] = field(default_factory=list)  # inputs of each call
    model: "ModelSpec | None" = None
    call_kwargs: list[dict] = field(default_factory=list)  # keyword arguments of each call (Keras tensors as TensorRef)


@dataclass
class ModelSpec:
    name: str
    layers: list[LayerSpec]
    inputs: list[TensorRef]
    outputs: list[TensorRef]
    input_shapes: list[tuple | None]
    trainable: bool = True

    def leaves(self):
        for layer in self.layers:
            if layer.model is not None:
                yield from layer.model.leaves()
            else:
                yield layer


# --------------------------------------------------------------------------- parsing

def _layer_name(entry: dict) -> str:
    return entry.get("name") or (entry.get("config") or {}).get("name") or ""


def _ref(value) -> TensorRef:
    return TensorRef(str(value[0]), int(value[1]) if len(value) > 1 else 0,
                     int(value[2]) if len(value) > 2 else 0)


def _refs(value) -> list[TensorRef]:
    """`input_layers`/`output_layers`: one [name, node, index] or a list of them."""
    if not value:
        return []
    if isinstance(value[0], str):
        return [_ref(value)]
    return [_ref(v) for v in value]


def _keras3_tensors(args) -> list[TensorRef]:
    """The `__keras_tensor__` entries of a Keras 3 call's args, in order."""
    found = []
    if isinstance(args, dict):
        if args.get("class_name") == "__keras_tensor__":
            found.append(_ref(args["config"]["keras_history"]))
        else:
            for v in args.values():
                found.extend(_keras3_tensors(v))
    elif isinstance(args, (list, tuple)):
        for v in args:
            found.extend(_keras3_tensors(v))
    return found


def _calls(inbound_nodes) -> list[list[TensorRef]]:
    calls = []
    if inbound_nodes and isinstance(inbound_nodes[0], str):  # one bare [name, node, tensor, kwargs]
        inbound_nodes = [[inbound_nodes]]
    for node in inbound_nodes or []:
        if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}; states fed to an RNN follow x
            kwargs = node.get("kwargs") or {}
            calls.append(_keras3_tensors(node.get("args", [])) + _keras3_tensors(kwargs.get("initial_state") or []))
        elif node and isinstance(node[0], str):  # tf.keras 2.2.4-tf: a call of one tensor, written flat
            calls.append([_ref(node)])
        else:  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
            calls.append([_ref(t) for t in node])
    return calls


def _kwarg_value(value, keras3: bool):
    """A call's keyword argument with its Keras tensors as TensorRefs: Keras 3 `__keras_tensor__`
    entries, Keras 2 `[name, node, tensor]` triples."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return _ref(value["config"]["keras_history"])
        return {k: _kwarg_value(v, keras3) for k, v in value.items()}
    if isinstance(value, list):
        if (not keras3 and len(value) == 3 and isinstance(value[0], str)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:])):
            return _ref(value)
        return [_kwarg_value(v, keras3) for v in value]
    return value


def _call_kwargs(inbound_nodes) -> list[dict]:
    """The keyword arguments of each call, parallel to `_calls` (Keras 2 repeats them on every
    tensor of the first argument; Keras 3 keeps them beside `args`)."""
    found = []
    if inbound_nodes and isinstance(inbound_nodes[0], str):
        inbound_nodes = [[inbound_nodes]]
    for node in inbound_nodes or []:
        if isinstance(node, dict):
            found.append(_kwarg_value(node.get("kwargs") or {}, keras3=True))
            continue
        first = node if node and isinstance(node[0], str) else (node[0] if node else [])
        kwargs = first[3] if isinstance(first, list) and len(first) > 3 and isinstance(first[3], dict) else {}
        found.append(_kwarg_value(kwargs, keras3=False))
    return found


def _map_refs(value, fn):
    if isinstance(value, TensorRef):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_refs(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_refs(v, fn) for v in value]
    return value


def _input_shape(config: dict) -> tuple | None:
    for key in ("batch_input_shape", "batch_shape"):
        if config.get(key):
            return tuple(config[key])
    return None


def parse_model(entry: dict) -> ModelSpec:
    """Normalise a model_config entry ({"class_name", "config"}) into a ModelSpec."""
    class_name = entry.get("class_name")
    config = entry.get("config")
    if class_name == "Sequential":
        return _parse_sequential(config, entry)
    if class_name in ("Model", "Functional"):
        return _parse_functional(config)
    raise ConversionError(f"model class {class_name!r} is not a Sequential or Functional model")


def _layer_spec(entry: dict) -> LayerSpec:
    class_name, config, nodes = entry.get("class_name", ""), entry.get("config") or {}, entry.get("inbound_nodes")
    if class_name in OP_LAYER_CLASSES and nodes:
        # a TensorFlow op's call: tensors in its first argument and its keyword arguments, and constants
        calls = [[_ref(r) for r in refs] for refs in call_tensor_refs(nodes)]
        config = dict(config, **{CALL_NODES: nodes})
    else:
        calls = _calls(nodes)
    spec = LayerSpec(_layer_name(entry), class_name, config, calls, call_kwargs=_call_kwargs(nodes))
    if spec.class_name in MODEL_CLASSES:
        spec.model = parse_model(entry)
    return spec


def _parse_sequential(config, entry) -> ModelSpec:
    if isinstance(config, list):  # Keras ≤ 2.2: the config is the layer list itself
        config = {"name": entry.get("name", "sequential"), "layers": config}
    layers = [_layer_spec(e) for e in config.get("layers", [])]
    shape = None
    if layers and layers[0].class_name == "InputLayer":
        shape = _input_shape(layers[0].config)
    elif layers:
        shape = _input_shape(layers[0].config)
    if shape is None and config.get("build_input_shape"):
        shape = tuple(config["build_input_shape"])
    # A Sequential is a chain: give each layer one call that reads the previous layer.
    previous = TensorRef("__input__")
    for layer in layers:
        layer.calls = [[previous]]
        previous = TensorRef(layer.name)
    return ModelSpec(config.get("name", "sequential"), layers, [TensorRef("__input__")],
                     [previous], [shape], bool(config.get("trainable", True)))


def _skips_first_node(entry: dict) -> bool:
    """Keras 2 numbers the calls of a nested model that starts with an InputLayer from 1: its
    node 0 is the model's own construction, which the outer config leaves out."""
    if entry.get("class_name") not in MODEL_CLASSES:
        return False
    inner = entry.get("config")
    inner_layers = inner if isinstance(inner, list) else (inner or {}).get("layers", [])
    return bool(inner_layers) and inner_layers[0].get("class_name") == "InputLayer"


def _without_mask_ops(layers: list[LayerSpec], outputs: list[TensorRef]) -> list[LayerSpec]:
    """Keras 3 records the ops that compute a mask (`NotEqual`, `Any`, …) as layers whose results
    reach other layers only as their `mask=` argument. The bridge computes masks itself, so such
    op layers, read by no layer's inputs and no model output, are left out."""
    while True:
        read = {r.layer for layer in layers for call in layer.calls for r in call} | {r.layer for r in outputs}
        unread = [layer for layer in layers if layer.name not in read and layer.class_name not in CONVERTERS
                  and layer.model is None]
        if not unread:
            return layers
        layers = [layer for layer in layers if layer not in unread]


def _parse_functional(config) -> ModelSpec:
    entries = config.get("layers", [])
    layers = [_layer_spec(e) for e in entries]
    by_name = {layer.name: layer for layer in layers}
    inputs = _refs(config.get("input_layers"))
    outputs = _refs(config.get("output_layers"))
    keras2 = any(e.get("inbound_nodes") and not isinstance(e["inbound_nodes"][0], dict) for e in entries)
    if keras2:
        shifted = {_layer_name(e) for e in entries if _skips_first_node(e)}

        def fix(ref: TensorRef) -> TensorRef:
            return TensorRef(ref.layer, ref.call - 1, ref.index) if ref.layer in shifted and ref.call > 0 else ref

        for layer in layers:
            layer.calls = [[fix(r) for r in call] for call in layer.calls]
            layer.call_kwargs = [_map_refs(kwargs, fix) for kwargs in layer.call_kwargs]
        outputs = [fix(r) for r in outputs]
    layers = _without_mask_ops(layers, outputs)
    shapes = [_input_shape(by_name[r.layer].config) if r.layer in by_name else None for r in inputs]
    return ModelSpec(config.get("name", "model"), layers, inputs, outputs,
                     shapes, bool(config.get("trainable", True)))


def _unsupported(spec: ModelSpec) -> list[str]:
    unsupported = [f"{leaf.class_name} layer {leaf.name!r}" for leaf in spec.leaves()
                   if leaf.class_name not in CONVERTERS]
    unsupported += [f"{wrapped_layer(leaf.config)[0]} layer wrapped in {leaf.class_name} {leaf.name!r}"
                    for leaf in spec.leaves() if leaf.class_name in ("TimeDistributed", "Bidirectional")
                    and wrapped_layer(leaf.config)[0] not in CONVERTERS
                    and not (leaf.class_name == "TimeDistributed" and wrapped_layer(leaf.config)[0] in MODEL_CLASSES)]
    unsupported += [f"TensorFlow function {unsupported_function(leaf.class_name, leaf.config)!r} "
                    f"({leaf.class_name} {leaf.name!r})" for leaf in spec.leaves()
                    if unsupported_function(leaf.class_name, leaf.config)]
    for leaf in spec.leaves():  # a model wrapped in TimeDistributed: its own layers
        if leaf.class_name == "TimeDistributed" and wrapped_layer(leaf.config)[0] in MODEL_CLASSES:
            unsupported += [f"{u} in TimeDistributed {leaf.name!r}" for u in _unsupported(parse_model(leaf.config["layer"]))]
    return unsupported


def check_supported(spec: ModelSpec, source: str = "") -> None:
    """Raise one ConversionError naming every layer no converter handles (class and name)."""
    unsupported = _unsupported(spec)
    if unsupported:
        where = f"{source}: " if source else ""
        raise ConversionError(f"{where}unsupported Keras layer(s): {', '.join(unsupported)}; "
                              f"supported: {', '.join(sorted(CONVERTERS))}")


# --------------------------------------------------------------------------- weights

def parse_weight_name(name: str) -> tuple[str, str]:
    """'model/conv1/kernel:0' → ('conv1', 'kernel'); the last two path parts, ':N' dropped."""
    parts = name.split(":")[0].split("/")
    return (parts[-2] if len(parts) > 1 else ""), parts[-1]


@dataclass
class WeightPool:
    """The saved weights of one top-level layer group, looked up by leaf layer name."""

    entries: list[tuple[str, str, str, object]]  # (leaf layer, var, h5 path, array)

    def for_leaf(self, leaf: str, whole_group: bool) -> LayerWeights:
        if whole_group:  # a top-level leaf owns its whole group
            picked = self.entries
        else:
            picked = [e for e in self.entries if e[0] == leaf]
            if not picked:  # a layer whose weights live in sublayers of its own (`mha/query/kernel`)
                picked = [e for e in self.entries if e[2].split(":")[0].split("/")[-3:-2] == [leaf]]
        return LayerWeights(leaf, [SavedWeight(path, var, value) for _, var, path, value in picked])


# --------------------------------------------------------------------------- the torch graph

def module_key(name: str) -> str:
    """Keras layer names may hold characters torch module names may not."""
    return name.replace(".", "_") or "_"


def _mask_rule(class_name: str) -> str | None:
    """How a layer treats the mask of its input (Embedding(mask_zero) / Masking): see recurrent.py."""
    if class_name in MASK_PASSING:
        return "pass"
    if class_name in MASK_MERGING:
        return "merge"
    if class_name in ("GlobalAveragePooling1D", "GlobalAvgPool1D"):
        return "average"
    return None


def _merged_mask(args, in_masks):
    """Keras merge layers: a step counts where every input's mask keeps it."""
    if any(a.dim() < 2 or a.shape[:2] != args[0].shape[:2] for a in args):
        raise ConversionError("a masked sequence is merged with a tensor of another shape")
    merged = None
    for m in in_masks:
        if m is not None:
            merged = m if merged is None else merged & m
    return merged


@dataclass(frozen=True)
class _Slot:
    """Where a Keras tensor stood in a call's keyword arguments: index into the call's sources."""

    index: int


def _slotted(kwargs: dict, refs: list[TensorRef]) -> dict:
    """kwargs with each TensorRef appended to `refs` and replaced by its _Slot."""
    def slot(ref):
        refs.append(ref)
        return _Slot(len(refs) - 1)
    return _map_refs(kwargs, slot)


def _unslotted(value, sources: list):
    if isinstance(value, _Slot):
        return sources[value.index]
    if isinstance(value, dict):
        return {k: _unslotted(v, sources) for k, v in value.items()}
    if isinstance(value, list):
        return [_unslotted(v, sources) for v in value]
    return value


def _pick(value, index: int):
    """Output `index` of a call: layers with several outputs (return_state, merge_mode=None,
    nested models) return tuples."""
    if isinstance(value, (tuple, list)):
        return value[index]
    if index:
        raise ConversionError(f"output {index} requested from a layer with one output")
    return value


class KerasGraph(nn.Module):
    """Runs a ModelSpec's calls in dependency order on the bridge's internal layout.

    A value is a call's output (a tuple for layers with several outputs), read by TensorRef.index;
    beside it runs the Keras mask of each value (None, or (batch, steps) booleans).
    """

    def __init__(self, spec: ModelSpec, load_weights, ctx: ConvertContext, frozen: bool = False):
        super().__init__()
        self.spec_name = spec.name
        self.layers = nn.ModuleDict()
        frozen = frozen or not spec.trainable
        for layer in spec.layers:
            key = module_key(layer.name)
            if key in self.layers:
                raise ConversionError(f"duplicate layer name {layer.name!r} in model {spec.name!r}")
            config = dict(layer.config)
            if frozen:
                config["trainable"] = False
            if layer.model is not None:
                self.layers[key] = KerasGraph(layer.model, load_weights.nested(layer.name), ctx,
                                              frozen or not config.get("trainable", True))
            else:
                weights = load_weights.leaf(layer.name)
                try:
                    module = CONVERTERS[layer.class_name](config, weights, ctx)
                except ConversionError as exc:
                    raise ConversionError(f"layer {layer.name!r} ({layer.class_name}): {exc}") from None
                except (KeyError, TypeError, ValueError) as exc:
                    raise ConversionError(f"layer {layer.name!r} ({layer.class_name}): "
                                          f"cannot read its config or weights ({exc!r})") from None
                weights.check_all_taken()
                self.layers[key] = module
        self.mask_rules = {module_key(layer.name): _mask_rule(layer.class_name) for layer in spec.layers}
        self.call_kwargs: dict[tuple[str, int], dict] = {}  # for layers that read them (`takes_call_kwargs`)
        self.inputs = [(module_key(r.layer), r.call) for r in spec.inputs]
        self.outputs = [(module_key(r.layer), r.call, r.index) for r in spec.outputs]
        self.steps = self._schedule(spec)

    def _schedule(self, spec: ModelSpec) -> list[tuple[str, int, list[tuple[str, int, int]]]]:
        """Order every (layer, call) after the calls it reads from."""
        input_refs = {(module_key(r.layer), r.call) for r in spec.inputs}
        pending = []
        for layer in spec.layers:
            key = module_key(layer.name)
            for i, inputs in enumerate(layer.calls):
                if (key, i) in input_refs and layer.class_name == "InputLayer":
                    continue
                if getattr(self.layers[key], "takes_call_kwargs", False):  # keyword tensors follow the call's inputs
                    inputs = list(inputs)
                    kwargs = layer.call_kwargs[i] if i < len(layer.call_kwargs) else {}
                    self.call_kwargs[(key, i)] = (len(inputs), _slotted(kwargs, inputs))
                pending.append((key, i, [(module_key(r.layer), r.call, r.index) for r in inputs]))
        ready, steps = set(input_refs), []
        while pending:
            runnable = [p for p in pending if all(src[:2] in ready for src in p[2])]
            if not runnable:
                missing = sorted({src[:2] for p in pending for src in p[2] if src[:2] not in ready})
                raise ConversionError(f"model {spec.name!r}: cannot resolve layer inputs {missing}")
            for step in runnable:
                steps.append(step)
                ready.add((step[0], step[1]))
            pending = [p for p in pending if p not in runnable]
        needed = {o[:2] for o in self.outputs}
        for key, call, _ in steps:
            needed.discard((key, call))
        if needed - input_refs:
            raise ConversionError(f"model {spec.name!r}: outputs {sorted(needed)} are never computed")
        return steps

    def run(self, inputs: list[torch.Tensor], logits: bool = False) -> list[torch.Tensor]:
        values = dict(zip(self.inputs, inputs))
        masks: dict[tuple[str, int], object] = {}
        outputs = {o[:2] for o in self.outputs}
        for key, call, sources in self.steps:
            layer = self.layers[key]
            args = [_pick(values[s[:2]], s[2]) for s in sources]
            in_masks = [_pick(masks[s[:2]], s[2]) if masks.get(s[:2]) is not None else None for s in sources]
            rule = self.mask_rules.get(key)
            kwargs = {"mask": in_masks[0]} if getattr(layer, "takes_mask", False) and in_masks else {}
            if (key, call) in self.call_kwargs:  # keyword arguments (their tensors and masks) for the layer to bind
                count, template = self.call_kwargs[(key, call)]
                kwargs = {"call_kwargs": _unslotted(template, args), "kwarg_masks": _unslotted(template, in_masks),
                          "masks": in_masks[:count]}
                args, in_masks = args[:count], in_masks[:count]
                masks[(key, call)] = layer.call_output_mask(kwargs["masks"], kwargs["call_kwargs"])
            if rule == "average" and in_masks and in_masks[0] is not None:
                value = masked_global_average(args[0], in_masks[0])
            elif logits and (key, call) in outputs:
                value = layer.forward_logits(*args, **kwargs)
            else:
                value = layer(*args, **kwargs)
            values[(key, call)] = value
            if getattr(layer, "takes_mask", False):
                masks[(key, call)] = layer.output_mask(args, in_masks[0] if in_masks else None)
            elif rule == "pass" and in_masks:
                masks[(key, call)] = in_masks[0]
            elif rule == "merge" and any(m is not None for m in in_masks):
                masks[(key, call)] = _merged_mask(args, in_masks)
        return [_pick(values[o[:2]], o[2]) for o in self.outputs]

    def forward(self, *inputs):
        out = self.run(list(inputs))
        return out[0] if len(out) == 1 else tuple(out)

    def forward_logits(self, *inputs):
        out = self.run(list(inputs), logits=True)
        return out[0] if len(out) == 1 else tuple(out)


class KerasModel(nn.Module):
    """A converted Keras model: takes and returns tensors in the Keras model's own layout.

    `forward_logits` returns the outputs before a final sigmoid/softmax. `keras_weight_paths`
    maps each state_dict key to the HDF5 dataset it came from, for writing back. `input_shapes`
    are Keras' (None for the batch), `regularization_loss()` is the L1/L2 penalty Keras adds to
    the training loss.
    """

    def __init__(self, graph: KerasGraph, input_shapes, source: str = "", training_config=None):
        super().__init__()
        self.graph = graph
        self.input_shapes = input_shapes
        self.source = source
        self.training_config = training_config
        self.keras_weight_paths = {}
        for prefix, module in self.named_modules():
            if isinstance(module, KerasLayer):
                for var, path in module.h5_paths.items():
                    self.keras_weight_paths[f"{prefix}.{var}"] = path

    def _call(self, inputs, logits):
        out = self.graph.run([to_internal(x) for x in inputs], logits=logits)
        out = [to_keras(y) for y in out]
        return out[0] if len(out) == 1 else tuple(out)

    def forward(self, *inputs):
        return self._call(inputs, logits=False)

    def forward_logits(self, *inputs):
        return self._call(inputs, logits=True)

    def regularization_loss(self) -> torch.Tensor:
        total = None
        for module in self.modules():
            if isinstance(module, KerasLayer):
                for var, (l1, l2) in module.regularizers.items():
                    w = getattr(module, var)
                    term = (l1 * w.abs().sum() if l1 else 0) + (l2 * w.square().sum() if l2 else 0)
                    total = term if total is None else total + term
                activity = module.take_activity_loss()  # outputs' penalties of the last train() forward
                if activity is not None:
                    total = activity if total is None else total + activity
        if total is None:
            return torch.zeros(())
        return total


# --------------------------------------------------------------------------- TimeDistributed
# Its converter lives here, not in recurrent.py with the layer it builds: around a nested model it
# runs that model's own KerasGraph on every step, and the graph is this module.

class _WrappedModelWeights:
    """The weights of a model wrapped in TimeDistributed, for the KerasGraph that runs it: all of them
    sit in the wrapper's group (`td/conv/kernel:0`, Keras 3 `td/cnn/conv/kernel`), picked by leaf
    layer name; `mark_taken` records what the graph used in the wrapper's own list."""

    def __init__(self, weights: LayerWeights):
        self.owner, self.handed = weights, []
        self.pool = WeightPool([(parse_weight_name(w.h5_path)[0], w.var, w.h5_path, w.value) for w in weights.saved])

    def leaf(self, name: str) -> LayerWeights:
        picked = self.pool.for_leaf(name, whole_group=False)
        self.handed.append(picked)
        return picked

    def nested(self, name: str) -> "_WrappedModelWeights":
        return self

    def mark_taken(self):
        for w in self.handed:
            for var, path in w.taken.items():
                self.owner.taken[f"{w.layer}/{var}"] = path


def _time_distributed_model(config, weights, ctx):
    """TimeDistributed around a Sequential or functional model: the model's graph on every step."""
    name = config.get("name", "")
    spec = parse_model(config["layer"])
    if len(spec.inputs) != 1 or len(spec.outputs) != 1:
        raise ConversionError(f"layer {name!r}: TimeDistributed around a model with {len(spec.inputs)} inputs "
                              f"and {len(spec.outputs)} outputs (one of each supported)")
    pool = _WrappedModelWeights(weights)
    graph = KerasGraph(spec, pool, ctx, frozen=not config.get("trainable", True))
    pool.mark_taken()
    return TimeDistributedLayer(graph)


@converter("TimeDistributed")
def convert_time_distributed(config, weights, ctx):
    name = config.get("name", "")
    inner_class, inner_config = wrapped_layer(config)
    if inner_class in MODEL_CLASSES:
        return _time_distributed_model(config, weights, ctx)
    if inner_class not in CONVERTERS or inner_class == "InputLayer":
        raise ConversionError(f"layer {name!r}: TimeDistributed around {inner_class or 'nothing'} is not supported")
    if inner_config.get("return_state"):
        raise ConversionError(f"layer {name!r}: TimeDistributed around a layer with return_state is not supported")
    if not config.get("trainable", True):
        inner_config["trainable"] = False
    return TimeDistributedLayer(CONVERTERS[inner_class](inner_config, weights, ctx))
