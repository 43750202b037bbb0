"""Property-based fuzzing of the config validator (hypothesis): hunt bad input instead of listing it.

Contract, for ANY input (random YAML text or bytes, random mutations of the shipped configs, random
`--set` strings): load_config / parse_config either return a Config that passes the checks (typed as
annotated, finite floats, 64-bit ints, saved and read back unchanged), or raise UserError whose message
is one short line. No other exception escapes (TypeError, KeyError, RecursionError, yaml errors,
OverflowError, ValueError...) and nothing hangs.
"""
import contextlib
import copy
import math
import re
import signal
import types
import typing
from typing import Annotated, Any, Literal

import pytest
import yaml
from hypothesis import event, example, given, settings, strategies as st
from pydantic import BaseModel

from kt_swarm.config import Config, load_config, parse_config, to_dict
from kt_swarm.errors import UserError
from support import ROOT

pytestmark = pytest.mark.fast  # config parsing only: no Ray, no training (about 15 s)

TEXTS = {name: (ROOT / "configs" / f"{name}.yaml").read_text() for name in ("smoke", "quickstart")}
BASES = {name: yaml.safe_load(text) for name, text in TEXTS.items()}

# Reproducible in CI: the same examples every run, no example database. About 5 s a property on 2 cores.
FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None)


# --- the contract -------------------------------------------------------------------------------

class Hang(BaseException):
    """Not an Exception, so that no `except Exception` in the code under test can swallow it."""


@contextlib.contextmanager
def time_limit(seconds=10):
    """A call that has not answered in `seconds` fails the example (a hang), instead of hanging CI."""
    def expire(*_):
        raise Hang(f"no answer within {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def answers_properly(call):
    """Run `call`: a sound Config or a one-line UserError; any other exception fails the example."""
    with time_limit():
        try:
            cfg = call()
        except UserError as e:
            message = str(e)
            assert message and len(message.splitlines()) == 1 and message.isprintable(), repr(message)
            assert len(message) < 400, f"{len(message)} chars: {message[:400]!r}"
            event(re.sub(r"'[^']*'|\"[^\"]*\"|\S*\d\S*", "_", message)[:60])  # --hypothesis-show-statistics
            return None
        assert_sound(cfg)
        event("a Config")
        return cfg


def conforms(value, tp, key):
    """`value` has the annotated type `tp`; floats are finite and ints fit in 64 bits."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:  # Float, Int... : the checks are the base type's below
        conforms(value, args[0], key)
    elif origin in (typing.Union, types.UnionType):
        assert any(_conforms(value, option, key) for option in args), (key, value)
    elif origin is Literal:
        assert value in args, (key, value)
    elif origin is list:
        assert isinstance(value, list), (key, value)
        for i, v in enumerate(value):
            conforms(v, args[0], f"{key}.{i}")
    elif origin is dict:
        assert isinstance(value, dict) and all(isinstance(k, str) for k in value), (key, value)
        for k, v in value.items():
            conforms(v, args[1], f"{key}.{k}")
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        assert type(value) is tp, (key, value)
        for name, f in tp.model_fields.items():
            conforms(getattr(value, name), f.annotation, f"{key}.{name}".lstrip("."))
    elif tp is float:
        assert type(value) is float and math.isfinite(value), (key, value)
    elif tp is int:
        assert type(value) is int and -2**63 <= value < 2**63, (key, value)
    elif tp is not Any:
        assert isinstance(value, tp), (key, value)


def _conforms(value, tp, key):
    """conforms() as a bool, for the options of a Union."""
    try:
        conforms(value, tp, key)
        return True
    except AssertionError:
        return False


def assert_sound(cfg):
    """What a returned Config promises to the run: the types, the checks, and a faithful config.yaml."""
    conforms(cfg, Config, "")
    assert cfg.participants and len({p.name for p in cfg.participants}) == len(cfg.participants)
    assert all(p.lr > 0 and (p.weight_decay is None or p.weight_decay >= 0) for p in cfg.participants)
    assert cfg.zoo.lr > 0 and cfg.transfer.temperature > 0 and cfg.transfer.weight >= 0
    assert cfg.placement.timeout_s > 0 and all(v > 0 for v in cfg.resources.custom.values())
    assert 0 <= cfg.data.val_fraction and 0 <= cfg.data.pretrain_fraction
    assert cfg.data.val_fraction + cfg.data.pretrain_fraction < 1
    # The run saves to_dict(cfg) as config.yaml and `kt-swarm run` must accept it back as it was.
    saved = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    assert yaml.safe_dump(to_dict(parse_config(yaml.safe_load(saved))), sort_keys=False) == saved


# --- strategies ---------------------------------------------------------------------------------

NASTY_SCALARS = [0, -1, 2**63, -2**63 - 1, 10**400, 0.0, -0.0, 1e-320, 1e308, math.inf, -math.inf,
                 math.nan, "", " ", "\n", "a\nb", "nan", "inf", "-inf", "1e999", "1e-3", "1_0", "0x10", "cuda:²",
                 "cuda:1", "٣", "x" * 5000, "é\u2028\x00", True, False, None]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                    st.sampled_from(NASTY_SCALARS))
keys = st.one_of(st.text(max_size=10), st.integers(), st.none(), st.booleans(),
                 st.sampled_from(["name", "lr", "data", "participants", "model_args", "x" * 1000, "a\nb", "."]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=8)


def paths(node, prefix=()):
    """Every path into the raw mapping, list indices included: (), ('data',), ('participants', 0, 'lr')..."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        yield from paths(v, prefix + (k,))


def get(raw, path):
    for part in path:
        raw = raw[part]
    return raw


@st.composite
def mutated_configs(draw):
    """A shipped config with 1-3 random edits: a value replaced, a key deleted or added, a mapping made a list,
    a node wrapped in a mapping (what an edit cannot do to that node: wrap it)."""
    raw = copy.deepcopy(BASES[draw(st.sampled_from(sorted(BASES)))])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(paths(raw))))
        node = get(raw, path)
        edit = draw(st.sampled_from(["replace", "delete", "add_key", "to_list", "wrap"]))
        if edit == "replace":
            new = draw(values)
        elif edit == "delete" and path:
            del get(raw, path[:-1])[path[-1]]
            continue
        elif edit == "add_key" and isinstance(node, dict):
            new = {**node, draw(keys): draw(values)}
        elif edit == "to_list":
            new = list(node.values()) if isinstance(node, dict) else [node]
        else:
            new = {draw(keys): node}
        if path:
            get(raw, path[:-1])[path[-1]] = new
        else:
            raw = new
    return raw


def dotted(path):
    return ".".join(map(str, path))


KNOWN_PATHS = sorted({dotted(p) for p in paths(BASES["smoke"]) if p} | {
    "participants.*.lr", "participants.*", "*", "participants.*.model_args.*", "participants.3.lr",
    "participants.-1.lr", "participants.².lr", "participants.01.lr", "participants." + "9" * 5000 + ".lr",
    "transfer.epochs.x", "resources.custom.gpu_a", "tracking.wandb.tags", "checkpoint.every_steps",
    "fault.max_restarts", " lr", "x" * 1000, "new.deep.key"})
YAML_SNIPPETS = ["", "null", "~", "true", "0", "-1", "2", "1.5", "3e-4", "1e999", ".inf", "-.inf", ".nan", "[1, 2]",
                 "[]", "{}", "{a: 1}", "[1, 2, 3]", "x", "'unterminated", "a: b: c", "--- a\n--- b", "0x" + "f" * 4000,
                 "9" * 5000, "1:2:3", "2001-02-30", "2001-02-03", "!!int abc", "!!float x", "!!binary ===",
                 "!!python/object:os.system", "!!set {a, b}", "&a [*a]", "*a", "[" * 50 + "]" * 50, "{" * 50, "\x00",
                 "a\nb", "- 1\n- 2", "<<: 1", "? [1]\n: 2", "\ufeff1", "\t"]
path_parts = st.sampled_from(["participants", "0", "9", "*", "lr", "model_args"]) | st.text(min_size=1, max_size=4)
path_texts = st.builds(lambda head, rest: ".".join([head, *rest]), st.sampled_from([*BASES["smoke"], "resources", "fault"]),
                       st.lists(path_parts, max_size=3))
plain_values = st.sampled_from(["1", "2", "0.05", "1e-4", "true", "false", "adamw", "last", "cuda:1", "zoo", "[0.5]"])
value_texts = st.sampled_from(YAML_SNIPPETS) | st.text(max_size=12) | plain_values | st.integers(-2, 9).map(str)
assignments = st.builds("{}={}".format, st.sampled_from(KNOWN_PATHS) | path_texts, value_texts)
odd_assignments = st.text(max_size=30) | st.sampled_from(["=", "==", "=1", "lr", ".=", "a..b=1", "*=1", "a.*.b=1"])


def smoke_plus(*lines):
    """smoke.yaml with `lines` added at the end (a repeated key wins) or, for `&` anchors, at the start."""
    anchors = [line for line in lines if "&" in line]
    return "\n".join(anchors + [TEXTS["smoke"]] + [line for line in lines if line not in anchors])


# `tracking` is read after `participants` and `transfer`, so the anchors it defines are reached late.
LAUGHS = ("tracking: {wandb: {tags: [&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol], "
          + ", ".join(f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)) + "]}}")  # *a6: 10**7 lols
DEEP = 10000
NASTY_DOCUMENTS = [
    "{a: " * DEEP + "}" * DEEP, "- " * DEEP + "1", "[" * 200 + "]" * 200,
    smoke_plus(LAUGHS, "transfer: {epochs: *a6}"), smoke_plus(LAUGHS, "data: *a6"),
    smoke_plus(LAUGHS).replace("model_args: {img_size: 28,", "model_args: {x: *a6, img_size: 28,"),
    TEXTS["smoke"].replace("model_args: {img_size: 28,", "model_args: &r {self: *r, img_size: 28,", 1),
    TEXTS["smoke"].replace("lr: 1.0e-4", "lr: &lr 1.0e-4", 1).replace("lr: 1.0e-4", "lr: *lr"),
    "!!python/object/apply:os.system ['true']", "!!python/object:kt_swarm.config.Config {}",
    "x: !!python/name:os.system", "? [a, b]\n: 1", "%YAML 9.9\n--- a", "---\n...\n---\n", "<<: 1", "\x00",
    "seed: 1\r\nx\r\n: 2", "\ufeffseed: 1", smoke_plus("participants: !!set {a, b}"), smoke_plus("seed: 2001-02-30"),
    smoke_plus("seed: !!int abc"), smoke_plus("seed: !!int"), smoke_plus("seed: !!timestamp x"), smoke_plus("seed: !!bool x"),
    smoke_plus("seed: " + "9" * 5000), smoke_plus("seed: 0x" + "f" * 4000), smoke_plus("seed: -0b1" + "0" * 70),
    smoke_plus("data: {val_fraction: 1:2:3}"), smoke_plus("data: {val_fraction: 1e999}"), smoke_plus("zoo: {lr: .inf}"),
    smoke_plus("transfer: {weight: .nan}"), smoke_plus("device: 'cuda:²'"), smoke_plus("resources: {custom: {a: .inf}}"),
    smoke_plus("placement: {timeout_s: .inf}"), smoke_plus("participants: [{name: a, model: m, lr: .inf}]"),
    smoke_plus("participants: [{name: a, model: m, lr: 1, model_args: {1: 2}}]"),
    smoke_plus("participants: [{name: a, model: m, lr: 1}, {name: a, model: m, lr: 1}]"),
    smoke_plus("participants: [{name: \"a\\nb\", model: m, lr: 1}, {name: \"a\\nb\", model: m, lr: 1}]"),
]
yaml_tokens = st.sampled_from(["[", "]", "{", "}", ": ", ", ", "- ", "\n", "  ", "&a ", "*a ", "<<: ", "? ", "#", "'", '"',
                               "!!python/object:os.system ", "!!binary ", "!!int ", "!!set ", "!!timestamp ", "!foo ",
                               "---\n", "...\n", "%TAG ! !x\n", "|\n", ">-\n", "lr", "participants", "name", "seed",
                               "1e-4", ".inf", "0x1f", "9" * 5000, "2001-02-30", "null", "true", "\t", "\x85", "é"])


@st.composite
def smoke_with_a_line_changed(draw):
    """smoke.yaml with one line's value swapped for a random YAML snippet (tags, aliases, garbage)."""
    lines = TEXTS["smoke"].splitlines()
    i = draw(st.integers(0, len(lines) - 1))
    key, colon, _ = lines[i].partition(":")
    lines[i] = key + colon + " " + draw(st.sampled_from(YAML_SNIPPETS) | st.lists(yaml_tokens, max_size=6).map("".join))
    return "\n".join(lines)


documents = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.lists(yaml_tokens, max_size=30).map("".join).map(str.encode),
    smoke_with_a_line_changed().map(str.encode),
    st.sampled_from(NASTY_DOCUMENTS).map(str.encode),
    st.sampled_from([b"\xff\xfe\x00", b"seed: \xc3\x28", b"\xef\xbb\xbfseed: 1", "seed: 1".encode("utf-16")]),
)


# --- properties ---------------------------------------------------------------------------------

@FUZZ
@given(raw=mutated_configs())
def test_mutated_configs_give_a_config_or_one_line(raw):
    """Any edit of a shipped config (values, keys, shapes) gives a sound Config or a one-line UserError."""
    answers_properly(lambda: parse_config(raw))


@FUZZ
@given(raw=st.one_of(values, st.dictionaries(keys, values, max_size=5)))
def test_any_yaml_value_as_the_whole_config(raw):
    """Whatever safe_load could hand over as the whole document is a Config or a one-line UserError."""
    answers_properly(lambda: parse_config(raw))


@FUZZ
@example(base="smoke", overrides=["seed=" + "[" * DEEP])  # slow (a RecursionError in PyYAML), so run once
@given(base=st.sampled_from(sorted(BASES)),
       overrides=st.lists(assignments, min_size=1, max_size=2) | st.lists(odd_assignments, min_size=1, max_size=1))
def test_overrides_give_a_config_or_one_line(base, overrides):
    """Any `--set` strings (stars, bad indices, empty parts, bad YAML values) give a Config or a one-line UserError."""
    answers_properly(lambda: parse_config(copy.deepcopy(BASES[base]), overrides))


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "config.yaml"


@FUZZ
@example(document=("[" * DEEP).encode())  # slow (a RecursionError in PyYAML), so run once
@given(document=documents)
def test_any_file_gives_a_config_or_one_line(config_path, document):
    """Any file content (garbage bytes, bad UTF-8, tags, aliases, 10000-deep nesting) gives a Config or one line."""
    config_path.write_bytes(document)
    answers_properly(lambda: load_config(config_path))


def test_non_finite_floats_are_refused_naming_the_key():
    """inf passes `value > 0` and nan passes `value < 0`: both are refused where a float is read, naming the key."""
    for override in ["participants.0.lr=.inf", "transfer.weight=.nan", "transfer.temperature=1e999", "placement.timeout_s=inf",
                     "resources.custom.x=.inf", "participants.1.weight_decay=.nan", "participants.1.mean=[.nan]"]:
        key = override.split("=")[0] + (".0" if override.endswith("]") else "")  # a list: its item is named
        with pytest.raises(UserError, match=f"'{re.escape(key)}': expected "):
            parse_config(copy.deepcopy(BASES["smoke"]), [override])
