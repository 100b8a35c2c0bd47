"""The layers' rules, read from the source (no device, no az): adapters and operations raise
domain errors and never import the az face or azclierror; an error text names an input with
errors.option(dest), never with a flag, and every such dest has a flag in the face's table."""
import ast
import os
import re

import pytest

PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BELOW_THE_FACE = ("remote", "tpm", "dps", "edge", "operations", "fleet")
FACE_MODULES = ("custom", "custom_fleet", "_params", "_help", "_validators", "_client_factory", "_error_map", "_format",
                "commands", "_lazy")


def _modules(packages=BELOW_THE_FACE):
    for package in packages:
        for name in sorted(os.listdir(os.path.join(PACKAGE, package))):
            if name.endswith(".py"):
                path = os.path.join(PACKAGE, package, name)
                with open(path, encoding="utf-8") as handle:
                    yield f"{package}/{name}", ast.parse(handle.read(), path)


def _our_flags():
    """Every long option the extension defines (from _params.py and the face's flag table)."""
    with open(os.path.join(PACKAGE, "_params.py"), encoding="utf-8") as handle:
        flags = set(re.findall(r"""["'](--[a-z][a-z0-9-]*)["']""", handle.read()))
    from azext_edgetpm._error_map import FLAGS
    flags.update(FLAGS.values())
    return flags


def _domain_error_names():
    """Names of the domain error classes: errors.py's and the subclasses adapters define."""
    names = set()
    with open(os.path.join(PACKAGE, "errors.py"), encoding="utf-8") as handle:
        for node in ast.walk(ast.parse(handle.read())):
            if isinstance(node, ast.ClassDef):
                names.add(node.name)
    changed = True
    modules = list(_modules())
    while changed:
        changed = False
        for _, tree in modules:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in names and any(
                        isinstance(b, ast.Name) and b.id in names or isinstance(b, ast.Attribute) and b.attr in names
                        for b in node.bases):
                    names.add(node.name)
                    changed = True
    return names


def test_adapters_and_operations_never_import_the_face_or_azclierror():
    wrong = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target.startswith("azure.cli.core.azclierror") or any(
                        target == f"azext_edgetpm.{m}" for m in FACE_MODULES):
                    wrong.append(f"{name}:{node.lineno} imports {target}")
    assert not wrong, "\n".join(wrong)


def _strings(node):
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.value


def test_error_texts_name_inputs_by_option_not_by_flag():
    flags = _our_flags()
    pattern = re.compile(r"(?<![\w-])(" + "|".join(sorted(map(re.escape, flags), key=len, reverse=True))
                         + r")(?![\w-])")
    errors = _domain_error_names()
    wrong = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if func not in errors:
                continue
            for text in (t for arg in list(node.args) + [k.value for k in node.keywords] for t in _strings(arg)):
                found = pattern.search(text)
                if found:
                    wrong.append(f"{name}:{node.lineno} {func}(... {found.group(1)} ...)")
    assert not wrong, "an adapter's error names a flag; use errors.option(dest):\n" + "\n".join(wrong)


def test_every_option_named_in_an_error_has_a_flag():
    from azext_edgetpm._error_map import FLAGS
    used = set()
    for _, tree in _modules(BELOW_THE_FACE):
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "option"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                used.add(node.args[0].value)
    missing = sorted(used - set(FLAGS))
    assert not missing, f"errors.option() names without a flag in _error_map.FLAGS: {missing}"


def test_an_option_renders_as_its_flag_in_messages_hints_and_records():
    from azext_edgetpm import errors
    from azext_edgetpm._error_map import register_option_names, to_azclierror
    exc = errors.LocalFileError(f"The key file given with {errors.option('ssh_key')} cannot be read.",
                                f"Check the path given with {errors.option('ssh_key')}.")
    register_option_names()
    assert exc.message == "The key file given with --ssh-key cannot be read."
    assert errors.describe(exc)["recommendation"] == "Check the path given with --ssh-key."
    assert str(exc) == exc.message
    az = to_azclierror(exc)
    assert type(az).__name__ == "FileOperationError" and "--ssh-key" in str(az.error_msg)


@pytest.mark.parametrize("value", ["<option:ssh_key", "a {brace} and 100% of <b>", ""])
def test_rendering_leaves_other_text_alone(value):
    from azext_edgetpm import errors
    assert errors.render(value) == value
