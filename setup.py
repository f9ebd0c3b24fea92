"""Installs autojudge_eval_lm_eval.pth into site-packages: the hook that registers ``--model autojudge`` with
lm-eval releases that read no plugin entry points (see autojudge_eval/_lm_eval_hook.py). Everything else
about the package is in pyproject.toml.

Regular wheels carry the file at their root (build_py). Editable wheels are written by a setuptools
"strategy" object; a thin wrapper adds the file beside setuptools' own __editable__ .pth (editable_wheel).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = Path(__file__).parent / "autojudge_eval" / "autojudge_eval_lm_eval.pth"


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name), preserve_mode=False)


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, name, tag, build_lib):  # setuptools >= 64
        return _AlsoWritePth(super()._select_strategy(name, tag, build_lib))


class _AlsoWritePth:
    """Wraps setuptools' editable strategy, a context manager called with the wheel it fills."""

    def __init__(self, strategy) -> None:
        self.strategy = strategy

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self.strategy.__exit__(*exc)

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        wheel.writestr(PTH.name, PTH.read_bytes())


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
