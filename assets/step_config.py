"""The launchpad's config for one step: every scalar parameter the step reads is an optional field
with its description and its current params.yaml value, so a platform engineer sees what can be
overridden for this step (and only this step) without opening params.yaml. Free-form ``overrides``
stay for lists and anything else; both become ``key.sub=value`` overrides of the run's params."""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from typing import Any, Literal, Union, get_args, get_origin

from dagster import Config
from pydantic import BaseModel, Field, create_model

from mai_models.config import PipelineParams
from mai_models.executor.step import Step, section

SEPARATOR = "__"  # a launchpad field name for `lm.steps` is `lm__steps`
_SCALARS = (bool, int, float, str)


class StepConfig(Config):
    overrides: list[str] = Field(
        default=[],
        description="Further parameter overrides in `key.sub=value` form, as with `dvc exp run -S` "
        "(lists and nested values included)",
    )
    force: bool = Field(
        default=False, description="Rebuild even if the stored output already has this version"
    )

    def parameter_overrides(self) -> list[str]:
        """The fields set in the launchpad, as overrides (values in YAML, which JSON is)."""
        chosen = [
            f"{name.replace(SEPARATOR, '.')}={json.dumps(value)}"
            for name, value in self.model_dump().items()
            if name not in StepConfig.model_fields and value is not None
        ]
        return [*chosen, *self.overrides]


def config_class(step: Step, params: PipelineParams) -> type[StepConfig]:
    fields: dict[str, Any] = {}
    for dotted, kind, field, current in step_parameters(step, params):
        about = (field.description or "").rstrip(".")
        text = f"{dotted}: {about}; " if about else f"{dotted}: "
        fields[dotted.replace(".", SEPARATOR)] = (
            kind | None,
            Field(default=None, description=f"{text}params.yaml has {json.dumps(current)}"),
        )
    name = "".join(part.title() for part in step.name.split("_")) + "Config"
    return create_model(name, __base__=StepConfig, __doc__=f"Run config of {step.name}.", **fields)


def step_parameters(step: Step, params: PipelineParams) -> Iterator[tuple[str, type, Any, Any]]:
    """(dotted key, scalar type, pydantic field, current value) of each scalar the step reads."""
    for dotted in step.params:
        *parents, leaf = dotted.split(".")
        owner: type[BaseModel] = PipelineParams
        for part in parents:
            owner = _model(owner.model_fields[part].annotation)
        field = owner.model_fields[leaf]
        nested = _model(field.annotation)
        if nested is not None:
            yield from _leaves(nested, dotted, section(params, dotted))
        elif (kind := _scalar(field.annotation)) is not None:
            yield dotted, kind, field, section(params, dotted)


def _leaves(
    model: type[BaseModel], prefix: str, values: dict[str, Any]
) -> Iterator[tuple[str, type, Any, Any]]:
    for name, field in model.model_fields.items():
        dotted = f"{prefix}.{name}"
        nested = _model(field.annotation)
        if nested is not None:
            yield from _leaves(nested, dotted, values.get(name) or {})
        elif (kind := _scalar(field.annotation)) is not None:
            yield dotted, kind, field, values.get(name)


def _model(annotation: Any) -> type[BaseModel] | None:
    options = [a for a in _options(annotation) if a is not type(None)]
    if len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], BaseModel):
        return options[0]
    return None


def _scalar(annotation: Any) -> type | None:
    """bool, int, float or str (a Literal of strings is a str), optional or not; else None."""
    options = [a for a in _options(annotation) if a is not type(None)]
    if len(options) != 1:
        return None
    kind = options[0]
    if get_origin(kind) is Literal:
        values = get_args(kind)
        return str if all(isinstance(v, str) for v in values) else None
    return kind if kind in _SCALARS else None


def _options(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)
