"""The shape of the house: imports point down the layers, modules stay short, every option is declared once and
every subcommand has its help."""

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedseqrec.cli import build_parser
from fedseqrec.federated.config import RunConfig
from fedseqrec.options import declared

PACKAGE = Path(__file__).resolve().parents[1] / "fedseqrec"

# Lower layers first. A module may import its own package and the layers below it; packages on one line are
# siblings and import neither each other nor anything above.
LAYERS = [
    {"__init__", "errors", "jsonio", "checks", "processes"},
    {"options"},
    {"data"},
    {"models"},
    {"evaluation"},
    {"privacy"},
    {"federated", "centralized"},
    {"results"},
    {"client", "server"},
    {"simulation", "deployment", "serving"},
    {"tuning"},
    {"cli"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}

# Imports inside a function, and why: none may dodge an import cycle.
DEFERRED = {
    "fedseqrec/federated/client_rounds.py": "Opacus costs a fresh ClientApp process a second; only DP rounds need it",
    "fedseqrec/cli/federate.py": "Ray and Flower's runtimes take seconds to import; --help should not pay",
    "fedseqrec/cli/report.py": "torch (the audit loads a model): the parsers of every command are built at start",
    "fedseqrec/cli/serve.py": "torch, uvicorn and FastAPI: the parsers of every command are built at start",
    "fedseqrec/cli/train.py": "torch: the parsers of every command are built at start",
    "fedseqrec/cli/tune.py": "Optuna, torch and Flower's runtimes: the parsers of every command are built at start",
    "fedseqrec/federated/config.py": "torch (the model class): the parsers are built from the configs",
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _from_root(name: str) -> str:
    """``from fedseqrec import X``: a subpackage or module, or a name of the package itself."""
    is_module = (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()
    return f"fedseqrec.{name}" if is_module else "fedseqrec"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported fedseqrec module, whether the import is inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("fedseqrec"):
                names = [child.module] if child.module != "fedseqrec" else [_from_root(a.name) for a in child.names]
                found.extend((name, inner) for name in names)
            elif isinstance(child, ast.Import):
                found.extend((a.name, inner) for a in child.names if a.name.startswith("fedseqrec"))
            visit(child, inner)

    visit(tree, False)
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        module = ".".join(relative.with_suffix("").parts)
        yield path, str(relative), module


def test_imports_point_down_the_layers():
    upward = []
    for path, relative, module in _modules():
        own = _layer(module)
        assert own in LEVEL, f"{relative}: package {own!r} has no layer in this test"
        for imported, _ in _imports(path):
            target = _layer(imported)
            if target != own and LEVEL[target] >= LEVEL[own]:
                upward.append(f"{relative} imports {imported} ({own} -> {target})")
    assert upward == []


def test_imports_inside_functions_are_only_deferred_for_start_up_cost():
    deferred = sorted({relative for path, relative, _ in _modules() if any(inner for _, inner in _imports(path))})
    assert deferred == sorted(DEFERRED)


def test_the_command_line_starts_without_torch():
    """Every parser is built from the configs without importing torch (≈ 1 s a command)."""
    code = "import sys, fedseqrec.cli; fedseqrec.cli.build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_import_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from fedseqrec.server.loop import Federation\n")
    assert _imports(module) == [("fedseqrec.server.loop", True)]


def test_every_module_is_under_400_lines():
    long = {relative: n for path, relative, _ in _modules() if (n := len(path.read_text().splitlines())) >= 400}
    assert long == {}


def test_every_package_says_what_it_holds():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 40 and "filled in" not in doc, init


def test_every_run_config_key_is_declared_once():
    keys = [d.key for d in declared(RunConfig()) if d.meta["run_config"]]
    assert len(keys) == len(set(keys))
    flags = [d.flag for d in declared(RunConfig())]
    assert len(flags) == len(set(flags)) + 1  # --max-len: the data's own (data commands), the model's (runs)


def _subcommands(parser: argparse.ArgumentParser, words=()):
    yield list(words)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*words, name))


SUBCOMMANDS = list(_subcommands(build_parser()))


def test_the_command_tree_is_what_the_readme_documents():
    assert [" ".join(w) for w in SUBCOMMANDS] == [
        "",
        "data",
        "data stats",
        "data prepare",
        "data export-partitions",
        "data download",
        "train",
        "evaluate",
        "simulate",
        "deploy",
        "deploy local",
        "deploy app",
        "deploy credentials",
        "audit",
        "report",
        "recommend",
        "serve",
        "tune",
        "tune train",
        "tune simulate",
    ]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "fedseqrec")
def test_help_on_every_subcommand(cli, words):
    result = cli(*words, "--help")
    assert result.code == 0 and "usage: fedseqrec" in result.out
    examples = result.out.split("\nexamples:\n")[1].splitlines()
    assert examples and all(line.startswith("  ") for line in examples)
    for line in result.out.split("\noptions:\n")[1].split("\nexamples:\n")[0].splitlines():
        flag = re.match(r"  (--[a-z-]+)", line)
        if flag and flag.group(1) not in ("--help", "--debug", "--version") and not flag.group(1).startswith("--no-"):
            option = next((a for a in _parser_of(words)._actions if flag.group(1) in a.option_strings), None)
            if option is not None and not isinstance(option, argparse._StoreTrueAction | argparse._StoreFalseAction):
                assert "default" in option.help or "default" in _help_of(result.out, flag.group(1)), flag.group(1)


def _parser_of(words):
    parser = build_parser()
    for word in words:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return parser


def _help_of(text: str, flag: str) -> str:
    """The help of ``flag`` in ``--help``'s text: its line and the indented lines below it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"  {flag}\b", line))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("                "):
            break
        block.append(line)
    return " ".join(block)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["simulate", "--strategy", "fedavgg"], "did you mean fedavg?"),
        (["simulate", "--epsilion", "3"], "did you mean --epsilon?"),
        (["train", "--modle", "gru4rec"], "did you mean --model?"),
        (["simulate", "--privacy", "dp_sgd"], "did you mean dp-sgd?"),
    ],
)
def test_a_mistake_on_the_command_line_is_one_line(cli, args, expected):
    result = cli(*args)
    assert result.code == 2 and expected in result.err
    assert len(result.err.strip().splitlines()) == 1 and "usage:" not in result.err


def test_run_commands_offer_every_run_option(cli):
    for words in (["simulate"], ["deploy", "local"], ["deploy", "app"]):
        text = cli(*words, "--help").out
        for d in declared(RunConfig()):
            if d.meta["run_config"]:
                flag = f"--no-{d.key}" if d.default is True else d.flag
                assert flag in text, (words, flag)
    assert "pop" not in cli("simulate", "--help").out.split("--model")[1].split("]")[0]


def test_each_mechanism_is_one_object_with_both_halves_and_the_client_app_has_no_branch():
    from fedseqrec.federated.mechanisms import MECHANISMS
    from fedseqrec.privacy.config import MECHANISMS as NAMES
    from fedseqrec.privacy.config import PrivacyConfig
    from fedseqrec.privacy.mechanism import PrivacyMechanism, RunFacts

    assert tuple(MECHANISMS) == NAMES  # --privacy's choices are the registry's entries
    facts = RunFacts(None, 1, "iid", print, users=100)
    for name, mechanism in MECHANISMS.items():
        privacy = PrivacyConfig(mechanism=name, noise_multiplier=1.0, users_per_round=10, central_noise=1.0)
        server = mechanism.server_half(privacy, facts)
        assert isinstance(server, PrivacyMechanism) and server.name == name
        assert callable(mechanism.client_half())
    client_app = (PACKAGE / "client" / "client_app.py").read_text()
    for name in NAMES:
        assert f'"{name}"' not in client_app
    assert "privacy.mechanism ==" not in client_app and "LOCAL_DPSGD" not in client_app


def test_no_string_test_of_a_task_or_a_metric_name_outside_the_task_objects():
    """A task is an object (fedseqrec/data/tasks.py): code asks it, never compares its name or sniffs a metric's."""
    sniffing = re.compile(
        r"""task\s*[!=]=\s*["']|["'](AUC|NDCG@10)["']\s+in\b|["'](ctr|search|next-item)["']\s*[!=]="""
    )
    for path, relative, _ in _modules():
        if relative in ("fedseqrec/data/tasks.py",) or relative.startswith("fedseqrec/evaluation/"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not sniffing.search(line), f"{relative}:{number}: {line.strip()}"
