"""Predict every case of a folder, nnU-Net style, on one process or sharded over torchrun ranks.

    segmote predict -i imagesTs/ -o predsTs/ --prompts prompts.json
    torchrun --nproc_per_node 4 -m segmote.cli.main predict -i in/ -o out/ --auto -d cuda

Each case is predicted by a callable (the single-file predict function with the options bound),
so a failed case is reported on one line and the others go on; the run's report lists what was
written and what failed. Under torchrun (WORLD_SIZE > 1; several nodes join through its
rendezvous) rank r takes cases r, r + W, r + 2W, ... of the sorted list and writes their outputs
itself; the ranks' reports are gathered (gloo on CPU, NCCL on GPU) so every rank ends with the
whole run's report and rank 0 can print it.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from segmote.errors import SegmoteError
from segmote.predict.cases import Case, CasePrompts
from segmote.predict.prompts import PromptNumbers

if TYPE_CHECKING:  # the pipeline pulls in torch; this module is imported by the CLI first
    from segmote.predict.pipeline import PredictOptions

# (case, output path) -> the path written; raises on failure
PredictCase = Callable[[Case, Path], Path]


@dataclass
class FolderReport:
    """written: case -> (output path, rank that wrote it); failed: case -> one-line reason;
    rank: the process that holds this report (0 prints the run's summary)."""

    written: dict[str, tuple[Path, int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    rank: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def merge(self, other: "FolderReport") -> None:
        self.written.update(other.written)
        self.failed.update(other.failed)

    def summary(self) -> str:
        """One line (plus one per failed case) for the user."""
        total = len(self.written) + len(self.failed)
        line = f"{len(self.written)} of {total} cases written"
        if not self.failed:
            return line
        reasons = "".join(f"\n  {name}: {why}" for name, why in sorted(self.failed.items()))
        return f"{line}; {len(self.failed)} failed:{reasons}"


def case_request(prompts: CasePrompts | None,
                 options: "PredictOptions") -> tuple[PromptNumbers, "PredictOptions"]:
    """The `predict_file` request of one case: its prompts over the run's options.

    No prompts: automatic mode (the run's `classes`). Boxes / points: those, with the case's
    class name beside them. Class names alone: prompt-free segmentation of those classes (one
    class: written with the case's label value, like `text` alone).
    """
    if prompts is None:
        return PromptNumbers(), dataclasses.replace(options, auto=True)
    if prompts.numbers or len(prompts.text) == 1:
        text = prompts.text[0] if prompts.text else None
        return prompts.numbers, dataclasses.replace(options, text=text, auto=False, classes=None)
    return PromptNumbers(), dataclasses.replace(options, text=None, auto=True,
                                                classes=list(prompts.text))


def shard(cases: Sequence[Case], rank: int, world_size: int) -> list[Case]:
    """Rank ``rank``'s cases: every ``world_size``-th of ``cases`` from index ``rank`` (round
    robin, so ranks get cases of similar sizes when the names do not sort by size)."""
    return list(cases[rank::world_size])


def predict_cases(cases: Sequence[Case], out_dir: str | Path, predict_case: PredictCase,
                  ending: str | None = None, progress: bool = False,
                  rank: int = 0) -> FolderReport:
    """Predict ``cases`` one after the other into ``out_dir/CASE<ending>``.

    A case that raises is recorded in the report (its error's one line; other exceptions with
    their type) and printed at once; KeyboardInterrupt still stops the run.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    report = FolderReport(rank=rank)
    bar = tqdm(cases, desc="cases", unit="case", disable=not progress, file=sys.stderr)
    for case in bar:
        try:
            written = predict_case(case, case.output(out_dir, ending))
        except Exception as err:  # noqa: BLE001 - one case must not stop a cohort
            report.failed[case.name] = _reason(err)
            bar.write(f"{case.name}: failed: {report.failed[case.name]}", file=sys.stderr)
            continue
        report.written[case.name] = (Path(written), rank)
    return report


def predict_folder(cases: Sequence[Case], out_dir: str | Path,
                   make: Callable[[str], PredictCase], ending: str | None = None,
                   progress: bool = False, device: str | None = "cpu") -> FolderReport:
    """Predict every case, sharded over torchrun's ranks when WORLD_SIZE > 1.

    make: builds the per-case function for this rank's device ("cpu", "cuda:N"); called once
        per rank after the process group is joined (load the model there).
    device: "cpu", "cuda" or "cuda:N"; under torchrun "cuda" becomes this rank's GPU
        (LOCAL_RANK). Returns the whole run's report, gathered from every rank.
    """
    from segmote.training import distributed

    info = distributed.setup(device)
    try:
        mine = shard(cases, info.rank, info.world_size)
        predict_case = make(str(info.device))
        report = predict_cases(mine, out_dir, predict_case, ending,
                               progress and info.is_main, info.rank)
        if info.enabled:
            import torch.distributed as dist

            reports: list = [None] * info.world_size
            dist.all_gather_object(reports, report)
            report = FolderReport(rank=info.rank)
            for part in reports:
                report.merge(part)
    finally:
        distributed.cleanup(info)
    return report


def _reason(err: BaseException) -> str:
    """The first line of an error, with its type unless it is a SegmoteError (already a
    user-facing line)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, SegmoteError):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
