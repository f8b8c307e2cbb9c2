"""The onnxruntime backend: a network exported to ONNX in memory, checked, cached, run.

On two CPU cores onnxruntime runs the shipped EfficientNet-Lite0 three times
faster than eager PyTorch (one 96 px face: 2.1 ms against 6.3 ms,
``benchmarks/predict_latency.py --backends torch,onnx``), because it fuses batch
norm into the convolutions and skips the framework's per-operator dispatch.

Every export is checked against PyTorch on random inputs before it is used:
a graph whose probabilities differ by more than ``TOLERANCE`` is refused.
Writing a run out as a self-describing ``.onnx`` file is :mod:`emotion.export`.

``onnx-int8`` runs the same graph with 8-bit weights and activations
(onnxruntime's static QDQ quantisation): on this CPU 1.8 times faster for the
shipped three-network default and 2.3 times for one EfficientNet-Lite1, with 1
to 2 faces in 100 answered differently. Activations need ranges measured on real
faces; those come from ``python -m emotion quantize`` and are stored beside the
weights as ``int8_calibration.json`` (no images), tied to the exported graph's
tensor names and the weights, so a user's machine quantises the network the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from emotion.data.sources import default_cache_dir
from emotion.fileio import atomic_write
from emotion.models import ModelConfig, ModelError
from emotion.models.registry import logits_of

logger = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
OPSET = 18
TOLERANCE = 1e-4  # largest allowed difference of any class probability between PyTorch and onnxruntime
BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_BACKENDS = ("onnx", "onnx-int8")  # run by onnxruntime, CPU only
INT8_FORMAT = 1
DEFAULT_THREADS = 1  # onnxruntime threads per call (OnnxClassifier explains why one)
METADATA_PREFIX = "emotion."


class ExportError(ModelError):
    """A model could not be exported to ONNX or run with onnxruntime; the message says why."""


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("the onnx backend needs onnxruntime: pip install onnxruntime (or use the torch "
                          "backend)") from None
    return onnxruntime


class _Logits(nn.Module):
    """The run's module with plain float logits out (Hugging Face models return an output object)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return logits_of(self.module(pixel_values)).float()


def export_bytes(module: nn.Module, input_size: int) -> bytes:
    """The ONNX graph of ``module`` (eval mode, CPU) with a dynamic batch axis."""
    if importlib.util.find_spec("onnxscript") is None:  # torch's exporter needs it; say so up front
        raise ExportError("ONNX export needs onnx and onnxscript: pip install onnx onnxscript")
    wrapped = _Logits(module).eval().cpu()
    example = torch.zeros(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    buffer = io.BytesIO()
    # the exporter and its optimiser log every pass at INFO; only their warnings are news to a user
    chatty = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    previous = [log.level for log in chatty]
    for log in chatty:
        log.setLevel(logging.WARNING)
    try:
        # the exporter reports its progress on stdout; keep it out of `predict --json` output
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            program = torch.onnx.export(wrapped, (example,), input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], opset_version=OPSET,
                                        dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
            program.save(buffer)
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many types; all mean the same to a user
        raise ExportError(f"could not export this model to ONNX ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); use the torch backend") from None
    finally:
        for log, level in zip(chatty, previous):
            log.setLevel(level)
    return buffer.getvalue()


class OnnxClassifier:
    """Logits from an ONNX model through onnxruntime, called like the torch module it replaces."""

    def __init__(self, model: Union[bytes, str, Path], threads: Optional[int] = None) -> None:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        # one thread unless asked: for a face or a few (batch 1) a second thread gains nothing (a
        # three-network ensemble on 2 cores: 5.5 ms with one, 5.9 with two; one Lite0: 1.2 against 1.5 ms),
        # and a second thread that cannot get a core stalls every operator: with the browser's video coding
        # on the same 2 cores, the ensemble's live webcam took 600-1100 ms a frame (128 ms with one thread)
        options.intra_op_num_threads = int(threads or DEFAULT_THREADS)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # idle onnxruntime threads otherwise spin for a while after each call and take the cores from
        # the face detector that runs next (measured: MTCNN 24 -> 48 ms per frame on 2 cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            where = "the exported model" if isinstance(model, bytes) else str(model)
            raise ExportError(f"onnxruntime cannot load {where}: {exc}") from None

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        return torch.from_numpy(logits)

    @property
    def metadata(self) -> dict[str, str]:
        """The ``emotion.*`` metadata of the model, prefix removed."""
        props = self.session.get_modelmeta().custom_metadata_map
        return {k[len(METADATA_PREFIX):]: v for k, v in props.items() if k.startswith(METADATA_PREFIX)}


def check_against_torch(module: nn.Module, classifier: OnnxClassifier, input_size: int,
                        batch: int = 4, seed: int = 0) -> float:
    """Largest probability difference between PyTorch and onnxruntime on random images.

    Raises :class:`ExportError` above :data:`TOLERANCE` (the file would give other answers).
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, input_size, input_size, generator=generator)
    with torch.inference_mode():
        expected = logits_of(module.eval()(x)).float().softmax(-1)
    got = classifier(x).softmax(-1)
    diff = float((expected - got).abs().max())
    if not diff <= TOLERANCE:
        raise ExportError(f"the ONNX model's probabilities differ from PyTorch's by {diff:.2e} (more than "
                          f"{TOLERANCE:g}); use the torch backend")
    return diff


def with_metadata(model_bytes: bytes, metadata: dict[str, str]) -> bytes:
    """The model with ``metadata`` as its ``emotion.*`` properties (earlier ones replaced)."""
    import onnx  # only exports with metadata need the onnx package itself

    proto = onnx.load_from_string(model_bytes)
    kept = [p for p in proto.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    return proto.SerializeToString()


def checked_export(module: nn.Module, input_size: int, metadata: Optional[dict[str, str]] = None,
                   threads: Optional[int] = None) -> tuple[bytes, OnnxClassifier, float]:
    """Export ``module`` (with ``metadata``), load it in onnxruntime and check it against PyTorch.

    Returns the model's bytes, the loaded classifier and the largest probability
    difference; raises :class:`ExportError` when the export cannot be trusted.
    """
    model_bytes = export_bytes(module, input_size)
    if metadata:
        model_bytes = with_metadata(model_bytes, metadata)
    classifier = OnnxClassifier(model_bytes, threads)
    return model_bytes, classifier, check_against_torch(module, classifier, input_size)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer: the identity of a trained network's numbers."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def onnx_cache_dir() -> Path:
    """Where exports made for ``--backend onnx`` are kept (one file per network, by weights digest)."""
    return default_cache_dir() / "onnx"


def onnx_classifier(module: nn.Module, model_config: ModelConfig, threads: Optional[int] = None,
                    cache: bool = True) -> OnnxClassifier:
    """An onnxruntime classifier for ``module``, exported once per set of weights and cached.

    Exporting takes seconds (about 20 for a three-network ensemble on 2 cores);
    the cache makes later loads instant.  A
    cached file is re-checked against PyTorch on load, and a damaged one is
    exported again.
    """
    key = hashlib.sha256(f"{weights_digest(module)}|{model_config.input_size}|{torch.__version__}|{OPSET}"
                         .encode()).hexdigest()[:32]
    path = onnx_cache_dir() / f"{model_config.name}-{key}.onnx"
    if cache and path.is_file():
        try:
            classifier = OnnxClassifier(path, threads)
            check_against_torch(module, classifier, model_config.input_size)
            return classifier
        except ExportError as exc:
            logger.warning("re-exporting %s: %s", path, exc)
    model_bytes, classifier, _ = checked_export(module, model_config.input_size, threads=threads)
    if cache:
        try:
            atomic_write(path, lambda tmp: tmp.write_bytes(model_bytes))
        except OSError as exc:  # a read-only cache costs the next start a few seconds, nothing more
            logger.warning("could not cache the ONNX export in %s: %s", path, exc)
    return classifier


# ----------------------------------------------------------------------------- 8-bit (onnx-int8)

def _quantization():
    _onnxruntime()
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ExportError(f"this onnxruntime has no static quantisation ({exc}); pip install -U onnxruntime "
                          "or use --backend onnx") from None
    import inspect

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise ExportError(f"onnxruntime {onnxruntime.__version__} cannot quantise from stored ranges; "
                          "pip install -U onnxruntime (1.32 can) or use --backend onnx")
    return (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
            quant_pre_process)


def _prepared_graph(model_bytes: bytes, folder: Path) -> Path:
    """The float graph as quantisation sees it (shapes inferred, folded), written into ``folder``."""
    *_, quant_pre_process = _quantization()
    raw, prepared = folder / "float.onnx", folder / "prepared.onnx"
    raw.write_bytes(model_bytes)
    chatty = logging.getLogger("onnxruntime.quantization.shape_inference")  # one INFO line per call
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        quant_pre_process(str(raw), str(prepared))
    finally:
        chatty.setLevel(level)
    return prepared


def graph_signature(path: Path) -> str:
    """SHA-256 of the graph's structure (operators and tensor names): stored ranges fit only this graph."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    digest = hashlib.sha256()
    for node in graph.node:
        digest.update("|".join([node.op_type, *node.input, ">", *node.output]).encode())
    return digest.hexdigest()


def _quantize(prepared: Path, out: Path, reader: Any, cache: Path) -> None:
    _, method, fmt, qtype, quantize_static, _ = _quantization()
    chatty = logging.getLogger()  # the quantiser logs every tensor at INFO on the root logger
    level = chatty.level
    chatty.setLevel(max(level, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(prepared), str(out), reader, quant_format=fmt.QDQ, per_channel=True,
                            activation_type=qtype.QUInt8, weight_type=qtype.QInt8,
                            calibrate_method=method.MinMax, calibration_cache_path=str(cache))
    finally:
        chatty.setLevel(level)


def calibrate_int8(module: nn.Module, input_size: int, images: torch.Tensor,
                   progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Activation ranges for 8-bit inference, measured on ``images`` (preprocessed, ``(n, 3, s, s)``).

    Returns what ``int8_calibration.json`` stores: the ranges (min/max of every
    activation over the images), the graph they belong to and how they were made.
    """
    reader_base, *_ = _quantization()
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"calibration images must be a non-empty (n, 3, {input_size}, {input_size}) batch, "
                         f"got shape {tuple(images.shape)}")
    batches = images.detach().cpu().float().numpy()

    class Reader(reader_base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> Optional[dict[str, Any]]:
            if self.index >= len(batches):
                return None
            item = {INPUT_NAME: batches[self.index:self.index + 1]}
            self.index += 1
            if progress is not None:
                progress(self.index, len(batches))
            return item

    with tempfile.TemporaryDirectory(prefix="emotion-int8-") as tmp:
        folder = Path(tmp)
        prepared = _prepared_graph(export_bytes(module, input_size), folder)
        _quantize(prepared, folder / "int8.onnx", Reader(), folder / "ranges.json")
        ranges = json.loads((folder / "ranges.json").read_text())
        signature = graph_signature(prepared)
    import onnxruntime

    return {"format": INT8_FORMAT, "graph": signature, "weights": weights_digest(module),
            "input_size": input_size, "images": len(batches),
            "method": "onnxruntime static QDQ, MinMax ranges, int8 weights per channel, uint8 activations",
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "ranges": ranges}


def int8_classifier(module: nn.Module, model_config: ModelConfig, calibration: dict[str, Any],
                    threads: Optional[int] = None, cache: bool = True) -> OnnxClassifier:
    """An onnxruntime classifier running ``module`` in 8 bits with the stored ``calibration``; cached.

    Raises :class:`ExportError` when the ranges were measured on another graph (another
    exporter or network): quantising with them would silently give wrong answers.
    """
    if not isinstance(calibration, dict) or calibration.get("format") != INT8_FORMAT \
            or not isinstance(calibration.get("ranges"), dict):
        raise ExportError(f"the int8 calibration is not in format {INT8_FORMAT}; make it again with "
                          "python -m emotion quantize")
    weights = weights_digest(module)
    if calibration.get("weights") != weights:
        raise ExportError("the int8 ranges were measured for other weights (the run was trained or changed "
                          "since); measure them again with python -m emotion quantize --run RUN --data DATA, "
                          "or use --backend onnx")
    stored = json.dumps(calibration, sort_keys=True)
    key = hashlib.sha256(f"{weights}|{model_config.input_size}|{torch.__version__}|{OPSET}|"
                         f"{stored}".encode()).hexdigest()[:32]
    path = onnx_cache_dir() / f"{model_config.name}-int8-{key}.onnx"
    if cache and path.is_file():
        try:
            return OnnxClassifier(path, threads)
        except ExportError as exc:
            logger.warning("quantising again: %s", exc)
    with tempfile.TemporaryDirectory(prefix="emotion-int8-") as tmp:
        folder = Path(tmp)
        model_bytes, _, _ = checked_export(module, model_config.input_size, threads=threads)
        prepared = _prepared_graph(model_bytes, folder)
        if graph_signature(prepared) != calibration.get("graph"):
            raise ExportError(
                f"the int8 calibration was measured on another ONNX graph (torch {calibration.get('torch')}, "
                f"this is torch {torch.__version__}); measure it again here with python -m emotion quantize "
                "--run RUN --data DATA, or use --backend onnx")
        ranges = folder / "ranges.json"
        ranges.write_text(json.dumps(calibration["ranges"]))
        _quantize(prepared, folder / "int8.onnx", None, ranges)
        quantized = (folder / "int8.onnx").read_bytes()
    classifier = OnnxClassifier(quantized, threads)
    if cache:
        try:
            atomic_write(path, lambda tmp: tmp.write_bytes(quantized))
        except OSError as exc:
            logger.warning("could not cache the int8 model in %s: %s", path, exc)
    return classifier
