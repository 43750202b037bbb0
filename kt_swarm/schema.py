"""The config's and the sweep file's JSON Schemas (from the pydantic models) and the config reference page.

`kt-swarm schema` prints them; the repository keeps copies (COPIES), which tests/test_config.py checks
against what the models produce now. YAML files name their schema in their first line, for editors
with the YAML language server: `# yaml-language-server: $schema=schema.json`.
"""
from __future__ import annotations

import json
from typing import Any

COPIES = {  # repository file -> the `kt-swarm schema` options that print it
    "configs/schema.json": [],
    "configs/sweep.schema.json": ["--sweep"],
    "docs/config.md": ["--markdown"],
}


def json_schema(sweep: bool = False) -> dict:
    """The config's JSON Schema, or the sweep file's."""
    if sweep:
        from kt_swarm.sweep import SweepFile

        return SweepFile.model_json_schema()
    from kt_swarm.config import Config

    return Config.model_json_schema()


def render(sweep: bool = False, markdown: bool = False) -> str:
    """What `kt-swarm schema [--sweep] [--markdown]` prints: the JSON Schema, or its reference page."""
    schema = json_schema(sweep)
    if markdown:
        return reference(schema, "Sweep file reference" if sweep else "Config reference")
    return json.dumps(schema, indent=2) + "\n"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(value: Any) -> str:
    return f"`{json.dumps(value)}`"


def _type(prop: dict, dotted: str, nested: list) -> str:
    """A property's type as the YAML spells it (`integer (> 0)`, `one of "a", "b" or null`, `list of number`...);
    the sections it opens go to `nested`, named by their dotted key (`participants.N`: each item of a list)."""
    if "$ref" in prop:
        nested.append((dotted, prop["$ref"].rsplit("/", 1)[-1]))
        return f"mapping (section `{dotted}`)"
    if "anyOf" in prop:
        return " or ".join(_type(option, dotted, nested) for option in prop["anyOf"])
    if "enum" in prop:
        return "one of " + ", ".join(_value(v) for v in prop["enum"])
    kind = prop.get("type", "any YAML value")
    if kind == "array":
        text = "list" + (f" of {_type(prop['items'], dotted + '.N', nested)}" if prop.get("items") else "")
    elif kind == "object":
        values = prop.get("additionalProperties")
        named = list(prop.get("patternProperties", {}).values())  # keys that are names (transfer_arms)
        text = ("mapping" + (f" of string to {_type(values, dotted + '.KEY', nested)}" if isinstance(values, dict) else "")
                + (f" of name to {_type(named[0], dotted + '.NAME', nested)}" if named else ""))
    else:
        text = kind
    bounds = [f"{sign} {prop[key]}" for key, sign in (("exclusiveMinimum", ">"), ("minimum", ">="),
                                                      ("exclusiveMaximum", "<"), ("maximum", "<=")) if key in prop]
    if "minItems" in prop:
        bounds.append(f"at least {prop['minItems']} item{'s' * (prop['minItems'] != 1)}")
    return text + (" (" + ", ".join(bounds) + ")" if bounds else "")


def reference(schema: dict, title: str = "Config reference") -> str:
    """A markdown page from a JSON Schema: each section (the top level, then every nested mapping by its dotted
    key), each key with its type, default and description."""
    sweep = "Sweep" in title
    defs = schema.get("$defs", {})
    lines = [f"# {title}", "",
             f"Every key of a kt_swarm {'sweep file' if sweep else 'config'} (YAML), generated from its JSON Schema by "
             f"`kt-swarm schema{' --sweep' if sweep else ''} --markdown` (the schema itself: `kt-swarm schema"
             f"{' --sweep' if sweep else ''}`). Unknown keys are refused; a key left out takes its default."]
    if not sweep:
        lines += ["", "Any key can be set on the command line with `--set KEY=VALUE` (dotted, with list indices or "
                  "`*` for every item: `--set participants.*.lr=3e-4`); the value is read as YAML."]
    todo = [("", schema)]
    while todo:
        path, section = todo.pop(0)
        lines += ["", f"## `{path}`" if path else "## Top level", ""]
        if section.get("description"):
            lines += [" ".join(section["description"].split()), ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        nested: list = []
        for key, prop in section.get("properties", {}).items():
            kind = _type(prop, f"{path}.{key}" if path else key, nested)
            default = ("required" if key in section.get("required", []) else _value(prop["default"]) if "default" in prop
                       else "(section)")
            lines.append(f"| `{key}` | {_cell(kind)} | {_cell(default)} | {_cell(prop.get('description', ''))} |")
        todo[:0] = [(dotted, defs[name]) for dotted, name in nested]  # depth first: a section's own sections follow it
    return "\n".join(lines) + "\n"
