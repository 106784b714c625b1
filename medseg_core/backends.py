"""Network runners: one interface over eager PyTorch and ONNX Runtime.

A backend takes the normalised ``float32`` input ``(N, C, H, W)`` (a numpy array; any strides) and returns the
logits ``(N, K, H, W)`` as a ``float32`` numpy array. Pre- and post-processing stay in ``Segmenter``, so every
backend sees exactly the same input and its logits go through exactly the same steps.

    backend = create_backend("onnxruntime", model, onnx_path=folder / "model.onnx")
    logits = backend(x)
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch

from .models import SegModel
from .safety import UnsafeWeightsError

__all__ = [
    "BACKENDS",
    "onnxruntime_version",
    "ONNX_FILENAME",
    "Backend",
    "BackendName",
    "OnnxRuntimeBackend",
    "TorchBackend",
    "available_cores",
    "check_onnx_graph",
    "create_backend",
    "onnxruntime_available",
    "resolve_backend",
]

log = logging.getLogger(__name__)

BackendName = Literal["auto", "torch", "onnxruntime"]
#: The names ``Segmenter(backend=...)`` and ``--backend`` accept.
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime")
#: The file an exported network has inside a weights folder (beside config.json).
ONNX_FILENAME = "model.onnx"
#: Most values one tensor of an exported network may hold for one image, from the shapes inferred from the file
#: before it runs (2**28 float32 values are 1 GiB; a shipped model's largest is well under 1 % of it).
MAX_ONNX_TENSOR = 2**28


@runtime_checkable
class Backend(Protocol):
    """Runs the network: normalised input ``(N, C, H, W)`` float32 -> logits ``(N, K, H, W)`` float32."""

    name: str

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which containers restrict; not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` can be imported (it is an optional engine)."""
    return importlib.util.find_spec("onnxruntime") is not None


class TorchBackend:
    """Eager PyTorch: channels-last, ``inference_mode``, optional bf16 autocast.

    Args:
        model: the network; moved to ``device`` in channels-last layout and set to eval mode.
        device: torch device.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; fast only on CPUs with bf16 units and on GPUs).
    """

    name = "torch"

    def __init__(self, model: SegModel, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.device = torch.device(device)
        self.precision = precision
        # Channels-last is the faster memory layout for convolutions on CPU (oneDNN) and GPU alike.
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        # A (N, C, H, W) view of an (N, H, W, C) buffer is already channels-last: no copy on CPU.
        t = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(self.device)
        t = t.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.model(t)
        return logits.float().contiguous().cpu().numpy()


class OnnxRuntimeBackend:
    """ONNX Runtime on an exported network (``medseg_core.export.export_onnx``).

    Args:
        onnx_path: the ``.onnx`` file (fp32 or int8).
        threads: intra-op threads; all cores available to this process by default.
        providers: execution providers; CUDA first when ``device`` is CUDA and that provider is installed.
        device: ``"cpu"`` or ``"cuda"``.

    The input buffer is reused between calls of the same shape, so a call copies the input once at most.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike, threads: int | None = None,
                 providers: list[str] | None = None, device: str | torch.device = "cpu") -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.path}; export one with python -m medseg_core.export")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting after a run: ONNX Runtime's spinning threads would hold the cores that PyTorch's own pool
        # needs for the pre- and post-processing around the network (on 2 cores the whole path took about twice the
        # network's time).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.threads = options.intra_op_num_threads
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name
        self._buffer: np.ndarray | None = None
        log.info("ONNX Runtime %s on %s (%s, %d threads)", ort.__version__, self.path, providers[0], self.threads)

    def _input_buffer(self, x: np.ndarray) -> np.ndarray:
        """``x`` as a C-contiguous float32 array, in a buffer kept for the next call of the same shape."""
        if x.dtype == np.float32 and x.flags.c_contiguous:
            return x
        if self._buffer is None or self._buffer.shape != x.shape:
            self._buffer = np.empty(x.shape, np.float32)
        np.copyto(self._buffer, x, casting="same_kind")
        return self._buffer

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input: self._input_buffer(np.asarray(x))})[0]


def _dims(value: object) -> list[int | str] | None:
    """A graph value's declared shape: ints where known, the symbol's name (or ``"?"``) where not; None: no shape."""
    tensor = value.type.tensor_type  # type: ignore[attr-defined]
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]


def check_onnx_graph(onnx_path: str | os.PathLike, in_channels: int, num_classes: int, input_size: int,
                     source: str | None = None) -> None:
    """Refuse (:class:`~medseg_core.safety.UnsafeWeightsError`) an exported network whose shapes do not follow from
    its weights' config, before it is handed to a runtime: one input (N, ``in_channels``, ``input_size``,
    ``input_size``), one output (N, ``num_classes``, ``input_size``, ``input_size``) as declared and as inferred
    from the graph for one image (``onnx.shape_inference`` with data propagation), and no tensor inferred to hold
    more than :data:`MAX_ONNX_TENSOR` values. Weights stored outside the file are refused too."""
    import onnx

    name = source or Path(onnx_path).parent.name or "the weights"
    want = [1, num_classes, input_size, input_size]

    def refuse(why: str) -> UnsafeWeightsError:
        return UnsafeWeightsError(f"{name}: {ONNX_FILENAME} {why}")

    try:
        model = onnx.load(os.fspath(onnx_path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - any parse failure is a refused file
        raise refuse(f"is not an ONNX model that can be read ({type(err).__name__})") from err
    graph = model.graph
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise refuse("keeps weights in other files; export it as one file")
    initialised = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialised]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise refuse(f"has {len(inputs)} inputs and {len(graph.output)} outputs; a segmentation network has one of "
                     "each")
    got = _dims(inputs[0])
    if got is None or len(got) != 4 or got[1:] != [in_channels, input_size, input_size] \
            or not (got[0] == 1 or isinstance(got[0], str)):
        raise refuse(f"takes an input of shape {got}; the config says (N, {in_channels}, {input_size}, {input_size})")
    declared = _dims(graph.output[0])
    if declared is not None and (len(declared) != 4 or any(
            isinstance(d, int) and d != w for d, w in zip(declared[1:], want[1:]))):
        raise refuse(f"declares an output of shape {declared}; the config says (N, {num_classes}, {input_size}, "
                     f"{input_size})")
    # Shapes for one image, inferred from the graph itself (what the runtime would allocate), not as declared.
    one = onnx.ModelProto()
    one.CopyFrom(model)
    batch = next(i for i in one.graph.input if i.name == inputs[0].name).type.tensor_type.shape.dim[0]
    batch.ClearField("dim_param")
    batch.dim_value = 1
    one.graph.output[0].type.tensor_type.ClearField("shape")
    del one.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(one, data_prop=True).graph
    except Exception as err:  # noqa: BLE001 - a graph the checker itself refuses
        raise refuse(f"fails shape inference ({type(err).__name__}: {' '.join(str(err).split())[:160]})") from err
    out = _dims(inferred.output[0])
    if out is not None and (len(out) != 4 or any(isinstance(d, int) and d != w for d, w in zip(out, want))):
        raise refuse(f"computes an output of shape {out} for one image; the config says {want}")
    for value in [*inferred.value_info, *inferred.output]:
        dims = _dims(value)
        if dims and all(isinstance(d, int) for d in dims) and int(np.prod(dims, dtype=np.float64)) > MAX_ONNX_TENSOR:
            raise refuse(f"computes a tensor of shape {dims} for one image (more than {MAX_ONNX_TENSOR / 1e6:.0f} M "
                         "values)")


def resolve_backend(backend: str, onnx_path: str | os.PathLike | None) -> str:
    """The backend to build for a request: ``"auto"`` is onnxruntime when a model file exists and the package
    imports, else torch. Unknown names raise ``ValueError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    if onnx_path is not None and Path(onnx_path).is_file() and onnxruntime_available():
        return "onnxruntime"
    return "torch"


def create_backend(backend: str, model: SegModel, device: str | torch.device = "cpu", precision: str = "fp32",
                   onnx_path: str | os.PathLike | None = None, threads: int | None = None) -> Backend:
    """Build the named backend (``auto``, ``torch`` or ``onnxruntime``) for a model.

    ``onnxruntime`` needs ``onnx_path``; it runs in fp32 (or whatever precision the file holds), so ``precision``
    other than fp32 is refused there rather than silently ignored.
    """
    name = resolve_backend(backend, onnx_path)
    if name == "torch":
        return TorchBackend(model, device=device, precision=precision)
    if onnx_path is None:
        raise ValueError("the onnxruntime backend needs an .onnx file (export one with python -m medseg_core.export)")
    if precision != "fp32":
        raise ValueError(f"precision {precision!r} applies to the torch backend only; onnxruntime runs the file as is")
    if not onnxruntime_available():
        raise ImportError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime")
    check_onnx_graph(onnx_path, model.in_channels, model.num_classes, model.input_size)
    return OnnxRuntimeBackend(onnx_path, threads=threads, device=device)


def onnxruntime_version() -> str | None:
    """The installed ONNX Runtime's version, or None when it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__
