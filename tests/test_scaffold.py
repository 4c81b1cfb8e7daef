"""`fastlora plugins new NAME [--numba] [--shared]`: the package it writes installs (offline, without
build isolation) and its own tests — the conformance kit, the entry point, a retrain, and the
fast path's parity and use by the solvers — pass as written, and still pass once its files are
replaced by the finished LoHa of docs/plugins.md ("Start from the scaffold")."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastlora.cli import main


def test_a_generated_package_installs_and_its_tests_pass(tmp_path):
    runner = CliRunner()
    variants = {"scaffold_plain": ["--numba"], "scaffold_shared": ["--numba", "--shared"]}
    roots = []
    for name, flags in variants.items():
        result = runner.invoke(main, ["plugins", "new", name, *flags, "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output
        root = tmp_path / f"fastlora-{name.replace('_', '-')}"
        assert result.output.startswith(f"wrote {root}")
        module = root / f"fastlora_{name}"
        assert sorted(p.name for p in root.iterdir()) == ["README.md", f"fastlora_{name}", "pyproject.toml", "tests"]
        assert sorted(p.name for p in module.iterdir()) == ["__init__.py", "_numba.py"]
        assert sorted(p.name for p in (root / "tests").iterdir()) == [f"test_{name}.py", f"test_{name}_fast_path.py"]
        pyproject = (root / "pyproject.toml").read_text()
        assert f'[project.entry-points."fastlora.peft"]\n{name} = "fastlora_{name}:' in pyproject
        source = (module / "__init__.py").read_text()
        assert source.count("FILL IN") >= 4 and "threads_for(" in (module / "_numba.py").read_text()
        roots.append(root)
    assert "shared = (\"B\", \"C\")" in (roots[1] / "fastlora_scaffold_shared" / "__init__.py").read_text()
    roots.append(_docs_loha(runner, tmp_path))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                              "--quiet", "--target", str(site), *map(str, roots)], capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *(str(root / "tests") for root in roots)], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=600)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    assert "21 passed" in tests.stdout, tests.stdout[-2000:]


def _docs_loha(runner, folder) -> Path:
    """`fastlora plugins new loha --numba`, its files replaced by the blocks "# file: ..." of docs/plugins.md."""
    result = runner.invoke(main, ["plugins", "new", "loha", "--numba", "--out", str(folder)])
    assert result.exit_code == 0, result.output
    root = folder / "fastlora-loha"
    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    files = re.findall(r"```python\n# file: (\S+)\n(.*?)```", text, re.DOTALL)
    assert sorted(name for name, _ in files) == ["fastlora_loha/__init__.py", "fastlora_loha/_numba.py"]
    for name, body in files:
        assert (root / name).exists(), name
        (root / name).write_text(body)
    return root


@pytest.mark.parametrize("args, needle", [
    (["Bad-Name"], "NAME='Bad-Name' must be a lower-case Python identifier"),
    (["lora"], "NAME='lora' is a built-in parameterization's name"),
    (["class"], "NAME='class' must be"),
])
def test_bad_names_are_refused_in_one_line(args, needle, tmp_path):
    result = CliRunner().invoke(main, ["plugins", "new", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"Error: {result.output.strip()[7:]}"]
    assert needle in result.output, result.output


def test_an_existing_package_folder_is_not_overwritten(tmp_path):
    (tmp_path / "fastlora-mine").mkdir()
    result = CliRunner().invoke(main, ["plugins", "new", "mine", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "exists already" in result.output
    assert list((tmp_path / "fastlora-mine").iterdir()) == []
