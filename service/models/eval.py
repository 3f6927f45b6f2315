"""Measure what each quantization of one model costs in quality and memory, against float32.

``tokenbooth model eval`` builds every variant through :func:`~service.models.build_model` (so
its cache is reused) and measures each against the float32 build of the same weights:
perplexity on held-out prose (``data/eval_text.txt``, scored with ``Generator.score_batch``),
greedy agreement with the reference on fixed chat prompts (``data/eval_prompts.jsonl``),
accuracy on known-answer questions (``data/eval_tasks.jsonl``), and size, RSS and load time.
The result is a :class:`~service.models.quality.QualityReport`. CTranslate2 is imported
inside functions only, so importing this module stays cheap.
"""

from __future__ import annotations

import csv
import gc
import json
import logging
import math
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from service.errors import ModelBuildError
from service.models.build import build_model, check_quantization
from service.models.files import ModelFiles, load_model_files
from service.models.paths import default_gguf_path, quality_dir, source_name
from service.models.quality import (
    REFERENCE_QUANTIZATION,
    EvalSample,
    QualityReport,
    VariantQuality,
    write_quality,
)
from service.settings import QUANTIZATIONS

if TYPE_CHECKING:
    from service.engine import TokenizerCodec

__all__ = [
    "DATA_DIR",
    "DEFAULT_AGREEMENT_TOKENS",
    "QUALITY_CSV",
    "EvalData",
    "EvalTask",
    "Measured",
    "agreement",
    "answer_correct",
    "default_output",
    "default_quantizations",
    "evaluate",
    "first_divergence",
    "format_table",
    "load_eval_data",
    "measure",
    "perplexity",
    "run_eval_command",
    "score_windows",
    "write_quality_csv",
]

logger = logging.getLogger(__name__)

DATA_DIR: Final = Path(__file__).parent / "data"
"""The eval's fixed sample: held-out text, chat prompts and known-answer tasks."""
QUALITY_CSV: Final = "quality.csv"
"""The report as one CSV row per variant, next to ``quality.json``."""
DEFAULT_AGREEMENT_TOKENS: Final = 32
"""N: greedy continuations must match the reference's first N tokens."""
_TASK_MAX_TOKENS: Final = 32
_MAX_WINDOW: Final = 512  # score in windows no longer than this (or the context length)
_HEADER_PREFIX: Final = "# "


@dataclass(frozen=True)
class EvalTask:
    """A known-answer question: correct when the greedy answer contains one accepted answer."""

    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class EvalData:
    """The fixed sample every variant is measured on."""

    text: str
    text_source: str
    prompts: tuple[tuple[dict[str, str], ...], ...]
    tasks: tuple[EvalTask, ...]


def load_eval_data(directory: Path = DATA_DIR) -> EvalData:
    """Read the held-out text (its ``# `` header is its provenance), prompts and tasks.

    Raises:
        ModelBuildError: A file is missing or malformed.
    """
    try:
        lines = (directory / "eval_text.txt").read_text(encoding="utf-8").splitlines()
        header = [line[len(_HEADER_PREFIX) :] for line in lines if line.startswith(_HEADER_PREFIX)]
        text = "\n".join(line for line in lines if not line.startswith(_HEADER_PREFIX))
        prompts = tuple(
            tuple(dict(m) for m in json.loads(line)["messages"])
            for line in (directory / "eval_prompts.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        )
        tasks = tuple(
            EvalTask(question=row["question"], answers=tuple(row["answers"]))
            for row in map(
                json.loads,
                (directory / "eval_tasks.jsonl").read_text(encoding="utf-8").splitlines(),
            )
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelBuildError(f"cannot read the eval sample in {directory}: {exc}") from exc
    source = " ".join(line.strip() for line in header[1:]).removeprefix("Source: ")
    return EvalData(text=text.strip(), text_source=source, prompts=prompts, tasks=tasks)


# --- pure measures ---------------------------------------------------------------------------


def score_windows(tokens: Sequence[str], window: int) -> list[list[str]]:
    """Split ``tokens`` into windows of ``window + 1`` sharing one token at each seam.

    ``score_batch`` scores every token of a window but its first, given those before it, so
    with this overlap every token but the very first is scored exactly once.
    """
    if window < 1:
        raise ValueError("window must be at least 1")
    return [list(tokens[start : start + window + 1]) for start in range(0, len(tokens) - 1, window)]


def perplexity(log_probs: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Perplexity ``exp(-mean log prob)`` over every scored token, and how many were scored."""
    flat = [lp for window in log_probs for lp in window]
    if not flat:
        raise ValueError("no scored tokens")
    return math.exp(-math.fsum(flat) / len(flat)), len(flat)


def first_divergence(reference: Sequence[int], candidate: Sequence[int], n: int) -> int:
    """Index of the first of the first ``n`` tokens where the sequences differ (``n`` if none).

    A sequence that ended (end token) before the other diverges where it ended.
    """
    ref, cand = list(reference[:n]), list(candidate[:n])
    if ref == cand:
        return n
    shared = min(len(ref), len(cand))
    return next((i for i in range(shared) if ref[i] != cand[i]), shared)


def agreement(
    reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]], n: int
) -> tuple[float, float]:
    """Share of prompts whose first ``n`` tokens equal the reference's, and mean divergence."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError("need the same, non-zero number of reference and candidate sequences")
    points = [first_divergence(r, c, n) for r, c in zip(reference, candidate, strict=True)]
    return sum(p == n for p in points) / len(points), sum(points) / len(points)


def answer_correct(answer: str, accepted: Sequence[str]) -> bool:
    """Whether ``answer`` contains an accepted answer as a whole word, ignoring case.

    Whole words, so that "14" does not count as "4" and "Parisian" still fails "Paris" only
    when the name is glued to other letters.
    """
    return any(
        re.search(rf"(?<!\w){re.escape(a)}(?!\w)", answer, flags=re.IGNORECASE) for a in accepted
    )


# --- measuring one variant -------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One variant's raw results, before comparison with the reference."""

    model_name: str
    quantization: str
    compute_type: str
    perplexity: float
    scored_tokens: int
    continuations: list[list[int]]
    task_accuracy: float
    size_bytes: int
    rss_bytes: int
    load_s: float


# Loads the model in a fresh interpreter: in this process, memory freed by the previous
# variant is reused by the next, which would hide part of its RSS.
_LOAD_PROBE: Final = """
import json, sys, time
import ctranslate2, psutil
process = psutil.Process()
before = process.memory_info().rss
started = time.perf_counter()
generator = ctranslate2.Generator(sys.argv[1], device=sys.argv[2], compute_type=sys.argv[3])
load_s = time.perf_counter() - started
print(json.dumps({"rss": process.memory_info().rss - before, "load_s": load_s}))
"""


def _load_cost(model_dir: Path, device: str, compute_type: str) -> tuple[int, float]:
    """RSS added by loading the model and the time it takes, in a fresh process."""
    command = [sys.executable, "-c", _LOAD_PROBE, str(model_dir), device, compute_type]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ModelBuildError(f"CTranslate2 could not load {model_dir}: {done.stderr.strip()}")
    cost = json.loads(done.stdout.strip().splitlines()[-1])
    return max(0, int(cost["rss"])), float(cost["load_s"])


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _codec(files: ModelFiles) -> TokenizerCodec:
    from service.engine import TokenizerCodec

    manifest = files.manifest
    return TokenizerCodec(
        files.tokenizer,
        files.chat_template,
        bos_token=manifest.bos_token,
        eos_tokens=manifest.eos_tokens,
        add_bos=manifest.add_bos_token,
    )


def _greedy(
    generator: Any, prompts: Sequence[list[str]], max_tokens: int, end: list[str]
) -> list[list[int]]:
    """Greedy continuations (token ids, end token included) of tokenized prompts."""
    results = generator.generate_batch(
        [list(p) for p in prompts],
        max_batch_size=8,
        max_length=max_tokens,
        sampling_topk=1,
        beam_size=1,
        include_prompt_in_result=False,
        return_end_token=True,
        end_token=end or None,
    )
    return [list(r.sequences_ids[0]) for r in results]


def measure(
    model_dir: Path,
    quantization: str,
    data: EvalData,
    *,
    device: str,
    agreement_tokens: int,
) -> Measured:
    """Load one built variant and measure it on ``data``: perplexity, continuations, tasks, cost.

    Raises:
        ModelBuildError: CTranslate2 cannot load the directory.
    """
    import ctranslate2

    files = load_model_files(model_dir)
    codec = _codec(files)
    supported = ctranslate2.get_supported_compute_types(device)
    # "default" keeps the stored type, or the nearest this device runs when it cannot.
    compute_type = quantization if quantization in supported else "default"
    rss, load_s = _load_cost(model_dir, device, compute_type)
    try:
        generator = ctranslate2.Generator(str(model_dir), device=device, compute_type=compute_type)
    except (RuntimeError, ValueError) as exc:
        raise ModelBuildError(f"CTranslate2 could not load {model_dir}: {exc}") from exc
    try:
        window = min(_MAX_WINDOW, files.manifest.context_length)
        windows = score_windows(codec.encode(data.text), window)
        scored = generator.score_batch(windows, max_batch_size=4, max_input_length=0)
        ppl, count = perplexity([list(r.log_probs) for r in scored])
        end = list(files.manifest.eos_tokens)
        chats = [codec.encode(codec.render_chat([dict(m) for m in p])) for p in data.prompts]
        continuations = _greedy(generator, chats, agreement_tokens, end)
        questions = [
            codec.encode(codec.render_chat([{"role": "user", "content": t.question}]))
            for t in data.tasks
        ]
        answers = _greedy(generator, questions, _TASK_MAX_TOKENS, end)
        correct = sum(
            answer_correct(files.tokenizer.decode(ids, skip_special_tokens=True), task.answers)
            for ids, task in zip(answers, data.tasks, strict=True)
        )
        actual_type: str = generator.compute_type
    finally:
        del generator
        gc.collect()
    return Measured(
        model_name=files.manifest.name,
        quantization=quantization,
        compute_type=actual_type,
        perplexity=ppl,
        scored_tokens=count,
        continuations=continuations,
        task_accuracy=correct / len(data.tasks) if data.tasks else 0.0,
        size_bytes=_dir_size(model_dir),
        rss_bytes=rss,
        load_s=load_s,
    )


# --- the eval --------------------------------------------------------------------------------


def default_quantizations(device: str) -> tuple[str, ...]:
    """Every quantization tokenbooth builds that CTranslate2 runs natively on ``device``."""
    import ctranslate2

    supported = ctranslate2.get_supported_compute_types(device)
    return tuple(q for q in QUANTIZATIONS if q in supported)


def evaluate(
    source: Path | None = None,
    quantizations: Sequence[str] | None = None,
    *,
    device: str = "auto",
    agreement_tokens: int = DEFAULT_AGREEMENT_TOKENS,
    models_dir: Path | None = None,
    data: EvalData | None = None,
    on_variant: Callable[[VariantQuality], None] | None = None,
) -> QualityReport:
    """Build each quantization of ``source`` (cached) and measure it against its float32 build.

    ``quantizations`` None means :func:`default_quantizations`; the float32 reference is
    always measured first and reported too. ``on_variant`` is called as each one finishes.

    Raises:
        ModelBuildError: An unknown quantization, a source that cannot be rebuilt per
            quantization (a CTranslate2 directory), or a failed build or load.
    """
    from service.engine import resolve_device

    if agreement_tokens < 1:
        raise ModelBuildError("agreement tokens must be at least 1")
    device = resolve_device(device)
    wanted = list(default_quantizations(device) if quantizations is None else quantizations)
    for q in wanted:
        check_quantization(q)
    order = [
        REFERENCE_QUANTIZATION,
        *dict.fromkeys(q for q in wanted if q != REFERENCE_QUANTIZATION),
    ]
    data = data or load_eval_data()
    src = default_gguf_path() if source is None else source
    variants: list[VariantQuality] = []
    reference: Measured | None = None
    for quantization in order:
        model_dir = build_model(source, quantization=quantization, models_dir=models_dir)
        if model_dir.resolve() == src.resolve():
            raise ModelBuildError(
                f"{src} is a CTranslate2 model; eval needs a GGUF or Hugging Face source "
                "to build each quantization from"
            )
        logger.info("measuring %s (%s)", model_dir, quantization)
        measured = measure(
            model_dir, quantization, data, device=device, agreement_tokens=agreement_tokens
        )
        reference = reference or measured
        share, divergence = agreement(
            reference.continuations, measured.continuations, agreement_tokens
        )
        variant = VariantQuality(
            quantization=quantization,
            compute_type=measured.compute_type,
            perplexity=measured.perplexity,
            perplexity_increase=measured.perplexity / reference.perplexity - 1,
            greedy_agreement=share,
            mean_first_divergence=divergence,
            task_accuracy=measured.task_accuracy,
            size_bytes=measured.size_bytes,
            rss_bytes=measured.rss_bytes,
            load_s=measured.load_s,
        )
        variants.append(variant)
        if on_variant is not None:
            on_variant(variant)
    assert reference is not None  # the order always starts with the reference
    return QualityReport(
        model=reference.model_name,
        source=str(src),
        device=device,
        sample=EvalSample(
            perplexity_tokens=reference.scored_tokens,
            perplexity_source=data.text_source,
            agreement_prompts=len(data.prompts),
            agreement_tokens=agreement_tokens,
            tasks=len(data.tasks),
        ),
        variants=tuple(variants),
    )


def default_output(source: Path | None, models_dir: Path | None = None) -> Path:
    """Where the report of ``source`` goes by default: beside its builds in the model cache."""
    return quality_dir(source_name(source), models_dir)


_COLUMNS: Final = (
    "quantization",
    "compute_type",
    "perplexity",
    "perplexity_increase",
    "greedy_agreement",
    "mean_first_divergence",
    "task_accuracy",
    "size_bytes",
    "rss_bytes",
    "load_s",
)


def write_quality_csv(report: QualityReport, directory: Path) -> Path:
    """Write one CSV row per variant as ``directory/quality.csv``, for spreadsheets; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / QUALITY_CSV
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(_COLUMNS)
        for v in report.variants:
            writer.writerow([getattr(v, c) for c in _COLUMNS])
    return path


def format_table(report: QualityReport) -> str:
    """The report as a fixed-width text table, one row per quantization."""
    header = (
        f"{'quantization':<14}{'compute':<14}{'ppl':>9}{'+%':>8}{'agree':>8}{'1st div':>9}"
        f"{'tasks':>8}{'size MB':>9}{'RSS MB':>8}{'load s':>8}"
    )
    rows = [header]
    for v in report.variants:
        rows.append(
            f"{v.quantization:<14}{v.compute_type:<14}{v.perplexity:>9.3f}"
            f"{100 * v.perplexity_increase:>+8.2f}{v.greedy_agreement:>8.1%}"
            f"{v.mean_first_divergence:>9.1f}{v.task_accuracy:>8.1%}"
            f"{v.size_bytes / 1e6:>9.1f}{v.rss_bytes / 1e6:>8.1f}{v.load_s:>8.2f}"
        )
    sample = report.sample
    rows.append(
        f"({report.model} on {report.device}; perplexity over {sample.perplexity_tokens} tokens; "
        f"agreement: first {sample.agreement_tokens} greedy tokens of {sample.agreement_prompts} "
        f"prompts; {sample.tasks} tasks)"
    )
    return "\n".join(rows)


def run_eval_command(
    source: Path | None,
    quantizations: Sequence[str] | None,
    *,
    output: Path | None,
    models_dir: Path | None,
    device: str,
    agreement_tokens: int,
) -> QualityReport:
    """Run the eval, print its table and write ``quality.json`` + ``quality.csv`` (the CLI)."""
    report = evaluate(
        source,
        quantizations,
        device=device,
        agreement_tokens=agreement_tokens,
        models_dir=models_dir,
    )
    target = output if output is not None else default_output(source, models_dir)
    print(format_table(report))
    print(write_quality(report, target))
    print(write_quality_csv(report, target))
    return report
