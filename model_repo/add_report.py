"""What `batchserve models add` prints: what it found, what it decided, and the top classes of
the `--check` images, so a wrong normalisation or channel order shows before any server runs."""

from __future__ import annotations

from batchserve.model_repo.add import VERSION, AddReport
from batchserve.model_repo.preprocess import Normalisation


def _values(value: Normalisation) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" for v in value) + "]"
    return f"{value:g}"


def format_report(report: AddReport, *, default_repository: bool) -> str:
    plan, p = report.plan, report.plan.preprocessing
    name = report.directory.name
    verb = "replaced" if report.replaced else "added"
    batch = ("dynamic" if plan.fixed_batch is None else f"fixed at {plan.fixed_batch}")
    lines = [
        f"{verb} model {name!r} version {VERSION} in {report.directory}",
        f"  input   {report.facts.input.describe()}: {p.layout}, {p.channel_order}, resize short side "
        f"{p.resize_short_side}, centre crop {p.crop}, mean {_values(p.mean)}, std {_values(p.std)}",
        f"  output  {report.facts.output.describe()}: {report.output_kind}, {plan.classes} classes",
        f"  batch   {batch}: max_batch_size {plan.max_batch_size}",
    ]
    lines.extend(f"  note    {note}" for note in report.notes)
    for check in report.checks:
        lines.append(f"top-{len(check.top)} for {check.image}:")
        width = max(len(label) for _, label, _ in check.top)
        lines.extend(f"  {rank}. {label:<{width}}  {score:.4f}  (class {class_id})"
                     for rank, (class_id, label, score) in enumerate(check.top, start=1))
    repo = "" if default_repository else f" --model-repo {report.directory.parent}"
    lines.append(f"serve it: batchserve serve{repo} --models {name}")
    return "\n".join(lines)
