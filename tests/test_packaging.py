"""The README's promises about installation and CI."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_quick_start_has_exactly_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "fastlora demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert quick_start_commands()[1] in ci.splitlines()


def test_import_compiles_nothing_and_loads_no_backend():
    code = ("import sys, fastlora; "
            "print(any(m == 'numba' or m.startswith('numba.') for m in sys.modules), 'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_kernels_are_the_subpackage_fastlora_kernels():
    import fastlora.kernels.reference as ref
    assert Path(ref.__file__).parent.name == "kernels"


def test_a_source_tree_imports_its_own_kernels(tmp_path):
    """Working from a clone: its fastlora/ shadows any installed fastlora (cwd comes first on
    sys.path), and has no fastlora/kernels; the sibling kernels/ and bench/baselines/ serve."""
    import shutil
    clone = tmp_path / "clone"
    for folder in ("fastlora", "kernels", "bench"):
        shutil.copytree(ROOT / folder, clone / folder, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys, fastlora as fl; "
            "fresh = not any(m == 'numba' or m.startswith('numba.') for m in sys.modules); "
            "res = fl.retrain(fl.make_problem(d=8, k=1, T=3), backend='numpy'); "
            "import fastlora.kernels, fastlora.baselines; "
            "print(fl.__file__, fastlora.kernels.__file__, fastlora.baselines.__file__, fresh, res.objective < 1e-12)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=clone, env=env, capture_output=True, text=True,
                          check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    package, kernels, baselines, fresh, solved = done.stdout.split()
    assert Path(package) == clone / "fastlora" / "__init__.py"
    assert Path(kernels) == clone / "kernels" / "__init__.py"
    assert Path(baselines) == clone / "bench" / "baselines" / "__init__.py"
    assert fresh == "True" and solved == "True"


def test_every_distribution_declares_the_python_its_code_needs():
    """fastlora reads sweep specs with tomllib (Python 3.11+): no distribution may promise 3.10."""
    import tomllib
    for path in [ROOT / "pyproject.toml", *sorted(ROOT.glob("plugins/*/pyproject.toml"))]:
        declared = tomllib.loads(path.read_text())["project"]["requires-python"]
        assert declared == ">=3.11", (path, declared)


def test_subpackages_load_on_first_attribute_access_and_nothing_stray_is_exported():
    """The README uses fl.landscape, fl.datasets, fl.shallow and fl.sweep after ``import fastlora as fl``."""
    code = ("import sys, fastlora as fl; "
            "lazy = ('datasets', 'landscape', 'shallow', 'sweep'); "
            "print(any(f'fastlora.{m}' in sys.modules for m in lazy)); "
            "print(callable(fl.landscape.census), callable(fl.datasets.digit_pairs), "
            "callable(fl.shallow.retrain_shallow), fl.load_results is fl.sweep.load_results); "
            "print(hasattr(fl, 'annotations'), set(lazy) <= set(dir(fl)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True", "True", "True", "False", "True"]


def test_readme_shows_what_each_install_command_gives():
    """The first command installs no plugin: fl.peft.available() lists the built-ins there."""
    text = (ROOT / "README.md").read_text()
    line = next(row for row in text.splitlines() if row.startswith("fl.peft.available()"))
    assert "# ['full', 'lora', 'lora_sym']" in line and "plugins" in text.split(line)[1][:150]


def test_examples_readme_plots_vary_N_on_a_log_axis():
    """LoRA-ML's excess risk is ~0 at every N: on a linear axis it is a flat line at 0."""
    row = next(r for r in (ROOT / "examples" / "README.md").read_text().splitlines() if "`vary_N.toml`" in r)
    assert "--logy" in row
