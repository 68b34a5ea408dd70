#!/usr/bin/env python3
"""Generate docs/rest-api.md from docs/openapi.yaml.

    python docs/gen_rest_api.py           rewrite docs/rest-api.md
    python docs/gen_rest_api.py --check   exit 1 when docs/rest-api.md is not current

The OpenAPI document is the normative description of the REST API (responses
are validated against it in the integration tests); this page is its readable
form. Needs PyYAML.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

import yaml

HERE = Path(__file__).resolve().parent
SPEC = HERE / "openapi.yaml"
OUTPUT = HERE / "rest-api.md"
METHODS = ("get", "post", "put", "patch", "delete")


def anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def cell(text: Any) -> str:
    """Text for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def type_of(schema: Dict[str, Any]) -> str:
    """A short description of a schema's type: ``string``, ``array of [Image](#image)``, ..."""
    if not schema:
        return "any"
    if "$ref" in schema:
        name = ref_name(schema["$ref"])
        text = f"[{name}](#{anchor(name)})"
    elif "allOf" in schema:
        text = " + ".join(type_of(s) if "$ref" in s else "object" for s in schema["allOf"])
    elif "oneOf" in schema:
        text = " or ".join(type_of(s) for s in schema["oneOf"])
    elif schema.get("type") == "array":
        text = f"array of {type_of(schema.get('items', {}))}"
    elif schema.get("type") == "object" and "additionalProperties" in schema and "properties" not in schema:
        text = f"object of {type_of(schema['additionalProperties'])}"
    else:
        text = schema.get("type", "any")
    if "enum" in schema:
        values = ", ".join(f"`{v}`" for v in schema["enum"] if v is not None)
        text += f" (one of {values})"
    if "pattern" in schema:
        text += f", pattern `{schema['pattern']}`"
    if "minimum" in schema or "maximum" in schema:
        text += f", {schema.get('minimum', '')}..{schema.get('maximum', '')}"
    if "default" in schema:
        text += f", default `{schema['default']}`"
    if schema.get("nullable"):
        text += ", nullable"
    return text


def field_table(schema: Dict[str, Any]) -> List[str]:
    """A table of an object schema's properties (with those of its allOf parts)."""
    props: Dict[str, Any] = {}
    required: List[str] = []
    parts = [schema] + [s for s in schema.get("allOf", []) if "$ref" not in s]
    for part in parts:
        props.update(part.get("properties", {}))
        required += part.get("required", [])
    if not props:
        return []
    lines = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, sub in props.items():
        lines.append(f"| `{name}` | {cell(type_of(sub))} | {'yes' if name in required else ''} | "
                     f"{cell(sub.get('description', ''))} |")
    return lines


def schema_block(schema: Dict[str, Any]) -> List[str]:
    """``[summary]`` or ``[summary, "", table lines...]`` for an object schema."""
    out = [type_of(schema)]
    if "$ref" not in schema and schema.get("type", "object") == "object" or "allOf" in schema:
        table = field_table(schema)
        if table:
            bases = [type_of(part) for part in schema.get("allOf", []) if "$ref" in part]
            out = [(" and ".join(bases) + " plus these fields") if bases else "object with these fields", ""] + table
    return out


def parameter_rows(spec: Dict[str, Any], params: List[Dict[str, Any]]) -> List[str]:
    rows = []
    for p in params:
        if "$ref" in p:
            p = spec["components"]["parameters"][ref_name(p["$ref"])]
        rows.append(f"| `{p['name']}` | {p['in']} | {cell(type_of(p.get('schema', {})))} | "
                    f"{'yes' if p.get('required') else ''} | {cell(p.get('description', ''))} |")
    return rows


def response_lines(spec: Dict[str, Any], responses: Dict[str, Any]) -> List[str]:
    lines = []
    for status, resp in responses.items():
        if "$ref" in resp:
            resp = spec["components"]["responses"][ref_name(resp["$ref"])]
        content = resp.get("content", {}).get("application/json", {})
        schema = content.get("schema")
        head = f"- **{status}** {resp.get('description', '')}"
        if schema is None:
            lines.append(head)
            continue
        block = schema_block(schema)
        lines.append(f"{head}: {block[0]}")
        if len(block) > 1:
            lines.append("")
            lines.extend("  " + ln if ln else "" for ln in block[2:])
            lines.append("")
    return lines


def render(spec: Dict[str, Any]) -> str:
    info = spec["info"]
    base = spec.get("servers", [{}])[0].get("url", "")
    out: List[str] = [
        f"# {info['title']}",
        "",
        "<!-- Generated from docs/openapi.yaml by docs/gen_rest_api.py: do not edit by hand. -->",
        "",
        f"Version {info.get('version', '')}. All paths are relative to `{{base_url}}{base.lstrip('/')}`.",
        "",
        info.get("description", "").strip(),
        "",
        "## Endpoints",
        "",
        "| method | path | summary |",
        "|---|---|---|",
    ]
    ops = []
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                ops.append((path, method, item, item[method]))
    for path, method, _, op in ops:
        out.append(f"| {method.upper()} | [`{path}`](#{anchor(method + '-' + path)}) | {cell(op.get('summary', ''))} |")
    for path, method, item, op in ops:
        out += ["", f'<a id="{anchor(method + "-" + path)}"></a>', "", f"### {method.upper()} `{path}`", ""]
        if op.get("summary"):
            out += [op["summary"] + ".", ""]
        if op.get("description"):
            out += [op["description"].strip(), ""]
        params = parameter_rows(spec, list(item.get("parameters", [])) + list(op.get("parameters", [])))
        if params:
            out += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"] + params + [""]
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if body is not None:
            block = schema_block(body)
            out += [f"Request body: {block[0]}"] + ([""] + block[2:] if len(block) > 1 else []) + [""]
        out += ["Responses:", ""] + response_lines(spec, op.get("responses", {}))
    out += ["", "## Schemas"]
    for name, schema in spec["components"]["schemas"].items():
        out += ["", f"### {name}", ""]
        if schema.get("description"):
            out += [" ".join(schema["description"].split()), ""]
        block = schema_block(schema)
        out += [f"Type: {block[0]}."] + block[1:]
        if schema.get("nullable") and "$ref" not in schema:
            out += ["", "May be `null`."]
    return "\n".join(out).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that the file is current")
    args = p.parse_args(argv)
    text = render(yaml.safe_load(SPEC.read_text()))
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date; run: python {Path(__file__).relative_to(HERE.parent)}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
