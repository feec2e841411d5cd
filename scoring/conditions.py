"""Conditions of a rule's ``if``: compiled once at load into plain predicates.

An ``if`` is a mapping of field name to condition, all of which must hold:

    {job_title: CEO}                       bare scalar: equality
    {company_size: {gte: 50, lt: 1000}}    operators, all must hold
    {any_of: [{country: US}, {region: NA}]} one of the mappings must hold

A field that is absent (or null) fails every condition but ``exists: false``.
Comparison is strict about types: 10 never equals "10", and true never equals 1,
so a rule cannot fire on a value the user did not mean.

``matches`` is searched with RE2, whose time is linear in the length of the text
whatever the pattern: with a backtracking engine (Python's ``re``) a pattern such as
``(a+)+$`` takes time exponential in the length of the text, so one event could
stall a worker. RE2 refuses what it cannot match in linear time (backreferences,
lookaround, ...); ``Patterns`` turns each refusal into a problem saying why.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

import re2

Predicate = Callable[[Mapping[str, Any]], bool]
ValueTest = Callable[[Any], bool]
TextTest = Callable[[str], bool]

OPERATORS = ("equals", "in", "not_in", "matches", "gt", "gte", "lt", "lte", "exists")
ANY_OF = "any_of"

# RE2 bounds the memory of each compiled pattern (its programs and the caches of its
# matcher, which falls back to a slower but still linear method when they are full); a
# realistic pattern needs a few KiB. With at most MAX_PATTERNS different patterns that
# are not plain text (plain text is matched without RE2), a file's patterns hold at
# most 256 MiB whatever the events, and compile in seconds at worst: without a bound,
# a pattern may take RE2's default of 8 MiB and a 1 MiB file holds thousands.
RE2_MAX_MEM = 1024 * 1024
MAX_PATTERNS = 256

_RE2_LACKS = "is not supported: Leadscore matches with RE2, which has no"
# What RE2 lacks, and what to write instead, by the construct a pattern used.
_UNSUPPORTED = {
    "backreference": "backreferences (write the repeated text out, e.g. (aa|bb) for (a|b)\\1)",
    "lookaround": "lookahead or lookbehind (a search can match the text itself: ab for "
                  "a(?=b) or for (?<=a)b; a negative one has no equivalent)",
    "atomic": "atomic groups (they only stop backtracking, which RE2 never does: "
              "write (?:...) for (?>...))",
    "possessive": "possessive quantifiers (they only stop backtracking, which RE2 never "
                  "does: write a+ for a++)",
    "conditional": "conditional groups (use any_of)",
    "comment": "(?#...) comments (use a YAML comment)",
    "verbose": "verbose mode (?x) (remove the spaces and comments)",
    "ascii": "(?a), (?u) or (?L) flags (its \\w, \\d, \\s and \\b are ASCII-only; "
             "it knows the flags i, m, s and U)",
    "end": "\\Z (it writes the end of the text \\z)",
    "code": "\\u, \\U or \\N escapes (write a character by its code as \\x{e9})",
    "count": "counts above 1000, nested counts multiplied (use + or * for more)",
}
_PUNCTUATION = frozenset(string.punctuation)
_META = frozenset("\\^$.|?*+()[]{}")
_PYTHON_COUNT = re.compile(r"\{,[0-9]*\}")  # Python's {,3} and {,}: plain text to RE2


def always(_: Mapping[str, Any]) -> bool:
    return True


class Patterns:
    """The ``matches`` patterns of one rules file, each compiled once.

    A file that repeats a pattern (as a YAML alias does) pays for it once; a file with
    more than ``MAX_PATTERNS`` different ones that are not plain text gets one problem,
    and no more of them are compiled.
    """

    def __init__(self) -> None:
        self._tests: dict[str, TextTest | str] = {}  # pattern -> its test, or why refused
        self._searched = 0  # how many of them are not plain text

    def compile(self, pattern: str, loc: str, problems: list[str]) -> TextTest | None:
        """A test of a string that answers exactly as an RE2 search for ``pattern``; or
        None, with a problem appended where RE2 refuses the pattern."""
        known = self._tests.get(pattern)
        if known is None:
            if not _is_plain(pattern):
                self._searched += 1
                if self._searched > MAX_PATTERNS:
                    if self._searched == MAX_PATTERNS + 1:
                        problems.append(f"{loc}: more than {MAX_PATTERNS} different patterns "
                                        "in one rules file, besides plain text (join some "
                                        "with |)")
                    return None
            known = self._tests[pattern] = _compile(pattern)
        if isinstance(known, str):
            problems.append(f"{loc}: {known}")
            return None
        return known


def _compile(pattern: str) -> TextTest | str:
    """The test for ``pattern`` (see ``_text_test``), or why RE2 refuses it."""
    try:
        regex = re2.compile(pattern, _options())
    except UnicodeEncodeError:
        return f"{show(pattern)} is not valid Unicode"
    except re2.error as exc:
        complaint = exc.args[0]
        if isinstance(complaint, bytes):
            complaint = complaint.decode(errors="replace")
        kind, _, fragment = str(complaint).partition(": ")
        lacks = _unsupported(pattern, kind, fragment)
        if lacks:
            return f"{show(pattern)} {_RE2_LACKS} {_UNSUPPORTED[lacks]}"
        if kind.startswith("pattern too large"):
            return _too_large(pattern)
        where = f" at {show(fragment)}" if fragment else ""
        return f"{show(pattern)} is not a valid regular expression ({kind}{where})"
    if regex.reverseprogramsize < 0:  # RE2 compiles it at the first search: refuse it now
        return _too_large(pattern)
    count = _python_only_count(pattern)
    if count is not None:
        return (f"{show(pattern)} is ambiguous: {count} is a count in Python but plain text "
                f"to RE2 (write {{0{count[1:]} for the count, or \\{count} for the text)")
    return _text_test(pattern, regex)


def _unsupported(pattern: str, kind: str, fragment: str) -> str | None:
    """Which construct RE2 lacks, from its complaint; None for a plain mistake."""
    if kind == "invalid escape sequence":
        letter = fragment[1:2]
        if letter and letter in "123456789kg":  # \1, PCRE's \k<name> and \g{1}
            return "backreference"
        return {"Z": "end", "u": "code", "U": "code", "N": "code"}.get(letter)
    if kind == "invalid perl operator":  # RE2 quotes the construct up to the bad character
        if fragment.startswith(("(?=", "(?!", "(?<=", "(?<!")):
            return "lookaround"
        if fragment == "(?P":
            return "backreference" if "(?P=" in pattern else None
        if fragment.startswith("(?>"):
            return "atomic"
        if fragment.startswith("(?("):
            return "conditional"
        if fragment.startswith("(?#"):
            return "comment"
        last = fragment[-1:]
        return "verbose" if last == "x" else "ascii" if last and last in "auL" else None
    if kind == "bad repetition operator" and fragment.endswith("+"):
        return "possessive"
    if kind == "invalid repetition size":
        return "count"
    return None


def _too_large(pattern: str) -> str:
    return (f"{show(pattern)} is too large: RE2 needs more than {RE2_MAX_MEM / 2**20:g} MiB "
            "to match it (use smaller counts in {n}, or split it into several rules)")


def _options() -> re2.Options:
    options = re2.Options()
    options.max_mem = RE2_MAX_MEM
    options.log_errors = False  # a refusal becomes a problem, not a line on stderr
    options.never_capture = True  # only whether it matches counts
    return options


def _python_only_count(pattern: str) -> str | None:
    """The first ``{,n}`` outside a class: a count in Python (``{0,n}``), text in RE2."""
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if pattern.startswith("Q", i + 1):  # \Q...\E is text
                end = pattern.find("\\E", i + 2)
                i = len(pattern) if end < 0 else end + 2
            else:
                i += 2
            continue
        if in_class:
            if pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                i = i + 1 if end < 0 else end + 2
                continue
            in_class = c != "]"
        elif c == "[":
            in_class = True
            i += 2 if pattern.startswith("^", i + 1) else 1
            i += 1 if pattern.startswith("]", i) else 0  # a "]" first in a class is itself
            continue
        elif c == "{":
            count = _PYTHON_COUNT.match(pattern, i)
            if count:
                return count.group()
        i += 1
    return None


def _text_test(pattern: str, regex: re2._Regexp[str]) -> TextTest:
    """The cheapest test that answers exactly as an RE2 search for ``pattern``.

    Plain text is a substring test and ``^`` plus plain text a prefix test; a pattern
    that starts with ``^`` and some plain text is searched only in strings with that
    prefix, where any match must start. A search through RE2's Python wrapper costs many
    times what ``str.startswith`` does, and most page urls fail the prefix.
    """
    anchored = pattern.startswith("^")
    text, end = _plain_text(pattern, 1 if anchored else 0)
    if end == len(pattern):  # _is_plain
        if anchored:
            return lambda value: value.startswith(text)
        return lambda value: text in value
    search = _search(regex)
    if not anchored or not text or "|" in pattern:  # an alternative may start elsewhere
        return search
    return lambda value: value.startswith(text) and search(value)


def _is_plain(pattern: str) -> bool:
    """Plain text, or ``^`` and plain text: matched without RE2 (see _text_test)."""
    return _plain_text(pattern, 1 if pattern.startswith("^") else 0)[1] == len(pattern)


def _plain_text(pattern: str, start: int) -> tuple[str, int]:
    """The plain text at ``pattern[start:]`` and where it ends, less a character that
    a quantifier applies to (``^/products?/`` starts with "/product")."""
    chars: list[str] = []
    i = start
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in _PUNCTUATION:
            chars.append(pattern[i + 1])  # an escaped punctuation mark is itself
            i += 2
        elif c in _META:
            if c in "?*+{" and chars:
                chars.pop()
            break
        else:
            chars.append(c)
            i += 1
    return "".join(chars), i


def _search(regex: re2._Regexp[str]) -> TextTest:
    """An RE2 search anywhere in the value: true when it matches.

    google-re2's ``search`` builds a match object with every span decoded back to
    characters, several times the cost of the search itself; whether it matched is
    all a condition needs, so the compiled program is asked directly when this
    version of the wrapper exposes it (the same engine, the same answer), and through
    ``search`` otherwise.
    """
    program = getattr(regex, "_regexp", None)
    anchor = getattr(getattr(re2, "_Anchor", None), "UNANCHORED", None)
    if program is None or anchor is None or not hasattr(program, "Match"):
        search = regex.search

        def test(value: str) -> bool:
            try:
                return search(value) is not None
            except UnicodeEncodeError:  # a lone surrogate, which no event can hold
                return False

        return test
    match = program.Match

    def test_direct(value: str) -> bool:
        try:
            data = value.encode()
        except UnicodeEncodeError:  # a lone surrogate, which no event can hold (JSON has none)
            return False
        return bool(match(anchor, data, 0, len(data))[0] != (-1, -1))

    return test_direct


def compile_if(raw: object, loc: str, problems: list[str],
               patterns: Patterns | None = None) -> Predicate:
    """Compile an ``if`` mapping; append ``"<loc>: <problem>"`` for each problem found.

    ``patterns`` is shared by the conditions of one file (see ``Patterns``)."""
    patterns = Patterns() if patterns is None else patterns
    if not isinstance(raw, Mapping):
        problems.append(f"{loc}: must be a mapping of field name to condition, got {show(raw)}")
        return always
    tests: list[Predicate] = []
    for field, cond in raw.items():
        if not isinstance(field, str):
            problems.append(f"{loc}: field names must be strings, got {show(field)}")
        elif field == ANY_OF:
            tests.append(_compile_any_of(cond, f"{loc}.{ANY_OF}", problems, patterns))
        else:
            tests.append(_compile_field(field, cond, f"{loc}.{field}", problems, patterns))
    if not tests:
        return always
    if len(tests) == 1:
        return tests[0]
    return lambda data: all(t(data) for t in tests)


def _compile_any_of(raw: object, loc: str, problems: list[str],
                    patterns: Patterns) -> Predicate:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{loc}: must be a non-empty list of mappings, got {show(raw)}")
        return always
    options = [compile_if(item, f"{loc}[{i}]", problems, patterns)
               for i, item in enumerate(raw)]
    return lambda data: any(o(data) for o in options)


def _compile_field(field: str, cond: object, loc: str, problems: list[str],
                   patterns: Patterns) -> Predicate:
    known_problems = len(problems)
    if isinstance(cond, Mapping):
        if not cond:
            problems.append(f"{loc}: empty condition (use one of {', '.join(OPERATORS)})")
            return always
        ops = [_compile_operator(op, arg, f"{loc}.{op}", problems, patterns)
               for op, arg in cond.items()]
    elif _is_scalar(cond):
        if _is_not_finite(cond):
            problems.append(f"{loc}: {show(cond)} is not a finite number")
            return always
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
        matches = patterns.compile(cond["matches"], loc, [])  # compiled above: no problem
        if matches is None:
            return always  # over MAX_PATTERNS: the file is refused anyway

        def test_match(data: Mapping[str, Any]) -> bool:
            value = data.get(field)
            return type(value) is str and matches(value)

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


def _compile_operator(op: object, arg: object, loc: str, problems: list[str],
                      patterns: Patterns) -> ValueTest:
    def refuse(message: str) -> ValueTest:
        problems.append(f"{loc}: {message}")
        return lambda _value: False

    values = arg if isinstance(arg, list) else [arg]
    if op in ("equals", "in", "not_in", "gt", "gte", "lt", "lte") and any(
            _is_not_finite(v) for v in values):
        return refuse(f"{show(next(v for v in values if _is_not_finite(v)))} is not a "
                      "finite number")
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
        matches = patterns.compile(arg, loc, problems)
        if matches is None:
            return lambda _value: False  # the problem is listed
        return lambda v: isinstance(v, str) and matches(v)
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


def _is_not_finite(v: object) -> bool:
    """NaN or infinity: no event value compares with them as a rule would mean."""
    return isinstance(v, float) and not math.isfinite(v)


def show(v: object) -> str:
    """A YAML value as a problem message quotes it (a long one cut short)."""
    if isinstance(v, str):
        shown = v[:_SHOWN].encode("utf-8", "backslashreplace").decode()  # "\ud800" printable
        return f'"{shown}"' if len(v) <= _SHOWN else f'"{shown}..." ({len(v):,} characters)'
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return ".nan" if math.isnan(v) else ".inf" if v > 0 else "-.inf"  # as YAML spells them
    if isinstance(v, list):
        return "a list"
    if isinstance(v, Mapping):
        return "a mapping"
    text = str(v)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text):,} characters)"


_SHOWN = 100
