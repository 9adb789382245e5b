"""InstructEval's MMLU, BBH and DROP on tinylab's model object: the paper's problem-solving
numbers came from declare-lab/instruct-eval (docs/PAPER.md, "Evaluation protocol"). This is our
own code for its rules (mmlu.py, bbh.py, drop.py, modeling.py at the commit in `SOURCE`):

- prompt: a header (MMLU only: "The following are multiple choice questions (with answers)
  about{words}.\\n\\n", each word of the subject after a space), k solved examples, the question.
  Each is `body + "\\nAnswer:"`, plus `" {answer}\\n\\n"` when solved. The body is MMLU's question
  and its "\\nA. ..." lines, BBH's `input`, DROP's `passage.strip() + " " + question.strip()`.
- shots: MMLU the subject's first k dev questions; BBH the first k rows of each task's test split,
  scored on the rest; DROP k questions drawn after `random.seed(0)` among the validation questions
  whose answer spans agree, scored on the questions of the other passages. Shots are dropped from
  the end while the prompt (BOS included) is longer than 2048 tokens.
- generation: BOS + prompt (the Llama tokenizer's default), greedy, at most 2 (MMLU), 32 (BBH) or
  8 (DROP) new tokens, no stop but EOS, decoded without special tokens.
- matching: correct when `prediction.strip().startswith(label)`; the label is MMLU's letter, BBH's
  target, DROP's first gold span.
- score: MMLU the mean over all its questions, BBH the mean of its 27 tasks' scores, DROP the mean
  over its questions.

Data: the hub datasets InstructEval's sources correspond to. cais/mmlu holds the CSVs of
Hendrycks' data.tar, which InstructEval reads with pandas; we pass each subject's rows through the
same pandas parser, so a cell reads as it did there ("None" becomes nan, a number in a column
with decimals 3.0). SaylorTwift/bbh is lukaemon/bbh (InstructEval's) as parquet, as lm-eval reads
it; ucinlp/drop is the hub's "drop" that InstructEval loads.

Trade-off: InstructEval generates one prompt at a time; we generate `batch_size` prompts at once,
left-padded and sorted by length, which gives the same greedy tokens up to floating-point ties
(tests/test_evaluate_instructeval.py compares both on a tiny model in float32).

    tinylab eval HF_DIR --params params/eval/paper.yaml --out DIR  # its protocol: instructeval
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from datasets import load_dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tinylab.config.eval import EvalTask
from tinylab.evaluate.errors import EvalError

SOURCE = "declare-lab/instruct-eval@49bbd2ce7e3a5bdc4024ba62a5c9c68c107ee966"
RECIPE_VERSION = 1  # bump when a prompt, a data source or the matching changes
MAX_INPUT_TOKENS = 2048  # InstructEval's max_input_length: shots are dropped beyond it
MMLU = ("cais/mmlu", "all")
BBH = "SaylorTwift/bbh"
DROP = "ucinlp/drop"
BBH_TASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa",
    "dyck_languages", "formal_fallacies", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects",
    "logical_deduction_three_objects", "movie_recommendation", "multistep_arithmetic_two",
    "navigate", "object_counting", "penguins_in_a_table", "reasoning_about_colored_objects",
    "ruin_names", "salient_translation_error_detection", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects",
    "web_of_lies", "word_sorting",
)  # fmt: skip


@dataclass(frozen=True)
class Example:
    """One question: the text before "Answer:" and the answer InstructEval matches."""

    body: str
    answer: str

    def prompt(self, *, solved: bool) -> str:
        text = f"{self.body}\nAnswer:"
        return f"{text} {self.answer}\n\n" if solved else text


@dataclass(frozen=True)
class Subtask:
    """A group scored with one set of shots: an MMLU subject, a BBH task, DROP."""

    name: str
    header: str
    shots: tuple[Example, ...]
    tests: tuple[Example, ...]

    def prompt(self, example: Example, num_shots: int) -> str:
        solved = "".join(shot.prompt(solved=True) for shot in self.shots[:num_shots])
        return self.header + solved + example.prompt(solved=False)


def is_correct(prediction: str, label: str) -> bool:
    """InstructEval's match: the stripped generation starts with the label."""
    return prediction.strip().startswith(label)


# --------------------------------------------------------------------------------------------
# Data


def mmlu_header(subject: str) -> str:
    words = "".join(f" {word}" for word in subject.split("_"))
    return f"The following are multiple choice questions (with answers) about {words}.\n\n"


def mmlu_examples(rows: Sequence[dict]) -> tuple[Example, ...]:
    """MMLU questions (cais/mmlu rows of one subject and split) with their cells as pandas reads
    them from the CSV file InstructEval opens."""
    if not rows:
        return ()
    table = pd.DataFrame(
        [[row["question"], *row["choices"], "ABCD"[row["answer"]]] for row in rows]
    )
    cells = pd.read_csv(io.StringIO(table.to_csv(header=False, index=False)), header=None)
    examples = []
    for values in cells.itertuples(index=False):
        question, *choices, answer = values
        lettered = zip("ABCD", choices, strict=True)
        lines = "".join(f"\n{letter}. {choice}" for letter, choice in lettered)
        examples.append(Example(f"{question}{lines}", f"{answer}"))
    return tuple(examples)


def mmlu_subtasks(num_shots: int) -> list[Subtask]:
    dev = _by_subject(load_dataset(*MMLU, split="dev"))
    test = _by_subject(load_dataset(*MMLU, split="test"))
    return [
        Subtask(
            subject,
            mmlu_header(subject),
            mmlu_examples(dev.get(subject, []))[:num_shots],
            mmlu_examples(rows),
        )
        for subject, rows in sorted(test.items())
    ]


def _by_subject(rows: Iterable[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["subject"], []).append(row)
    return groups


def bbh_subtasks(num_shots: int) -> list[Subtask]:
    subtasks = []
    for name in BBH_TASKS:
        examples = [Example(r["input"], r["target"]) for r in load_dataset(BBH, name, split="test")]
        subtasks.append(Subtask(name, "", tuple(examples[:num_shots]), tuple(examples[num_shots:])))
    return subtasks


def drop_subtasks(num_shots: int) -> list[Subtask]:
    questions = []  # (passage, example) of the questions whose gold spans agree
    for row in load_dataset(DROP, split="validation"):
        spans = [span.strip() for span in row["answers_spans"]["spans"]]
        if len(set(spans)) == 1:
            body = f"{row['passage'].strip()} {row['question'].strip()}"
            questions.append((row["passage"], Example(body, spans[0])))
    shots = random.Random(0).sample(questions, k=num_shots)
    passages = {passage for passage, _ in shots}
    tests = tuple(example for passage, example in questions if passage not in passages)
    return [Subtask("drop", "", tuple(example for _, example in shots), tests)]


@dataclass(frozen=True)
class TaskRules:
    """What differs between InstructEval's three tasks."""

    load: Callable[[int], list[Subtask]]
    max_new_tokens: int
    mean_of_subtasks: bool  # BBH: the mean of task scores, not of questions


TASKS = {
    "mmlu": TaskRules(mmlu_subtasks, max_new_tokens=2, mean_of_subtasks=False),
    "bbh": TaskRules(bbh_subtasks, max_new_tokens=32, mean_of_subtasks=True),
    "drop": TaskRules(drop_subtasks, max_new_tokens=8, mean_of_subtasks=False),
}


# --------------------------------------------------------------------------------------------
# Prompts, generation, score


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """BOS + the text's tokens, as Llama's tokenizer encodes a prompt for InstructEval."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if tokenizer.bos_token_id is None else [tokenizer.bos_token_id, *ids]


def fit_prompt(
    tokenizer: PreTrainedTokenizerBase,
    subtask: Subtask,
    example: Example,
    *,
    num_shots: int,
    max_tokens: int,
) -> tuple[list[int], int]:
    """The prompt's ids and its shots: one shot fewer while it is longer than max_tokens."""
    ids = encode(tokenizer, subtask.prompt(example, num_shots))
    while len(ids) > max_tokens and num_shots > 0:
        num_shots -= 1
        ids = encode(tokenizer, subtask.prompt(example, num_shots))
    return ids, min(num_shots, len(subtask.shots))


@torch.no_grad()
def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """The greedy continuation of each prompt (token ids), decoded without special tokens;
    longest prompts first, `batch_size` at a time, left-padded."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]) :] = 1
        out = model.generate(
            input_ids=ids.to(model.device),
            attention_mask=mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
        )
        for row, i in enumerate(batch):
            texts[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True)
    return texts


def score(records: Sequence[dict], *, mean_of_subtasks: bool) -> dict:
    """acc with its standard error and n; per subtask too. The mean of subtask scores (BBH)
    has the standard error sqrt(sum of squared subtask errors) / subtasks."""
    groups: dict[str, list[bool]] = {}
    for record in records:
        groups.setdefault(record["subtask"], []).append(record["correct"])
    if mean_of_subtasks:
        value = float(np.mean([np.mean(c) for c in groups.values()]))
        errors = [_stderr(c) for c in groups.values()]
        stderr = None if None in errors else math.sqrt(sum(e * e for e in errors)) / len(groups)
    else:
        flat = [c for correct in groups.values() for c in correct]
        value, stderr = float(np.mean(flat)), _stderr(flat)
    return {
        "value": value,
        "stderr": stderr,
        "n": len(records),
        "subtasks": {name: float(np.mean(c)) for name, c in groups.items()},
    }


def _stderr(correct: Sequence[bool]) -> float | None:
    if len(correct) < 2:
        return None
    return float(np.std(correct, ddof=1) / math.sqrt(len(correct)))


def settings(task: EvalTask, *, limit: int | None) -> dict:
    """What a stored row of this task depends on besides the model and its dtype."""
    rules = TASKS[task.name]
    return {
        "kind": "instructeval",
        "source": SOURCE,
        "recipe": RECIPE_VERSION,
        "shots": task.num_fewshot,
        "metric": task.metric,
        "max_new_tokens": rules.max_new_tokens,
        "limit": limit,
        "add_bos_token": True,
    }


def evaluate_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: EvalTask,
    *,
    limit: int | None = None,
    batch_size: int = 16,
) -> tuple[dict, list[dict]]:
    """Score one of mmlu, bbh, drop InstructEval's way (on the first `limit` questions of each
    subtask). Returns (the score row, one record per question)."""
    rules = TASKS[task.name]
    max_tokens = min(MAX_INPUT_TOKENS, model.config.max_position_embeddings)
    items = [
        (subtask, doc_id, example)
        for subtask in rules.load(task.num_fewshot)
        for doc_id, example in enumerate(subtask.tests[:limit])
    ]
    if not items:
        raise EvalError(f"instructeval {task.name}: its dataset has no questions to score")
    fitted = [
        fit_prompt(tokenizer, subtask, example, num_shots=task.num_fewshot, max_tokens=max_tokens)
        for subtask, _, example in items
    ]
    predictions = greedy_completions(
        model,
        tokenizer,
        [ids for ids, _ in fitted],
        max_new_tokens=rules.max_new_tokens,
        batch_size=batch_size,
    )
    records = [
        {
            "subtask": subtask.name,
            "doc_id": doc_id,
            "shots": shots,
            "target": example.answer,
            "prediction": prediction,
            "correct": is_correct(prediction, example.answer),
        }
        for (subtask, doc_id, example), (_, shots), prediction in zip(
            items, fitted, predictions, strict=True
        )
    ]
    scores = score(records, mean_of_subtasks=rules.mean_of_subtasks)
    row = {
        "task": task.name,
        "metric": task.metric,
        "shots": task.num_fewshot,
        **scores,
        "metrics": {task.metric: scores["value"]},
    }
    return row, records
