"""One ``lm_eval --model autojudge`` run, held as data: it renders its shell command and runs in this process
(``--model autojudge-vllm`` runs as that command, :meth:`LmEvalCall.run_command`).

:meth:`LmEvalCall.run` does what the ``lm_eval`` command does with :meth:`LmEvalCall.argv` (build lm-eval's
``EvaluatorConfig``, ``simple_evaluate``, then its ``EvaluationTracker`` writes the results and samples
files), without a new interpreter per run and, when the include path holds every task asked for, without
indexing lm-eval's ~15k built-in tasks (seconds per run). Tests check that lm-eval's own parser reads
:meth:`LmEvalCall.argv` into the same configuration.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from autojudge_eval.errors import AutojudgeError, ConfigError


@dataclass(frozen=True)
class LmEvalCall:
    """One ``lm_eval --model autojudge`` run: renders its shell command and runs it in this process."""

    model_args: tuple[tuple[str, object], ...]
    task: str
    include_path: str
    output_path: str
    limit: int | None = None
    apply_chat_template: bool = False
    gen_kwargs: tuple[tuple[str, object], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    model: str = "autojudge"  # lm-eval's --model: autojudge (this engine) or autojudge-vllm
    batch_size: str | None = None  # lm-eval's --batch_size (None: its default, 1); "auto" or a number

    def argv(self) -> list[str]:
        """The arguments of ``lm_eval`` (after the program name)."""
        argv = ["--model", self.model, "--model_args", _kv(self.model_args)]
        if self.batch_size is not None:
            argv += ["--batch_size", str(self.batch_size)]
        argv += ["--include_path", self.include_path, "--tasks", self.task]
        if self.apply_chat_template:
            argv.append("--apply_chat_template")
        if self.gen_kwargs:
            argv += ["--gen_kwargs", _kv(self.gen_kwargs)]
        if self.limit is not None:
            argv += ["--limit", str(self.limit)]
        return argv + ["--output_path", self.output_path, "--log_samples"]

    def command(self) -> str:
        """The shell command that reproduces this run from the repository root."""
        prefix = [f"{k}={shlex.quote(v)}" for k, v in self.env]
        return " ".join([*prefix, "lm_eval", *(shlex.quote(a) for a in self.argv())])

    def config(self):
        """lm-eval's ``EvaluatorConfig`` for this run, as ``lm_eval`` builds it from :meth:`argv`."""
        from lm_eval.config.evaluate_config import EvaluatorConfig

        return EvaluatorConfig(
            model=self.model,
            batch_size=1 if self.batch_size is None else self.batch_size,
            model_args=dict(self.model_args),
            tasks=[self.task],
            include_path=self.include_path,
            apply_chat_template=self.apply_chat_template,
            gen_kwargs=dict(self.gen_kwargs),
            limit=None if self.limit is None else float(self.limit),
            output_path=self.output_path,
            log_samples=True,
        )._configure()

    def run_command(self) -> None:
        """Run :meth:`command` itself, ``lm_eval`` in a new interpreter with :attr:`env` (vLLM's engines start
        and stop their own processes: one engine per interpreter, and the command recorded is what ran)."""
        import os
        import subprocess
        import sys

        env = {**os.environ, **dict(self.env)}
        proc = subprocess.run([sys.executable, "-m", "lm_eval", *self.argv()], env=env, check=False)
        if proc.returncode != 0:
            raise AutojudgeError(f"lm_eval exited with status {proc.returncode}: {self.command()}")

    def run(self) -> dict:
        """Evaluate and write lm-eval's results and samples files; return lm-eval's results dict."""
        from lm_eval import simple_evaluate
        from lm_eval.loggers import EvaluationTracker

        cfg = self.config()
        tracker = EvaluationTracker(output_path=cfg.output_path)
        seeds = cfg.seed
        manager = _task_manager(cfg.include_path, cfg.tasks, cfg.metadata)
        results = simple_evaluate(
            model=cfg.model, model_args=cfg.model_args, tasks=cfg.tasks, num_fewshot=cfg.num_fewshot,
            batch_size=cfg.batch_size, max_batch_size=cfg.max_batch_size, device=cfg.device,
            limit=cfg.limit, log_samples=cfg.log_samples, evaluation_tracker=tracker,
            system_instruction=cfg.system_instruction, apply_chat_template=cfg.apply_chat_template,
            fewshot_as_multiturn=cfg.fewshot_as_multiturn, gen_kwargs=cfg.gen_kwargs,
            task_manager=manager, random_seed=seeds[0], numpy_random_seed=seeds[1],
            torch_random_seed=seeds[2], fewshot_random_seed=seeds[3], metadata=cfg.metadata,
        )  # fmt: skip
        samples = results.pop("samples")
        tracker.save_results_aggregated(results=results, samples=samples)
        for task_name in results["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        return results


def task_docs(task: str, include_path: str) -> list[dict]:
    """The documents lm-eval evaluates for ``task`` (its ``eval_docs``, in order: a sample's ``doc_id`` indexes
    this list), built as ``lm_eval --include_path include_path --tasks task`` builds them, from the data the
    current environment points at (``AUTOJUDGE_DATA_DIR`` or the hub)."""
    manager = _task_manager(include_path, [task])
    return [dict(doc) for doc in manager.load(task)["tasks"][task].eval_docs]


def _task_manager(include_path: str, tasks: list[str], metadata: dict | None = None):
    """lm-eval's task index for ``tasks``: only the include path when it holds them all (indexing lm-eval's
    ~15k built-in tasks takes seconds per point), else the built-ins too, as ``lm_eval`` does."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=False, metadata=metadata)
    if not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=include_path, metadata=metadata)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        raise ConfigError(
            f"unknown task {', '.join(missing)} (include path {include_path}); "
            "see `lm_eval ls tasks` or the YAMLs under tasks/"
        )
    return manager


def _kv(items: tuple[tuple[str, object], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in items)
