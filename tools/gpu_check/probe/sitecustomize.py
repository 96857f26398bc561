"""GPU check probe: on PYTHONPATH, every Python process started under it reports at exit whether it used CUDA.

Active only when GPU_CHECK_CUDA_LOG names a file: at exit the process appends one JSON line (pid, argv,
whether torch was imported, whether CUDA was initialised, torch.cuda.max_memory_allocated). A process
killed by a signal writes nothing. Any other sitecustomize further down sys.path still runs first.
"""

import os
import sys


def _chain() -> None:
    """Run the sitecustomize this one shadows, if there is one."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


def _report() -> None:
    import json
    import time

    record = {"pid": os.getpid(), "argv": sys.argv[:8], "time": time.time(), "torch": "torch" in sys.modules}
    try:
        torch = sys.modules.get("torch")
        if torch is not None:
            init = bool(torch.cuda.is_initialized())
            record["cuda_initialized"] = init
            if init:
                record["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 2)
                record["device"] = torch.cuda.get_device_name()
    except Exception as err:  # noqa: BLE001
        record["error"] = repr(err)
    try:
        with open(os.environ["GPU_CHECK_CUDA_LOG"], "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError:
        pass


try:
    _chain()
except Exception:  # noqa: BLE001
    pass
if os.environ.get("GPU_CHECK_CUDA_LOG"):
    import atexit

    atexit.register(_report)
