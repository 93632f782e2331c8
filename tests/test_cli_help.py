"""The CLI explains itself: every option of every subcommand has help text that states its default,
each subcommand's help ends with examples that parse, help is plain text; ``ptft pretrain
--list-settings`` documents every ``--set`` key (and the ranges it states are enforced); ``ptft
models`` lists every preset with its shape, parameter count and use."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex

import pytest
import torch

from ptft_fast.cli import build_parser, main
from ptft_fast.cli.help import default_text
from ptft_fast.models import build_model
from ptft_fast.models.config import PRESET_USES, PRESETS, ModelConfig
from ptft_fast.train.config import TrainConfig, TrainConfigError

PARSER = build_parser()
SUBPARSERS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices
COMMANDS = sorted(SUBPARSERS)


def _options(command: str):
    for action in SUBPARSERS[command]._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        yield action


def test_every_command_is_listed_with_a_help_line():
    text = PARSER.format_help()
    for command in COMMANDS:
        assert re.search(rf"^\s+{re.escape(command)}\s", text, re.M), command
    assert "models" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_that_states_its_default(command):
    rendered = SUBPARSERS[command].format_help()
    for action in _options(command):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and len(action.help) > 8, f"ptft {command} {name}: no help text"
        takes_value = action.nargs != 0
        if not takes_value or action.required:
            continue
        if action.default is None or action.default == []:
            # nothing to show: the help must say what happens without the option
            assert "default" in action.help, f"ptft {command} {name}: help does not say the default"
        else:
            shown = f"(default: {default_text(action.default)})"
            flat = " ".join(rendered.split())
            assert "default" in action.help or shown in flat, f"ptft {command} {name}: default not shown"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_plain_text_with_examples_that_parse(command):
    parser = SUBPARSERS[command]
    text = parser.format_help()
    for markup in ("``", ":func:", ":class:", ":meth:", "::"):
        assert markup not in text, f"ptft {command} --help shows {markup!r}"
    assert parser.description and parser.epilog and parser.epilog.startswith("examples:")
    examples = [line.strip() for line in parser.epilog.splitlines()[1:] if line.strip()]
    assert 2 <= len(examples) <= 3, examples
    for line in examples:
        argv = shlex.split(line.split("#")[0])
        assert argv[:2] == ["ptft", command] or argv[0] == "ptft", line
        _, extra = build_parser().parse_known_args(argv[1:])  # raises on a bad example
        assert not extra, f"{line}: unrecognized {extra}"


def test_top_level_help_shows_how_to_start():
    epilog = PARSER.epilog
    for line in (ln.split("#")[0].strip() for ln in epilog.splitlines()[1:]):
        if line and "COMMAND" not in line:
            assert not build_parser().parse_known_args(shlex.split(line)[1:])[1], line


def test_set_help_points_at_list_settings():
    action = next(a for a in SUBPARSERS["pretrain"]._actions if a.dest == "set")
    assert "--list-settings" in action.help


def test_list_settings_documents_every_key(capsys):
    assert main(["pretrain", "--list-settings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for f in dataclasses.fields(TrainConfig):
        head = next((i for i, ln in enumerate(lines) if ln.startswith(f"  {f.name}: ")), None)
        assert head is not None, f"{f.name} missing from --list-settings"
        default = str(f.default).lower() if isinstance(f.default, bool) else f.default
        default = "none" if default is None else default
        assert f" = {default}" in lines[head], lines[head]
        meaning = lines[head + 1].strip()
        assert lines[head + 1].startswith("      ") and len(meaning) > 10, f"{f.name}: no meaning line"
        assert meaning == f.metadata.get("meaning"), f"{f.name}: declare it with setting(default, meaning)"


def _outside(f: dataclasses.Field) -> list:
    """Values just outside the range field ``f`` documents."""
    m, base = dict(f.metadata) or {"low": None, "high": None}, type(f.default)
    step = 1 if base is int else 1e-3
    bad = []
    if m["low"] is not None:
        bad.append(m["low"] if m["low_open"] else m["low"] - step)
    if m["high"] is not None:
        bad.append(m["high"] if m["high_open"] else m["high"] + step)
    if base is float and (m["low"] is not None or m["high"] is not None):
        bad.append(math.nan)
    return bad


RANGED = [f for f in dataclasses.fields(TrainConfig) if _outside(f)]


@pytest.mark.parametrize("f", RANGED, ids=[f.name for f in RANGED])
def test_the_documented_range_is_enforced(f):
    TrainConfig().validate()  # every default is in range
    for value in _outside(f):
        with pytest.raises(TrainConfigError, match=rf"^{f.name} must be"):
            TrainConfig(**{f.name: value}).validate()


def test_choices_are_documented_and_enforced(capsys):
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("choices"):
            with pytest.raises(TrainConfigError, match=rf"^{f.name} must be one of"):
                TrainConfig(**{f.name: "no-such-value"}).validate()
    assert main(["pretrain", "--list-settings"]) == 0
    assert (
        "objective: str = mlm  (one of mlm|mlm+nsp|spanbert|electra|clm|prefix-lm|span|infill|"
        "seq2seq-mlm|seq2seq-prefix-lm|deshuffle)" in capsys.readouterr().out
    )


def _count(config: ModelConfig) -> int:
    torch.manual_seed(0)
    return sum(p.numel() for p in build_model(config).parameters())


def test_models_lists_every_preset_with_shape_params_and_use(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in text.splitlines() if ln and not ln.startswith(" ")}
    for name in PRESETS:
        assert name in rows, name
        c = ModelConfig.from_name(name)
        assert f" x {c.hidden_size} " in rows[name] and f" {c.ffn_size} " in rows[name]
        assert PRESET_USES[name] in text
    # published parameter counts of the reference shapes (Hugging Face's models of the same config)
    assert "109.51M" in rows["bert-base"] and "124.44M" in rows["gpt2"] and "60.51M" in rows["t5-small"]
    assert "4.42M" in rows["bert-tiny"] and rows["bert-tiny"].split()[1:4] == ["2", "x", "128"]
    # counted on a materialized model: tiny presets at ptft pretrain's vocabulary
    for name in ("bert-tiny-cpu", "gpt-tiny", "t5-tiny", "bart-tiny"):
        assert f"{_count(ModelConfig.from_name(name)) / 1e6:.2f}M" in rows[name]


def test_pretrain_list_models_is_the_same_table(capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    assert main(["pretrain", "--list-models"]) == 0
    assert capsys.readouterr().out == table
