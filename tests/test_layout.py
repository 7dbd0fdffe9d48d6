"""The house rules, checked from the source (tools/check_layout.py): no import cycle, no private name
used outside its module, and docs/architecture.md names every module."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def checker():
    spec = importlib.util.spec_from_file_location("check_layout", ROOT / "tools" / "check_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycle_between_modules():
    check = checker()
    graph = check.import_graph()
    assert "toxrt.sources.files" in graph["toxrt.sources"]  # the graph sees package imports
    assert check.cycles(graph) == []


def test_no_private_name_is_used_outside_its_module():
    assert checker().private_imports() == []


def test_the_architecture_page_names_every_module_and_no_other():
    assert checker().undocumented() == ([], [])


def test_the_cycle_finder_finds_a_cycle():
    check = checker()
    assert check.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
