"""A trained network as one tensor in, one tensor out: what MLflow and plain torch can serve.

MLflow's PyTorch flavour (and any serving stack) feeds a model a single float tensor and
expects a single tensor back, while :class:`~mtlsearch.arch.MTLNetwork` takes numeric and
categorical tensors and returns a dict of raw outputs. :class:`ServingModel` bridges the
two, in one of two modes:

* **raw rows** (``ServingModel(network, serving_inputs(preprocessor))``, what ``mtlsearch
  export`` writes): input ``(B, n_raw_numeric + n_categorical)`` float64, the raw numeric
  columns (NaN = missing) then the categorical codes that ``encode.py`` gives. The
  program applies the fitted numeric preprocessing itself (standardisation, imputation,
  missing-value indicators), maps invalid codes to the out-of-vocabulary code 0 (or
  raises naming the feature, for data that came with codes and has no such code), and
  returns regression predictions in the label's original units. Output float64.
* **model inputs** (``ServingModel(network)``, the MLflow flavour): input float32, the
  numeric features *after* preprocessing then the codes; output float32. A code outside a
  feature's range raises naming the feature (features with the same embedding size share
  one table, so an unchecked code would read another feature's rows).

Output columns are each task's prediction (binary: probability of the positive class;
regression: the value; multiclass: one probability per class).

:func:`save_serving` traces the model with ``torch.export`` into a ``.pt2`` file that loads
with ``torch.export.load`` in a process where only torch is installed (no pickle of our
classes, no mtlsearch import) and checks with :func:`check_program_archive` that nothing in
it is stored as a pickle: ``torch.export.load`` unpickles such entries, which can run code.

Hashed categorical columns (``hash_buckets``) need nothing in the program: ``encode.py``
hashes their values (pure-Python SipHash-2-4, the hash training used) into codes ``1..N``,
0 for missing, and ``vocab.json`` records ``{"hash_buckets": N, "hash": NAME}`` for them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlsearch._errors import UserError
from mtlsearch.data import Preprocessor
from mtlsearch.tracking._encode import HASHES, VOCAB_FILE, vocab_document
from mtlsearch.train import ColumnSelector

#: Largest categorical code a float32 column carries exactly.
_MAX_EXACT_CODE = 2**24
ENCODER_FILE = "encode.py"
_ENCODER_SOURCE = Path(__file__).with_name("_encode.py")


# ---- what the program reads ------------------------------------------------------------
@dataclass(frozen=True)
class NumericInput:
    """A raw numeric column. ``scaled``: the program standardises it with ``mean``/``std``,
    imputes a missing value (NaN) with the mean (0 after scaling), refuses infinities and,
    with ``indicator``, adds a 0/1 missing-value column after it; otherwise it passes
    through unchanged (data that needed no preprocessing)."""

    column: str
    mean: float = 0.0
    std: float = 1.0
    indicator: bool = False
    scaled: bool = False


@dataclass(frozen=True)
class CategoricalInput:
    """A categorical column: codes ``0..cardinality-1``; ``vocab[i]`` has code ``i + 1`` and
    0 is the out-of-vocabulary code when there is a vocabulary (``None``: the data came as
    codes, or the column is hashed). A hashed column (``hash_buckets``: N, ``hash``: the
    hash's name, see :mod:`mtlsearch.data._hashing`) has codes ``1 + hash(key) mod N`` and
    0 for a missing value; ``cardinality`` is ``N + 1``."""

    column: str
    cardinality: int
    vocab: tuple[str, ...] | None = None
    hash_buckets: int | None = None
    hash: str | None = None


@dataclass(frozen=True)
class ServingInputs:
    """The raw columns a serving program reads and how it turns them into the network's
    inputs. ``oov``: an invalid code (negative, too large, fractional, NaN) is read as the
    out-of-vocabulary code 0, as ``predict`` reads an unseen category; otherwise it raises.
    ``label_scaling``: ``(task, mean, std)`` of standardised regression labels, undone on
    the way out (``y * std + mean``). ``classes``: multiclass tasks' class labels."""

    numeric: tuple[NumericInput, ...]
    categorical: tuple[CategoricalInput, ...]
    oov: bool
    label_scaling: tuple[tuple[str, float, float], ...] = ()
    classes: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(n.column for n in self.numeric) + tuple(c.column for c in self.categorical)

    @property
    def model_numeric(self) -> int:
        """Numeric columns the network reads (indicators included)."""
        return sum(1 + n.indicator for n in self.numeric)


def _label_scaling(scaling: Any) -> tuple[tuple[str, float, float], ...]:
    """``{task: (mean, std)}`` (or ``{task: {"mean": m, "std": s}}``, the form of
    ``preprocessing.json``) as ``(task, mean, std)`` triples."""
    out = []
    for task, s in dict(scaling or {}).items():
        mean, std = (s["mean"], s["std"]) if isinstance(s, Mapping) else s
        out.append((str(task), float(mean), float(std)))
    return tuple(out)


def _vocab_input(encoder: Any) -> CategoricalInput:
    return CategoricalInput(encoder.column, encoder.cardinality, tuple(encoder.vocab))


def _hashed_input(encoder: Any) -> CategoricalInput:
    if encoder.hash not in HASHES:  # encode.py could not compute it
        raise UserError(
            f"column {encoder.column!r} is hashed with {encoder.hash!r}; the serving encoder knows "
            f"{sorted(HASHES)}"
        )
    return CategoricalInput(
        encoder.column, encoder.cardinality, hash_buckets=encoder.buckets, hash=encoder.hash
    )


#: A fitted categorical encoder's ``kind`` (none: a vocabulary) -> its serving input.
CATEGORICAL_INPUTS: dict[str, Callable[[Any], CategoricalInput]] = {
    "vocab": _vocab_input,
    "hash": _hashed_input,
}


def _from_fitted(pre: Preprocessor) -> ServingInputs:
    return ServingInputs(
        numeric=tuple(NumericInput(s.column, s.mean, s.std, s.indicator, scaled=True) for s in pre.numeric),
        categorical=tuple(CATEGORICAL_INPUTS[getattr(e, "kind", "vocab")](e) for e in pre.categorical),
        oov=True,
        classes=tuple((t.task.name, tuple(t.classes)) for t in pre.tasks if t.classes),
    )


def _from_columns(selector: ColumnSelector) -> ServingInputs:
    return ServingInputs(
        numeric=tuple(NumericInput(n) for n in selector.numeric),
        categorical=tuple(CategoricalInput(n, c) for n, c in selector.categorical),
        oov=False,
    )


#: How each kind of saved preprocessing becomes a serving program's input stage.
SERVING_INPUTS: dict[type, Callable[[Any], ServingInputs]] = {
    Preprocessor: _from_fitted,
    ColumnSelector: _from_columns,
}


def serving_inputs(preprocessor: Any, label_scaling: Mapping[str, Any] | None = None) -> ServingInputs:
    """The input stage for a checkpoint's preprocessing (see :data:`SERVING_INPUTS`).

    ``label_scaling``: ``{task: (mean, std)}`` of the regression tasks the model learned on
    standardised labels (``Checkpoint.label_scaling``, the authority: what training used);
    ``None`` falls back to the preprocessing's own ``label_scaling``, if it has one.
    """
    for kind in type(preprocessor).__mro__:
        if kind in SERVING_INPUTS:
            inputs = SERVING_INPUTS[kind](preprocessor)
            break
    else:
        raise TypeError(f"no serving input stage for preprocessing of type {type(preprocessor).__name__}")
    if label_scaling is None:
        label_scaling = getattr(preprocessor, "label_scaling", None)
    return replace(inputs, label_scaling=_label_scaling(label_scaling))


# ---- the program -------------------------------------------------------------------------
class ServingModel(nn.Module):
    """``x (B, n_inputs) -> predictions (B, n_outputs)``.

    Without ``inputs``: float32 in (preprocessed numeric features, then codes), float32 out;
    ``label_scaling`` (``{task: (mean, std)}``, e.g. ``TrainResult.label_scaling``) maps
    standardised regression outputs back to label units. With ``inputs``: float64 raw
    columns in (``inputs.columns``), float64 out, regression in the label's units (from
    ``inputs.label_scaling``). Invalid inputs raise ``RuntimeError`` naming the feature (or,
    with ``inputs.oov``, codes are read as 0).
    """

    def __init__(
        self,
        network: nn.Module,
        inputs: ServingInputs | None = None,
        *,
        label_scaling: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        config = network.config  # an MTLNetwork
        self.network = network
        self.inputs = inputs
        self.kinds = tuple(t.kind for t in config.tasks)
        self.task_names = tuple(t.name for t in config.tasks)
        features = config.inputs.categorical
        if inputs is None:
            self.n_numeric = config.inputs.n_numeric
        else:
            self.n_numeric = len(inputs.numeric)
            if inputs.model_numeric != config.inputs.n_numeric or len(inputs.categorical) != len(features):
                raise ValueError(
                    f"the preprocessing gives {inputs.model_numeric} numeric / {len(inputs.categorical)} "
                    f"categorical columns, the network reads {config.inputs.n_numeric} / {len(features)}"
                )
        self.dtype = torch.float32 if inputs is None else torch.float64
        for feature in features:
            if inputs is None and feature.cardinality > _MAX_EXACT_CODE:
                raise ValueError(
                    f"categorical feature {feature.name!r} has {feature.cardinality} codes; "
                    "float32 serving input carries codes below 2**24 exactly"
                )
        self.cat_names = tuple(f.name for f in features)
        self.oov = inputs is not None and inputs.oov
        self.register_buffer(
            "cardinality", torch.tensor([f.cardinality for f in features], dtype=self.dtype), persistent=False
        )
        numeric = inputs.numeric if inputs is not None else ()
        self.num_names = tuple(n.column for n in numeric)
        self.scaled = tuple(n.scaled for n in numeric)
        self.register_buffer("mean", torch.tensor([n.mean for n in numeric], dtype=torch.float64))
        self.register_buffer("std", torch.tensor([n.std for n in numeric], dtype=torch.float64))
        self.register_buffer("impute", torch.tensor([n.scaled for n in numeric], dtype=torch.bool))
        indicators = [j for j, n in enumerate(numeric) if n.indicator]
        self.register_buffer("indicators", torch.tensor(indicators, dtype=torch.long))
        # the network's numeric order: each column, then its indicator when it has one
        order, k = [], len(numeric)
        for j, n in enumerate(numeric):
            order.append(j)
            if n.indicator:
                order.append(k)
                k += 1
        self.register_buffer("order", torch.tensor(order, dtype=torch.long))
        triples = inputs.label_scaling if inputs is not None else _label_scaling(label_scaling)
        scaling = {t: (m, s) for t, m, s in triples}
        unknown = set(scaling) - {t.name for t in config.tasks if t.kind == "regression"}
        if unknown:
            raise ValueError(f"label scaling for tasks that are not regression tasks: {sorted(unknown)}")
        self.label_scaling = scaling

    def _numeric(self, raw: Tensor) -> Tensor:
        if self.inputs is None:
            return raw
        missing = torch.isnan(raw)
        for j, name in enumerate(self.num_names):
            if self.scaled[j]:
                torch._assert_async(
                    ~torch.isinf(raw[:, j]).any(),
                    f"numeric input {name!r}: infinite value (use NaN for missing)",
                )
        scaled = torch.where(missing & self.impute, torch.zeros_like(raw), (raw - self.mean) / self.std)
        parts = torch.cat([scaled, missing.index_select(1, self.indicators).to(raw.dtype)], dim=1)
        return parts.index_select(1, self.order).float()

    def _codes(self, codes: Tensor) -> Tensor:
        valid = (codes >= 0) & (codes < self.cardinality) & (codes == torch.floor(codes))
        if self.oov:
            return torch.where(valid, codes, torch.zeros_like(codes)).long()
        for j, name in enumerate(self.cat_names):
            torch._assert_async(
                valid[:, j].all(), f"categorical input {name!r}: codes must be integers in [0, cardinality)"
            )
        return codes.long()

    def forward(self, x: Tensor) -> Tensor:
        numeric = self._numeric(x[:, : self.n_numeric])
        categorical = self._codes(x[:, self.n_numeric :])
        outputs = self.network(numeric, categorical)
        columns = []
        for name, kind in zip(self.task_names, self.kinds, strict=True):
            y = outputs[name]
            if kind == "binary":
                columns.append(torch.sigmoid(y).unsqueeze(1))
            elif kind == "multiclass":
                columns.append(torch.softmax(y, dim=-1))
            else:
                y = y.to(self.dtype)
                if name in self.label_scaling:
                    mean, std = self.label_scaling[name]
                    y = y * std + mean
                columns.append(y.unsqueeze(1))
        return torch.cat([c.to(self.dtype) for c in columns], dim=1)


# ---- schema ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServingSchema:
    """Column names of a serving model's input and output tensors, in order, and (for a
    raw-rows program) the contract of each column."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    n_numeric: int
    dtype: str = "float32"
    input_columns: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    output_columns: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "inputs": list(self.inputs), "outputs": list(self.outputs)}
        d["input_columns"] = list(self.input_columns)
        d["output_columns"] = list(self.output_columns)
        return d


_OUTPUT_MEANING = {
    "binary": "probability of the positive class, in [0, 1]",
    "regression": "predicted value",
    "multiclass": "probability of one class, in [0, 1]; a task's columns sum to 1",
}


def _input_contract(inputs: ServingInputs) -> tuple[dict[str, Any], ...]:
    cols: list[dict[str, Any]] = []
    for n in inputs.numeric:
        if n.scaled:
            what = (
                "raw number; NaN = missing (imputed with the training mean"
                + (", flagged in a missing-value indicator)" if n.indicator else ")")
                + "; infinite raises"
            )
            cols.append({"name": n.column, "kind": "numeric", "value": what, "mean": n.mean, "std": n.std})
        else:
            cols.append({"name": n.column, "kind": "numeric", "value": "number, used as given"})
    invalid = (
        "an invalid code (negative, >= cardinality, fractional, NaN) is read as 0"
        if inputs.oov
        else "an invalid code (negative, >= cardinality, fractional, NaN) raises naming the column"
    )
    for c in inputs.categorical:
        if c.hash_buckets is not None:
            what = (
                f"code from encode.py: 1 + {c.hash}(category key) mod {c.hash_buckets} (hash_buckets in "
                "vocab.json), 0 missing; " + invalid
            )
        elif c.vocab is not None:
            what = "code from encode.py: 1..K the vocabulary in vocab.json, 0 out of vocabulary; " + invalid
        else:
            what = "integer code in [0, cardinality), as in the training data; " + invalid
        col = {"name": c.column, "kind": "categorical", "value": what, "cardinality": c.cardinality}
        if c.hash_buckets is not None:
            col.update(hash_buckets=c.hash_buckets, hash=c.hash)
        cols.append(col)
    return tuple(cols)


def serving_schema(
    network: nn.Module, numeric_names: Sequence[str] | None = None, inputs: ServingInputs | None = None
) -> ServingSchema:
    """The column names of :class:`ServingModel` for ``network``.

    With ``inputs`` (a raw-rows program) the inputs are the raw columns and the schema says
    what each column holds. Otherwise ``numeric_names`` are the data's numeric feature
    names (after preprocessing); without them the numeric columns are ``numeric_<i>``.
    """
    config = network.config
    outputs: list[str] = []
    meaning: list[dict[str, Any]] = []
    scaled = {t for t, _, _ in inputs.label_scaling} if inputs is not None else set()
    classes = dict(inputs.classes) if inputs is not None else {}
    for t in config.tasks:
        if t.kind == "multiclass":
            names = classes.get(t.name) or tuple(str(k) for k in range(t.out_dim))
            for k in range(t.out_dim):
                outputs.append(f"{t.name}_prob_{k}")
                meaning.append(
                    {"name": outputs[-1], "task": t.name, "class": names[k], "value": _OUTPUT_MEANING[t.kind]}
                )
        else:
            outputs.append(t.name)
            value = _OUTPUT_MEANING[t.kind]
            if t.kind == "regression" and inputs is not None:
                value += " in the label's original units" + (
                    " (training standardised it)" if t.name in scaled else ""
                )
            meaning.append({"name": t.name, "task": t.name, "value": value})
    if inputs is not None:
        return ServingSchema(
            inputs.columns,
            tuple(outputs),
            len(inputs.numeric),
            "float64",
            _input_contract(inputs),
            tuple(meaning),
        )
    n = config.inputs.n_numeric
    names = list(numeric_names) if numeric_names is not None and len(numeric_names) == n else None
    columns = (names or [f"numeric_{i}" for i in range(n)]) + [c.name for c in config.inputs.categorical]
    return ServingSchema(tuple(columns), tuple(outputs), n, "float32", (), tuple(meaning))


def serving_input(numeric: Tensor, categorical: Tensor) -> Tensor:
    """The single float32 input tensor a :class:`ServingModel` without ``inputs`` reads."""
    return torch.cat([numeric.float(), categorical.float()], dim=1)


# ---- export ------------------------------------------------------------------------------
def export_program(model: ServingModel, example: Tensor) -> Any:
    """``torch.export`` the model with a dynamic batch dimension.

    ``example`` must have at least two rows (``torch.export`` fixes a size-1 dimension) and
    the model's input dtype. The program keeps no example inputs (they would be stored as a
    pickle in the ``.pt2`` file).
    """
    if example.shape[0] < 2:
        raise ValueError("the example input needs at least two rows for a dynamic batch size")
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example.to(model.dtype),), dynamic_shapes=({0: batch},))
    program.example_inputs = None
    return program


#: Entries of a ``.pt2`` archive (below its root folder) that hold no pickle: JSON, raw
#: tensor bytes, plain-text markers. Anything else (pickled weights or constants, custom
#: or opaque objects, legacy ``.pt`` state dicts, AOTInductor libraries) is refused.
_PLAIN_ENTRY_PREFIXES = ("data/weights/weight_", "data/constants/tensor_", "models/", "extra/")
_PLAIN_ENTRIES = ("archive_format", "archive_version", ".data/version", "byteorder", ".data/serialization_id")


def check_program_archive(path: str | Path) -> None:
    """Fail (``UserError``, one line naming the entry) unless the ``.pt2`` file at ``path``
    loads without unpickling anything.

    ``torch.export.load`` (torch 2.13) ``torch.load``s, with ``weights_only=False``, every
    weight or constant whose payload config says ``use_pickle``, any custom or opaque
    object constant, and example inputs that the safe loader refuses: all of those can run
    code. This checks the zip's entries and the weight and constant configs.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a .pt2 archive ({exc})") from None
    with archive:
        infos = archive.infolist()
        roots = {i.filename.split("/", 1)[0] for i in infos}
        if len(roots) != 1:
            raise UserError(f"{path}: not a .pt2 archive (entries under {len(roots)} root folders)")
        root = roots.pop() + "/"
        for info in infos:
            name = info.filename[len(root) :]
            if info.is_dir() or name in _PLAIN_ENTRIES or name.startswith(_PLAIN_ENTRY_PREFIXES):
                continue
            if name.startswith("data/sample_inputs/") and name.endswith(".pt") and info.file_size == 0:
                continue
            if name.endswith(("_weights_config.json", "_constants_config.json")):
                _check_payload_config(path, name, archive.read(info.filename))
                continue
            raise UserError(f"{path}: entry {name!r} may be unpickled on load; load only archives you made")


def _check_payload_config(path: Path, name: str, raw: bytes) -> None:
    try:
        config = json.loads(raw)["config"]
        items = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path}: entry {name!r} is not a payload config") from None
    for fqn, meta in items:
        if not isinstance(meta, Mapping) or meta.get("use_pickle") is not False:
            raise UserError(f"{path}: {fqn!r} is stored as a pickle ({name}); load only archives you made")


def save_serving(model: ServingModel, example: Tensor, schema: ServingSchema, out_dir: Path) -> Path:
    """Write ``model.pt2`` (torch.export, checked by :func:`check_program_archive`) and
    ``schema.json`` into ``out_dir`` (created); for a raw-rows program also ``encode.py``
    and ``vocab.json``, the encoder of raw categorical values.

    Load it anywhere torch is installed::

        program = torch.export.load("model.pt2")
        predictions = program.module()(x)  # x: (B, len(schema["inputs"])), schema["dtype"]
    """
    program = export_program(model, example)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".pt2", dir=out_dir)
    os.close(fd)
    try:
        torch.export.save(program, tmp)
        check_program_archive(tmp)
        umask = os.umask(0)
        os.umask(umask)
        Path(tmp).chmod(0o666 & ~umask)  # mkstemp makes it owner-only
        os.replace(tmp, out_dir / "model.pt2")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    doc = {
        **schema.to_dict(),
        "format": "torch.export (.pt2)",
        "load": "torch.export.load('model.pt2').module()(x)",
        "torch": torch.__version__,
    }
    inputs = model.inputs
    if inputs is not None:
        doc["load"] = (
            "x = encode.Encoder.load().encode(rows); "
            "torch.export.load('model.pt2').module()(torch.from_numpy(x))"
        )
        doc["input"] = (
            f"float64 tensor (rows, {len(schema.inputs)}): the columns of 'inputs' in order, the numeric "
            "ones raw (NaN = missing), the categorical ones as codes from encode.py (vocab.json)"
        )
        doc["output"] = f"float64 tensor (rows, {len(schema.outputs)}): the columns of 'outputs' in order"
        vocab = vocab_document(
            [n.column for n in inputs.numeric],
            [(c.column, c.cardinality, c.vocab) for c in inputs.categorical],
            {c.column: (c.hash_buckets, c.hash) for c in inputs.categorical if c.hash_buckets is not None},
        )
        (out_dir / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False))
        shutil.copyfile(_ENCODER_SOURCE, out_dir / ENCODER_FILE)
    (out_dir / "schema.json").write_text(json.dumps(doc, indent=2))
    return out_dir / "model.pt2"
