"""Grammar libraries for structured output (`response_format` json_object / json_schema),
measured on this machine: llguidance and outlines-core side by side, xgrammar checked for
whether it imports at all without torch.

For each library: compile time of four JSON schemas (cold = first compile of that schema
in the process, warm = the repeats), the per-token cost of the allowed-token mask while a
valid document of each schema is walked token by token (every walk on a freshly compiled
grammar, as each request would have), which JSON Schema keywords compile and are actually
enforced (a valid and an invalid instance per keyword) with the error text of those that
are not supported, and the packages' size, dependencies, licence and wheels.

The libraries live in their own venv so the server's .venv stays untouched:

    python3 -m venv /tmp/gvenv
    /tmp/gvenv/bin/pip install -q llguidance==1.9.1 outlines-core==0.2.14 tokenizers numpy
    /tmp/gvenv/bin/pip install -q --no-deps xgrammar==0.2.9   # optional, import check only
    /tmp/gvenv/bin/python bench/grammar_libs.py                  # --reps N, --skip-wheels

The tokenizer is SmolLM2-135M's HF tokenizer.json as `bench/convert_gguf.py` writes it
(bench/out/smollm2-135m-hf). Measurements run one at a time in this process (the machine's
few cores are shared with other work); the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
TOKENIZER_JSON = BENCH_DIR / "out" / "smollm2-135m-hf" / "tokenizer.json"
RESULTS_FILE = BENCH_DIR / "results" / "grammar-libs.md"
EOS_ID = 2  # SmolLM2's <|im_end|>
BITS = 32  # both libraries write masks as int32 words: bit i of word w = token 32*w + i
# A model's embedding may have more rows than its tokenizer has tokens (padding to a
# multiple of 64/128): the mask must then cover V rows with the extra ones forbidden.
PADDED_VOCAB_EXTRA = 64
DEFAULT_REPS = 3
ERROR_CHARS = 150  # error texts are cut to this in the tables

# What the server will pass llguidance (app/text/grammar.py): json.dumps's separators and
# no free-form whitespace, so a weak model cannot pad forever. outlines-core's regexes
# allow one optional space around separators, which the same documents satisfy.
LLG_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ",
                                    "key_separator": ": "}

# pip 23 expands a macOS tag to the older macOS versions but not a manylinux_2_N tag to
# older glibc versions, so those are listed one by one (glibc 2.17 .. 2.39).
GLIBC_MINORS = range(17, 40)
PIP_PLATFORMS = {
    "linux x86-64": [f"manylinux_2_{m}_x86_64" for m in GLIBC_MINORS],
    "linux aarch64": [f"manylinux_2_{m}_aarch64" for m in GLIBC_MINORS],
    "macOS arm64": ["macosx_15_0_arm64"],
}
PIP_PYTHON = "3.11"  # the server's venv
PACKAGES = {"llguidance": "1.9.1", "outlines-core": "0.2.14", "xgrammar": "0.2.9"}

# --- the four benchmark schemas, each with a valid document that gets walked ----------

SCHEMA_NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                           "zip": {"type": "string"}},
            "required": ["street", "city", "zip"],
            "additionalProperties": False,
        },
        "contact": {
            "type": "object",
            "properties": {"email": {"type": "string"}, "phone": {"type": "string"}},
            "required": ["email", "phone"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "address", "contact"],
    "additionalProperties": False,
}
SCHEMA_ENUM_ARRAY = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["pending", "shipped", "delivered", "cancelled"]},
        "priority": {"enum": ["low", "normal", "high"]},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"},
                               "price": {"type": "number"}},
                "required": ["sku", "qty", "price"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["status", "priority", "items"],
    "additionalProperties": False,
}
SCHEMA_CONSTRAINED = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        "label": {"type": "string", "minLength": 3, "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "score": {"type": "integer", "minimum": -10, "maximum": 10},
    },
    "required": ["code", "label", "age", "score"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    schema: dict[str, Any]
    document: Any


CASES = [
    Case("a", "any JSON object (json_object)", {"type": "object"},
         {"title": "Weekly report", "count": 42, "ratio": 0.75, "tags": ["alpha", "beta"],
          "owner": {"name": "Ana Lima", "active": True}, "notes": None}),
    Case("b", "nested objects, required fields", SCHEMA_NESTED,
         {"name": "Grace Hopper", "age": 85,
          "address": {"street": "12 Navy Yard Rd", "city": "Arlington", "zip": "22202"},
          "contact": {"email": "grace@example.org", "phone": "+1 555 0100"}}),
    Case("c", "enum + array of objects", SCHEMA_ENUM_ARRAY,
         {"status": "shipped", "priority": "high",
          "items": [{"sku": "A-100", "qty": 2, "price": 9.99},
                    {"sku": "B-220", "qty": 1, "price": 24.5},
                    {"sku": "C-3", "qty": 12, "price": 0.35}]}),
    Case("d", "pattern, minLength/maxLength, integer min/max", SCHEMA_CONSTRAINED,
         {"code": "ABC-1234", "label": "Quarterly audit", "age": 42, "score": -3}),
]

# --- JSON Schema keywords: (name, schema, a valid instance, an invalid instance) ------


def _obj(props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A closed object with every property required, as OpenAI's strict mode demands."""
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False, **extra}


TREE = {"$defs": {"node": _obj({"v": {"type": "integer"},
                                "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}})},
        "$ref": "#/$defs/node"}
DEEP_TREE = {"v": 1, "kids": [{"v": 2, "kids": [{"v": 3, "kids": [{"v": 4, "kids": [
    {"v": 5, "kids": []}]}]}]}]}

FEATURES: list[tuple[str, dict[str, Any], Any, Any]] = [
    ("$ref / $defs", {"$defs": {"pt": _obj({"x": {"type": "integer"}})},
                      **_obj({"p": {"$ref": "#/$defs/pt"}})},
     {"p": {"x": 1}}, {"p": {"x": "1"}}),
    ("recursive $ref (5 levels)", TREE, DEEP_TREE, {"v": 1}),
    ("anyOf", _obj({"a": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}),
     {"a": "x"}, {"a": True}),
    ("oneOf", _obj({"a": {"oneOf": [{"type": "integer"}, {"type": "string"}]}}),
     {"a": 3}, {"a": None}),
    ("allOf", {"allOf": [_obj({"a": {"type": "integer"}})]}, {"a": 1}, {"a": "1"}),
    ("type list (nullable)", _obj({"a": {"type": ["string", "null"]}}), {"a": None}, {"a": 1}),
    ("enum", _obj({"c": {"enum": ["red", "green"]}}), {"c": "green"}, {"c": "blue"}),
    ("const", _obj({"v": {"const": "x1"}}), {"v": "x1"}, {"v": "x2"}),
    ("pattern", _obj({"s": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}}),
     {"s": "ABC-1234"}, {"s": "AB-1234"}),
    ("minLength / maxLength", _obj({"s": {"type": "string", "minLength": 3, "maxLength": 5}}),
     {"s": "abcd"}, {"s": "ab"}),
    ("minimum / maximum (integer)", _obj({"n": {"type": "integer", "minimum": 1, "maximum": 100}}),
     {"n": 100}, {"n": 101}),
    ("minimum / maximum (number)", _obj({"x": {"type": "number", "minimum": 0.5, "maximum": 2.5}}),
     {"x": 1.25}, {"x": 3.0}),
    ("exclusiveMinimum", _obj({"n": {"type": "integer", "exclusiveMinimum": 0}}),
     {"n": 1}, {"n": 0}),
    ("multipleOf", _obj({"n": {"type": "integer", "multipleOf": 5}}), {"n": 15}, {"n": 7}),
    ("minItems / maxItems", _obj({"l": {"type": "array", "items": {"type": "integer"},
                                        "minItems": 1, "maxItems": 2}}),
     {"l": [1, 2]}, {"l": []}),
    ("uniqueItems", _obj({"l": {"type": "array", "items": {"type": "integer"},
                                "uniqueItems": True}}), {"l": [1, 2]}, {"l": [1, 1]}),
    ("additionalProperties: false", _obj({"a": {"type": "integer"}}),
     {"a": 1}, {"a": 1, "b": 2}),
    ("additionalProperties absent (extra keys allowed)",
     {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
     {"a": 1, "zz": 2}, {"zz": 2}),
    ("optional property (not in required)",
     {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
      "required": ["a"], "additionalProperties": False},
     {"a": 1}, {"b": 2}),
    ("format: date-time", _obj({"t": {"type": "string", "format": "date-time"}}),
     {"t": "2024-05-01T12:30:00Z"}, {"t": "yesterday"}),
    ("format: date", _obj({"t": {"type": "string", "format": "date"}}),
     {"t": "2024-05-01"}, {"t": "2024-13-45x"}),
    ("format: email", _obj({"t": {"type": "string", "format": "email"}}),
     {"t": "a@example.org"}, {"t": "not an email"}),
    ("format: uuid", _obj({"t": {"type": "string", "format": "uuid"}}),
     {"t": "123e4567-e89b-12d3-a456-426614174000"}, {"t": "123"}),
    ("format: unknown (foo-bar)", _obj({"t": {"type": "string", "format": "foo-bar"}}),
     {"t": "x"}, None),
    ("patternProperties", {"type": "object", "patternProperties": {"^x": {"type": "integer"}},
                           "additionalProperties": False}, {"x1": 1}, {"y": 1}),
    ("not", _obj({"a": {"not": {"type": "string"}}}), {"a": 1}, {"a": "s"}),
    ("if / then / else", {"type": "object", "if": {"properties": {"a": {"const": 1}}},
                          "then": {"required": ["b"]}}, {"a": 1, "b": 2}, {"a": 1}),
    ("invalid schema (type: strng)", {"type": "strng"}, "x", None),
]


class CompileError(Exception):
    """The library refused the schema; str() is what a client's 400 would say."""


class WalkError(Exception):
    """A token of the valid document was refused: the library got the schema wrong."""


# --- the libraries behind one small interface -------------------------------------------


class Llguidance:
    name = "llguidance"
    mask_format = ("int32 bitmask words, filled in place (`fill_next_token_bitmask` / "
                   "`unsafe_compute_mask_ptr`); also `compute_bitmask()` bytes and "
                   "`compute_logit_bias()` (one byte per token)")

    def __init__(self, tokenizer_json: str, n_vocab: int) -> None:
        import llguidance
        import llguidance.numpy

        self.llg = llguidance
        self._fill = llguidance.numpy.fill_next_token_bitmask
        # n_vocab > the tokenizer's: the mask then has bits for the embedding's padding
        # rows, always 0, so the server can mask logits of the model's width directly.
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=n_vocab,
                                                eos_token=EOS_ID)

    def compile(self, schema: dict[str, Any]) -> Any:
        try:
            grammar = self.llg.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), overrides=LLG_JSON_OPTIONS)  # type: ignore[arg-type]
        except ValueError as exc:
            raise CompileError(str(exc)) from exc
        # LLMatcher never raises for a bad grammar: it starts in an error state instead.
        matcher = self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise CompileError(matcher.get_error())
        return matcher

    def start(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def validate(self, schema: dict[str, Any]) -> str:
        grammar = self.llg.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), overrides=LLG_JSON_OPTIONS)  # type: ignore[arg-type]
        is_error, messages = self.llg.LLMatcher.validate_grammar_with_warnings(
            grammar, self.tokenizer)
        return messages[0] if is_error and messages else ""

    def fill_mask(self, state: Any, words: np.ndarray) -> None:
        self._fill(state, words)  # words: int32[1, ceil(V/32)]

    def consume(self, state: Any, token: int) -> bool:
        return bool(state.consume_token(token))

    def is_accepting(self, state: Any) -> bool:
        return bool(state.is_accepting())

    def accepts(self, state: Any, ids: list[int]) -> bool:
        return bool(state.consume_tokens(ids)) and state.is_accepting()


class OutlinesCore:
    name = "outlines-core"
    mask_format = ("int32 bitmask words (`Guide.write_mask_into(ptr, numel, 4)`) or a "
                   "list of ids (`Guide.get_tokens()`, `Index.get_allowed_tokens(state)`)")

    def __init__(self, tokenizer_json: str) -> None:
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        self.oc = outlines_core
        self._regex = build_regex_from_schema
        # outlines-core can only load a tokenizer from the Hub; offline its Vocabulary
        # takes {token bytes: [ids]} without EOS, so decode the byte-level BPE here.
        self.vocabulary = outlines_core.Vocabulary(EOS_ID, byte_level_vocabulary(tokenizer_json))

    def compile(self, schema: dict[str, Any]) -> Any:
        try:
            regex = self._regex(json.dumps(schema))
            index = self.oc.Index(regex, self.vocabulary)
        except (ValueError, TypeError) as exc:
            raise CompileError(str(exc).strip()) from exc
        return index

    def start(self, compiled: Any) -> Any:
        return self.oc.Guide(compiled)

    def fill_mask(self, state: Any, words: np.ndarray) -> None:
        state.write_mask_into(words.ctypes.data, words.size, words.itemsize)

    def consume(self, state: Any, token: int) -> bool:
        try:
            state.advance(token, return_tokens=False)
        except ValueError:  # a token the regex does not allow here
            return False
        return True

    def is_accepting(self, state: Any) -> bool:
        return bool(state.is_finished())

    def accepts(self, state: Any, ids: list[int]) -> bool:
        return all(self.consume(state, t) for t in ids) and state.is_finished()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable-character table that byte-level BPE vocabularies use."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level_vocabulary(tokenizer_json: str) -> dict[bytes, list[int]]:
    spec = json.loads(tokenizer_json)
    special = {t["id"] for t in spec["added_tokens"] if t["special"]}  # EOS included
    decode = {c: b for b, c in bytes_to_unicode().items()}
    vocab: dict[bytes, list[int]] = {}
    for text, token_id in spec["model"]["vocab"].items():
        if token_id not in special:
            vocab.setdefault(bytes(decode[c] for c in text), []).append(token_id)
    return vocab


# --- measurements ------------------------------------------------------------------------


@dataclass
class CaseResult:
    compile_s: list[float] = field(default_factory=list)  # [0] is the cold one
    first_mask_us: list[float] = field(default_factory=list)
    mask_us: list[float] = field(default_factory=list)
    consume_us: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str = ""
    end_allows: str = ""  # what the mask allows once the document is complete


def walk(lib: Any, state: Any, ids: list[int], words: np.ndarray, out: CaseResult) -> None:
    """Mask before every token of a valid document, as a sampler would, then check EOS."""
    for i, token in enumerate(ids):
        t0 = time.perf_counter_ns()
        lib.fill_mask(state, words)
        t1 = time.perf_counter_ns()
        if not token_allowed(words, token):
            raise WalkError(f"document token {i} ({token}) not allowed by the mask")
        t2 = time.perf_counter_ns()
        if not lib.consume(state, token):
            raise WalkError(f"document token {i} ({token}) rejected")
        t3 = time.perf_counter_ns()
        (out.first_mask_us if i == 0 else out.mask_us).append((t1 - t0) / 1e3)
        out.consume_us.append((t3 - t2) / 1e3)
    lib.fill_mask(state, words)
    allowed = np.flatnonzero(unpack(words, words.size * BITS))
    accepting = lib.is_accepting(state)
    out.end_allows = (f"only EOS, accepting={accepting}" if allowed.tolist() == [EOS_ID]
                      else f"{allowed.size} tokens (EOS {'in' if EOS_ID in allowed else 'out'}), "
                           f"accepting={accepting}")


def measure_case(lib: Any, case: Case, ids: list[int], width: int, reps: int) -> CaseResult:
    out = CaseResult(tokens=len(ids))
    words = np.zeros((1, (width + BITS - 1) // BITS), dtype=np.int32)
    for _ in range(reps):
        t0 = time.perf_counter()
        try:
            state = lib.start(lib.compile(case.schema))
        except CompileError as exc:
            out.error = str(exc)
            return out
        out.compile_s.append(time.perf_counter() - t0)
        try:
            walk(lib, state, ids, words, out)
        except WalkError as exc:
            out.error = str(exc)
            return out
    return out


def unpack(words: np.ndarray, width: int) -> np.ndarray:
    """bool[width] from int32 mask words (little-endian bit order within each word)."""
    return np.unpackbits(words.reshape(-1).view(np.uint8), bitorder="little")[:width].astype(bool)


def token_allowed(words: np.ndarray, token: int) -> bool:
    return bool((int(words.reshape(-1)[token // BITS]) >> (token % BITS)) & 1)


def measure_features(lib: Any, tokenize: Callable[[str], list[int]]) -> dict[str, str]:
    """Per keyword: 'enforced', 'ignored' (invalid accepted), 'rejects valid', or the error."""
    verdicts = {}
    for name, schema, valid, invalid in FEATURES:
        try:
            compiled = lib.compile(schema)
            ok_valid = lib.accepts(lib.start(compiled), tokenize(json.dumps(valid)))
            ok_invalid = (invalid is not None
                          and lib.accepts(lib.start(compiled), tokenize(json.dumps(invalid))))
        except CompileError as exc:
            verdicts[name] = "error: " + one_line(str(exc))
            continue
        if not ok_valid:
            verdicts[name] = "compiles, rejects the valid instance"
        elif invalid is None:
            verdicts[name] = "compiles (no check)"
        else:
            verdicts[name] = "ignored (invalid accepted)" if ok_invalid else "enforced"
    return verdicts


def measure_mask_apply(width: int, vocab: int, reps: int) -> dict[str, float]:
    """µs to turn int32 words into a float32[width] logits row with -inf where forbidden.
    Real masks are runs of allowed/forbidden tokens; the random one is the worst case for
    np.where (a mispredicted branch per element)."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(width).astype(np.float32)
    n_words = (width + BITS - 1) // BITS
    patterns = {
        "all allowed": np.full(n_words, -1, dtype=np.int32),
        "EOS only": np.eye(1, n_words, dtype=np.int32)[0] << EOS_ID,
        "random half": rng.integers(-(2**31), 2**31 - 1, size=n_words, dtype=np.int32),
    }
    neg_inf = np.float32(-np.inf)
    try:
        import mlx.core as mx  # only where this venv has MLX
    except ImportError:
        mx = None
    mx_logits = mx.array(logits) if mx is not None else None
    results = {}
    for label, words in patterns.items():
        def numpy_where(words: np.ndarray = words) -> np.ndarray:
            allowed = unpack(words, width)
            allowed[vocab:] = False  # the embedding's padding rows
            return np.where(allowed, logits, neg_inf)

        results[f"numpy unpackbits + where, {label}"] = time_call(numpy_where, reps)
        if mx is not None:
            def mlx_where(words: np.ndarray = words) -> Any:
                allowed = mx.array(unpack(words, width))
                return mx.eval(mx.where(allowed, mx_logits, -mx.inf))

            results[f"numpy unpackbits -> mx.where, {label}"] = time_call(mlx_where, reps)
    return results


def time_call(fn: Callable[[], Any], reps: int) -> float:
    fn()  # first call pays allocation
    samples = []
    for _ in range(max(reps * 100, 100)):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    return float(np.median(samples))


# --- packages ------------------------------------------------------------------------------


def package_info(dist_name: str) -> dict[str, str]:
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        return {"version": "not installed"}
    meta = dist.metadata
    size = sum(f.size or 0 for f in dist.files or [])
    requires = [r.split(";")[0].strip() for r in dist.requires or [] if "extra ==" not in r]
    return {"version": dist.version,
            "licence": (meta.get("License-Expression") or meta.get("License")
                        or licence_classifier(meta.get_all("Classifier") or [])),
            "size": f"{size / 2**20:.1f} MiB",
            "requires": ", ".join(requires) or "none"}


def licence_classifier(classifiers: list[str]) -> str:
    names = [c.rsplit("::", 1)[-1].strip() for c in classifiers if c.startswith("License ::")]
    return ", ".join(names) or "?"


def wheel_for(dist_name: str, version: str, platform_tags: list[str]) -> str:
    """The wheel pip would pick for that platform (a dry run: metadata only)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-deps",
               "--only-binary=:all:", *(f"--platform={tag}" for tag in platform_tags),
               "--python-version",
               PIP_PYTHON, "--implementation", "cp", "--target", str(Path(tmp) / "t"),
               "--report", str(report), f"{dist_name}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return "none"
        url = json.loads(report.read_text())["install"][0]["download_info"]["url"]
        return url.rsplit("/", 1)[-1]


def xgrammar_import() -> str:
    """Does `import xgrammar` work without torch? Checked in a child (a failed import is
    not clean to retry in-process)."""
    proc = subprocess.run([sys.executable, "-c", "import xgrammar"], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode == 0:
        return "imports"
    lines = proc.stderr.strip().splitlines()
    frames = [ln.strip() for ln in lines if ln.strip().startswith('File "')]
    culprit = frames[-1].split("site-packages/")[-1].replace('",', "") if frames else "?"
    return f"`{lines[-1] if lines else '?'}` (at {culprit})"


def heavy_imports(package: str, heavy: tuple[str, ...] = ("torch", "transformers")) -> str:
    """The package's modules that import one of `heavy` at module level (not lazily)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return "not installed"
    root = Path(spec.submodule_search_locations[0])
    found = []
    for path in sorted(root.rglob("*.py")):
        for line in path.read_text(errors="replace").splitlines():
            if any(line.startswith((f"import {h}", f"from {h}")) for h in heavy):
                found.append(f"{path.relative_to(root.parent)} ({line.split()[1]})")
                break
    return ", ".join(found) or "none"


def helper_modules() -> dict[str, str]:
    """Logit-masking helpers shipped in the packages, and what each one needs."""
    out = {}
    for mod in ("llguidance.numpy", "llguidance.mlx", "llguidance.torch",
                "outlines_core.kernels.numpy", "outlines_core.kernels.mlx"):
        spec = importlib.util.find_spec(mod.rsplit(".", 1)[0])
        path = Path(spec.submodule_search_locations[0]) / (mod.rsplit(".", 1)[1] + ".py")
        source = path.read_text() if path.exists() else ""
        needs = [n for n, key in (("Metal (mx.fast.metal_kernel)", "metal_kernel"),
                                  ("numba", "import numba"), ("torch", "import torch"))
                 if key in source]
        out[mod] = ("absent" if not source
                    else "present" + (f", needs {', '.join(needs)}" if needs else ", numpy only"))
    return out


# --- report --------------------------------------------------------------------------------


def stats(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return (float("nan"),) * 3
    arr = np.asarray(values)
    return float(np.median(arr)), float(np.percentile(arr, 99)), float(arr.max())


def one_line(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= ERROR_CHARS else text[:ERROR_CHARS] + "…"


def render(ctx: dict[str, Any]) -> str:
    libs = ctx["libs"]
    lines = [
        "# Grammar libraries for structured output",
        "",
        f"Command: `{ctx['command']}`  ",
        f"Date: {ctx['date']}; host: {platform.machine()}, Python {platform.python_version()}; "
        f"load average at start {ctx['load_start']}, at end {ctx['load_end']}; "
        f"this run's CPU time {ctx['cpu_s']:.0f} s  ",
        f"Tokenizer: SmolLM2-135M (`{TOKENIZER_JSON.relative_to(BENCH_DIR.parent)}`), "
        f"vocabulary {ctx['vocab']}, masks sized for V = {ctx['width']} "
        f"(+{PADDED_VOCAB_EXTRA} padding rows), EOS id {EOS_ID}. Reps per schema: {ctx['reps']}, "
        "each a fresh compile followed by a walk of the valid document. llguidance JSON "
        f"options: `{json.dumps(LLG_JSON_OPTIONS)}` (the server's).",
        "",
        "One-time setup per model: " + "; ".join(f"{n} {s * 1e3:.0f} ms"
                                                for n, s in ctx["setup_s"].items()) + ".",
        "",
        "## Compile and per-token mask",
        "",
        "Compile: schema to a matcher ready for its first mask (llguidance: "
        "`grammar_from_json_schema` + `LLMatcher` + `deep_copy`; outlines-core: "
        "`build_regex_from_schema` + `Index` + `Guide`). Cold is the first compile of that "
        "schema in the process, warm the median of the repeats. First mask: the mask before "
        "the first token (llguidance builds lexer states lazily, so it costs more); time to the "
        "first mask = compile + first mask. Mask and "
        "consume: median / p99 / max over every later token of every walk.",
        "",
        "| schema | library | tokens | compile cold ms | compile warm ms "
        "| first mask µs cold / warm | mask median µs | mask p99 µs | mask max µs "
        "| consume median µs | after the document |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for case in CASES:
        for lib in libs:
            r: CaseResult = ctx["cases"][lib][case.key]
            if r.error and not r.compile_s:
                lines.append(f"| ({case.key}) {case.title} | {lib} | {r.tokens} | "
                             f"error: {one_line(r.error)} |||||||| |")
                continue
            warm = r.compile_s[1:] or r.compile_s
            med, p99, mx_ = stats(r.mask_us)
            first = r.first_mask_us or [float("nan")]
            first_warm = float(np.median(first[1:] or first))
            lines.append(
                f"| ({case.key}) {case.title} | {lib} | {r.tokens} | {r.compile_s[0] * 1e3:.1f} | "
                f"{np.median(warm) * 1e3:.1f} | {first[0]:.0f} / {first_warm:.0f} | "
                f"{med:.1f} | {p99:.1f} | {mx_:.0f} | "
                f"{stats(r.consume_us)[0]:.1f} | "
                f"{one_line(r.error) if r.error else r.end_allows} |")
    lines += ["", "llguidance `validate_grammar_with_warnings` (a second, separate compile) "
              "on the same schemas: " + ", ".join(
                  f"({k}) {v * 1e3:.1f} ms" for k, v in ctx["validate_s"].items()) + ".", ""]
    lines += ["Mask formats:", ""] + [f"- {lib}: {ctx['mask_format'][lib]}" for lib in libs]
    lines += ["", f"Applying a mask to float32 logits [V = {ctx['width']}] (median µs):", ""]
    lines += [f"- {name}: {us:.1f}" for name, us in ctx["apply_us"].items()]
    lines += ["", "## JSON Schema keywords", "",
              "Each keyword's schema is compiled, then a valid and an invalid instance are fed "
              "as tokens: 'enforced' = valid accepted and invalid rejected; 'ignored' = "
              "compiles but the invalid instance passes; 'error' = the library's message "
              "(what a 400 would carry).", "",
              "| keyword | " + " | ".join(libs) + " |",
              "| --- | " + " | ".join("---" for _ in libs) + " |"]
    for name, *_ in FEATURES:
        lines.append(f"| {name} | " + " | ".join(ctx["features"][lib][name] for lib in libs) + " |")
    lines += ["", "## Packages", "",
              "| package | version | licence | installed size | requires | "
              + " | ".join(f"wheel {p} (cp{PIP_PYTHON.replace('.', '')})" for p in PIP_PLATFORMS)
              + " |",
              "| --- | --- | --- | ---: | --- | " + " | ".join("---" for _ in PIP_PLATFORMS) + " |"]
    for dist, info in ctx["packages"].items():
        wheels = ctx["wheels"].get(dist, {})
        lines.append(f"| {dist} | {info.get('version')} | {info.get('licence', '')} | "
                     f"{info.get('size', '')} | {info.get('requires', '')} | "
                     + " | ".join(f"`{wheels[p]}`" if p in wheels else "—" for p in PIP_PLATFORMS)
                     + " |")
    lines += ["", f"xgrammar {PACKAGES['xgrammar']} installed with `--no-deps`: "
              f"`import xgrammar` -> {ctx['xgrammar']}. Modules importing torch or transformers "
              f"at module level: {ctx['xgrammar_heavy']}. Its metadata requires torch, "
              "transformers and (Linux x86-64) triton, so it was not measured.", "",
              "Logit-masking helpers in the packages:", ""]
    lines += [f"- `{mod}`: {what}" for mod, what in ctx["helpers"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS,
                        help="compiles + walks per schema and library (first one is cold)")
    parser.add_argument("--skip-wheels", action="store_true",
                        help="do not ask the package index which wheels exist")
    parser.add_argument("--out", type=Path, default=RESULTS_FILE)
    args = parser.parse_args()
    if not TOKENIZER_JSON.exists():
        sys.exit(f"{TOKENIZER_JSON} missing: run bench/convert_gguf.py first (see bench/README.md)")

    from tokenizers import Tokenizer

    ctx: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).as_posix(), *sys.argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "reps": args.reps,
    }
    tokenizer_json = TOKENIZER_JSON.read_text()
    hf = Tokenizer.from_file(str(TOKENIZER_JSON))
    vocab = hf.get_vocab_size(with_added_tokens=True)
    width = vocab + PADDED_VOCAB_EXTRA
    ctx.update(vocab=vocab, width=width)

    def tokenize(text: str) -> list[int]:
        return hf.encode(text, add_special_tokens=False).ids

    t0 = time.perf_counter()
    llg = Llguidance(tokenizer_json, width)
    t1 = time.perf_counter()
    oc = OutlinesCore(tokenizer_json)
    t2 = time.perf_counter()
    ctx["setup_s"] = {"llguidance LLTokenizer": t1 - t0, "outlines-core Vocabulary": t2 - t1}
    libs = [llg, oc]
    # The first grammar and mask of a process pay one-time initialisation: timed apart so
    # that schema (a)'s cold numbers are those of any later request.
    words = np.zeros((1, (width + BITS - 1) // BITS), dtype=np.int32)
    for lib in libs:
        t0 = time.perf_counter()
        lib.fill_mask(lib.start(lib.compile({"type": "integer"})), words)
        ctx["setup_s"][f"{lib.name} first grammar + mask of the process"] = (
            time.perf_counter() - t0)
    ctx["libs"] = [lib.name for lib in libs]
    ctx["mask_format"] = {lib.name: lib.mask_format for lib in libs}

    ctx["cases"] = {lib.name: {} for lib in libs}
    for case in CASES:
        ids = tokenize(json.dumps(case.document))
        for lib in libs:  # one library at a time: nothing else competes for the 2 cores
            print(f"schema ({case.key}) {lib.name} ...", flush=True)
            ctx["cases"][lib.name][case.key] = measure_case(lib, case, ids, width, args.reps)
    ctx["validate_s"] = {}
    for case in CASES:
        t0 = time.perf_counter()
        llg.validate(case.schema)
        ctx["validate_s"][case.key] = time.perf_counter() - t0

    print("keywords ...", flush=True)
    ctx["features"] = {lib.name: measure_features(lib, tokenize) for lib in libs}
    ctx["apply_us"] = measure_mask_apply(width, vocab, args.reps)

    print("packages ...", flush=True)
    ctx["packages"] = {d: package_info(d) for d in
                       ("llguidance", "outlines-core", "xgrammar", "apache-tvm-ffi", "tokenizers")}
    ctx["wheels"] = {} if args.skip_wheels else {
        dist: {p: wheel_for(dist, version, tags) for p, tags in PIP_PLATFORMS.items()}
        for dist, version in PACKAGES.items()}
    ctx["xgrammar"] = xgrammar_import()
    ctx["xgrammar_heavy"] = heavy_imports("xgrammar")
    ctx["helpers"] = helper_modules()

    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ctx["cpu_s"] = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    ctx["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report = render(ctx)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
