"""Conditions of a rule's ``if``: compiled once at load into plain predicates.

An ``if`` is a mapping of field name to condition, all of which must hold:

    {job_title: CEO}                       bare scalar: equality
    {company_size: {gte: 50, lt: 1000}}    operators, all must hold
    {any_of: [{country: US}, {region: NA}]} one of the mappings must hold

A field that is absent (or null) fails every condition but ``exists: false``.
Comparison is strict about types: 10 never equals "10", and true never equals 1,
so a rule cannot fire on a value the user did not mean.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]
ValueTest = Callable[[Any], bool]

OPERATORS = ("equals", "in", "not_in", "matches", "gt", "gte", "lt", "lte", "exists")
ANY_OF = "any_of"


def always(_: Mapping[str, Any]) -> bool:
    return True


def compile_if(raw: object, loc: str, problems: list[str]) -> Predicate:
    """Compile an ``if`` mapping; append ``"<loc>: <problem>"`` for each problem found."""
    if not isinstance(raw, Mapping):
        problems.append(f"{loc}: must be a mapping of field name to condition, got {show(raw)}")
        return always
    tests: list[Predicate] = []
    for field, cond in raw.items():
        if not isinstance(field, str):
            problems.append(f"{loc}: field names must be strings, got {show(field)}")
        elif field == ANY_OF:
            tests.append(_compile_any_of(cond, f"{loc}.{ANY_OF}", problems))
        else:
            tests.append(_compile_field(field, cond, f"{loc}.{field}", problems))
    if not tests:
        return always
    if len(tests) == 1:
        return tests[0]
    return lambda data: all(t(data) for t in tests)


def _compile_any_of(raw: object, loc: str, problems: list[str]) -> Predicate:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{loc}: must be a non-empty list of mappings, got {show(raw)}")
        return always
    options = [compile_if(item, f"{loc}[{i}]", problems) for i, item in enumerate(raw)]
    return lambda data: any(o(data) for o in options)


def _compile_field(field: str, cond: object, loc: str, problems: list[str]) -> Predicate:
    known_problems = len(problems)
    if isinstance(cond, Mapping):
        if not cond:
            problems.append(f"{loc}: empty condition (use one of {', '.join(OPERATORS)})")
            return always
        ops = [_compile_operator(op, arg, f"{loc}.{op}", problems) for op, arg in cond.items()]
    elif _is_scalar(cond):
        ops = [_equals(cond)]
    else:
        hint = " (use in: [...] for a list of values)" if isinstance(cond, list) else ""
        problems.append(f"{loc}: expected a value or a mapping of operators, got "
                        f"{show(cond)}{hint}")
        return always
    if len(problems) > known_problems:
        return always  # the file is refused anyway

    if isinstance(cond, Mapping) and list(cond) == ["matches"]:
        # The commonest condition in practice, e.g. {url: {matches: "^/pricing"}}: one call.
        search = re.compile(cond["matches"]).search

        def test_match(data: Mapping[str, Any]) -> bool:
            value = data.get(field)
            return type(value) is str and search(value) is not None

        return test_match

    # Absent (or null) fails everything but a lone ``exists: false``.
    absent_ok = isinstance(cond, Mapping) and len(cond) == 1 and cond.get("exists") is False
    if len(ops) == 1:
        only = ops[0]

        def test_one(data: Mapping[str, Any]) -> bool:
            value = data.get(field)
            return absent_ok if value is None else only(value)

        return test_one

    def test_all(data: Mapping[str, Any]) -> bool:
        value = data.get(field)
        return absent_ok if value is None else all(t(value) for t in ops)

    return test_all


def _compile_operator(op: object, arg: object, loc: str, problems: list[str]) -> ValueTest:
    def refuse(message: str) -> ValueTest:
        problems.append(f"{loc}: {message}")
        return lambda _value: False

    if op == "equals":
        return _equals(arg) if _is_scalar(arg) else refuse(f"expected a value, got {show(arg)}")
    if op in ("in", "not_in"):
        if not isinstance(arg, list) or not all(_is_scalar(a) for a in arg):
            return refuse(f"expected a list of values, got {show(arg)}")
        members = list(arg)
        if op == "in":
            return lambda v: any(_same(v, m) for m in members)
        return lambda v: not any(_same(v, m) for m in members)
    if op == "matches":
        if not isinstance(arg, str):
            return refuse(f"expected a regular expression string, got {show(arg)}")
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            return refuse(f"{show(arg)} is not a valid regular expression ({exc})")
        return lambda v: isinstance(v, str) and pattern.search(v) is not None
    if op in ("gt", "gte", "lt", "lte"):
        if not (_is_number(arg) or isinstance(arg, str)):
            return refuse(f"expected a number or a string, got {show(arg)}")
        return _ordering(str(op), arg)
    if op == "exists":
        if not isinstance(arg, bool):
            return refuse(f"expected true or false, got {show(arg)}")
        return (lambda v: v is not None) if arg else (lambda v: v is None)
    return refuse(f"unknown operator {show(op)} (use one of {', '.join(OPERATORS)})")


def _ordering(op: str, bound: Any) -> ValueTest:
    numeric = _is_number(bound)

    def comparable(v: Any) -> bool:
        return _is_number(v) if numeric else isinstance(v, str)

    if op == "gt":
        return lambda v: comparable(v) and v > bound
    if op == "gte":
        return lambda v: comparable(v) and v >= bound
    if op == "lt":
        return lambda v: comparable(v) and v < bound
    return lambda v: comparable(v) and v <= bound


def _equals(expected: Any) -> ValueTest:
    return lambda v: _same(v, expected)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from numbers (Python has True == 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, str) != isinstance(b, str):
        return False
    return bool(a == b)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_scalar(v: object) -> bool:
    return isinstance(v, str | int | float | bool)


def show(v: object) -> str:
    """A YAML value as a problem message quotes it."""
    if isinstance(v, str):
        return f'"{v}"'
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, Mapping):
        return "a mapping"
    return str(v)
