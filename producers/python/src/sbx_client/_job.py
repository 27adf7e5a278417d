"""_job.py — what a job message must be before it is sent, and the form of it
that may be written down; the Python twin of producers/node/src/job.ts.

validate_job() runs schemas/job.v1.schema.json (jsonschema, draft 2020-12)
after the rules libsbx adds that JSON Schema cannot say (schemas/README.md):
at most 1 MiB of UTF-8, no U+0000 or lone surrogate in any string, nesting
at most 32 deep, `files` contents at most 512 KiB in total. The schema's
patterns are ECMA-262 regular expressions; Python's `$` also matches before a
final newline, so each unescaped `$` outside a class is read as `\\Z`.

fingerprint() mirrors producers/lib/redact.c: env values and unknown
top-level members become "<redacted>"; the SHA-256 of the re-serialised text
is the run's payload_sha256. json.dumps with these separators and
ensure_ascii=False writes what json-c writes for the text it produced.
"""
from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple, cast

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

# libsbx's numbers (producers/include/sbx.h, producers/lib/job.c).
MSG_MAX_BYTES = 1024 * 1024
DEPTH_MAX = 32
FILES_BYTES_MAX = 512 * 1024
REDACTED = "<redacted>"
KNOWN = frozenset(("v", "job_id", "project_id", "command", "script", "env", "files", "image",
                   "timeout_s", "resources", "network", "egress", "provider", "trace", "metadata",
                   "session", "submitted_at"))


class JobInvalidError(ValueError):
    """The job breaks the contract; nothing was sent. .errors lists why."""

    def __init__(self, errors: List[str]):
        super().__init__("job refused before sending: " + "; ".join(errors))
        self.errors = errors


def load_schema(name: str) -> Dict[str, Any]:
    """A schema file: the wheel's copy (pyproject.toml force-include), or the
    repository's schemas/ when run from a checkout."""
    packaged = resources.files("sbx_client").joinpath("schemas").joinpath(name)
    if packaged.is_file():
        return cast(Dict[str, Any], json.loads(packaged.read_text("utf-8")))
    repo = Path(__file__).resolve().parents[4] / "schemas" / name
    return cast(Dict[str, Any], json.loads(repo.read_text("utf-8")))


def _ecma(pattern: str) -> str:
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        elif c == "$" and not in_class:
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


def _pattern(validator: Any, pattern: str, instance: Any,
             schema: Any) -> Iterator[ValidationError]:  # jsonschema's keyword signature
    if isinstance(instance, str) and not re.search(_ecma(pattern), instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@lru_cache(maxsize=None)
def validator_for(name: str) -> Draft202012Validator:
    """A validator for schemas/NAME with ECMA patterns and format checks."""
    schema = load_schema(name)
    cls = jsonschema.validators.extend(Draft202012Validator,  # type: ignore[no-untyped-call]
                                       {"pattern": _pattern})
    return cast(Draft202012Validator, cls(schema, format_checker=Draft202012Validator.FORMAT_CHECKER))


def _gates(v: Any, depth: int, errors: List[str]) -> int:
    """Checks strings and returns the nesting depth, counted no further than
    one past the limit (so a deep value costs no deep recursion)."""
    def ok(s: str, where: str) -> None:
        if "\x00" in s:
            errors.append(f"{where}: contains U+0000")
        else:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                errors.append(f"{where}: contains an unpaired surrogate")

    if isinstance(v, str):
        ok(v, "a string")
        return depth
    if depth > DEPTH_MAX:
        return depth
    if isinstance(v, dict):
        m = depth + 1
        for k, x in v.items():
            if isinstance(k, str):
                ok(k, "a member name")
            m = max(m, _gates(x, depth + 1, errors))
        return m
    if isinstance(v, (list, tuple)):
        m = depth + 1
        for x in v:
            m = max(m, _gates(x, depth + 1, errors))
        return m
    return depth


def _dumps(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def validate_job(job: Any) -> str:
    """The message text of a job, or JobInvalidError with every reason."""
    if not isinstance(job, dict):
        raise JobInvalidError(["a job is a JSON object"])
    errors: List[str] = []
    depth = _gates(job, 0, errors)
    if depth > DEPTH_MAX:
        errors.append(f"nested {depth} deep (at most {DEPTH_MAX})")
    if errors:
        raise JobInvalidError(errors)
    try:
        text = _dumps(job)
    except (TypeError, ValueError) as e:
        raise JobInvalidError([f"not serialisable as JSON: {e}"]) from None
    sent = json.loads(text)  # what would be sent: int keys became strings
    for err in validator_for("job.v1.schema.json").iter_errors(sent):
        errors.append("/" + "/".join(str(p) for p in err.absolute_path) + " " + err.message)
    files = sent.get("files")
    if isinstance(files, dict):
        n = sum(len(s.encode("utf-8")) for s in files.values() if isinstance(s, str))
        if n > FILES_BYTES_MAX:
            errors.append(f"files hold {n} bytes (at most {FILES_BYTES_MAX})")
    size = len(text.encode("utf-8"))
    if size > MSG_MAX_BYTES:
        errors.append(f"the message is {size} bytes (at most {MSG_MAX_BYTES})")
    if errors:
        raise JobInvalidError(errors)
    return text


def fingerprint(text: str) -> Tuple[str, str]:
    """(redacted text, its SHA-256 as 64 hex digits)."""
    job = json.loads(text)
    for k in list(job):
        v = job[k]
        if k == "env" and isinstance(v, dict):
            for name in v:
                v[name] = REDACTED
        elif k == "env" or k not in KNOWN:
            job[k] = REDACTED
    redacted = _dumps(job)
    return redacted, hashlib.sha256(redacted.encode("utf-8")).hexdigest()
