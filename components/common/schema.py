"""TFMD schemas (schemas/*.pbtxt) as the contract of every input row.

`validate_row` checks one parsed row against a schema and raises `SchemaViolation` naming
the file, line and field, so a bad input stops a pipeline with an actionable message.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

SCHEMA_DIR = os.environ.get(
    "LLM_HARDNEG_SCHEMA_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "schemas"),
)


class SchemaViolation(ValueError):
    """A row breaks the input contract; the message names file, line and field."""

    def __init__(self, source: str, line: int, field: str, problem: str):
        self.source, self.line, self.field, self.problem = source, line, field, problem
        super().__init__(f"{source}:{line}: field '{field}': {problem}")


@functools.cache
def load_schema(name: str) -> schema_pb2.Schema:
    """Loads `schemas/<name>.pbtxt` ('interactions' or 'items')."""
    path = os.path.join(SCHEMA_DIR, f"{name}.pbtxt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"schema '{name}' not found at {path} (set LLM_HARDNEG_SCHEMA_DIR)")
    with open(path, encoding="utf-8") as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


def _check_value(feature: schema_pb2.Feature, value: Any) -> tuple[Any, str | None]:
    """Coerces one scalar to the feature's type; returns (value, problem or None)."""
    if feature.type == schema_pb2.BYTES:
        text = str(value).strip()
        return text, (None if text else "empty string")
    if feature.type == schema_pb2.INT:
        try:
            number = int(str(value).strip())
        except ValueError:
            return value, f"not an integer: {value!r}"
        domain = feature.int_domain
        if domain.HasField("min") and number < domain.min:
            return number, f"{number} below minimum {domain.min}"
        if domain.HasField("max") and number > domain.max:
            return number, f"{number} above maximum {domain.max}"
        return number, None
    if feature.type == schema_pb2.FLOAT:
        try:
            number = float(str(value).strip())
        except ValueError:
            return value, f"not a number: {value!r}"
        domain = feature.float_domain
        if math.isnan(number) or math.isinf(number):
            return number, f"not finite: {number}"
        if domain.HasField("min") and number < domain.min:
            return number, f"{number} below minimum {domain.min}"
        if domain.HasField("max") and number > domain.max:
            return number, f"{number} above maximum {domain.max}"
        return number, None
    return value, f"unsupported schema type {feature.type}"


def validate_row(schema: schema_pb2.Schema, row: Mapping[str, Any], source: str, line: int) -> dict:
    """Returns the row with values coerced to schema types, or raises SchemaViolation.

    Scalar features (value_count max 1) take a scalar; others take a list of scalars.
    Fields not in the schema are dropped.
    """
    out = {}
    for feature in schema.feature:
        required = feature.presence.min_fraction >= 1.0
        value = row.get(feature.name)
        is_list = not (feature.HasField("value_count") and feature.value_count.max == 1)
        if value is None or (isinstance(value, str) and not value.strip()):  # blank: absent
            if required:
                raise SchemaViolation(source, line, feature.name, "missing")
            out[feature.name] = [] if is_list else None
            continue
        if is_list:
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            coerced = []
            for v in values:
                c, problem = _check_value(feature, v)
                if problem:
                    raise SchemaViolation(source, line, feature.name, problem)
                coerced.append(c)
            out[feature.name] = coerced
        else:
            c, problem = _check_value(feature, value)
            if problem:
                raise SchemaViolation(source, line, feature.name, problem)
            out[feature.name] = c
    return out


def validate_columns(schema: schema_pb2.Schema, rows: list[Mapping[str, Any]]) -> dict[str, list | np.ndarray] | None:
    """The fast path of `validate_row` for many rows of a schema of scalar features: one column per feature
    (BYTES: a list of str; INT: int64 array; FLOAT: float64 array), with the same conversions and domain checks
    as `validate_row`, done per column. Returns None when any row breaks the schema (or a value does not fit
    int64): validate each row then, to learn which and why."""
    lists = [f.name for f in schema.feature if not (f.HasField("value_count") and f.value_count.max == 1)]
    if lists:
        raise ValueError(f"validate_columns takes scalar features only; {lists} are lists")
    columns: dict[str, list | np.ndarray] = {}
    try:
        for feature in schema.feature:
            values = [row.get(feature.name) for row in rows]
            if any(v is None for v in values):
                return None  # missing; an optional feature's None is for validate_row too
            if feature.type == schema_pb2.BYTES:
                column = [str(v).strip() for v in values]
                if not all(column):
                    return None
                columns[feature.name] = column
                continue
            if feature.type == schema_pb2.INT:
                array = np.array([int(str(v).strip()) for v in values], dtype=np.int64)
                domain = feature.int_domain
            elif feature.type == schema_pb2.FLOAT:
                array = np.array([float(str(v).strip()) for v in values], dtype=np.float64)
                domain = feature.float_domain
                if not np.isfinite(array).all():
                    return None
            else:
                return None
            if (domain.HasField("min") and (array < domain.min).any()) or (
                    domain.HasField("max") and (array > domain.max).any()):
                return None
            columns[feature.name] = array
    except (ValueError, OverflowError):
        return None
    return columns
