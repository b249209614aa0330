"""`batchserve models add NAME --onnx FILE --labels FILE`: bring your own ONNX image classifier.

The graph is checked (graph_inspect), a serving plan made from it and the flags (add_plan), the
model directory staged inside the repository, the graph run in ONNX Runtime (add_check), and
only then moved into place as `<repo>/NAME/` (config.toml, labels.txt, 1/model.onnx). A failure
at any step leaves the repository as it was.

The staging directory is `<repo>/.NAME.adding-XXXX/model/`: inside the repository, so the final
move is one rename on one file system, and two levels deep, so a server scanning
`<repo>/*/config.toml` meanwhile never sees it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from batchserve.model_repo.add_check import CheckResult, check_images, open_runner, probe
from batchserve.model_repo.add_plan import AddOptions, ModelPlan, plan_model
from batchserve.model_repo.errors import ModelLoadError
from batchserve.model_repo.graph_inspect import (
    GraphFacts,
    ModelAddError,
    fix_input_dims,
    inspect_graph,
    read_graph,
    rename_value,
)
from batchserve.model_repo.labels import format_labels
from batchserve.model_repo.preprocess import Normalisation, PreprocessConfig
from batchserve.model_repo.repository import MODEL_FILENAME, parse_model_config

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
NAME_RULE = "1-64 letters, digits, '_' or '-', starting with a letter or digit"
VERSION = 1
# Protobuf's limit on one serialised message: bigger graphs need their weights in external files.
_MAX_SINGLE_FILE = 2**31 - 1


@dataclass(frozen=True)
class AddRequest:
    name: str
    onnx_path: Path
    labels_path: Path
    repository: Path
    options: AddOptions = field(default_factory=AddOptions)
    description: str | None = None
    force: bool = False
    check: tuple[Path, ...] = ()


@dataclass(frozen=True)
class AddReport:
    directory: Path
    facts: GraphFacts
    plan: ModelPlan
    output_kind: str
    notes: tuple[str, ...]
    checks: list[CheckResult]
    replaced: bool


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ModelAddError("invalid_name", f"invalid model name {name!r}: use {NAME_RULE}")
    return name


def add_model(request: AddRequest) -> AddReport:
    """Check, stage, probe and install one model; raise ModelAddError saying what is wrong."""
    name = check_name(request.name)
    repo = request.repository
    target = repo / name
    if (target.exists() or target.is_symlink()) and not request.force:
        raise ModelAddError("exists", f"model {name!r} already exists ({target}); pass --force to replace it")
    for image in request.check:
        if not image.is_file():
            raise ModelAddError("check_image", f"--check {image}: no such file")
    model = read_graph(request.onnx_path)
    labels = read_label_file(request.labels_path)
    facts = inspect_graph(model)
    plan = plan_model(facts, request.options, len(labels), str(request.labels_path))
    try:
        repo.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}.adding-", dir=repo))
    except OSError as exc:
        raise ModelAddError("repository", f"cannot write to the model repository {repo}: {exc}") from None
    try:
        staged = work / "model"
        (staged / str(VERSION)).mkdir(parents=True)
        _write_graph(request.onnx_path, facts, plan, staged / str(VERSION) / MODEL_FILENAME)
        with open_runner(staged / str(VERSION) / MODEL_FILENAME, plan) as runner:
            found = probe(runner, plan)
            config = config_text(request, plan, found.output_kind)
            (staged / "config.toml").write_text(config, encoding="utf-8")
            (staged / "labels.txt").write_text(format_labels(labels), encoding="utf-8")
            spec = parse_model_config(staged / "config.toml")  # as the server will read it
            checks = check_images(runner, list(request.check), spec.preprocessing, labels, found.output_kind)
        replaced = _install(staged, target, work, request.force)
    except ModelLoadError as exc:  # the written config does not read back: a bug here, said plainly
        raise ModelAddError("config", f"the generated config.toml does not read back: {exc}") from None
    except OSError as exc:
        raise ModelAddError("repository", f"cannot write the model into {repo}: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return AddReport(target, facts, plan, found.output_kind, plan.notes + found.notes + _duplicate_labels(labels),
                     checks, replaced)


def read_label_file(path: Path) -> list[str]:
    """One label per line (class id = line number - 1), or a JSON list of names, or a JSON object
    from class ids to names (Keras's imagenet_class_index.json: id -> [wnid, name])."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first label
    except FileNotFoundError:
        raise ModelAddError("labels_missing", f"--labels {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelAddError("labels_missing", f"--labels {path}: cannot read it as UTF-8 text: {exc}") from None
    labels = _json_labels(path, text) if path.suffix.lower() == ".json" else _line_labels(path, text)
    if not labels:
        raise ModelAddError("labels_empty", f"--labels {path} holds no labels")
    return labels


def _duplicate_labels(labels: list[str]) -> tuple[str, ...]:
    """A note, not a refusal: real label sets repeat names (torchvision's ImageNet list has two
    'crane's and two 'maillot's), and answers stay told apart by their class ids."""
    seen: dict[str, list[int]] = {}
    for class_id, label in enumerate(labels):
        seen.setdefault(label, []).append(class_id)
    repeated = {label: ids for label, ids in seen.items() if len(ids) > 1}
    if not repeated:
        return ()
    shown = "; ".join(f"{label!r} (classes {', '.join(map(str, ids))})" for label, ids in list(repeated.items())[:5])
    more = f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
    return (f"{len(repeated)} label(s) name more than one class: {shown}{more}; answers tell them apart only by "
            "class_id (check the labels file if that is not intended)",)


def _line_labels(path: Path, text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:  # blank lines at the end add no class
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        raise ModelAddError("labels_blank_line", f"--labels {path}: line {blank[0]} is blank (of {len(blank)} blank "
                            "lines); line N names class N-1, so every line needs a label")
    return lines


def _json_labels(path: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelAddError("labels_format", f"--labels {path} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        keys = sorted(data, key=lambda k: int(k) if str(k).isdigit() else -1)
        if keys != [str(i) for i in range(len(data))]:
            raise ModelAddError("labels_format", f"--labels {path}: a JSON object's keys must be the class ids "
                                f"0..{len(data) - 1}")
        data = [data[k] for k in keys]
    if not isinstance(data, list):
        raise ModelAddError("labels_format", f"--labels {path}: expected a JSON list of names or an object of "
                            "class id -> name")
    labels = []
    for i, item in enumerate(data):
        value = item[-1] if isinstance(item, list) and item else item  # [wnid, name] -> name
        if not isinstance(value, str) or not value.strip():
            raise ModelAddError("labels_format", f"--labels {path}: class {i} has no name ({item!r})")
        if "\n" in value or "\r" in value:
            raise ModelAddError("labels_format", f"--labels {path}: class {i}'s name has a line break ({value!r})")
        labels.append(value.strip())
    return labels


def _write_graph(source: Path, facts: GraphFacts, plan: ModelPlan, destination: Path) -> None:
    """The given file byte for byte when it can be served as it is; otherwise a rewritten copy
    (fixed input sizes, a renamed input, external weights taken in)."""
    if not plan.rewrites_graph and not facts.uses_external_data:
        shutil.copyfile(source, destination)
        return
    model = onnx.ModelProto()
    model.CopyFrom(facts.model)
    if facts.uses_external_data:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(source.parent))
        except (OSError, ValueError) as exc:
            raise ModelAddError("onnx_external_data", f"--onnx {source}: its weights live in external files that "
                                f"cannot be read beside it: {exc}") from None
    if plan.fixed_dims:
        fix_input_dims(model, plan.graph_input, plan.fixed_dims)
    if plan.input_name != plan.graph_input:
        rename_value(model.graph, plan.graph_input, plan.input_name)
    if model.ByteSize() > _MAX_SINGLE_FILE:
        raise ModelAddError("onnx_too_large", f"--onnx {source}: over 2 GB with its weights; batchserve serves "
                            "single-file graphs")
    onnx.save_model(model, str(destination))


def _install(staged: Path, target: Path, work: Path, force: bool) -> bool:
    """Move the staged directory to `target`; with `force`, the old one is set aside in `work`
    first (removed with it) and put back if the move fails. Returns whether a model was replaced."""
    set_aside: Path | None = None
    replaced = False
    if force and (target.exists() or target.is_symlink()):
        if target.is_dir() and not target.is_symlink():
            set_aside = work / "replaced"
            os.rename(target, set_aside)
        else:
            target.unlink()
        replaced = True
    try:
        os.rename(staged, target)
    except OSError:
        if set_aside is not None and not target.exists():
            os.rename(set_aside, target)
        elif target.exists():  # another `models add` of the same name got there first
            raise ModelAddError("exists", f"model {target.name!r} appeared in {target.parent} meanwhile") from None
        raise
    return replaced


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def _toml_number(value: Normalisation) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(repr(v) for v in value) + "]"
    return repr(value)


def config_text(request: AddRequest, plan: ModelPlan, output_kind: str) -> str:
    p: PreprocessConfig = plan.preprocessing
    description = request.description or f"{request.onnx_path.name}, added with `batchserve models add`"
    batch_note = ("the graph's batch axis is dynamic" if plan.fixed_batch is None
                  else f"the graph takes exactly {plan.fixed_batch} image(s) per run")
    return f"""\
# Written by `batchserve models add` from {request.onnx_path.name}.
name = {_toml_string(request.name)}
description = {_toml_string(description)}
labels = "labels.txt"

[input]
name = {_toml_string(plan.input_name)}
# One sample in the model's own layout ({p.layout}); V2 clients send [N, ...this].
shape = [{", ".join(map(str, p.sample_shape))}]

[output]
name = {_toml_string(plan.output_name)}
classes = {plan.classes}
# "logits", or "probabilities" for a graph that ends in a softmax.
kind = "{output_kind}"

[preprocessing]
resize_short_side = {p.resize_short_side}
crop = {p.crop}
# On the 0-255 pixel scale: one value, or one per channel in the model's channel order.
mean = {_toml_number(p.mean)}
std = {_toml_number(p.std)}
layout = "{p.layout}"
channel_order = "{p.channel_order}"

[batching]
# {batch_note}
max_batch_size = {plan.max_batch_size}
max_queue_delay_ms = 0.0
max_queue_size = 256
max_inflight_batches = 1
default_timeout_ms = 0
max_timeout_ms = 60000

[runtime]
execution_providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
intra_op_threads = 0

[versions]
policy = "latest"
latest = 1
"""
