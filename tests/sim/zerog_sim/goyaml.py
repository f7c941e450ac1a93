"""Decode YAML the way Go's ``gopkg.in/yaml.v2`` v2.4.0 ``UnmarshalStrict`` does.

The 0G fine-tuning broker loads its configuration with ``yaml.UnmarshalStrict`` from
``gopkg.in/yaml.v2`` v2.4.0 into typed Go structs.  PyYAML resolves plain scalars by
its own YAML 1.1 rules and builds Python objects, which is not what the broker sees, so
this module uses PyYAML only as a tokenizer/parser (its event stream) and then applies
yaml.v2's own rules:

* scalar resolution of ``resolve.go`` (``y``/``Y``/``yes``/``on`` are booleans, ``0x1F``
  and ``010`` are ints through Go's ``strconv.ParseInt(s, 0, 64)``, ``_`` is dropped,
  timestamps are recognised, ``1e400`` stays a string because Go reports a range error);
* decoding into typed fields as in ``decode.go`` (any non-null scalar is accepted by a
  ``string`` field as its source text, floats are truncated into ints, quoted values
  are always ``!!str``, ``null`` resets a field to its zero value, a sequence replaces a
  slice, a map keeps earlier entries);
* strict mode: unknown struct keys, repeated struct keys and repeated map keys are
  reported with yaml.v2's exact wording and line numbers;
* errors are returned as the exact ``err.Error()`` text: accumulated type errors as
  ``yaml: unmarshal errors:\\n  line N: ...``, fatal ones (syntax errors, bad explicit
  tags, a custom ``UnmarshalYAML`` error) on their own.

Syntax errors come from PyYAML's scanner/parser; their wording is translated to
libyaml's and the line number is computed with yaml.v2's own (quirky) rule, which is
faithful for the common cases but not guaranteed for every malformed document.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml import events as yev

LONG_TAG_PREFIX = "tag:yaml.org,2002:"
STR_TAG = LONG_TAG_PREFIX + "str"
INT_TAG = LONG_TAG_PREFIX + "int"
BOOL_TAG = LONG_TAG_PREFIX + "bool"
FLOAT_TAG = LONG_TAG_PREFIX + "float"
NULL_TAG = LONG_TAG_PREFIX + "null"
TIMESTAMP_TAG = LONG_TAG_PREFIX + "timestamp"
BINARY_TAG = LONG_TAG_PREFIX + "binary"
MERGE_TAG = LONG_TAG_PREFIX + "merge"
SEQ_TAG = LONG_TAG_PREFIX + "seq"
MAP_TAG = LONG_TAG_PREFIX + "map"

_RESOLVABLE_TAGS = {"", STR_TAG, BOOL_TAG, INT_TAG, FLOAT_TAG, NULL_TAG, TIMESTAMP_TAG}

MAX_INT64 = (1 << 63) - 1
MIN_INT64 = -(1 << 63)
MAX_UINT64 = (1 << 64) - 1

# Node kinds, as in yaml.v2's decode.go.
SCALAR = "scalar"
MAPPING = "mapping"
SEQUENCE = "sequence"
ALIAS = "alias"


class GoYAMLError(Exception):
    """An error returned by ``yaml.UnmarshalStrict``; ``str()`` is Go's ``err.Error()``."""


class _TypeErrors(Exception):
    """Type errors collected inside a custom unmarshaler (Go's ``*yaml.TypeError``)."""

    def __init__(self, issues: list[str]) -> None:
        super().__init__("\n".join(issues))
        self.issues = issues


# --------------------------------------------------------------------------- Go types


@dataclass(frozen=True)
class Field:
    """One struct field: the YAML key it is decoded from and its Go type."""

    key: str
    type: GoType


@dataclass(frozen=True)
class GoType:
    """The part of a Go ``reflect.Type`` that yaml.v2's decoder looks at.

    ``kind`` is one of ``string``, ``int``, ``uint``, ``bool``, ``struct``, ``slice``,
    ``map`` (string keys), ``ptr`` and ``custom`` (a type with ``UnmarshalYAML``).
    ``name`` is what ``reflect.Type.String()`` prints in error messages.
    """

    kind: str
    name: str
    bits: int = 64
    elem: GoType | None = None
    fields: tuple[Field, ...] = ()
    duration: bool = False
    unmarshal: Callable[[Callable[[GoType], Any]], Any] | None = None
    custom_zero: Any = None

    def field_map(self) -> dict[str, Field]:
        """Map YAML key -> field, like yaml.v2's ``getStructInfo().FieldsMap``."""
        return {f.key: f for f in self.fields}


def go_string(name: str = "string") -> GoType:
    """A Go string (or a named string type such as ``config.LogFormat``)."""
    return GoType("string", name)


def go_int(name: str = "int", bits: int = 64) -> GoType:
    """A signed Go integer type."""
    return GoType("int", name, bits=bits)


def go_uint(name: str = "uint", bits: int = 64) -> GoType:
    """An unsigned Go integer type."""
    return GoType("uint", name, bits=bits)


def go_bool() -> GoType:
    """Go ``bool``."""
    return GoType("bool", "bool")


def go_duration() -> GoType:
    """Go ``time.Duration`` (an int64 that also accepts ``time.ParseDuration`` strings)."""
    return GoType("int", "time.Duration", duration=True)


def go_struct(name: str, *fields: Field) -> GoType:
    """A Go struct; ``name`` as reflect prints it (``config.Config`` or ``struct { ... }``)."""
    return GoType("struct", name, fields=tuple(fields))


def go_slice(elem: GoType) -> GoType:
    """A Go slice ``[]elem``."""
    return GoType("slice", "[]" + elem.name, elem=elem)


def go_map(name: str, elem: GoType) -> GoType:
    """A Go map with string keys."""
    return GoType("map", name, elem=elem)


def go_ptr(elem: GoType) -> GoType:
    """A Go pointer ``*elem``."""
    return GoType("ptr", "*" + elem.name, elem=elem)


def go_custom(name: str, unmarshal: Callable[[Callable[[GoType], Any]], Any], zero: Any) -> GoType:
    """A type implementing yaml.v2's ``Unmarshaler``; ``unmarshal`` gets a decode-into function."""
    return GoType("custom", name, unmarshal=unmarshal, custom_zero=zero)


def anonymous_struct_name(fields: list[tuple[str, str, str]]) -> str:
    """Render reflect's name of an anonymous struct from (GoName, GoType, yamlKey) triples."""
    parts = [f"{name} {typ} {go_quote(f'yaml:{go_quote(key)}')}" for name, typ, key in fields]
    return "struct { " + "; ".join(parts) + " }"


def zero(t: GoType) -> Any:
    """Return Go's zero value of ``t`` in this module's Python representation."""
    if t.kind == "string":
        return ""
    if t.kind in ("int", "uint"):
        return 0
    if t.kind == "bool":
        return False
    if t.kind == "struct":
        return {f.key: zero(f.type) for f in t.fields}
    if t.kind == "custom":
        return copy.deepcopy(t.custom_zero)
    return None  # nil slice, map or pointer


# ------------------------------------------------------------------- Go text helpers


def go_quote(s: str) -> str:
    """Go's ``strconv.Quote`` (also what ``%q`` and ``%#v`` print for a string)."""
    out = ['"']
    for ch in s:
        out.append(_quote_char(ch, '"'))
    out.append('"')
    return "".join(out)


def go_quote_rune(code: int) -> str:
    """Go's ``strconv.QuoteRune`` (what ``%q`` prints for a byte or rune)."""
    return "'" + _quote_char(chr(code), "'") + "'"


_SIMPLE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _quote_char(ch: str, quote: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte carried by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if ch in (quote, "\\"):
        return "\\" + ch
    if ch in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[ch]
    if ch == " " or (ch.isprintable() and code >= 0x20):
        return ch
    if code < 0x80:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _go_bytes_len(s: str) -> int:
    return len(s.encode("utf-8", "surrogateescape"))


def _go_bytes_prefix(s: str, n: int) -> str:
    return s.encode("utf-8", "surrogateescape")[:n].decode("utf-8", "surrogateescape")


def short_tag(tag: str) -> str:
    """yaml.v2's ``shortTag``."""
    if tag.startswith(LONG_TAG_PREFIX):
        return "!!" + tag[len(LONG_TAG_PREFIX) :]
    return tag


# ------------------------------------------------------------------------- parsing


@dataclass
class Node:
    """A yaml.v2 ``node``: kind, 0-based line, tag as in the event, value, children."""

    kind: str
    line: int
    tag: str = ""
    value: str = ""
    implicit: bool = False
    children: list[Node] = field(default_factory=list)
    alias: Node | None = None


_PROBLEM_EXACT = {
    "mapping values are not allowed here": "mapping values are not allowed in this context",
    "sequence entries are not allowed here": "block sequence entries are not allowed in this context",
    "mapping keys are not allowed here": "mapping keys are not allowed in this context",
}
_PROBLEM_PREFIX = (
    ("expected the node content", "did not find expected node content"),
    ("expected ',' or ']'", "did not find expected ',' or ']'"),
    ("expected ',' or '}'", "did not find expected ',' or '}'"),
    ("expected '<document start>'", "did not find expected <document start>"),
    ("found undefined tag handle", "found undefined tag handle"),
    ("found unknown escape character", "found unknown escape character"),
    ("expected alphabetic or numeric character", "did not find expected alphabetic or numeric character"),
    ("found character", "found character that cannot start any token"),
)


def _libyaml_problem(problem: str, context: str | None) -> str:
    """Translate a PyYAML problem string to libyaml's wording (what yaml.v2 prints)."""
    if problem in _PROBLEM_EXACT:
        return _PROBLEM_EXACT[problem]
    if problem.startswith("expected <block end>"):
        if context and "block mapping" in context:
            return "did not find expected key"
        return "did not find expected '-' indicator"
    for prefix, text in _PROBLEM_PREFIX:
        if problem.startswith(prefix):
            return text
    return problem


def _syntax_error(exc: yaml.MarkedYAMLError) -> GoYAMLError:
    """Format a PyYAML syntax error as yaml.v2's ``parser.fail()`` does."""
    problem = _libyaml_problem(exc.problem or "", exc.context)
    if not problem:
        problem = "unknown problem parsing YAML content"
    scanner = isinstance(exc, yaml.scanner.ScannerError)
    line = 0
    if exc.problem_mark is not None and exc.problem_mark.line != 0:
        # libyaml marks are 0-based; yaml.v2 adds one for scanner errors only.
        line = exc.problem_mark.line + (1 if scanner else 0)
    elif exc.context_mark is not None and exc.context_mark.line != 0:
        line = exc.context_mark.line
    where = f"line {line}: " if line else ""
    return GoYAMLError(f"yaml: {where}{problem}")


def _reader_error(exc: Exception) -> GoYAMLError:
    reason = str(exc)
    if "unexpected end of data" in reason:
        return GoYAMLError("yaml: incomplete UTF-8 octet sequence")
    if "invalid continuation byte" in reason:
        return GoYAMLError("yaml: invalid trailing UTF-8 octet")
    if "utf-8" in reason.lower() or "codec" in reason:
        return GoYAMLError("yaml: invalid leading UTF-8 octet")
    return GoYAMLError("yaml: control characters are not allowed")


class _Builder:
    """Build yaml.v2-style nodes from PyYAML's event stream (first document only)."""

    def __init__(self, data: bytes) -> None:
        self.loader = yaml.BaseLoader(data)
        self.anchors: dict[str, Node] = {}

    def first_document(self) -> Node | None:
        loader = self.loader
        try:
            loader.get_event()  # StreamStartEvent
            if loader.check_event(yev.StreamEndEvent):
                return None
            loader.get_event()  # DocumentStartEvent
            root = self._node()
            loader.get_event()  # DocumentEndEvent (yaml.v2 stops here)
            return root
        except yaml.MarkedYAMLError as exc:
            raise _syntax_error(exc) from None
        except yaml.reader.ReaderError as exc:
            raise _reader_error(exc) from None
        finally:
            loader.dispose()

    def _register(self, event: yev.NodeEvent, node: Node) -> None:
        if event.anchor is not None:
            self.anchors[event.anchor] = node

    def _node(self) -> Node:
        event = self.loader.get_event()
        line = event.start_mark.line
        if isinstance(event, yev.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is None:
                raise GoYAMLError(f"yaml: unknown anchor '{event.anchor}' referenced")
            return Node(ALIAS, line, value=event.anchor, alias=target)
        tag = event.tag or ""
        if isinstance(event, yev.ScalarEvent):
            node = Node(SCALAR, line, tag=tag, value=event.value, implicit=bool(event.implicit[0]))
            self._register(event, node)
            return node
        if isinstance(event, yev.SequenceStartEvent):
            node = Node(SEQUENCE, line, tag=tag)
            self._register(event, node)
            while not self.loader.check_event(yev.SequenceEndEvent):
                node.children.append(self._node())
            self.loader.get_event()
            return node
        node = Node(MAPPING, line, tag=tag)
        self._register(event, node)
        while not self.loader.check_event(yev.MappingEndEvent):
            node.children.append(self._node())
            node.children.append(self._node())
        self.loader.get_event()
        return node


def parse(data: bytes | str) -> Node | None:
    """Parse the first YAML document like yaml.v2; ``None`` for an empty stream."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return _Builder(data).first_document()


# ----------------------------------------------------------------- scalar resolution


def _build_resolve_map() -> dict[str, tuple[str, Resolved]]:
    """yaml.v2's ``resolveMap``: the words that resolve without looking further."""
    table: dict[str, tuple[str, Resolved]] = {}
    for gotype, value, tag, words in (
        ("bool", True, BOOL_TAG, ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")),
        ("bool", False, BOOL_TAG, ("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")),
        ("nil", None, NULL_TAG, ("", "~", "null", "Null", "NULL")),
        ("float64", math.nan, FLOAT_TAG, (".nan", ".NaN", ".NAN")),
        ("float64", math.inf, FLOAT_TAG, (".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF")),
        ("float64", -math.inf, FLOAT_TAG, ("-.inf", "-.Inf", "-.INF")),
        ("string", "<<", MERGE_TAG, ("<<",)),
    ):
        for word in words:
            table[word] = (tag, Resolved(gotype, value))
    return table


_HINTS = {"+": "S", "-": "S", ".": "."}
_HINTS.update(dict.fromkeys("0123456789", "D"))
_HINTS.update(dict.fromkeys("yYnNtTfFoO~", "M"))

_YAML_STYLE_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


@dataclass(frozen=True)
class Resolved:
    """A resolved scalar: its Go dynamic type name (``int``, ``uint64``, ...) and value."""

    gotype: str
    value: Any


_RESOLVE_MAP = _build_resolve_map()


def go_parse_int(s: str, base: int = 0, bits: int = 64, unsigned: bool = False) -> int | None:
    """Go's ``strconv.ParseInt``/``ParseUint`` (no underscores); ``None`` on any error."""
    if not s:
        return None
    neg = False
    if not unsigned and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if base == 0:
        base = 10
        if s[:1] == "0":
            low = s[:2].lower()
            if low in ("0x", "0o", "0b"):
                base = {"0x": 16, "0o": 8, "0b": 2}[low]
                s = s[2:]
            else:
                base = 8
                s = s[1:] or "0"
    if not s or any(c not in _DIGITS[base] for c in s):
        return None
    value = int(s, base)
    if unsigned:
        return value if value <= MAX_UINT64 else None
    value = -value if neg else value
    limit = 1 << (bits - 1)
    return value if -limit <= value < limit else None


def go_parse_float(s: str) -> float | None:
    """Go's ``strconv.ParseFloat(s, 64)`` for decimal input; ``None`` on error or range."""
    if not _YAML_STYLE_FLOAT.match(s):
        return None
    value = float(s)
    if math.isinf(value):
        return None  # Go: ErrRange
    return value


def _days_in(month: int, year: int) -> int:
    return calendar.monthrange(year, month)[1]


_TS_DATE = r"(\d{4})-(\d{1,2})-(\d{1,2})"
_TS_TIME = r"(\d{1,2}):(\d{1,2}):(\d{1,2})(?:[.,]\d+)?"
_TS_FORMATS = (
    re.compile(rf"^{_TS_DATE}[Tt]{_TS_TIME}(Z|[+-]\d{{2}}:\d{{2}})$"),
    re.compile(rf"^{_TS_DATE} {_TS_TIME}()$"),
    re.compile(rf"^{_TS_DATE}()()()()$"),
)


def _timestamp_ok(m: re.Match[str]) -> bool:
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not 1 <= month <= 12 or not 1 <= day <= _days_in(month, year or 2000):
        return False
    clock = [int(g) for g in m.groups()[3:6] if g]
    if clock and (clock[0] >= 24 or clock[1] >= 60 or clock[2] >= 60):
        return False
    tz = m.groups()[6]
    return not tz or tz == "Z" or (int(tz[1:3]) <= 24 and int(tz[4:6]) <= 60)


def parse_timestamp(s: str) -> bool:
    """yaml.v2's ``parseTimestamp``: whether ``s`` is one of its accepted timestamp forms."""
    if not re.match(r"^\d{4}-", s):
        return False
    for fmt in _TS_FORMATS:
        m = fmt.match(s)
        if m and _timestamp_ok(m):
            return True
    return False


def _resolve_number(tag: str, text: str) -> tuple[str, Resolved] | None:
    """The 'D'/'S' branch of yaml.v2's ``resolve``."""
    if tag in ("", TIMESTAMP_TAG) and parse_timestamp(text):
        return TIMESTAMP_TAG, Resolved("time.Time", text)
    plain = text.replace("_", "")
    as_int = go_parse_int(plain)
    if as_int is not None:
        return INT_TAG, Resolved("int", as_int)
    as_uint = go_parse_int(plain, unsigned=True)
    if as_uint is not None:
        return INT_TAG, Resolved("uint64", as_uint)
    as_float = go_parse_float(plain)
    if as_float is not None:
        return FLOAT_TAG, Resolved("float64", as_float)
    if plain.startswith("0b"):
        for candidate, kind in (
            (go_parse_int(plain[2:], 2), "int"),
            (go_parse_int(plain[2:], 2, unsigned=True), "uint64"),
        ):
            if candidate is not None:
                return INT_TAG, Resolved(kind, candidate)
    elif plain.startswith("-0b"):
        candidate = go_parse_int("-" + plain[3:], 2)
        if candidate is not None:
            return INT_TAG, Resolved("int", candidate)
    return None


def _resolve_untagged(tag: str, text: str) -> tuple[str, Resolved]:
    hint = "N" if text == "" else _HINTS.get(text[0])
    if hint is None or tag in (STR_TAG, BINARY_TAG):
        return STR_TAG, Resolved("string", text)
    if text in _RESOLVE_MAP:
        return _RESOLVE_MAP[text]
    if hint == ".":
        as_float = go_parse_float(text)
        if as_float is not None:
            return FLOAT_TAG, Resolved("float64", as_float)
    elif hint in ("D", "S"):
        found = _resolve_number(tag, text)
        if found is not None:
            return found
    return STR_TAG, Resolved("string", text)


def resolve(tag: str, text: str) -> tuple[str, Resolved]:
    """yaml.v2's ``resolve(tag, in)``; raises the fatal ``cannot decode`` error it raises."""
    if tag not in _RESOLVABLE_TAGS:
        return tag, Resolved("string", text)
    rtag, out = _resolve_untagged(tag, text)
    if tag in ("", rtag, STR_TAG, BINARY_TAG):
        return rtag, out
    if tag == FLOAT_TAG and rtag == INT_TAG and out.gotype == "int":
        return FLOAT_TAG, Resolved("float64", float(out.value))
    raise GoYAMLError(f"yaml: cannot decode {short_tag(rtag)} `{text}` as a {short_tag(tag)}")


# ------------------------------------------------------------------ Go conversions


def go_float_to_int64(f: float) -> int:
    """``int64(f)`` as Go on amd64 computes it (out of range gives MinInt64)."""
    if math.isnan(f) or f >= 2.0**63 or f < -(2.0**63):
        return MIN_INT64
    return int(f)


def go_float_to_uint64(f: float) -> int:
    """``uint64(f)`` as Go on amd64 computes it."""
    if f >= 2.0**63:
        return (go_float_to_int64(f - 2.0**63) ^ (1 << 63)) & MAX_UINT64
    return go_float_to_int64(f) & MAX_UINT64


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def go_parse_duration(s: str) -> int | None:
    """Go's ``time.ParseDuration``; nanoseconds or ``None``."""
    sign = -1 if s.startswith("-") else 1
    body = s[1:] if s[:1] in "+-" else s
    if body == "0":
        return 0
    if not body:
        return None
    total = 0.0
    pos = 0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if not m:
            return None
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if total > MAX_INT64:
        return None
    return sign * int(total)


def _fits_signed(value: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= value < (1 << (bits - 1))


def _fits_unsigned(value: int, bits: int) -> bool:
    return 0 <= value < (1 << bits)


def _scalar_to_int(t: GoType, r: Resolved) -> int | None:
    if r.gotype in ("int", "int64", "uint64") and _fits_signed(r.value, t.bits):
        return r.value if r.gotype != "uint64" or r.value <= MAX_INT64 else None
    if r.gotype == "float64" and r.value <= 2.0**63:
        as_int = go_float_to_int64(r.value)
        return as_int if _fits_signed(as_int, t.bits) else None
    if r.gotype == "string" and t.duration:
        return go_parse_duration(r.value)
    return None


def _scalar_to_uint(t: GoType, r: Resolved) -> int | None:
    if r.gotype in ("int", "int64", "uint64"):
        return r.value if _fits_unsigned(r.value, t.bits) else None
    if r.gotype == "float64" and r.value <= 2.0**64:
        as_uint = go_float_to_uint64(r.value)
        return as_uint if _fits_unsigned(as_uint, t.bits) else None
    return None


# ------------------------------------------------------------------------ decoding


def _is_merge(n: Node) -> bool:
    return n.kind == SCALAR and n.value == "<<" and (n.implicit or n.tag == MERGE_TAG)


def _is_null(n: Node) -> bool:
    if n.tag == NULL_TAG:
        return True
    return n.kind == SCALAR and n.tag == "" and (n.value in ("null", "~") or (n.value == "" and n.implicit))


class Decoder:
    """yaml.v2's ``decoder`` in strict mode, producing Python values for Go types.

    Values: ``str``/``int``/``bool`` for scalars, ``dict`` (YAML key -> value) for structs
    and maps, ``list`` for slices; ``None`` is a nil slice, map or pointer.
    """

    def __init__(self) -> None:
        self.terrors: list[str] = []
        self._active_aliases: set[int] = set()

    def terror(self, n: Node, tag: str, t: GoType) -> None:
        """Record ``cannot unmarshal`` exactly as yaml.v2's ``terror``."""
        if n.tag:
            tag = n.tag
        value = n.value
        if tag not in (SEQ_TAG, MAP_TAG):
            shown = _go_bytes_prefix(value, 7) + "..." if _go_bytes_len(value) > 10 else value
            value = " `" + shown + "`"
        self.terrors.append(f"line {n.line + 1}: cannot unmarshal {short_tag(tag)}{value} into {t.name}")

    def unmarshal(self, n: Node, t: GoType, cur: Any) -> tuple[bool, Any]:
        """Decode node ``n`` into a value of type ``t`` currently holding ``cur``."""
        if n.kind == ALIAS:
            return self._alias(n, t, cur)
        if not _is_null(n):
            if t.kind == "ptr":
                assert t.elem is not None
                inner = cur if cur is not None else zero(t.elem)
                return self.unmarshal(n, t.elem, inner)
            if t.unmarshal is not None:
                return self._call_unmarshaler(n, t, cur)
        if n.kind == SCALAR:
            return self._scalar(n, t, cur)
        if n.kind == MAPPING:
            return self._mapping(n, t, cur)
        return self._sequence(n, t, cur)

    def _alias(self, n: Node, t: GoType, cur: Any) -> tuple[bool, Any]:
        if id(n) in self._active_aliases:
            raise GoYAMLError(f"yaml: anchor '{n.value}' value contains itself")
        self._active_aliases.add(id(n))
        try:
            assert n.alias is not None
            return self.unmarshal(n.alias, t, cur)
        finally:
            self._active_aliases.discard(id(n))

    def _call_unmarshaler(self, n: Node, t: GoType, cur: Any) -> tuple[bool, Any]:
        terrlen = len(self.terrors)

        def decode_into(target: GoType) -> Any:
            _ok, value = self.unmarshal(n, target, zero(target))
            if len(self.terrors) > terrlen:
                issues = self.terrors[terrlen:]
                del self.terrors[terrlen:]
                raise _TypeErrors(issues)
            return value

        assert t.unmarshal is not None
        try:
            return True, t.unmarshal(decode_into)
        except _TypeErrors as exc:
            self.terrors.extend(exc.issues)
            return False, cur

    def _scalar(self, n: Node, t: GoType, cur: Any) -> tuple[bool, Any]:
        if n.tag == "" and not n.implicit:
            tag, resolved = STR_TAG, Resolved("string", n.value)
        else:
            tag, resolved = resolve(n.tag, n.value)
            if tag == BINARY_TAG:
                try:
                    raw = base64.b64decode(resolved.value, validate=True)
                except (binascii.Error, ValueError):
                    raise GoYAMLError("yaml: !!binary value contains invalid base64 data") from None
                resolved = Resolved("string", raw.decode("utf-8", "surrogateescape"))
        if resolved.gotype == "nil":
            return True, zero(t)
        value = self._convert_scalar(n, tag, resolved, t)
        if value is None:
            self.terror(n, tag, t)
            return False, cur
        return True, value

    @staticmethod
    def _convert_scalar(n: Node, tag: str, r: Resolved, t: GoType) -> Any:
        if t.kind == "string":
            return r.value if tag == BINARY_TAG else n.value
        if t.kind == "int":
            return _scalar_to_int(t, r)
        if t.kind == "uint":
            return _scalar_to_uint(t, r)
        if t.kind == "bool" and r.gotype == "bool":
            return r.value
        return None

    def _sequence(self, n: Node, t: GoType, cur: Any) -> tuple[bool, Any]:
        if t.kind != "slice":
            self.terror(n, SEQ_TAG, t)
            return False, cur
        assert t.elem is not None
        out = []
        for child in n.children:
            good, value = self.unmarshal(child, t.elem, zero(t.elem))
            if good:
                out.append(value)
        return True, out

    def _mapping(self, n: Node, t: GoType, cur: Any) -> tuple[bool, Any]:
        if t.kind == "struct":
            return True, self._mapping_struct(n, t, cur)
        if t.kind != "map":
            self.terror(n, MAP_TAG, t)
            return False, cur
        assert t.elem is not None
        out = cur if cur is not None else {}
        key_type = go_string()
        for key_node, value_node in zip(n.children[::2], n.children[1::2], strict=True):
            if _is_merge(key_node):
                out = self._merge(value_node, t, out)
                continue
            good, key = self.unmarshal(key_node, key_type, "")
            if not good:
                continue
            good, value = self.unmarshal(value_node, t.elem, zero(t.elem))
            if not good:
                continue
            if key in out:
                self.terrors.append(f"line {value_node.line + 1}: key {go_quote(key)} already set in map")
                continue
            out[key] = value
        return True, out

    def _mapping_struct(self, n: Node, t: GoType, cur: dict[str, Any]) -> dict[str, Any]:
        fields = t.field_map()
        done: set[str] = set()
        key_type = go_string()
        for key_node, value_node in zip(n.children[::2], n.children[1::2], strict=True):
            if _is_merge(key_node):
                cur = self._merge(value_node, t, cur)
                continue
            good, name = self.unmarshal(key_node, key_type, "")
            if not good:
                continue
            info = fields.get(name)
            if info is None:
                self.terrors.append(f"line {key_node.line + 1}: field {name} not found in type {t.name}")
                continue
            if name in done:
                self.terrors.append(f"line {key_node.line + 1}: field {name} already set in type {t.name}")
                continue
            done.add(name)
            _ok, cur[name] = self.unmarshal(value_node, info.type, cur[name])
        return cur

    def _merge(self, n: Node, t: GoType, out: Any) -> Any:
        def want_map() -> GoYAMLError:
            return GoYAMLError("yaml: map merge requires map or sequence of maps as the value")

        def is_map(node: Node) -> bool:
            target = node.alias if node.kind == ALIAS else node
            return target is not None and target.kind == MAPPING

        if n.kind in (MAPPING, ALIAS):
            if not is_map(n):
                raise want_map()
            return self.unmarshal(n, t, out)[1]
        if n.kind != SEQUENCE:
            raise want_map()
        for child in reversed(n.children):
            if not is_map(child):
                raise want_map()
            out = self.unmarshal(child, t, out)[1]
        return out


def unmarshal_strict(data: bytes | str, t: GoType, initial: Any) -> Any:
    """``yaml.UnmarshalStrict(data, &v)`` where ``v`` of type ``t`` holds ``initial``.

    Returns the decoded value (``initial`` is deep-copied first).  Raises
    :class:`GoYAMLError` whose text is exactly Go's ``err.Error()``.
    """
    value = copy.deepcopy(initial)
    root = parse(data)
    if root is None:
        return value
    decoder = Decoder()
    _ok, value = decoder.unmarshal(root, t, value)
    if decoder.terrors:
        raise GoYAMLError("yaml: unmarshal errors:\n  " + "\n  ".join(decoder.terrors))
    return value
