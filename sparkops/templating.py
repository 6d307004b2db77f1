"""Workflow templates: Jinja2 in a sandbox, with no I/O and bounded size, time and loop work.

Templates come from workflow authors, so they are untrusted code. Besides Jinja2's sandbox
(no `_`-prefixed attributes, no str.format escapes, no mutation of data), every render runs
under a budget kept in a context variable (so it works in worker threads, without signals):

- wall time, checked at every attribute/item access, call, operator, loop iteration and
  output chunk;
- size: operators, calls and filters that can multiply data (`*`, `**`, `%`, `~`, `join`,
  `replace`, `format`, ...) estimate their result *before* building it, and the rendered
  string is capped;
- loop iterations (`range` is capped too), and the characters a render may produce in total,
  buffered blocks (`{% set %}...{% endset %}`, macros) included;
- one total for everything a `render_value()` call returns (all the templates of a step's
  input or of a run's output together, MAX_TOTAL_SIZE): each value rendered is charged to it,
  and no operation may build a value bigger than what is left of it, so 300 keys of
  `{{ 'a' * 10**6 }}` stop at the limit instead of holding 300 MB.

A value that is exactly one `{{ expression }}` keeps its native JSON type.

Secrets (`{{ secrets.NAME }}`) are `SecretValue` objects: plain interpolation renders them
whole, and nothing may transform them. Filters, operators, `~`, calls, attribute and item
access, and loops refuse a secret, a container holding one, and any string that holds the
value of a secret read during the render (`{% set %}` blocks, macros and `join` turn a secret
into a plain string; the value check catches it there), with an error naming the secret.
"""

from __future__ import annotations

import json
import math
import re
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache, update_wrapper, wraps
from typing import Any

from jinja2 import (
    StrictUndefined,
    TemplateSyntaxError,
    UndefinedError,
    nodes,
    pass_environment,
    pass_eval_context,
)
from jinja2 import filters as jinja_filters
from jinja2.environment import Template
from jinja2.meta import find_undeclared_variables
from jinja2.nodes import EvalContext
from jinja2.parser import Parser
from jinja2.runtime import LoopContext, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter, SecurityError
from jinja2.visitor import NodeTransformer

from sparkops.errors import InvalidInput
from sparkops.secret_values import SecretValue, TemplateSecrets, accessing

MAX_OUTPUT_SIZE = 1_000_000  # characters in one rendered string (or one intermediate string)
MAX_VALUE_SIZE = 10_000_000  # estimated JSON size of a native `{{ expression }}` result
MAX_TOTAL_SIZE = 2_000_000  # characters of all the values one render_value() call returns
MAX_RENDER_SECONDS = 2.0  # wall time for one render_value()/evaluate_condition() call
MAX_RANGE = 10_000
MAX_LOOP_ITERATIONS = 100_000  # per render, all loops together
MAX_INT_BITS = 4096
MAX_NESTING = 100

#: Names a template may use at run time; validation refuses any other.
ROOTS = frozenset({"input", "steps", "run", "secrets"})

_MARKERS = ("{{", "{%", "{#")


class TemplateError(InvalidInput):
    error_type = "template_error"

    def __init__(self, detail: str, *, lineno: int | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.lineno = lineno


class TemplateSecurityError(TemplateError):
    error_type = "template_security_error"


# --- the per-render budget ---------------------------------------------------------------


@dataclass
class _Budget:
    deadline: float
    timeout: float
    max_size: int
    secrets: dict[str, str]  # value -> name of the secrets read during the render
    total: int = MAX_TOTAL_SIZE
    emitted: int = 0
    iterations: int = 0
    rendered: int = 0  # characters of the values rendered so far, charged against `total`

    def left(self) -> int:
        return self.total - self.rendered

    def charge(self, size: int) -> None:
        self.rendered += size
        if self.rendered > self.total:
            raise TemplateSecurityError(
                f"Rendered values are larger than the limit of {self.total} characters in total "
                "(all the templates of one step or output together)."
            )


_budget: ContextVar[_Budget | None] = ContextVar("sparkops_template_budget", default=None)


@contextmanager
def _render_budget(max_size: int, timeout: float, total: int = MAX_TOTAL_SIZE) -> Iterator[_Budget]:
    with accessing() as secrets:
        budget = _Budget(
            deadline=time.monotonic() + timeout,
            timeout=timeout,
            max_size=max_size,
            secrets=secrets,
            total=total,
        )
        token = _budget.set(budget)
        try:
            yield budget
        finally:
            _budget.reset(token)


def _tick() -> None:
    budget = _budget.get()
    if budget is not None and time.monotonic() > budget.deadline:
        raise TemplateSecurityError(
            f"Template rendering took longer than the limit of {budget.timeout:g} seconds."
        )


def _limit() -> int:
    """The biggest value an operation may build: one string's limit, or less when that is
    more than is left of the render's total (so nothing huge is built only to be refused)."""
    # Filters also run at compile time (constant folding), outside any budget.
    budget = _budget.get()
    return min(budget.max_size, max(budget.left(), 0)) if budget is not None else MAX_OUTPUT_SIZE


def _too_big(what: str) -> TemplateSecurityError:
    budget = _budget.get()
    if budget is not None and budget.left() < budget.max_size:
        return TemplateSecurityError(
            f"{what} would exceed the {budget.left()} characters left of the limit of "
            f"{budget.total} characters in total (all the templates of one step or output "
            "together)."
        )
    return TemplateSecurityError(f"{what} would exceed the size limit of {_limit()} characters.")


def _emit(size: int) -> None:
    """Count characters produced anywhere in the render, including output that a block
    buffers and later discards, so buffered blocks cannot grow without bound."""
    budget = _budget.get()
    if budget is None:
        return
    budget.emitted += size
    if budget.emitted > 4 * budget.max_size:
        raise TemplateSecurityError(
            f"Template produced more than {4 * budget.max_size} characters in total."
        )


def _size(value: Any, limit: int) -> int:
    """Estimate len(str(value)) without building it; stops as soon as it passes `limit`, so the
    cost is bounded even for a list holding the same big string a million times."""
    total = 0
    stack = [value]
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen % 1024 == 0:
            _tick()
        if isinstance(item, str | bytes | bytearray):
            total += len(item)
        elif item is None or isinstance(item, bool | float):
            total += 24
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            if total <= limit:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            if total <= limit:
                stack.extend(item)
        else:
            total += 32
        if total > limit:
            return total
    return total


def _check_size(value: Any, what: str) -> None:
    limit = _limit()
    if _size(value, limit) > limit:
        raise _too_big(what)


# --- secrets are whole values ------------------------------------------------------------

MAX_SECRET_SCAN = 100_000  # items looked at when checking a value for secrets


def _secret_in(value: Any) -> str | None:
    """The name of a secret that `value` is, holds, or whose value it contains as text (the
    `secrets` mapping itself counts as holding them all)."""
    if isinstance(value, SecretValue):
        return value.name
    if isinstance(value, TemplateSecrets):
        return "secrets"
    budget = _budget.get()
    known = budget.secrets if budget is not None else {}
    if not known:
        # No secret value has been read in this render (reading one creates a SecretValue,
        # which registers it), so no container or string can hold one: skip the walk.
        return None
    stack = [value]
    seen = 0
    while stack and seen < MAX_SECRET_SCAN:
        item = stack.pop()
        seen += 1
        if seen % 1024 == 0:
            _tick()
        if isinstance(item, SecretValue):
            return item.name
        if isinstance(item, TemplateSecrets):
            return "secrets"
        if isinstance(item, str):
            for secret, name in known.items():
                if secret in item:
                    return name
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return None


def _refuse_secrets(what: str, *values: Any) -> None:
    for value in values:
        name = _secret_in(value)
        if name == "secrets":
            raise TemplateSecurityError(
                f"The secrets mapping cannot be used in {what}; use {{{{ secrets.NAME }}}}."
            )
        if name is not None:
            raise TemplateSecurityError(
                f"Secret {name!r} can only be used as a whole value ({what} is not allowed)."
            )


# --- size checks for the operations that multiply data -------------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")
_DIGITS = re.compile(r"\d+")


def _check_width(digits: str | None) -> None:
    if digits is None:
        return
    if digits == "*":
        raise TemplateSecurityError("A '*' width or precision in %-formatting is not allowed.")
    if len(digits) > 9 or int(digits) > _limit():
        raise _too_big("A format width or precision")


def _check_percent_format(fmt: str, args: Any) -> None:
    for match in _PERCENT_SPEC.finditer(fmt):
        for digits in match.groups():
            _check_width(digits)
    limit = _limit()
    if len(fmt) + _size(args, limit) > limit:
        raise _too_big("The formatted string")


def _check_format_spec(spec: str) -> None:
    for digits in _DIGITS.findall(spec):
        _check_width(digits)


def _is_seq(value: Any) -> bool:
    return isinstance(value, str | list | tuple)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    limit = _limit()
    both_ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and both_ints and right > 0 and abs(left) > 1:
        if (abs(left).bit_length() - 1) * right > MAX_INT_BITS:
            raise TemplateSecurityError(f"The result of '**' would exceed {MAX_INT_BITS} bits.")
    elif operator == "*" and both_ints:
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateSecurityError(f"The result of '*' would exceed {MAX_INT_BITS} bits.")
    elif operator == "*":
        seq, times = (left, right) if isinstance(right, int) else (right, left)
        multiplies = _is_seq(seq) and isinstance(times, int) and times > 1
        if multiplies and _size(seq, limit // times + 1) * times > limit:
            raise _too_big("The result of '*'")
    elif operator == "+" and _is_seq(left) and _is_seq(right):
        if len(left) + len(right) > limit:
            raise _too_big("The result of '+'")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left, right)


def _check_str_method(
    method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Pre-checks for the allowed str methods whose result can be much bigger than their
    inputs. Returns the (possibly materialized) arguments."""
    owner = method.__self__
    limit = _limit()
    if method.__name__ == "join" and len(args) == 1 and not kwargs:
        items = list(args[0])
        if len(owner) * len(items) + _size(items, limit) > limit:
            raise _too_big("The result of join()")
        return (items,)
    if method.__name__ == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, str) and isinstance(new, str):
            hits = owner.count(old) if old else len(owner) + 1
            count = args[2] if len(args) > 2 else kwargs.get("count", -1)
            if isinstance(count, int) and count >= 0:
                hits = min(hits, count)
            if len(owner) + hits * max(len(new) - len(old), 0) > limit:
                raise _too_big("The result of replace()")
    return args


def _guarded(iterable: Iterable[Any], literal_size: int) -> Iterator[Any]:
    """Every template `for` loop iterates through this (see _Guard)."""
    if isinstance(iterable, str | SecretValue):
        _refuse_secrets("a loop over it", iterable)
    for item in iterable:
        budget = _budget.get()
        if budget is not None:
            budget.iterations += 1
            if budget.iterations > MAX_LOOP_ITERATIONS:
                raise TemplateSecurityError(
                    f"Template loops ran more than {MAX_LOOP_ITERATIONS} iterations."
                )
            if literal_size:
                _emit(literal_size)
            _tick()
        yield item


# --- the environment --------------------------------------------------------------------

_STR_METHODS = frozenset(
    {
        "capitalize", "casefold", "count", "endswith", "find", "format", "format_map",
        "index", "isalnum", "isalpha", "isdecimal", "isdigit", "islower", "isnumeric",
        "isspace", "istitle", "isupper", "join", "lower", "lstrip", "partition",
        "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rpartition", "rsplit",
        "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper",
    }
)  # fmt: skip
_MAPPING_METHODS = frozenset({"get", "items", "keys", "values"})
_SEQUENCE_METHODS = frozenset({"count", "index"})
_LOOP_METHODS = frozenset({"cycle", "changed"})


class _Formatter(SandboxedFormatter):
    """str.format with the sandbox's attribute rules plus size checks on fields and widths."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        _tick()
        obj, first = super().get_field(field_name, args, kwargs)
        _check_size(obj, "A formatted field")
        return obj, first

    def format_field(self, value: Any, format_spec: str) -> Any:
        _check_format_spec(format_spec)
        return super().format_field(value, format_spec)


class SparkOpsSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if not callable(value) or isinstance(obj, Macro):
            return True
        # Methods: only a short list on the JSON types templates work with.
        if isinstance(obj, str):
            return attr in _STR_METHODS
        if isinstance(obj, Mapping):
            return attr in _MAPPING_METHODS
        if isinstance(obj, list | tuple):
            return attr in _SEQUENCE_METHODS
        if isinstance(obj, LoopContext):
            return attr in _LOOP_METHODS
        return False

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        # Fail at the access, not later when (or if) the undefined value is used.
        raise SecurityError(
            f"Access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed."
        )

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        if isinstance(obj, SecretValue | str):
            _refuse_secrets(f"attribute {attribute!r}", obj)
        # Data first: `steps.items.output` means the step called "items", not dict.items.
        if isinstance(obj, Mapping) and isinstance(attribute, str):
            try:
                return obj[attribute]
            except (LookupError, TypeError):
                pass
            if attribute.startswith("_") and not attribute.startswith("__"):
                return self.undefined(obj=obj, name=attribute)
        if attribute.startswith("_"):  # compiled `x.name` always passes a str
            raise SecurityError(f"Access to attribute {attribute!r} is not allowed.")
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        if isinstance(obj, SecretValue | str):
            _refuse_secrets("indexing or slicing", obj)
        if isinstance(argument, str) and argument.startswith("_"):
            try:
                return obj[argument]
            except (LookupError, TypeError):
                if isinstance(obj, Mapping) and not argument.startswith("__"):
                    return self.undefined(obj=obj, name=argument)
                raise SecurityError(f"Access to attribute {argument!r} is not allowed.") from None
        return super().getitem(obj, argument)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            _refuse_secrets("calling a method on it", owner)
        _refuse_secrets("passing it to a call", *args, *kwargs.values())
        if isinstance(obj, types.BuiltinMethodType) and isinstance(
            getattr(obj, "__self__", None), str
        ):
            args = _check_str_method(obj, args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(result, str) and len(result) > _limit():
            raise _too_big("The result of a call")
        return result

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        _refuse_secrets(f"the operator {operator!r}", left, right)
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # As in Jinja2, but with our formatter (size checks) and without the Markup branch
        # (autoescape is off).
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or (
            value.__name__ not in ("format", "format_map")
        ):
            return None
        f_self = value.__self__
        if not isinstance(f_self, str):
            return None
        is_format_map = value.__name__ == "format_map"
        formatter = _Formatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one positional argument")
                kwargs = args[0]
                args = ()
            return str(formatter.vformat(f_self, args, kwargs))

        return update_wrapper(wrapper, value)

    # Called from compiled templates through EnvironmentAttribute nodes (see _Guard).
    def sparkops_loop(self, iterable: Iterable[Any], literal_size: int) -> Iterator[Any]:
        return _guarded(iterable, literal_size)

    def sparkops_slice(self, obj: Any, start: Any, stop: Any, step: Any) -> Any:
        _tick()
        if isinstance(obj, SecretValue | str):
            _refuse_secrets("slicing", obj)
        return obj[start:stop:step]

    def sparkops_concat(self, *parts: Any) -> str:
        _refuse_secrets("the operator '~'", *parts)
        limit = _limit()
        total = 0
        for part in parts:
            total += _size(part, limit - total)
            if total > limit:
                raise _too_big("The result of '~'")
        return "".join(str(part) for part in parts)


def _finalize(value: Any) -> Any:
    if isinstance(value, SecretValue):
        value = str(value)
    size = len(value) if isinstance(value, str) else _size(value, _limit())
    if size > _limit():
        raise _too_big("An output expression")
    _emit(size)
    return value


def _safe_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise SecurityError(f"range() is limited to {MAX_RANGE} items.")
    return rng


def _checked_filter(
    func: Callable[..., Any], *, stringifies: bool, name: str = ""
) -> Callable[..., Any]:
    """Tick the clock, check the input of filters that turn it into a string, cap the output."""
    offset = 1 if hasattr(func, "jinja_pass_arg") else 0

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick()
        _refuse_secrets(f"the filter {name!r}", *args[offset:], *kwargs.values())
        if stringifies and len(args) > offset and not isinstance(args[offset], str):
            _check_size(args[offset], "The filter input")
        result = func(*args, **kwargs)
        if isinstance(result, str) and len(result) > _limit():
            raise _too_big("The filter result")
        return result

    return wrapper


def _filter_tojson(value: Any, indent: Any = None) -> str:
    _check_size(value, "The JSON")
    if indent is not None and (not isinstance(indent, int) or not 0 <= indent <= 8):
        raise TemplateError("tojson(indent) must be between 0 and 8.")
    # Plain JSON: Jinja's own tojson escapes <, >, & and ' for HTML, which prompts don't want.
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


def _filter_format(value: Any, *args: Any, **kwargs: Any) -> str:
    if args and kwargs:
        raise TemplateError("format() takes positional or keyword arguments, not both.")
    fmt = str(value)
    params = kwargs or args
    _check_percent_format(fmt, params)
    return fmt % params


@pass_environment
def _filter_attr(environment: SparkOpsSandbox, obj: Any, name: Any) -> Any:
    # Refuse Python internals by name, whether or not this object happens to have them.
    if str(name).startswith("_"):
        raise SecurityError(f"Access to attribute {str(name)!r} is not allowed.")
    return jinja_filters.do_attr(environment, obj, name)


@pass_eval_context
def _filter_join(
    eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: Any = None
) -> str:
    items = list(value)
    if len(str(d)) * len(items) + _size(items, _limit()) > _limit():
        raise _too_big("The result of join")
    return jinja_filters.sync_do_join(eval_ctx, items, d, attribute)


def _filter_replace(value: Any, old: Any, new: Any, count: int | None = None) -> str:
    _check_size(value, "The filter input")
    text, old, new = str(value), str(old), str(new)
    _check_str_method(text.replace, (old, new, -1 if count is None else count), {})
    return text.replace(old, new, -1 if count is None else count)


def _filter_indent(
    value: Any, width: int | str = 4, first: bool = False, blank: bool = False
) -> str:
    _check_size(value, "The filter input")
    text = str(value)
    pad = width if isinstance(width, int) else len(str(width))
    if len(text) + (text.count("\n") + 1) * max(pad, 0) > _limit():
        raise _too_big("The result of indent")
    return jinja_filters.do_indent(text, width, first, blank)


@pass_environment
def _filter_sum(
    environment: SparkOpsSandbox, iterable: Iterable[Any], attribute: Any = None, start: Any = 0
) -> Any:
    # Numbers only: summing lists or strings is quadratic.
    items = list(iterable)
    if attribute is not None:
        getter = jinja_filters.make_attrgetter(environment, attribute)
        items = [getter(item) for item in items]
    for item in [start, *items]:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise TemplateError("sum() only adds numbers.")
    return sum(items, start)


_PLAIN_FILTERS = (
    "abs", "count", "d", "default", "dictsort", "first", "float", "groupby", "int",
    "items", "last", "length", "list", "map", "max", "min", "reject", "rejectattr", "reverse",
    "round", "select", "selectattr", "sort", "unique",
)  # fmt: skip
_STRING_FILTERS = (
    "capitalize", "lower", "string", "striptags", "title", "trim", "truncate", "upper",
    "urlencode", "wordcount",
)  # fmt: skip
# Left out on purpose: center, wordwrap, batch, slice (can multiply their input), pprint,
# random, lipsum-style helpers, escape/safe/forceescape/xmlattr/urlize (HTML only),
# filesizeformat.


def _build_env() -> SparkOpsSandbox:
    environment = SparkOpsSandbox(
        undefined=StrictUndefined,
        autoescape=False,
        loader=None,
        optimized=False,  # no compile-time evaluation outside the render budget
        keep_trailing_newline=True,  # plain text renders back unchanged
        finalize=_finalize,
        auto_reload=False,
    )
    environment.globals.clear()
    environment.globals.update({"range": _safe_range, "dict": dict})
    filters: dict[str, Callable[..., Any]] = {}
    for name in _PLAIN_FILTERS:
        filters[name] = _checked_filter(jinja_filters.FILTERS[name], stringifies=False, name=name)
    for name in _STRING_FILTERS:
        filters[name] = _checked_filter(jinja_filters.FILTERS[name], stringifies=True, name=name)
    custom: dict[str, Callable[..., Any]] = {
        "attr": _filter_attr,
        "tojson": _filter_tojson,
        "format": _filter_format,
        "join": _filter_join,
        "replace": _filter_replace,
        "indent": _filter_indent,
        "sum": _filter_sum,
    }
    for name, func in custom.items():
        filters[name] = _checked_filter(func, stringifies=False, name=name)
    environment.filters.clear()
    environment.filters.update(filters)
    return environment


#: The one environment. Render only through this module's functions: they add the loop and
#: concatenation guards and the budget that the sandbox hooks rely on.
env = _build_env()


# --- compiling ---------------------------------------------------------------------------


class _Guard(NodeTransformer):
    """Route `for` loops and `~` through the environment so they are counted and capped,
    and refuse template composition (there is no loader anyway)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        literal = sum(len(data.data) for data in node.find_all(nodes.TemplateData))
        node.iter = nodes.Call(
            nodes.EnvironmentAttribute("sparkops_loop", lineno=node.lineno),
            [node.iter, nodes.Const(literal, lineno=node.lineno)],
            [],
            None,
            None,
            lineno=node.lineno,
        )
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Call(
            nodes.EnvironmentAttribute("sparkops_concat", lineno=node.lineno),
            list(node.nodes),
            [],
            None,
            None,
            lineno=node.lineno,
        )

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        # Jinja subscripts slices directly (not through environment.getitem).
        self.generic_visit(node)
        if not isinstance(node.arg, nodes.Slice) or node.ctx != "load":
            return node
        bounds = [
            part if part is not None else nodes.Const(None, lineno=node.lineno)
            for part in (node.arg.start, node.arg.stop, node.arg.step)
        ]
        return nodes.Call(
            nodes.EnvironmentAttribute("sparkops_slice", lineno=node.lineno),
            [node.node, *bounds],
            [],
            None,
            None,
            lineno=node.lineno,
        )

    def _refuse(self, node: nodes.Node) -> nodes.Node:
        raise TemplateSecurityError(
            f"Line {node.lineno}: include, import and extends are not allowed.",
            lineno=node.lineno,
        )

    visit_Include = visit_Import = visit_FromImport = visit_Extends = _refuse


def _is_template(value: str) -> bool:
    return any(marker in value for marker in _MARKERS)


def _syntax_error(exc: TemplateSyntaxError) -> TemplateError:
    return TemplateError(
        f"Template syntax error on line {exc.lineno}: {exc.message}", lineno=exc.lineno
    )


def _parse(source: str) -> nodes.Template:
    try:
        return env.parse(source)
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc) from None


def _parse_expression(source: str) -> nodes.Expr:
    try:
        parser = Parser(env, source, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            token = parser.stream.current
            raise TemplateSyntaxError(
                f"unexpected {token.value!r} after the expression", token.lineno
            )
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc) from None
    return expr


def _single_expression(tree: nodes.Template) -> nodes.Expr | None:
    """The expression of a template that is exactly one `{{ expression }}`, give or take
    surrounding whitespace."""
    if len(tree.body) != 1 or not isinstance(tree.body[0], nodes.Output):
        return None
    parts = [
        node
        for node in tree.body[0].nodes
        if not (isinstance(node, nodes.TemplateData) and not node.data.strip())
    ]
    if len(parts) != 1 or isinstance(parts[0], nodes.TemplateData):
        return None
    return parts[0]


def _tree(source: str, *, condition: bool) -> tuple[nodes.Template, nodes.Expr | None]:
    """The parsed template and, when it is one whole expression, that expression. A
    condition may also be a bare expression (`x > 1`)."""
    if condition and not _is_template(source):
        bare = _parse_expression(source)
        wrapped = nodes.Template([nodes.Output([bare])], lineno=1)
        wrapped.set_environment(env)
        return wrapped, bare
    tree = _parse(source)
    expr = _single_expression(tree)
    if condition and expr is None:
        raise TemplateError("A condition must be a single expression, such as {{ x > 1 }}.")
    return tree, expr


@lru_cache(maxsize=2048)
def _compile(source: str, *, condition: bool = False) -> tuple[Template, bool]:
    """(template, native): a native template assigns its one expression to `result`."""
    tree, expr = _tree(source, condition=condition)
    if expr is not None:
        target = nodes.Name("result", "store", lineno=1)
        tree = nodes.Template([nodes.Assign(target, expr, lineno=1)], lineno=1)
    tree = _Guard().visit(tree)
    tree.set_environment(env)
    try:
        return env.from_string(tree), expr is not None
    except TemplateSyntaxError as exc:  # unknown filters and tests are found at compile time
        raise _syntax_error(exc) from None


# --- rendering ---------------------------------------------------------------------------


@contextmanager
def _template_errors() -> Iterator[None]:
    try:
        yield
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateSecurityError(f"Template refused by the sandbox: {exc}") from None
    except UndefinedError as exc:
        raise TemplateError(f"Undefined value in template: {exc.message}") from None
    except TemplateSyntaxError as exc:
        raise _syntax_error(exc) from None
    except RecursionError:
        raise TemplateSecurityError("Template recursion is too deep.") from None
    except MemoryError:
        raise TemplateSecurityError("Template used too much memory.") from None
    except Exception as exc:  # anything else a template can cause is the author's error
        raise TemplateError(f"Template error: {type(exc).__name__}: {exc}") from None


def _evaluate(template: Template, context: Mapping[str, Any]) -> Any:
    ctx = template.new_context(dict(context))
    for _ in template.root_render_func(ctx):
        _tick()
    return ctx.vars["result"]


def _render_text(
    template: Template, context: Mapping[str, Any], max_size: int, budget: _Budget
) -> str:
    chunks = []
    size = 0
    for chunk in template.generate(dict(context)):
        size += len(chunk)
        if size > max_size:
            raise TemplateSecurityError(
                f"Rendered template is larger than the limit of {max_size} characters."
            )
        budget.charge(len(chunk))
        chunks.append(chunk)
        _tick()
    return "".join(chunks)


def _native_charged(value: Any, budget: _Budget) -> Any:
    remaining = [min(MAX_VALUE_SIZE, budget.left())]
    start = remaining[0]
    try:
        result = _native(value, remaining)
    except TemplateSecurityError:
        # Over the size it was given, and that was what is left of the render's total (not
        # the per-value cap): say the total ran out. Other refusals (a secret) stand as they are.
        if remaining[0] < 0 and start < MAX_VALUE_SIZE:
            budget.charge(start + 1)
        raise
    budget.charge(start - remaining[0])
    return result


def _native(value: Any, remaining: list[int], depth: int = 0) -> Any:
    """A JSON-able copy of an expression's result, size-capped."""
    if depth > MAX_NESTING:
        raise TemplateError(f"Expression result is nested deeper than {MAX_NESTING} levels.")
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises UndefinedError with the name
        raise TemplateError("Expression result is undefined.")
    remaining[0] -= 8
    if remaining[0] < 0:
        raise TemplateSecurityError(
            f"Expression result is larger than the limit of {MAX_VALUE_SIZE} characters."
        )
    if isinstance(value, SecretValue):
        value = str(value)
    elif isinstance(value, TemplateSecrets):
        raise TemplateSecurityError("The secrets mapping cannot be output; use secrets.NAME.")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TemplateError(f"Expression result {value} is not a valid JSON number.")
        return value
    if isinstance(value, str):
        remaining[0] -= len(value)
        if remaining[0] < 0:
            raise TemplateSecurityError(
                f"Expression result is larger than the limit of {MAX_VALUE_SIZE} characters."
            )
        return str(value)
    if isinstance(value, Mapping):
        return {
            _native_key(key): _native(item, remaining, depth + 1) for key, item in value.items()
        }
    if isinstance(value, list | tuple | range | Iterator):
        _tick()
        return [_native(item, remaining, depth + 1) for item in value]
    raise TemplateError(f"Expression result of type {type(value).__name__!r} is not JSON.")


def _native_key(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    raise TemplateError(f"Dictionary key of type {type(key).__name__!r} is not JSON.")


def _render(value: Any, context: Mapping[str, Any], max_size: int, budget: _Budget) -> Any:
    if isinstance(value, str):
        if not _is_template(value):
            return value
        template, native = _compile(value)
        if native:
            return _native_charged(_evaluate(template, context), budget)
        return _render_text(template, context, max_size, budget)
    if isinstance(value, dict):
        return {key: _render(item, context, max_size, budget) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_render(item, context, max_size, budget) for item in value]
    return value


def render_value(
    value: Any,
    context: Mapping[str, Any],
    *,
    max_size: int = MAX_OUTPUT_SIZE,
    timeout: float = MAX_RENDER_SECONDS,
    max_total: int = MAX_TOTAL_SIZE,
) -> Any:
    """Render every template string in `value` (dict keys are left alone). A string that is
    one whole `{{ expression }}` becomes the expression's JSON value; other templates
    become strings. `timeout` and `max_total` (characters of all the rendered values
    together; plain strings that are not templates are not counted) cover the whole call."""
    with _render_budget(max_size, timeout, max_total) as budget, _template_errors():
        return _render(value, context, max_size, budget)


def evaluate_condition(
    expr: str,
    context: Mapping[str, Any],
    *,
    max_size: int = MAX_OUTPUT_SIZE,
    timeout: float = MAX_RENDER_SECONDS,
) -> bool:
    """A node's `when`: `{{ x > 1 }}` or the bare `x > 1`. Truthiness is Jinja's (Python's):
    the string "false" is true."""
    with _render_budget(max_size, timeout), _template_errors():
        template, _ = _compile(expr, condition=True)
        result = _evaluate(template, context)
        if isinstance(result, Undefined):
            str(result)
        return bool(result)


# --- static checks -----------------------------------------------------------------------


def _check(source: str, *, condition: bool) -> None:
    with _template_errors():
        tree, _ = _tree(source, condition=condition)
        # Defence in depth: the sandbox refuses these at run time; saying so at save time
        # gives the author a clear message early.
        for node in tree.find_all(nodes.Getattr):
            if node.attr.startswith("__"):
                raise TemplateSecurityError(
                    f"Line {node.lineno}: access to {node.attr!r} is not allowed.",
                    lineno=node.lineno,
                )
        _compile(source, condition=condition)


def check_syntax(template: str) -> None:
    """Raise TemplateError (with the line) if `template` does not compile."""
    _check(template, condition=False)


def check_condition(expr: str) -> None:
    """Raise TemplateError unless `expr` is one expression (`{{ x > 1 }}` or `x > 1`)."""
    _check(expr, condition=True)


def _templates(value: Any, *, condition: bool) -> Iterator[nodes.Template]:
    if isinstance(value, str):
        if condition or _is_template(value):
            with _template_errors():
                yield _tree(value, condition=condition)[0]
    elif isinstance(value, dict):
        for item in value.values():
            yield from _templates(item, condition=condition)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _templates(item, condition=condition)


def _step_access(tree: nodes.Template) -> tuple[set[str], bool]:
    """Literal step ids used as `steps.<id>` / `steps['<id>']`, and whether `steps` is also
    used any other way (which validation cannot check)."""
    ids: set[str] = set()
    consumed: set[int] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if not isinstance(node, nodes.Getattr | nodes.Getitem):  # find_all types their base
            continue
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "steps"):
            continue
        if isinstance(node, nodes.Getattr):
            ids.add(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            ids.add(node.arg.value)
        else:
            continue
        consumed.add(id(target))
    dynamic = any(
        node.name == "steps" and node.ctx == "load" and id(node) not in consumed
        for node in tree.find_all(nodes.Name)
    )
    return ids, dynamic


def referenced_steps(value: Any, *, condition: bool = False) -> set[str]:
    """Step ids referenced as `steps.<id>` or `steps['<id>']` in the templates in `value`.
    With `condition=True`, `value` is a `when` (a bare expression is allowed)."""
    found: set[str] = set()
    for tree in _templates(value, condition=condition):
        found |= _step_access(tree)[0]
    return found


def has_dynamic_step_access(value: Any, *, condition: bool = False) -> bool:
    """True if a template uses `steps` other than with a literal id (`steps[name]`,
    `steps|list`, ...): such references cannot be checked against depends_on."""
    return any(_step_access(tree)[1] for tree in _templates(value, condition=condition))


def referenced_roots(value: Any, *, condition: bool = False) -> set[str]:
    """Top-level names the templates in `value` read from the context (loop variables,
    `{% set %}` names and globals such as `range` excluded)."""
    found: set[str] = set()
    for tree in _templates(value, condition=condition):
        with _template_errors():
            found |= find_undeclared_variables(tree)
    return found - set(env.globals)
