"""GSM8K scoring: answer extraction through the tasks' filters, exact match, and agreement."""

from __future__ import annotations

import copy
import json
import logging
import math
import pickle
from pathlib import Path

import datasets
import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.metrics import exact_match_hf_evaluate
from lm_eval.filters import build_filter_ensemble
from lm_eval.tasks._yaml_loader import load_yaml

from autojudge_eval.benchmarks import gsm8k
from autojudge_eval.benchmarks import references as metrics
from autojudge_eval.benchmarks.references import (
    FLEXIBLE_EXTRACT,
    REFERENCE_COLUMN,
    STRICT_MATCH,
    FilteredAnswer,
)
from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.harness import task_hooks

TASK_YAML = Path(__file__).resolve().parents[2] / "tasks" / "gsm8k" / "autojudge_gsm8k.yaml"
LM_EVAL_GSM8K_SETTINGS = {
    "ignore_case": True,
    "ignore_punctuation": False,
    "regexes_to_ignore": list(gsm8k.EXACT_MATCH_IGNORED),
}
DATE = "2026-01-02T03-04-05.678901"


def extract(texts: list[str]) -> dict[str, list[FilteredAnswer]]:
    """Run the task's own filter pipelines (lm-eval regex + take_first + our tag) over model outputs."""
    config = load_yaml(TASK_YAML)
    extracted = {}
    for pipeline in config["filter_list"]:
        components = [
            [step["function"], {k: v for k, v in step.items() if k != "function"}]
            for step in pipeline["filter"]
        ]
        instances = [
            Instance("generate_until", doc={}, arguments=("", {}), idx=0, resps=[text]) for text in texts
        ]
        build_filter_ensemble(pipeline["name"], components).apply(instances)
        extracted[pipeline["name"]] = [inst.filtered_resps[pipeline["name"]] for inst in instances]
    return extracted


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("3 + 4 = 7 eggs.\nThe final answer is 18", "18", "18"),
        ("So she pays $1,200 in total.\nThe final answer is $1,200.", "$1,200.", "$1,200."),
        ("The temperature fell 5 degrees. The final answer is -5", "-5", "-5"),
        ("Each costs 2.25, so 8 * 2.25 = 18.00\nThe final answer is 18.00", "18.00", "18.00"),
        ("The final answer is 7, not 9", "7,", "9"),
        ("I think there are 12 pears and 7 apples", "[invalid]", "7"),
        ("no numbers at all", "[invalid]", "[invalid]"),
    ],
)
def test_filters_extract_like_gsm8k_cot_llama(text: str, strict: str, flexible: str) -> None:
    extracted = extract([text])
    assert extracted[STRICT_MATCH] == [strict]
    assert extracted[FLEXIBLE_EXTRACT] == [flexible]
    assert [a.filter_name for a in extracted[STRICT_MATCH]] == [STRICT_MATCH]
    assert [a.filter_name for a in extracted[FLEXIBLE_EXTRACT]] == [FLEXIBLE_EXTRACT]


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("18", "18", True),
        ("$18", "18", True),
        ("18.", "18", True),
        ("1,200", "1200", True),
        ("$1,200.", "1200", True),
        ("-5", "-5", True),
        ("-5", "5", False),
        ("7,", "7", True),
        # lm-eval's GSM8K exact match compares strings: "18.00" is not "18". Kept for comparability.
        ("18.00", "18", False),
        ("[invalid]", "18", False),
        ("The answer is #### 18", "18", True),
    ],
)
def test_exact_match_normalisation(prediction: str, gold: str, expected: bool) -> None:
    assert gsm8k.answers_match(prediction, gold) is expected
    stock = exact_match_hf_evaluate(predictions=[prediction], references=[gold], **LM_EVAL_GSM8K_SETTINGS)
    assert bool(stock["exact_match"]) is expected  # same verdict as lm-eval's own exact_match


def test_gold_answer_is_text_after_hashes() -> None:
    doc = {"question": "q", "answer": "2 * 9 = <<2*9=18>>18\n#### 1,018"}
    assert gsm8k.gsm8k_target(doc) == "1,018"
    assert task_hooks.process_gsm8k_results(doc, [FilteredAnswer("1018", STRICT_MATCH)]) == {
        "exact_match": 1.0
    }


def test_filtered_answer_survives_copy_pickle_and_json() -> None:
    answer = FilteredAnswer("18", FLEXIBLE_EXTRACT)
    for clone in (copy.deepcopy(answer), pickle.loads(pickle.dumps(answer))):
        assert clone == "18"
        assert clone.filter_name == FLEXIBLE_EXTRACT
    assert json.dumps([answer]) == '["18"]'


def test_tag_filter_needs_one_string_per_doc() -> None:
    with pytest.raises(ConfigError, match="after take_first"):
        task_hooks.tag_strict_match([["18"]], [{}])


# --- agreement -----------------------------------------------------------------------------------


def write_samples(path: Path, answers: dict[int, tuple[str, str]], questions: list[str]) -> Path:
    """A samples file as lm-eval --log_samples writes it: one line per (doc, filter)."""
    lines = []
    for doc_id, (strict, flexible) in answers.items():
        for filter_name, answer in ((STRICT_MATCH, strict), (FLEXIBLE_EXTRACT, flexible)):
            sample = {
                "doc_id": doc_id,
                "doc": {"question": questions[doc_id], "answer": "#### 1"},
                "target": "1",
                "resps": [[f"The final answer is {answer}"]],
                "filtered_resps": [answer],
                "filter": filter_name,
                "metrics": ["exact_match"],
                "exact_match": 0.0,
            }
            lines.append(json.dumps(sample))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


QUESTIONS = ["How many eggs?", "How many pears?", "How much money?"]


@pytest.fixture
def docs() -> datasets.Dataset:
    return datasets.Dataset.from_list([{"question": q, "answer": "#### 18"} for q in QUESTIONS])


@pytest.fixture(autouse=True)
def no_reference_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.REFERENCE_SAMPLES_ENV, raising=False)


def test_agreement_against_reference_file(
    tmp_path: Path, docs: datasets.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = write_samples(
        tmp_path / f"samples_autojudge_gsm8k_{DATE}.jsonl",
        {0: ("18", "18"), 1: ("[invalid]", "1,200"), 2: ("$7", "7")},
        QUESTIONS,
    )
    monkeypatch.setenv(metrics.REFERENCE_SAMPLES_ENV, str(reference))
    scored = metrics.with_reference_answers(docs, "autojudge_gsm8k")
    ours = {STRICT_MATCH: ["18", "12", "7."], FLEXIBLE_EXTRACT: ["17", "1200", "7"]}
    agreement = {}
    for filter_name, answers in ours.items():
        per_doc = [
            task_hooks.process_gsm8k_results(doc, [FilteredAnswer(answer, filter_name)])["agreement"]
            for doc, answer in zip(scored, answers, strict=True)
        ]
        agreement[filter_name] = task_hooks.agreement_rate(per_doc)
    # strict: the reference has no number on doc 1, which is left out (2 of 2); flexible: 17 is not 18
    assert agreement == {STRICT_MATCH: 1.0, FLEXIBLE_EXTRACT: pytest.approx(2 / 3)}


def test_two_invalid_answers_never_agree(tmp_path: Path, docs: datasets.Dataset) -> None:
    reference = write_samples(
        tmp_path / "ref.jsonl", {0: ("[invalid]", "[invalid]"), 1: ("18", "18"), 2: ("7", "7")}, QUESTIONS
    )
    scored = metrics.with_reference_answers(docs, "autojudge_gsm8k", str(reference))
    ours = ["[invalid]", "[invalid]", "7"]  # both blank; the reference's 18 lost; the same 7
    per_doc = [
        task_hooks.process_gsm8k_results(doc, [FilteredAnswer(answer, STRICT_MATCH)])
        for doc, answer in zip(scored, ours, strict=True)
    ]
    assert per_doc == [
        {"exact_match": 0.0, "agreement": None},  # the reference has no number: left out, never a match
        {"exact_match": 0.0, "agreement": 0.0},
        {"exact_match": 0.0, "agreement": 1.0},
    ]
    assert task_hooks.agreement_rate([d["agreement"] for d in per_doc]) == 0.5  # not 2 of 3
    assert math.isnan(task_hooks.agreement_rate([None, None]))  # the reference never answered
    assert math.isnan(task_hooks.agreement_rate([1.0, math.nan]))  # a doc the reference did not score


def test_without_reference_agreement_is_omitted(
    docs: datasets.Dataset, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="autojudge_eval.benchmarks.references"):
        unchanged = metrics.with_reference_answers(docs, "autojudge_gsm8k")
    assert REFERENCE_COLUMN not in unchanged.column_names
    assert "no agreement metric: no reference run given" in caplog.text  # info, not a warning
    assert all(r.levelno < logging.WARNING for r in caplog.records)
    assert task_hooks.process_gsm8k_results(unchanged[0], [FilteredAnswer("18", STRICT_MATCH)]) == {
        "exact_match": 1.0
    }


def test_doc_missing_from_reference_gives_nan(tmp_path: Path, docs: datasets.Dataset) -> None:
    reference = write_samples(tmp_path / "ref.jsonl", {0: ("18", "18")}, QUESTIONS)
    scored = metrics.with_reference_answers(docs, "autojudge_gsm8k", str(reference))
    assert scored[1][REFERENCE_COLUMN] is None
    assert math.isnan(
        task_hooks.process_gsm8k_results(scored[1], [FilteredAnswer("18", STRICT_MATCH)])["agreement"]
    )


def test_untagged_answer_gives_nan_agreement() -> None:
    doc = {
        "question": "q",
        "answer": "#### 18",
        REFERENCE_COLUMN: {STRICT_MATCH: "18", FLEXIBLE_EXTRACT: "18"},
    }
    assert math.isnan(task_hooks.process_gsm8k_results(doc, ["18"])["agreement"])


def test_metadata_path_wins_over_env(
    tmp_path: Path, docs: datasets.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(metrics.REFERENCE_SAMPLES_ENV, str(tmp_path / "absent.jsonl"))
    reference = write_samples(tmp_path / "ref.jsonl", {0: ("18", "18")}, QUESTIONS)
    scored = metrics.with_reference_answers(docs, "autojudge_gsm8k", str(reference))
    assert scored[0][REFERENCE_COLUMN] == {STRICT_MATCH: "18", FLEXIBLE_EXTRACT: "18"}


def test_reference_from_other_data_is_rejected(tmp_path: Path, docs: datasets.Dataset) -> None:
    other = ["A different question?", *QUESTIONS[1:]]
    reference = write_samples(tmp_path / "ref.jsonl", {0: ("18", "18")}, other)
    with pytest.raises(DataError, match="doc_id 0 is not the same question"):
        metrics.with_reference_answers(docs, "autojudge_gsm8k", str(reference))
    beyond = write_samples(tmp_path / "beyond.jsonl", {3: ("1", "1")}, [*QUESTIONS, "Q4"])
    with pytest.raises(DataError, match="doc_id 3"):
        metrics.with_reference_answers(docs, "autojudge_gsm8k", str(beyond))


def test_a_sweeps_samples_serve_as_reference_by_doc_hash(tmp_path: Path, docs: datasets.Dataset) -> None:
    """A sweep's samples keep no doc, only lm-eval's doc_hash: the docs are matched by that hash."""
    from autojudge_eval.benchmarks.references import doc_hash
    from autojudge_eval.sweeps.sweep import strip_benchmark_text

    reference = write_samples(tmp_path / "ref.jsonl", {0: ("18", "18"), 2: ("7", "7")}, QUESTIONS)
    lines = [json.loads(line) for line in reference.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        line["doc_hash"] = doc_hash(dict(docs[line["doc_id"]]))
    reference.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    strip_benchmark_text(reference)
    assert "How many" not in reference.read_text(encoding="utf-8")
    scored = metrics.with_reference_answers(docs, "autojudge_gsm8k", str(reference))
    assert scored[2][REFERENCE_COLUMN] == {STRICT_MATCH: "7", FLEXIBLE_EXTRACT: "7"}
    assert scored[1][REFERENCE_COLUMN] is None

    other = docs.map(lambda row: {"answer": "#### 19"})  # the same questions, other data
    with pytest.raises(DataError, match="doc_id 0 is not the same question"):
        metrics.with_reference_answers(other, "autojudge_gsm8k", str(reference))
    reference.write_text(
        '{"doc_id": 0, "filter": "strict-match", "filtered_resps": ["1"]}\n', encoding="utf-8"
    )
    with pytest.raises(DataError, match="or lm-eval's 'doc_hash'"):  # neither the doc nor its hash
        metrics.load_reference_samples(reference)


def test_missing_reference_path_is_an_error(tmp_path: Path, docs: datasets.Dataset) -> None:
    with pytest.raises(DataError, match="do not exist"):
        metrics.with_reference_answers(docs, "autojudge_gsm8k", str(tmp_path / "nope.jsonl"))


def test_corrupt_reference_line_names_file_and_line(tmp_path: Path) -> None:
    reference = write_samples(tmp_path / "ref.jsonl", {0: ("18", "18")}, QUESTIONS)
    with reference.open("a", encoding="utf-8") as handle:
        handle.write('{"doc_id": 1, "doc": {"question": "x"}\n')
    with pytest.raises(DataError, match=r"ref\.jsonl, line 3: not valid JSON"):
        metrics.load_reference_samples(reference)
    reference.write_text('{"doc_id": "zero", "filter": "strict-match"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1: expected an integer 'doc_id'"):
        metrics.load_reference_samples(reference)


def test_duplicate_reference_entry_is_an_error(tmp_path: Path) -> None:
    reference = write_samples(tmp_path / "ref.jsonl", {0: ("18", "18")}, QUESTIONS)
    first_line = reference.read_text(encoding="utf-8").splitlines()[0]
    with reference.open("a", encoding="utf-8") as handle:
        handle.write(first_line + "\n")
    with pytest.raises(DataError, match="appears twice"):
        metrics.load_reference_samples(reference)


def test_reference_folder_picks_newest_file_of_the_task(tmp_path: Path) -> None:
    run = tmp_path / "run" / "model"
    older = write_samples(
        run / "samples_autojudge_gsm8k_2026-01-01T00-00-00.000001.jsonl", {0: ("1", "1")}, QUESTIONS
    )
    newer = write_samples(run / f"samples_autojudge_gsm8k_{DATE}.jsonl", {0: ("2", "2")}, QUESTIONS)
    cot = write_samples(
        run / "samples_autojudge_gsm8k_cot_2027-01-01T00-00-00.000001.jsonl", {0: ("3", "3")}, QUESTIONS
    )
    assert older.exists()
    assert metrics.find_reference_file(tmp_path / "run", "autojudge_gsm8k") == newer
    assert metrics.find_reference_file(tmp_path / "run", "autojudge_gsm8k_cot") == cot
    with pytest.raises(DataError, match="no samples_gsm8k_<date>.jsonl"):
        metrics.find_reference_file(tmp_path / "run", "gsm8k")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So 3 + 4 = 7.\nThe final answer is 7", "7"),
        ("The final answer is $1,250.", "1250"),
        ("First 12, then 30. The final answer is 30. Later 99", "30"),
        ("no strict line: 5 apples and 18 pears", "18"),
        ("The final answer is -4", "-4"),
        ("nothing numeric here", None),
    ],
)
def test_extract_final_number(text, expected):
    from autojudge_eval.benchmarks.gsm8k import extract_final_number

    assert extract_final_number(text) == expected
