"""``openmind`` whose training task fails once at step 6: ``python tests/retry_once.py run ...``.

tests/test_flow_e2e.py runs it as a fresh process (as it runs the unbroken reference) so that the
retried run and the reference are compared bit for bit across processes alike.  The first call of
the training task's ``train_from_config`` raises after step 6 (a transient crash: Prefect retries
the task in this process); later calls train normally and resume from the newest checkpoint.  The
number of calls is written to ``$OPENMIND_TEST_CALLS``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> int:
    import tasks.train as train_module
    from flows.cli import main as openmind
    from openmind_core.app.train import train_from_config

    calls = Path(os.environ["OPENMIND_TEST_CALLS"])
    calls.write_text("0")

    def crash_once(cfg, curated, run_dir, tokenizer_dir, progress=None, **kw):
        n = int(calls.read_text()) + 1
        calls.write_text(str(n))
        if n > 1:
            return train_from_config(cfg, curated, run_dir, tokenizer_dir, progress=progress, **kw)

        def crashing_progress(info):
            progress(info)
            if info["step"] >= 6:
                raise RuntimeError("simulated worker crash at step 6")

        return train_from_config(cfg, curated, run_dir, tokenizer_dir, progress=crashing_progress, **kw)

    train_module.train_from_config = crash_once
    return openmind(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
