"""DESIGN.md's layers: openmind_core never imports prefect; schemas never imports torch."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def _imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_library_does_not_import_prefect():
    mods = _imported_after(
        "import openmind_core.app.train, openmind_core.app.smoke, openmind_core.app.baseline_eval, "
        "openmind_core.app.report, openmind_core.app.tokenizer, openmind_core.app.run_dir, openmind_core.app.export, "
        "openmind_core.app.inspect_data, openmind_core.app.train_entry, "
        "openmind_core.model, openmind_core.data, openmind_core.training, openmind_core.evaluation"
    )
    assert "openmind_core.training" in mods
    assert not any(m == "prefect" or m.startswith("prefect.") for m in mods)


def test_data_package_imports_no_torch_transformers_or_peft():
    # conversion workers (Dask), the CLI's pre-flight and data-only subprocesses import these
    mods = _imported_after("import openmind_core.data, openmind_core.data.convert, openmind_core.data.parallel_convert")
    assert "openmind_core.data.convert" in mods and "openmind_core.data.parallel_convert" in mods
    assert not [m for m in mods if m.split(".")[0] in ("torch", "transformers", "peft")]


def test_schemas_do_not_import_torch():
    mods = _imported_after("import schemas")
    assert "schemas" in mods and "torch" not in mods


def test_no_prefect_import_statements_in_core():
    offenders = [p for p in (REPO / "openmind_core").rglob("*.py")
                 if any(line.lstrip().startswith(("import prefect", "from prefect")) for line in p.read_text().splitlines())]
    assert offenders == []
