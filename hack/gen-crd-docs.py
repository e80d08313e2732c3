#!/usr/bin/env python3
"""Generate docs/crd-reference.md from the PruneJob CRD's OpenAPI schema.

The CRD (manifests/base/crd.yaml) is itself generated from the pydantic models in interlace/schema/spec.py
(`python -m interlace.schema.crd --write`), so the reference shows exactly what the API server enforces:
every field of spec and status with its type, default, constraints and description, plus the
printer columns and names. A test runs `--check` so the page never drifts from the schema.

    python hack/gen-crd-docs.py            # write docs/crd-reference.md
    python hack/gen-crd-docs.py --check    # exit 1 if the committed page is stale
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD_PATH = REPO / "manifests" / "base" / "crd.yaml"
OUT_PATH = REPO / "docs" / "crd-reference.md"


def load_crd(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        raise SystemExit(f"{path}: expected one CustomResourceDefinition, found {len(crds)}")
    return crds[0]


def type_of(schema: dict[str, Any]) -> str:
    """A short human type: string, integer, []string, map[string]string, object, int-or-string..."""
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            types = dict.fromkeys(type_of(s) for s in schema[key])
            return " or ".join(t for t in types if t)
    t = schema.get("type", "")
    if t == "array":
        return "[]" + (type_of(schema.get("items", {})) or "any")
    if t == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and "properties" not in schema:
            return "map[string]" + (type_of(extra) or "any")
        if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
            return "object (any fields)"
        return "object"
    if schema.get("format"):
        return f"{t} ({schema['format']})"
    return t or "any"


def constraints(schema: dict[str, Any], required: bool) -> str:
    parts: list[str] = []
    if required:
        parts.append("**required**")
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    bounds = [
        ("minimum", ">=", "exclusiveMinimum", ">"),
        ("maximum", "<=", "exclusiveMaximum", "<"),
    ]
    for key, op, excl_key, excl_op in bounds:
        if key in schema:
            strict = schema.get(excl_key) is True
            parts.append(f"{excl_op if strict else op} {schema[key]}")
        elif isinstance(schema.get(excl_key), int | float) and not isinstance(schema.get(excl_key), bool):
            parts.append(f"{excl_op} {schema[excl_key]}")
    for key, label in (("minLength", "min length"), ("maxLength", "max length"), ("minItems", "min items"),
                       ("maxItems", "max items")):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern `{schema['pattern']}`")
    if schema.get("nullable"):
        parts.append("nullable")
    for rule in schema.get("x-kubernetes-validations", []):
        parts.append(f"rule `{rule.get('rule')}`" + (f": {rule['message']}" if rule.get("message") else ""))
    return "; ".join(parts)


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def default_of(schema: dict[str, Any]) -> str:
    if "default" not in schema:
        return ""
    return "`" + json.dumps(schema["default"], separators=(",", ":")) + "`"


def walk(schema: dict[str, Any], path: str, required: bool = False) -> Iterator[tuple[str, dict[str, Any], bool]]:
    yield path, schema, required
    target = schema
    if schema.get("type") == "array":
        target = schema.get("items", {})
        path = path + "[]"
        if target.get("properties"):
            req = set(target.get("required", []))
            for name, sub in target["properties"].items():
                yield from walk(sub, f"{path}.{name}", name in req)
        return
    if target.get("properties"):
        req = set(target.get("required", []))
        for name, sub in target["properties"].items():
            yield from walk(sub, f"{path}.{name}", name in req)
    extra = target.get("additionalProperties")
    if isinstance(extra, dict) and extra.get("properties"):
        yield from walk(extra, f"{path}.<key>")


def table(schema: dict[str, Any], root: str, required: bool) -> list[str]:
    lines = ["| Field | Type | Default | Constraints | Description |", "|---|---|---|---|---|"]
    for path, sub, req in walk(schema, root, required):
        lines.append(
            f"| `{path}` | {cell(type_of(sub))} | {cell(default_of(sub))} | {cell(constraints(sub, req))} "
            f"| {cell(sub.get('description', ''))} |"
        )
    return lines


def render(crd: dict[str, Any], source: str) -> str:
    spec = crd["spec"]
    names = spec["names"]
    out = [
        f"# {names['kind']} CRD reference",
        "",
        f"<!-- Generated by hack/gen-crd-docs.py from {source}. Do not edit: run "
        "`python hack/gen-crd-docs.py`. -->",
        "",
        f"The `{names['kind']}` custom resource, as the API server validates it. The schema is generated "
        "from the pydantic models in `interlace/schema/spec.py`, the same models `interlace run -f` uses, so a "
        "document valid here is valid locally too (and the CLI's messages name the same fields).",
        "",
        "| | |",
        "|---|---|",
        f"| Group | `{spec['group']}` |",
        f"| Kind | `{names['kind']}` (list: `{names.get('listKind', names['kind'] + 'List')}`) |",
        f"| Plural / singular | `{names['plural']}` / `{names.get('singular', '')}` |",
        f"| Short names | {', '.join(f'`{n}`' for n in names.get('shortNames', [])) or '-'} |",
        f"| Categories | {', '.join(f'`{n}`' for n in names.get('categories', [])) or '-'} |",
        f"| Scope | {spec['scope']} |",
        f"| Versions | {', '.join(v['name'] + (' (storage)' if v.get('storage') else '') for v in spec['versions'])} |",
        "",
    ]
    for version in spec["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        props = schema.get("properties", {})
        out += [f"## {spec['group']}/{version['name']}", ""]
        if version.get("subresources"):
            out += ["Subresources: " + ", ".join(f"`{k}`" for k in sorted(version["subresources"])) + ".", ""]
        columns = version.get("additionalPrinterColumns", [])
        if columns:
            out += [
                "### Printer columns (`kubectl get pj`)",
                "",
                "| Name | Type | JSONPath | Description |",
                "|---|---|---|---|",
            ]
            for c in columns:
                out.append(
                    f"| {cell(c['name'])} | {cell(c['type'])} | `{cell(c['jsonPath'])}` | "
                    f"{cell(c.get('description', ''))} |"
                )
            out.append("")
        required = set(schema.get("required", []))
        for part in ("spec", "status"):
            if part not in props:
                continue
            out += [f"### {part}", ""]
            if props[part].get("description"):
                out += [cell(props[part]["description"]), ""]
            out += table(props[part], part, part in required)
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crd", type=Path, default=CRD_PATH)
    parser.add_argument("--out", type=Path, default=OUT_PATH)
    parser.add_argument("--check", action="store_true", help="fail if the output file is stale")
    args = parser.parse_args(argv)
    if not args.crd.is_file():
        print(f"{args.crd}: missing (generate it with `python -m interlace.schema.crd --write`)", file=sys.stderr)
        return 2
    try:
        source = str(args.crd.resolve().relative_to(REPO))
    except ValueError:
        source = str(args.crd)
    text = render(load_crd(args.crd), source)
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run `python hack/gen-crd-docs.py`", file=sys.stderr)
            return 1
        return 0
    write_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
